//! Tree ensembles (`TreeEnsembleClassifier`, `TreeEnsembleRegressor`) evaluated over flat node
//! arrays.
//!
//! tract 0.23 has no `TreeEnsembleRegressor`, and its classifier was 90-860× slower than
//! onnxruntime on scikit-learn's iris forests. Here a forest is one array of fixed-size nodes
//! walked with plain indices, every leaf's weights a range of one array: no allocation per row
//! or per node, and a batch is scored tree by tree. Results follow the ONNX-ML specification as
//! onnxruntime implements it (scores summed in tree order, base values added, then the post
//! transform; labels from the first highest score, or by threshold for two classes scored in
//! one column), checked against onnxruntime by the model zoo test. Labels may be integers or
//! strings (`classlabels_strings`, which scikit-learn writes for a classifier trained on string
//! labels and tract's own classifier cannot type).

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::{floats, tract_builder, Built};

pub(super) fn classifier(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let ints = node.get_attr_opt_slice::<i64>("classlabels_int64s")?;
    let strings = node.get_attr_opt_tvec::<&str>("classlabels_strings")?;
    let labels = match (ints, strings) {
        (Some(ints), None) => Some(Labels::Ints(ints.into())),
        (None, Some(strings)) => {
            Some(Labels::Strings(strings.iter().map(|s| (*s).to_owned()).collect()))
        }
        _ => None,
    };
    let op = match labels {
        Some(labels) if labels.len() > 2 => {
            let forest = Forest::parse(ctx, node, Kind::Classifier { classes: labels.len() })?;
            Some(TreeEnsemble { forest: Arc::new(forest), head: Head::Classes(labels) })
        }
        Some(labels) if labels.len() == 2 => binary(ctx, node, labels),
        _ => None,
    };
    match op {
        Some(op) => Ok((expand(op), vec![])),
        // Two-class layouts not handled below, and attributes tract's implementation
        // refuses with its own message.
        None => tract_builder("TreeEnsembleClassifier")?(ctx, node),
    }
}

/// Two classes scored in one column, as scikit-learn converters write them (every leaf
/// weight for class id 0, scoring the second class), in the two layouts whose results
/// onnxruntime defines plainly: probabilities (no post transform, no negative weight: scores
/// `[1 - s, s]`, the second label when `s > 0.5`) and log-odds (`LOGISTIC`: scores
/// `[σ(-s), σ(s)]`, the second label when `s > 0`).
fn binary(ctx: &ParsingContext, node: &NodeProto, labels: Labels) -> Option<TreeEnsemble> {
    let mut forest = Forest::parse(ctx, node, Kind::Classifier { classes: 1 }).ok()?;
    let no_negative_weight = forest.weights.iter().all(|&(_, w)| w >= 0.0);
    let rule = match (forest.post, no_negative_weight) {
        (PostTransform::None, true) => BinaryRule::Probability,
        (PostTransform::Logistic, false) => BinaryRule::Logit,
        _ => return None,
    };
    forest.post = PostTransform::None;
    Some(TreeEnsemble { forest: Arc::new(forest), head: Head::Binary { labels, rule } })
}

pub(super) fn regressor(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let targets = node.get_attr::<usize>("n_targets")?;
    node.expect_attr("n_targets", targets > 0, "at least one target")?;
    let forest = Forest::parse(ctx, node, Kind::Regressor { targets })?;
    Ok((expand(TreeEnsemble { forest: Arc::new(forest), head: Head::Regressor }), vec![]))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Classifier { classes: usize },
    Regressor { targets: usize },
}

/// How a branch node compares its feature with its threshold; `Leaf` ends a walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Leaf,
    LessOrEqual,
    Less,
    GreaterOrEqual,
    Greater,
    Equal,
    NotEqual,
}

impl Rule {
    fn parse(mode: &str) -> Option<Self> {
        Some(match mode {
            "LEAF" => Rule::Leaf,
            "BRANCH_LEQ" => Rule::LessOrEqual,
            "BRANCH_LT" => Rule::Less,
            "BRANCH_GTE" => Rule::GreaterOrEqual,
            "BRANCH_GT" => Rule::Greater,
            "BRANCH_EQ" => Rule::Equal,
            "BRANCH_NEQ" => Rule::NotEqual,
            _ => return None,
        })
    }

    #[inline(always)]
    fn holds(self, x: f32, threshold: f32) -> bool {
        match self {
            Rule::LessOrEqual => x <= threshold,
            Rule::Less => x < threshold,
            Rule::GreaterOrEqual => x >= threshold,
            Rule::Greater => x > threshold,
            Rule::Equal => x == threshold,
            Rule::NotEqual => x != threshold,
            Rule::Leaf => false,
        }
    }
}

/// One tree node. A branch goes to `yes` when its rule holds (or the feature is NaN and
/// `missing_goes_yes`), else to `no`; once laid out ([`lay_out`]) its `yes` is the node after
/// it. A leaf's weights are `weights[yes..no]`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Node {
    rule: Rule,
    missing_goes_yes: bool,
    feature: u32,
    threshold: f32,
    yes: u32,
    no: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PostTransform {
    None,
    Softmax,
    Logistic,
}

/// A tree ensemble in flat form.
#[derive(Debug, Clone, PartialEq)]
struct Forest {
    nodes: Vec<Node>,
    /// The root node of each tree.
    roots: Vec<u32>,
    /// `(target, weight)` pairs; each leaf owns a contiguous range.
    weights: Vec<(u32, f32)>,
    targets: usize,
    /// One more than the highest feature index a branch reads.
    features: usize,
    /// The rule of every branch, when they share one and none sends a missing value to `yes`.
    uniform: Option<Rule>,
    aggregate: Aggregate,
    base: Vec<f32>,
    post: PostTransform,
}

fn ints<'a>(node: &'a NodeProto, name: &str, len: usize) -> TractResult<&'a [i64]> {
    let values = node.get_attr_slice::<i64>(name)?;
    node.expect_attr(name, values.len() == len, || format!("{len} values, got {}", values.len()))?;
    Ok(values)
}

fn index(node: &NodeProto, name: &str, value: i64) -> TractResult<u32> {
    let index = u32::try_from(value).ok();
    node.expect_ok_or_else(index, || format!("`{name}` values between 0 and 2^32, got {value}"))
}

impl Forest {
    fn parse(ctx: &ParsingContext, node: &NodeProto, kind: Kind) -> TractResult<Self> {
        let (leaf_prefix, targets) = match kind {
            Kind::Classifier { classes } => ("class", classes),
            Kind::Regressor { targets } => ("target", targets),
        };
        let tree_ids = node.get_attr_slice::<i64>("nodes_treeids")?;
        let count = tree_ids.len();
        node.expect_attr("nodes_treeids", count > 0, "at least one node")?;
        let node_ids = ints(node, "nodes_nodeids", count)?;
        let features = ints(node, "nodes_featureids", count)?;
        let yes_ids = ints(node, "nodes_truenodeids", count)?;
        let no_ids = ints(node, "nodes_falsenodeids", count)?;
        let thresholds = floats(ctx, node, "nodes_values")?.unwrap_or_default();
        node.expect_attr("nodes_values", thresholds.len() == count, "one value per node")?;
        let modes = node.get_attr_tvec::<&str>("nodes_modes")?;
        node.expect_attr("nodes_modes", modes.len() == count, "one mode per node")?;
        let missing = node.get_attr_opt_slice::<i64>("nodes_missing_value_tracks_true")?;
        let missing = missing.filter(|m| !m.is_empty());
        if let Some(missing) = missing {
            node.expect_attr("nodes_missing_value_tracks_true", missing.len() == count, "")?;
        }

        // (tree, node id) → position in `nodes`, in the order the attributes list them.
        let mut position = HashMap::with_capacity(count);
        for (at, (&tree, &id)) in tree_ids.iter().zip(node_ids).enumerate() {
            if position.insert((tree, id), at as u32).is_some() {
                bail!("{}: node {id} of tree {tree} is listed twice", node.name);
            }
        }
        let child = |at: usize, id: i64| {
            let found = position.get(&(tree_ids[at], id)).copied();
            node.expect_ok_or_else(found, || {
                format!("node {id} of tree {} (a child of node {})", tree_ids[at], node_ids[at])
            })
        };
        let mut nodes = Vec::with_capacity(count);
        for at in 0..count {
            let rule = Rule::parse(modes[at]);
            let rule =
                node.expect_ok_or_else(rule, || format!("a known mode, not {}", modes[at]))?;
            let (yes, no) = if rule == Rule::Leaf {
                (0, 0)
            } else {
                (child(at, yes_ids[at])?, child(at, no_ids[at])?)
            };
            nodes.push(Node {
                rule,
                missing_goes_yes: missing.is_some_and(|m| m[at] != 0),
                feature: index(node, "nodes_featureids", features[at])?,
                threshold: thresholds[at],
                yes,
                no,
            });
        }

        let name = |suffix: &str| format!("{leaf_prefix}_{suffix}");
        let leaf_trees = node.get_attr_slice::<i64>(&name("treeids"))?;
        let leaf_nodes = ints(node, &name("nodeids"), leaf_trees.len())?;
        let leaf_targets = ints(node, &name("ids"), leaf_trees.len())?;
        let leaf_weights = floats(ctx, node, &name("weights"))?.unwrap_or_default();
        node.expect_attr(&name("weights"), leaf_weights.len() == leaf_trees.len(), "one per id")?;
        let mut entries = Vec::with_capacity(leaf_trees.len());
        for at in 0..leaf_trees.len() {
            let found = position.get(&(leaf_trees[at], leaf_nodes[at])).copied();
            let owner = node.expect_ok_or_else(found, || {
                format!(
                    "leaf weight {at} to name a node (tree {}, node {})",
                    leaf_trees[at], leaf_nodes[at]
                )
            })?;
            let target = index(node, &name("ids"), leaf_targets[at])?;
            node.expect_attr(&name("ids"), (target as usize) < targets, || {
                format!("ids below {targets}, got {target}")
            })?;
            entries.push((owner, target, leaf_weights[at]));
        }
        // Stable: weights of one leaf keep the order the file gives them.
        entries.sort_by_key(|&(owner, _, _)| owner);
        let mut weights = Vec::with_capacity(entries.len());
        let mut entries = entries.into_iter().peekable();
        for (at, node) in nodes.iter_mut().enumerate() {
            if node.rule != Rule::Leaf {
                continue;
            }
            node.yes = weights.len() as u32;
            while let Some((_, target, weight)) =
                entries.next_if(|&(owner, _, _)| owner as usize == at)
            {
                weights.push((target, weight));
            }
            node.no = weights.len() as u32;
        }
        if let Some((owner, _, _)) = entries.next() {
            bail!("{}: a leaf weight is attached to node {owner}, which is a branch", node.name);
        }

        let (nodes, roots) = lay_out(node, tree_ids, &nodes)?;
        let aggregate = match node.get_attr_opt::<&str>("aggregate_function")?.unwrap_or("SUM") {
            "SUM" => Aggregate::Sum,
            "AVERAGE" => Aggregate::Average,
            "MIN" => Aggregate::Min,
            "MAX" => Aggregate::Max,
            other => bail!("{}: unsupported aggregate_function {other}", node.name),
        };
        let post = match node.get_attr_opt::<&str>("post_transform")?.unwrap_or("NONE") {
            "NONE" => PostTransform::None,
            "SOFTMAX" => PostTransform::Softmax,
            "LOGISTIC" => PostTransform::Logistic,
            other => bail!("{}: unsupported post_transform {other}", node.name),
        };
        let base = floats(ctx, node, "base_values")?.unwrap_or_default();
        let base = if base.is_empty() { vec![0.0; targets] } else { base };
        node.expect_attr("base_values", base.len() == targets, || format!("{targets} values"))?;
        let features = nodes.iter().filter(|n| n.rule != Rule::Leaf).map(|n| n.feature);
        let features = features.max().map_or(0, |f| f as usize + 1);
        let uniform = uniform_rule(&nodes);
        Ok(Forest { nodes, roots, weights, targets, features, uniform, aggregate, base, post })
    }

    /// The leaf `row` reaches from `root`, going to `yes` (the next node, see [`lay_out`])
    /// where `goes_yes(node, x)` holds. Every index was checked when parsing, and `row` is at
    /// least `features` long.
    #[inline(always)]
    fn leaf(&self, root: u32, row: &[f32], goes_yes: impl Fn(&Node, f32) -> bool) -> &Node {
        let mut at = root as usize;
        loop {
            let node = &self.nodes[at];
            if node.rule == Rule::Leaf {
                return node;
            }
            let x = row[node.feature as usize];
            at = if goes_yes(node, x) { at + 1 } else { node.no as usize };
        }
    }

    /// The raw scores (before the post transform) of each row of `input`, `width` features
    /// per row, into `scores`, `targets` per row.
    fn score(&self, input: &[f32], width: usize, scores: &mut [f32]) {
        // A forest whose branches all compare one way and send missing values to `no` walks
        // without a NaN test or a rule lookup per step: a NaN compares false under each of
        // these rules, so it goes to `no` as the general walk sends it.
        match self.uniform {
            Some(Rule::LessOrEqual) => self.score_by(input, width, scores, |n, x| x <= n.threshold),
            Some(Rule::Less) => self.score_by(input, width, scores, |n, x| x < n.threshold),
            Some(Rule::GreaterOrEqual) => {
                self.score_by(input, width, scores, |n, x| x >= n.threshold)
            }
            Some(Rule::Greater) => self.score_by(input, width, scores, |n, x| x > n.threshold),
            Some(Rule::Equal) => self.score_by(input, width, scores, |n, x| x == n.threshold),
            _ => self.score_by(input, width, scores, |n, x| {
                if x.is_nan() {
                    n.missing_goes_yes
                } else {
                    n.rule.holds(x, n.threshold)
                }
            }),
        }
    }

    /// [`Self::score`] with `goes_yes` deciding each step.
    fn score_by(
        &self,
        input: &[f32],
        width: usize,
        scores: &mut [f32],
        goes_yes: impl Fn(&Node, f32) -> bool + Copy,
    ) {
        if matches!(self.aggregate, Aggregate::Sum | Aggregate::Average) {
            // Tree by tree over the whole batch, so one tree's nodes stay in cache; each
            // row's sum still adds the trees in order, as onnxruntime does.
            scores.fill(0.0);
            for &root in &self.roots {
                for (row, out) in
                    input.chunks_exact(width).zip(scores.chunks_exact_mut(self.targets))
                {
                    let leaf = self.leaf(root, row, goes_yes);
                    for &(target, weight) in &self.weights[leaf.yes as usize..leaf.no as usize] {
                        out[target as usize] += weight;
                    }
                }
            }
        } else {
            let mut reached = vec![false; self.targets];
            for (row, out) in input.chunks_exact(width).zip(scores.chunks_exact_mut(self.targets)) {
                reached.fill(false);
                for &root in &self.roots {
                    let leaf = self.leaf(root, row, goes_yes);
                    for &(target, weight) in &self.weights[leaf.yes as usize..leaf.no as usize] {
                        let (slot, seen) =
                            (&mut out[target as usize], &mut reached[target as usize]);
                        *slot = match (self.aggregate, *seen) {
                            (Aggregate::Min, true) => slot.min(weight),
                            (Aggregate::Max, true) => slot.max(weight),
                            _ => weight,
                        };
                        *seen = true;
                    }
                }
            }
        }
        for out in scores.chunks_exact_mut(self.targets) {
            let trees = self.roots.len() as f32;
            for (slot, base) in out.iter_mut().zip(&self.base) {
                if self.aggregate == Aggregate::Average {
                    *slot /= trees;
                }
                *slot += base;
            }
        }
    }

    fn transform(&self, scores: &mut [f32]) {
        match self.post {
            PostTransform::None => {}
            PostTransform::Logistic => {
                scores.iter_mut().for_each(|s| *s = logistic(*s));
            }
            PostTransform::Softmax => {
                for row in scores.chunks_exact_mut(self.targets) {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    row.iter_mut().for_each(|s| *s = (*s - max).exp());
                    let sum: f32 = row.iter().sum();
                    row.iter_mut().for_each(|s| *s /= sum);
                }
            }
        }
    }
}

/// The rule every branch of `nodes` compares by, when they share one and none sends a
/// missing value to `yes`.
fn uniform_rule(nodes: &[Node]) -> Option<Rule> {
    let mut branches = nodes.iter().filter(|n| n.rule != Rule::Leaf);
    let first = branches.next()?;
    let shared = |n: &Node| n.rule == first.rule && !n.missing_goes_yes;
    (shared(first) && branches.all(shared)).then_some(first.rule)
}

/// The nodes laid out tree by tree, each tree depth first with every branch's `yes` child
/// right after it, and the root of each tree (the one node of the tree no branch points to).
/// A walk that goes to `yes` then reads the next node, and its step is a branch the processor
/// predicts and runs ahead of, not a chain of dependent loads (with the one-rule walk of
/// [`Forest::score`], 1.8x faster on the zoo's 100-tree forest at 32 rows,
/// `scripts/benchmarks.md`). Refuses trees that loop back on themselves or share a node between
/// two branches, so every walk ends at a leaf and every node is laid out once.
fn lay_out(
    node: &NodeProto,
    tree_ids: &[i64],
    nodes: &[Node],
) -> TractResult<(Vec<Node>, Vec<u32>)> {
    let mut pointed_at = vec![false; nodes.len()];
    for n in nodes.iter().filter(|n| n.rule != Rule::Leaf) {
        pointed_at[n.yes as usize] = true;
        pointed_at[n.no as usize] = true;
    }
    let mut roots: Vec<(i64, u32)> = (0..nodes.len())
        .filter(|&at| !pointed_at[at])
        .map(|at| (tree_ids[at], at as u32))
        .collect();
    roots.sort_unstable();
    let trees: std::collections::BTreeSet<i64> = tree_ids.iter().copied().collect();
    if roots.len() != trees.len() || roots.iter().map(|r| r.0).ne(trees.iter().copied()) {
        bail!("{}: every tree must have exactly one root node", node.name);
    }
    let mut placed = vec![false; nodes.len()];
    let mut laid: Vec<Node> = Vec::with_capacity(nodes.len());
    let mut new_roots = Vec::with_capacity(roots.len());
    // (a node's index in `nodes`, the index in `laid` of the branch whose `no` it is)
    let mut stack: Vec<(u32, Option<usize>)> = vec![];
    for (tree, root) in roots {
        new_roots.push(laid.len() as u32);
        stack.push((root, None));
        while let Some((at, no_of)) = stack.pop() {
            if std::mem::replace(&mut placed[at as usize], true) {
                bail!("{}: tree {tree} has a cycle or a node with two parents", node.name);
            }
            let here = laid.len() as u32;
            if let Some(branch) = no_of {
                laid[branch].no = here;
            }
            let mut n = nodes[at as usize];
            if n.rule != Rule::Leaf {
                // `yes` is taken from the stack next, so it lands right after this node.
                stack.push((n.no, Some(here as usize)));
                stack.push((n.yes, None));
                n.yes = here + 1;
            }
            laid.push(n);
        }
    }
    Ok((laid, new_roots))
}

/// What a tree ensemble outputs.
#[derive(Debug, Clone, PartialEq)]
enum Head {
    /// The scores, one column per target.
    Regressor,
    /// Labels from the first highest score, then the scores, one column per class.
    Classes(Labels),
    /// Two classes scored in one column (see [`binary`]): labels, then two score columns.
    Binary { labels: Labels, rule: BinaryRule },
}

/// A classifier's labels, in class order: integers, or strings (an ONNX `string` tensor).
#[derive(Debug, Clone, PartialEq)]
enum Labels {
    Ints(Arc<[i64]>),
    Strings(Arc<[String]>),
}

impl Labels {
    fn len(&self) -> usize {
        match self {
            Labels::Ints(labels) => labels.len(),
            Labels::Strings(labels) => labels.len(),
        }
    }

    fn datum_type(&self) -> DatumType {
        match self {
            Labels::Ints(_) => i64::datum_type(),
            Labels::Strings(_) => String::datum_type(),
        }
    }

    /// The labels of the chosen classes, one per row.
    fn pick(&self, chosen: &[usize]) -> TractResult<Tensor> {
        let rows = chosen.len();
        Ok(match self {
            Labels::Ints(labels) => {
                let picked: Vec<i64> = chosen.iter().map(|&c| labels[c]).collect();
                Tensor::from_shape(&[rows], &picked)?
            }
            Labels::Strings(labels) => {
                let picked: Vec<String> = chosen.iter().map(|&c| labels[c].clone()).collect();
                tract_ndarray::Array1::from_vec(picked).into_dyn().into()
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinaryRule {
    Probability,
    Logit,
}

/// A tree ensemble and what it outputs.
#[derive(Debug, Clone, PartialEq)]
struct TreeEnsemble {
    forest: Arc<Forest>,
    head: Head,
}

impl Eq for TreeEnsemble {}

impl TreeEnsemble {
    fn outputs(&self) -> usize {
        if self.head == Head::Regressor {
            1
        } else {
            2
        }
    }

    /// Score columns of the output.
    fn columns(&self) -> usize {
        if let Head::Binary { .. } = self.head {
            2
        } else {
            self.forest.targets
        }
    }

    /// The class chosen for each row (a position in the labels) and the final scores, from
    /// the raw scores (`targets` per row).
    fn finish(&self, mut scores: Vec<f32>) -> (Option<Vec<usize>>, Vec<f32>) {
        let forest = &self.forest;
        match &self.head {
            Head::Regressor => {
                forest.transform(&mut scores);
                (None, scores)
            }
            Head::Classes(_) => {
                let first_highest = |row: &[f32]| {
                    let mut best = 0;
                    for (at, &score) in row.iter().enumerate() {
                        if score > row[best] {
                            best = at;
                        }
                    }
                    best
                };
                let chosen = scores.chunks_exact(forest.targets).map(first_highest).collect();
                forest.transform(&mut scores);
                (Some(chosen), scores)
            }
            Head::Binary { rule, .. } => {
                let (threshold, columns): (f32, fn(f32) -> [f32; 2]) = match rule {
                    BinaryRule::Probability => (0.5, |s| [1.0 - s, s]),
                    BinaryRule::Logit => (0.0, |s| [logistic(-s), logistic(s)]),
                };
                let chosen = scores.iter().map(|&s| usize::from(s > threshold));
                (Some(chosen.collect()), scores.iter().flat_map(|&s| columns(s)).collect())
            }
        }
    }
}

fn logistic(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Op for TreeEnsemble {
    fn name(&self) -> StaticName {
        if self.head == Head::Regressor {
            "maas.TreeEnsembleRegressor"
        } else {
            "maas.TreeEnsembleClassifier"
        }
        .into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let forest = &self.forest;
        Ok(vec![format!(
            "{} trees, {} nodes, {} targets, {:?}, {:?}",
            forest.roots.len(),
            forest.nodes.len(),
            forest.targets,
            forest.aggregate,
            forest.post
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for TreeEnsemble {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let forest = &self.forest;
        let &[rows, width] = input.shape() else {
            bail!("tree ensemble input must be [batch, features], got {:?}", input.shape());
        };
        ensure!(
            width >= forest.features,
            "tree ensemble reads feature {} but the input has {width}",
            forest.features - 1
        );
        let input = input.cast_to::<f32>()?;
        let input = input.try_as_plain_ram()?.as_slice::<f32>()?;
        let mut scores = vec![0f32; rows * forest.targets];
        if width > 0 {
            forest.score(input, width, &mut scores);
        }
        let (chosen, scores) = self.finish(scores);
        let scores = Tensor::from_shape(&[rows, self.columns()], &scores)?.into_tvalue();
        Ok(match (&self.head, chosen) {
            (Head::Classes(labels) | Head::Binary { labels, .. }, Some(chosen)) => {
                tvec!(labels.pick(&chosen)?.into_tvalue(), scores)
            }
            _ => tvec!(scores),
        })
    }
}

impl TypedOp for TreeEnsemble {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].rank() == 2, "tree ensemble input must be [batch, features]");
        let rows = inputs[0].shape[0].clone();
        let scores = f32::fact([rows.clone(), self.columns().to_dim()]);
        Ok(match &self.head {
            Head::Regressor => tvec!(scores),
            Head::Classes(labels) | Head::Binary { labels, .. } => {
                tvec!(labels.datum_type().fact([rows]), scores)
            }
        })
    }

    as_op!();
}

impl Expansion for TreeEnsemble {
    fn name(&self) -> StaticName {
        Op::name(self)
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.outputs())
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, self.outputs())?;
        s.equals(&inputs[0].rank, 2)?;
        let scores = &outputs[self.outputs() - 1];
        s.equals(&scores.datum_type, f32::datum_type())?;
        s.equals(&scores.rank, 2)?;
        s.equals(&scores.shape[0], &inputs[0].shape[0])?;
        s.equals(&scores.shape[1], self.columns().to_dim())?;
        if let Head::Classes(labels) | Head::Binary { labels, .. } = &self.head {
            s.equals(&outputs[0].datum_type, labels.datum_type())?;
            s.equals(&outputs[0].rank, 1)?;
            s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        }
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn branch(rule: Rule, feature: u32, threshold: f32, yes: u32, no: u32) -> Node {
        Node { rule, missing_goes_yes: false, feature, threshold, yes, no }
    }

    fn leaf(first_weight: u32) -> Node {
        Node {
            rule: Rule::Leaf,
            missing_goes_yes: false,
            feature: 0,
            threshold: 0.0,
            yes: first_weight,
            no: first_weight + 1,
        }
    }

    /// One tree: x0 <= 0.5 ? 10 : (x1 > 2 ? 20 : 30).
    fn forest(aggregate: Aggregate) -> Forest {
        let nodes = vec![
            branch(Rule::LessOrEqual, 0, 0.5, 1, 2),
            leaf(0),
            branch(Rule::Greater, 1, 2.0, 3, 4),
            leaf(1),
            leaf(2),
        ];
        Forest {
            uniform: uniform_rule(&nodes),
            nodes,
            roots: vec![0],
            weights: vec![(0, 10.0), (0, 20.0), (0, 30.0)],
            targets: 1,
            features: 2,
            aggregate,
            base: vec![0.5],
            post: PostTransform::None,
        }
    }

    fn scores(forest: &Forest, rows: &[[f32; 2]]) -> Vec<f32> {
        let input: Vec<f32> = rows.iter().flatten().copied().collect();
        let mut out = vec![0.0; rows.len() * forest.targets];
        forest.score(&input, 2, &mut out);
        out
    }

    #[test]
    fn rows_follow_their_branches_and_get_the_base_value() {
        let forest = forest(Aggregate::Sum);
        assert_eq!(scores(&forest, &[[0.5, 9.0], [0.6, 2.5], [0.6, 2.0]]), [10.5, 20.5, 30.5]);
    }

    #[test]
    fn a_missing_feature_goes_where_the_node_says() {
        let mut forest = forest(Aggregate::Sum);
        assert_eq!(scores(&forest, &[[f32::NAN, 0.0]]), [30.5], "NaN fails every comparison");
        forest.nodes[0].missing_goes_yes = true;
        assert_eq!(scores(&forest, &[[f32::NAN, 0.0]]), [10.5]);
    }

    #[test]
    fn forests_of_one_rule_walk_as_the_general_walk_does() {
        let mut general = forest(Aggregate::Sum);
        assert_eq!(general.uniform, None, "two rules");
        general.nodes[2].rule = Rule::LessOrEqual; // x0 <= 0.5 ? 10 : (x1 <= 2 ? 20 : 30)
        let mut uniform = general.clone();
        uniform.uniform = uniform_rule(&uniform.nodes);
        assert_eq!(uniform.uniform, Some(Rule::LessOrEqual));
        let rows = [[0.5, 9.0], [0.6, 2.0], [0.6, 2.5], [f32::NAN, 0.0], [1.0, f32::NAN]];
        let expected = [10.5, 20.5, 30.5, 20.5, 30.5];
        assert_eq!(scores(&uniform, &rows), expected);
        assert_eq!(scores(&general, &rows), expected);
        for rule in [Rule::Less, Rule::GreaterOrEqual, Rule::Greater, Rule::Equal, Rule::NotEqual] {
            let mut other = general.clone();
            other.nodes[0].rule = rule;
            other.nodes[2].rule = rule;
            other.uniform = uniform_rule(&other.nodes);
            let mut walked_generally = other.clone();
            walked_generally.uniform = None;
            let rows = [[0.5, 2.0], [0.4, 2.5], [0.6, 1.5], [f32::NAN, 2.0], [0.5, f32::NAN]];
            assert_eq!(scores(&other, &rows), scores(&walked_generally, &rows), "{rule:?}");
        }
        uniform.nodes[2].missing_goes_yes = true;
        assert_eq!(uniform_rule(&uniform.nodes), None, "a missing value goes to yes somewhere");
    }

    #[test]
    fn aggregates_combine_the_trees_of_a_row() {
        let mut two_trees = forest(Aggregate::Sum);
        two_trees.roots = vec![0, 2];
        let row = [[0.0, 3.0]]; // tree 1 gives 10, tree 2 gives 20
        for (aggregate, expected) in [
            (Aggregate::Sum, 30.5),
            (Aggregate::Average, 15.5),
            (Aggregate::Min, 10.5),
            (Aggregate::Max, 20.5),
        ] {
            two_trees.aggregate = aggregate;
            assert_eq!(scores(&two_trees, &row), [expected], "{aggregate:?}");
        }
    }

    #[test]
    fn trees_that_loop_share_nodes_or_lack_one_root_are_refused() {
        let node = NodeProto { name: "trees".into(), ..Default::default() };
        let mut looping = forest(Aggregate::Sum).nodes;
        looping[4] = branch(Rule::LessOrEqual, 0, 0.0, 2, 1); // 2 -> 4 -> 2
        let err = lay_out(&node, &[0; 5], &looping).unwrap_err().to_string();
        assert!(err.contains("cycle"), "{err}");
        let mut sharing = forest(Aggregate::Sum).nodes;
        sharing[2].no = 1; // leaf 1 under both branches
        let err = lay_out(&node, &[0; 5], &sharing[..4]).unwrap_err().to_string();
        assert!(err.contains("two parents"), "{err}");
        let two_roots = [leaf(0), leaf(1)];
        let err = lay_out(&node, &[0, 0], &two_roots).unwrap_err().to_string();
        assert!(err.contains("exactly one root"), "{err}");
    }

    #[test]
    fn every_branch_is_followed_by_its_yes_child_once_laid_out() {
        let node = NodeProto { name: "trees".into(), ..Default::default() };
        // The test forest's two trees listed out of order, each `yes` child away from its
        // branch: tree 7 is x0 <= 0.5 ? 10 : (x1 > 2 ? 20 : 30), tree 3 is x1 < 1 ? 20 : 10.
        let given = [
            leaf(2),
            branch(Rule::Greater, 1, 2.0, 4, 0),
            branch(Rule::LessOrEqual, 0, 0.5, 5, 1),
            leaf(0),
            leaf(1),
            leaf(0),
            branch(Rule::Less, 1, 1.0, 7, 3),
            leaf(1),
        ];
        let trees = [7, 7, 7, 3, 7, 7, 3, 3];
        let (nodes, roots) = lay_out(&node, &trees, &given).unwrap();
        assert_eq!(nodes.len(), given.len());
        assert_eq!(roots, [0, 3], "tree 3 first, its three nodes before tree 7's root");
        for (at, n) in nodes.iter().enumerate().filter(|(_, n)| n.rule != Rule::Leaf) {
            assert_eq!(n.yes as usize, at + 1, "{n:?}");
        }
        let mut laid = forest(Aggregate::Sum);
        (laid.nodes, laid.roots) = (nodes, roots);
        let rows = [[0.5, 0.0], [0.6, 2.5], [0.6, 2.0], [f32::NAN, 3.0]];
        assert_eq!(scores(&laid, &rows), [30.5, 30.5, 40.5, 30.5]);
    }

    #[test]
    fn binary_heads_score_both_classes_the_way_onnxruntime_does() {
        let ensemble = |rule| TreeEnsemble {
            forest: Arc::new(forest(Aggregate::Sum)),
            head: Head::Binary { labels: Labels::Ints([7, 9].into()), rule },
        };
        let (labels, scores) = ensemble(BinaryRule::Probability).finish(vec![0.25, 0.5, 0.75]);
        assert_eq!(labels.unwrap(), [0, 0, 1], "the second label only above 0.5");
        assert_eq!(scores, [0.75, 0.25, 0.5, 0.5, 0.25, 0.75]);
        let (labels, scores) = ensemble(BinaryRule::Logit).finish(vec![-1.0, 0.0, 2.0]);
        assert_eq!(labels.unwrap(), [0, 0, 1], "the second label only above 0");
        let expected = [0.7310586, 0.26894143, 0.5, 0.5, 0.11920292, 0.880797];
        assert!(scores.iter().zip(expected).all(|(s, e)| (s - e).abs() < 1e-6), "{scores:?}");
    }

    #[test]
    fn labels_are_picked_by_class_as_integers_or_strings() {
        let ints = Labels::Ints([7, 9].into()).pick(&[1, 0]).unwrap();
        assert_eq!(ints, Tensor::from_shape(&[2], &[9i64, 7]).unwrap());
        let names: Arc<[String]> = ["setosa".to_owned(), "virginica".to_owned()].into();
        let strings = Labels::Strings(names).pick(&[1, 1, 0]).unwrap();
        assert_eq!(strings.datum_type(), String::datum_type());
        assert_eq!(strings.shape(), [3]);
        let picked = strings.try_as_plain_ram().unwrap().as_slice::<String>().unwrap().to_vec();
        assert_eq!(picked, ["virginica", "virginica", "setosa"]);
    }
}
