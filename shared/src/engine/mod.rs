//! The inference engine: the only module that knows tract.
//!
//! Load once, optimise once, run many. At load the model's inputs get their declared types
//! and shapes, with every dynamic dimension (the batch first) made symbolic, so one optimised
//! plan serves any batch size the model allows without reloading.
//!
//! Uploads are validated here too ([`validate`]): parse, optimise, one trial inference.
//! [`to_nnef`] and [`Model::load_nnef`] exist for the load-time benchmark
//! (`scripts/bench_load.sh`), which showed that a pre-translated NNEF artefact does not make
//! cold loads faster; the registry serves ONNX files.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tract_onnx::pb;
use tract_onnx::prelude::{
    tract_ndarray, Datum, DatumType, Framework, InferenceFact, InferenceModel, InferenceModelExt,
    TDim, TValue, Tensor as TractTensor, TypedFact, TypedModel, TypedOp, WithOnnx,
};

use crate::elapsed_ms;
use crate::error::Error;
use crate::manifest::{Loader, Planning, Signature, TensorSpec, ValidationReport};
use crate::tensor::{DataType, Tensor, TensorData};

mod budget;
mod ml;
mod plans;
mod profile;
mod rewrite;

use budget::{contained, measured, BudgetedPlan};

pub use plans::set_plan_limit;
pub use profile::{profile, NodeTime};

type Plan = tract_onnx::tract_core::plan::SimplePlan<TypedFact, Box<dyn TypedOp>>;

/// A loaded, optimised model, ready to run batches.
#[derive(Clone)]
pub struct Model {
    plans: Plans,
    signature: Signature,
    memory: Memory,
    /// Heap bytes the model holds, measured while it was loaded ([`Model::memory_bytes`]).
    held: u64,
}

#[derive(Clone)]
enum Plans {
    Symbolic(Arc<BudgetedPlan>),
    PerShape(Arc<plans::ShapePlans>),
}

/// The memory one run of a model may use.
#[derive(Debug, Clone, Copy)]
struct Memory {
    /// Bytes of tensors alive at once during a run, inputs included.
    budget: u64,
    /// The largest single allocation while the engine works on the model: the budget, or
    /// twice the model file for work that handles its weights (loading, building a plan).
    cap: u64,
}

impl Memory {
    fn new(limits: &Limits, file_bytes: u64) -> Self {
        let budget = limits.memory_bytes;
        Self { budget, cap: budget.max(file_bytes.saturating_mul(2)) }
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("signature", &self.signature).finish_non_exhaustive()
    }
}

fn engine_error(message: impl Into<String>, err: tract_onnx::prelude::TractError) -> Error {
    let boxed: Box<dyn std::error::Error + Send + Sync> = err.into();
    Error::Engine { message: message.into(), source: Some(Arc::from(boxed)) }
}

/// A failure of inference on inputs that passed the signature's checks: the model cannot
/// compute on them (422), with tract's explanation.
fn rejected(err: tract_onnx::prelude::TractError) -> Error {
    Error::InferenceRejected { problem: format!("{err:#}") }
}

fn engine_problem(message: impl Into<String>) -> Error {
    Error::Engine { message: message.into(), source: None }
}

/// tract's ONNX framework with maas's ONNX-ML operators registered.
fn onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    ml::register(&mut onnx.op_register);
    onnx
}

/// The NNEF framework with tract's ONNX extensions; building it registers every operator,
/// so it is built once.
fn nnef() -> &'static tract_nnef::framework::Nnef {
    static NNEF: std::sync::LazyLock<tract_nnef::framework::Nnef> =
        std::sync::LazyLock::new(|| tract_nnef::nnef().with_onnx());
    &NNEF
}

impl Model {
    /// Loads an ONNX file with the loader and planning its validation recorded, within
    /// `limits`: a model placed in the store without validation gets the same size checks
    /// as an upload, and a failure is an error for this model only.
    pub fn load_path(
        path: &Path,
        loader: Loader,
        planning: Planning,
        limits: &Limits,
    ) -> Result<Self, Error> {
        let file_bytes = std::fs::metadata(path).map_or(0, |m| m.len());
        let memory = Memory::new(limits, file_bytes);
        let (model, held) = measured(|| {
            contained(memory.cap, "loading the model", || {
                let proto = tract_onnx::onnx()
                    .proto_model_for_path(path)
                    .map_err(|e| engine_error("cannot parse the ONNX file", e))?;
                check_declared(&proto, limits)?;
                match planning {
                    Planning::Symbolic => {
                        let (typed, signature) = translate(&proto, loader, None)?;
                        // The decoded file is not needed to optimise: freed before, it does
                        // not add to the load's peak.
                        drop(proto);
                        Self::optimise(typed, signature, memory)
                    }
                    Planning::PerShape => Self::per_shape(proto, loader, memory),
                }
            })
        });
        // What the load freed goes back to the system, not into this thread's arena.
        crate::malloc::trim();
        Ok(Self { held, ..model? })
    }

    /// A model whose plans are built per input shape, on first use.
    fn per_shape(proto: pb::ModelProto, loader: Loader, memory: Memory) -> Result<Self, Error> {
        let signature = signature_of(&proto)?;
        let plans = plans::ShapePlans::new(proto, loader, &signature);
        Ok(Self { plans: Plans::PerShape(Arc::new(plans)), signature, memory, held: 0 })
    }

    /// How the model is planned.
    pub fn planning(&self) -> Planning {
        match self.plans {
            Plans::Symbolic(_) => Planning::Symbolic,
            Plans::PerShape(_) => Planning::PerShape,
        }
    }

    /// How many optimised plans the model holds now.
    pub fn plan_count(&self) -> u64 {
        match &self.plans {
            Plans::Symbolic(_) => 1,
            Plans::PerShape(plans) => plans.plan_count(),
        }
    }

    /// Loads the NNEF artefact written at upload: the ONNX translation is already done, so
    /// only optimisation is left. `signature` is the manifest's.
    pub fn load_nnef(path: &Path, signature: Signature, limits: &Limits) -> Result<Self, Error> {
        let memory = Memory::new(limits, std::fs::metadata(path).map_or(0, |m| m.len()));
        let (model, held) = measured(|| {
            contained(memory.cap, "loading the model", || {
                let typed = nnef()
                    .model_for_path(path)
                    .map_err(|e| engine_error("cannot read the NNEF artefact", e))?;
                Self::optimise(typed, signature, memory)
            })
        });
        Ok(Self { held, ..model? })
    }

    /// Bytes of memory the model holds: the heap its loading and optimisation left allocated
    /// (weights as tract packed them, plans, the graph), plus the per-shape plans it holds
    /// now. 0 for a model validated from bytes rather than loaded.
    pub fn memory_bytes(&self) -> u64 {
        let plans = match &self.plans {
            Plans::Symbolic(_) => 0,
            Plans::PerShape(plans) => plans.memory_bytes(),
        };
        self.held.saturating_add(plans)
    }

    /// Checks the model's tensor sizes against the budget, then optimises and plans it.
    fn optimise(typed: TypedModel, signature: Signature, memory: Memory) -> Result<Self, Error> {
        budget::check_facts(&typed, memory.budget)?;
        let optimized =
            rewrite::optimise(typed).map_err(|e| engine_error("cannot optimise the model", e))?;
        let plan = BudgetedPlan::new(optimized)?;
        Ok(Self { plans: Plans::Symbolic(Arc::new(plan)), signature, memory, held: 0 })
    }

    /// The inputs and outputs as the ONNX file declares them.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Runs one batch. `inputs` must be in the signature's order and already checked against
    /// it (the protocol codec does that); outputs come back in the signature's order.
    ///
    /// The run stays within the model's memory budget ([`Error::OverBudget`] when it cannot)
    /// and a failure inside the engine is an error, never a crash.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        let inputs = inputs.into_iter().map(to_tract).collect::<Result<Vec<_>, _>>()?;
        let outputs = match &self.plans {
            Plans::Symbolic(plan) => contained(self.memory.budget, "running the model", || {
                let values = inputs.into_iter().map(TValue::from).collect();
                Ok(plan.run(values, self.memory.budget)?.into_vec())
            })?,
            Plans::PerShape(plans) => contained(self.memory.cap, "running the model", || {
                plans.run(inputs, &self.signature, self.memory.budget)
            })?,
        };
        self.signature
            .outputs
            .iter()
            .zip(outputs)
            .map(|(spec, value)| from_tract(&spec.name, &value))
            .collect()
    }
}

/// Parses the graph with `loader`, gives its inputs their declared types and either symbolic
/// shapes or, when given, concrete `shapes`, and translates it into tract's typed, decluttered
/// form.
fn translate(
    proto: &pb::ModelProto,
    loader: Loader,
    shapes: Option<&[Vec<usize>]>,
) -> Result<(TypedModel, Signature), Error> {
    let folded;
    let proto = match loader {
        Loader::FoldConstantIf => {
            folded = fold_ifs(proto, shapes)?;
            &folded
        }
        Loader::Plain | Loader::IgnoreValueInfo => proto,
    };
    let signature = signature_of(proto)?;
    let onnx = onnx().with_ignore_value_info(loader != Loader::Plain);
    let mut model = onnx
        .model_for_proto_model(proto)
        .map_err(|e| engine_error("cannot translate the ONNX graph", e))?;
    set_input_facts(&mut model, proto, &signature, shapes)?;
    let typed = model
        .into_typed()
        .and_then(|typed| typed.into_decluttered())
        .map_err(|e| engine_error("cannot analyse the model", e))?;
    Ok((typed, signature))
}

/// Gives the graph's inputs their declared types and either symbolic shapes or, when given,
/// concrete `shapes`.
fn set_input_facts(
    model: &mut InferenceModel,
    proto: &pb::ModelProto,
    signature: &Signature,
    shapes: Option<&[Vec<usize>]>,
) -> Result<(), Error> {
    if model.input_outlets().map_or(0, |o| o.len()) != signature.inputs.len() {
        return Err(engine_problem("the graph's inputs do not match its declared inputs"));
    }
    for (index, spec) in signature.inputs.iter().enumerate() {
        let datum_type = datum_type_of(spec.datatype).ok_or_else(|| {
            engine_problem(format!(
                "input `{}` has unsupported datatype {}",
                spec.name, spec.datatype
            ))
        })?;
        let shape = match shapes.and_then(|s| s.get(index)) {
            Some(shape) => shape.iter().map(|&d| TDim::from(d)).collect(),
            None => symbolic_shape(model, proto, index, spec),
        };
        model.set_input_fact(index, InferenceFact::dt_shape(datum_type, shape)).map_err(|e| {
            engine_error(format!("cannot set the facts of input `{}`", spec.name), e)
        })?;
    }
    Ok(())
}

/// The model with every top-level `If` folded whose condition is a constant, or which
/// tract's analysis of the graph under the input facts finds constant (PyTorch's legacy
/// exporter writes `squeeze` of a dynamic axis as `If(shape[-1] == 1, Squeeze, Identity)`,
/// constant once shapes are). Repeats while inlined branches bring new foldable `If`s.
fn fold_ifs(
    proto: &pb::ModelProto,
    shapes: Option<&[Vec<usize>]>,
) -> Result<pb::ModelProto, Error> {
    let mut folded: Option<pb::ModelProto> = None;
    loop {
        let current = folded.as_ref().unwrap_or(proto);
        let known = analysed_conditions(current, shapes);
        match fold_constant_ifs(current, &known) {
            Some(next) => folded = Some(next),
            None => break,
        }
    }
    folded.ok_or_else(|| engine_problem("the graph has no `If` with a constant condition"))
}

/// The conditions of top-level `If` nodes whose value tract's analysis finds, by the name
/// of the tensor that holds them. Analysis goes as far as it can; what it cannot settle is
/// left out.
fn analysed_conditions(
    proto: &pb::ModelProto,
    shapes: Option<&[Vec<usize>]>,
) -> std::collections::HashMap<String, bool> {
    use tract_onnx::tract_hir::infer::Factoid;
    let mut known = std::collections::HashMap::new();
    let Some(graph) = proto.graph.as_ref() else { return known };
    let conditions = graph.node.iter().filter(|n| n.op_type == "If" && n.domain.is_empty());
    let conditions: Vec<&String> = conditions.filter_map(|n| n.input.first()).collect();
    if conditions.is_empty() {
        return known;
    }
    let Ok(signature) = signature_of(proto) else { return known };
    let Ok(parsed) = onnx().with_ignore_value_info(true).parse(proto, None) else { return known };
    let mut model = parsed.model;
    if set_input_facts(&mut model, proto, &signature, shapes).is_err() {
        return known;
    }
    let _ = model.analyse(true);
    for name in conditions {
        let fact = parsed.outlets_by_name.get(name).and_then(|&o| model.outlet_fact(o).ok());
        let Some(value) = fact.and_then(|f| f.value.concretize()) else { continue };
        let Ok(value) = value.cast_to::<bool>() else { continue };
        if let Ok(&[condition]) = value.try_as_plain_ram().and_then(|v| v.as_slice::<bool>()) {
            known.insert(name.clone(), condition);
        }
    }
    known
}

/// A boolean scalar tensor's value.
fn scalar_bool(tensor: &pb::TensorProto) -> Option<bool> {
    const BOOL: i32 = 9;
    if tensor.data_type != BOOL || tensor.dims.iter().product::<i64>() != 1 {
        return None;
    }
    tensor.int32_data.first().map(|&v| v != 0).or_else(|| tensor.raw_data.first().map(|&b| b != 0))
}

/// The model with every top-level `If` whose condition is a constant (an initializer, a
/// `Constant` node, or in `known`) replaced by the nodes of the branch it always takes;
/// `None` when there is no such `If`. tract analyses both branches of an `If` and refuses
/// branches whose shapes differ even when the condition can never select one of them.
fn fold_constant_ifs(
    proto: &pb::ModelProto,
    known: &std::collections::HashMap<String, bool>,
) -> Option<pb::ModelProto> {
    let mut model = proto.clone();
    let graph = model.graph.as_mut()?;
    let mut folded = false;
    loop {
        let initializers =
            graph.initializer.iter().filter_map(|t| Some((t.name.clone(), scalar_bool(t)?)));
        let constant_nodes =
            graph.node.iter().filter(|n| n.op_type == "Constant").filter_map(|n| {
                let value = n.attribute.iter().find(|a| a.name == "value")?.t.as_ref()?;
                Some((n.output.first()?.clone(), scalar_bool(value)?))
            });
        let known = known.iter().map(|(name, &value)| (name.clone(), value));
        let constants: std::collections::HashMap<String, bool> =
            initializers.chain(constant_nodes).chain(known).collect();
        let Some(position) = graph.node.iter().position(|n| {
            n.op_type == "If"
                && n.domain.is_empty()
                && n.input.first().is_some_and(|c| constants.contains_key(c))
        }) else {
            break;
        };
        let node = graph.node.remove(position);
        let taken = if constants[&node.input[0]] { "then_branch" } else { "else_branch" };
        let branch = node.attribute.iter().find(|a| a.name == taken)?.g.clone()?;
        // The branch's outputs become the If's outputs through Identity nodes.
        let renames = branch.output.iter().zip(&node.output).map(|(from, to)| pb::NodeProto {
            name: format!("{}.{to}", node.name),
            op_type: "Identity".to_owned(),
            input: vec![from.name.clone()],
            output: vec![to.clone()],
            ..Default::default()
        });
        let inlined: Vec<pb::NodeProto> = branch.node.into_iter().chain(renames).collect();
        graph.initializer.extend(branch.initializer);
        graph.node.splice(position..position, inlined);
        folded = true;
    }
    folded.then_some(model)
}

/// Tries each loader in turn and returns the first translation that works with the loader
/// that made it; when none works, the plain loader's error, which names the failing node.
fn translate_any(proto: &pb::ModelProto) -> Result<(TypedModel, Signature, Loader), Error> {
    let mut first_error = None;
    for loader in Loader::ALL {
        match translate(proto, loader, None) {
            Ok((typed, signature)) => return Ok((typed, signature, loader)),
            Err(err) => {
                tracing::debug!(?loader, error = %crate::error::chain(&err), "loader failed");
                first_error.get_or_insert(err);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| engine_problem("no loader")))
}

/// Makes tract's matrix products use `threads` threads (one pool for the whole process);
/// 1 keeps them on the calling thread. Lambda gives 1 vCPU per 1769 MB of memory, up to 6.
pub fn use_threads(threads: usize) {
    use tract_linalg::multithread::{set_default_executor, Executor};
    let executor =
        if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
    set_default_executor(executor);
}

/// Limits a model is validated, loaded and run within.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest tensor a declared shape may describe, with dynamic dimensions at 1.
    pub max_tensor_bytes: u64,
    /// The memory budget of one run: bytes of tensors alive at once (inputs included), and
    /// the largest single allocation the engine may make for a request.
    pub memory_bytes: u64,
}

impl Default for Limits {
    /// The defaults off Lambda: 256 MiB per declared tensor, 1 GiB per run.
    fn default() -> Self {
        Self { max_tensor_bytes: 256 << 20, memory_bytes: 1 << 30 }
    }
}

/// What validating an upload found.
#[derive(Debug)]
pub struct Validated {
    pub signature: Signature,
    /// The default-domain ONNX opset the model imports.
    pub opset: Option<i64>,
    /// `producer_name producer_version`, as the exporter wrote them.
    pub producer: Option<String>,
    pub report: ValidationReport,
    /// The loader that read the model; `predict` loads it the same way.
    pub loader: Loader,
    /// Whether one symbolic plan serves every shape, or plans are made per shape.
    pub plans: Planning,
}

/// Checks that `bytes` are an ONNX model maas can serve: it parses, references no external
/// data, declares no tensor over the limit, translates, optimises, and runs once on zeros of
/// the declared types and shapes (dynamic dimensions at 1). When no loader gives a symbolic
/// plan, a per-shape plan is tried (`TRIAL_DIMS`). Any failure is [`Error::InvalidModel`]
/// saying what failed.
pub fn validate(bytes: &[u8], limits: &Limits) -> Result<Validated, Error> {
    let memory = Memory::new(limits, bytes.len() as u64);
    contained(memory.cap, "validating the model", || validate_within(bytes, limits, memory))
        .map_err(as_invalid)
}

fn validate_within(bytes: &[u8], limits: &Limits, memory: Memory) -> Result<Validated, Error> {
    let started = Instant::now();
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| invalid(format!("not an ONNX file: {e}")))?;
    let graph = proto.graph.as_ref().filter(|g| !g.node.is_empty() && !g.output.is_empty());
    let graph = graph.ok_or_else(|| {
        invalid("not an ONNX model: it has no graph with nodes and outputs".to_owned())
    })?;
    if let Some(tensor) =
        graph.initializer.iter().find(|t| t.data_location == Some(1) || !t.external_data.is_empty())
    {
        return Err(invalid(format!(
            "initializer `{}` references external data; embed all weights in the .onnx file",
            tensor.name
        )));
    }
    check_declared(&proto, limits)?;
    check_string_ops(&proto)?;
    let (model, loader, report) = match translate_any(&proto) {
        Ok((typed, signature, loader)) => {
            let parse_ms = elapsed_ms(started);
            let optimising = Instant::now();
            let model = Model::optimise(typed, signature, memory).map_err(as_invalid)?;
            let optimise_ms = elapsed_ms(optimising);
            let trial = Instant::now();
            model.run(trial_inputs(model.signature(), 1, None)?).map_err(trial_failed)?;
            (model, loader, ValidationReport { parse_ms, optimise_ms, trial_ms: elapsed_ms(trial) })
        }
        Err(symbolic) => {
            let parse_ms = elapsed_ms(started);
            let Some((model, loader, inputs, optimise_ms)) = per_shape_trial(&proto, memory) else {
                return Err(as_invalid(symbolic));
            };
            let trial = Instant::now();
            model.run(inputs).map_err(trial_failed)?;
            (model, loader, ValidationReport { parse_ms, optimise_ms, trial_ms: elapsed_ms(trial) })
        }
    };
    let producer = [proto.producer_name.as_str(), proto.producer_version.as_str()].join(" ");
    Ok(Validated {
        opset: proto
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version),
        producer: Some(producer.trim().to_owned()).filter(|p| !p.is_empty()),
        plans: model.planning(),
        signature: model.signature,
        report,
        loader,
    })
}

/// Sizes tried for the dynamic dimensions other than the batch when a per-shape model is
/// validated: models that compute shapes often need a realistic size (an audio model may
/// squeeze `(samples + 320) / 512` to one).
const TRIAL_DIMS: [usize; 3] = [1, 64, 512];

/// For a model no loader can plan symbolically: the first loader and trial size with which
/// a per-shape plan builds and runs, the trial inputs, and how long building and running
/// that plan took (ms).
fn per_shape_trial(
    proto: &pb::ModelProto,
    memory: Memory,
) -> Option<(Model, Loader, Vec<Tensor>, f64)> {
    let signature = signature_of(proto).ok()?;
    let batch_axes = plans::batch_axes(proto, &signature);
    for loader in Loader::ALL {
        for dims in TRIAL_DIMS {
            let started = Instant::now();
            let attempt = Model::per_shape(proto.clone(), loader, memory).and_then(|model| {
                let inputs = trial_inputs(model.signature(), dims, batch_axes.as_deref())?;
                model.run(inputs.clone())?;
                Ok((model, inputs))
            });
            match attempt {
                Ok((model, inputs)) => return Some((model, loader, inputs, elapsed_ms(started))),
                Err(err) => {
                    let error = crate::error::chain(&err);
                    tracing::debug!(?loader, dims, %error, "per-shape plan failed");
                }
            }
        }
    }
    None
}

fn trial_failed(err: Error) -> Error {
    match as_invalid(err) {
        Error::InvalidModel { problem } => invalid(format!("trial inference failed: {problem}")),
        other => other,
    }
}

fn invalid(problem: String) -> Error {
    Error::InvalidModel { problem }
}

/// Engine failures during validation are the upload's fault: they become `InvalidModel`
/// with the whole cause chain, which names the failing operator or node.
fn as_invalid(err: Error) -> Error {
    match err {
        Error::Engine { .. } => {
            invalid(crate::error::chain(&err).trim_start_matches("engine failure: ").to_owned())
        }
        Error::InferenceRejected { problem } => invalid(problem),
        over @ Error::OverBudget { .. } => invalid(over.to_string()),
        other => other,
    }
}

/// ONNX operators on string tensors that tract 0.23 does not implement. tract runs strings
/// through `CategoryMapper`, the labels of `LinearClassifier` and `TreeEnsembleClassifier`,
/// `Cast` to FP32, and the operators that only move elements (`Identity`, `Reshape`,
/// `Gather`, `Concat`...).
const STRING_OPS_TRACT_LACKS: [&str; 9] = [
    "StringNormalizer",
    "TfIdfVectorizer",
    "LabelEncoder",
    "OneHotEncoder",
    "DictVectorizer",
    "StringConcat",
    "StringSplit",
    "RegexFullMatch",
    "Tokenizer",
];

/// Refuses a graph with string operators tract cannot run, naming each node and operator
/// (tract alone would name only the first operator it fails to find).
fn check_string_ops(proto: &pb::ModelProto) -> Result<(), Error> {
    let Some(graph) = proto.graph.as_ref() else { return Ok(()) };
    let lacking: Vec<String> = graph
        .node
        .iter()
        .filter(|n| STRING_OPS_TRACT_LACKS.contains(&n.op_type.as_str()))
        .map(|n| format!("`{}` ({})", n.name, n.op_type))
        .collect();
    if lacking.is_empty() {
        return Ok(());
    }
    Err(invalid(format!(
        "node{} {} work{} on string tensors with operators tract cannot run; tract runs strings \
         through CategoryMapper, the labels of LinearClassifier and TreeEnsembleClassifier, \
         Cast to FP32 and operators that only move elements",
        if lacking.len() > 1 { "s" } else { "" },
        lacking.join(", "),
        if lacking.len() > 1 { "" } else { "s" },
    )))
}

/// Refuses a graph whose declared inputs, outputs or intermediate values describe a tensor
/// over the limit.
fn check_declared(proto: &pb::ModelProto, limits: &Limits) -> Result<(), Error> {
    let Some(graph) = proto.graph.as_ref() else { return Ok(()) };
    let declared = graph.input.iter().chain(&graph.output).chain(&graph.value_info);
    declared.into_iter().try_for_each(|value| check_declared_size(value, limits))
}

fn check_declared_size(value: &pb::ValueInfoProto, limits: &Limits) -> Result<(), Error> {
    let Ok(spec) = tensor_spec(value) else { return Ok(()) };
    let Some(width) = datum_type_of(spec.datatype).map(|d| d.size_of() as u64) else {
        return Ok(());
    };
    let bytes = spec.shape.iter().try_fold(width, |acc, &d| acc.checked_mul(d.max(1) as u64));
    match bytes {
        Some(bytes) if bytes <= limits.max_tensor_bytes => Ok(()),
        _ => {
            let shape = match spec.shape.len() {
                rank if rank > 8 => format!("{:?}... ({rank} dimensions)", &spec.shape[..8]),
                _ => format!("{:?}", spec.shape),
            };
            Err(invalid(format!(
                "`{}` is declared with shape {shape} of {}: over the limit of {} bytes per tensor",
                spec.name, spec.datatype, limits.max_tensor_bytes
            )))
        }
    }
}

/// Zeros of each input's declared type and shape: the batch dimensions at 1 (each input's
/// `batch_axes`, by default its first), other dynamic dimensions at `dims`.
fn trial_inputs(
    signature: &Signature,
    dims: usize,
    batch_axes: Option<&[Vec<usize>]>,
) -> Result<Vec<Tensor>, Error> {
    signature
        .inputs
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            let is_batch = |axis: usize| match batch_axes {
                Some(axes) => axes.get(index).is_some_and(|a| a.contains(&axis)),
                None => axis == 0,
            };
            let shape: Vec<usize> = spec
                .shape
                .iter()
                .enumerate()
                .map(|(axis, &d)| match d {
                    d if d > 0 => d as usize,
                    _ if is_batch(axis) => 1,
                    _ => dims,
                })
                .collect();
            let count = shape.iter().product();
            let data = zeros(spec.datatype, count).ok_or_else(|| {
                invalid(format!("input `{}` has unsupported datatype {}", spec.name, spec.datatype))
            })?;
            Ok(Tensor { name: spec.name.clone(), shape, data })
        })
        .collect()
}

/// The model translated and decluttered, in NNEF form (the benchmark's comparison point).
pub fn to_nnef(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| engine_error("cannot parse the ONNX file", e))?;
    let (typed, _, _) = translate_any(&proto)?;
    nnef().write_to_tar(&typed, Vec::new()).map_err(|e| engine_error("cannot write NNEF", e))
}

/// Reads the declared inputs (initializers excluded) and outputs of the graph.
fn signature_of(proto: &pb::ModelProto) -> Result<Signature, Error> {
    let graph = proto.graph.as_ref().ok_or_else(|| engine_problem("the file has no graph"))?;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs = graph.input.iter().filter(|v| !initializers.contains(v.name.as_str()));
    let outputs =
        graph.output.iter().map(|v| zipmap_spec(graph, v).map_or_else(|| tensor_spec(v), Ok));
    Ok(Signature {
        inputs: inputs.map(tensor_spec).collect::<Result<_, _>>()?,
        outputs: outputs.collect::<Result<_, _>>()?,
    })
}

/// The signature of an ONNX file, read without translating the graph: the entry point of the
/// signature reader's fuzz target.
pub fn read_signature(bytes: &[u8]) -> Result<Signature, Error> {
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| invalid(format!("not an ONNX file: {e}")))?;
    signature_of(&proto)
}

/// A `ZipMap` output (a sequence of maps in ONNX) is served as the probabilities it maps:
/// FP32 `[batch, classes]`.
fn zipmap_spec(graph: &pb::GraphProto, value: &pb::ValueInfoProto) -> Option<TensorSpec> {
    let node =
        graph.node.iter().find(|n| n.op_type == "ZipMap" && n.output.contains(&value.name))?;
    let classes = node
        .attribute
        .iter()
        .find(|a| a.name.starts_with("classlabels"))
        .map(|a| a.ints.len().max(a.strings.len()))?;
    Some(TensorSpec {
        name: value.name.clone(),
        datatype: DataType::F32,
        shape: vec![-1, classes as i64],
    })
}

fn tensor_spec(value: &pb::ValueInfoProto) -> Result<TensorSpec, Error> {
    let Some(pb::type_proto::Value::TensorType(tensor)) =
        value.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(engine_problem(format!(
            "`{}` is not a tensor: sequences and maps are not supported, except the \
             probabilities of a ZipMap",
            value.name
        )));
    };
    let datatype = datatype_of_onnx(tensor.elem_type).ok_or_else(|| {
        engine_problem(format!(
            "`{}` has unsupported ONNX element type {}",
            value.name, tensor.elem_type
        ))
    })?;
    let shape = tensor
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) if n > 0 => n,
                    _ => -1,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(TensorSpec { name: value.name.clone(), datatype, shape })
}

/// The input's shape with its dynamic dimensions as symbols: the ONNX `dim_param` name where
/// there is one (so tract unifies it with the rest of the graph), `N` for an unnamed first
/// (batch) dimension, and a fresh symbol for any other unnamed one.
fn symbolic_shape(
    model: &tract_onnx::prelude::InferenceModel,
    proto: &pb::ModelProto,
    index: usize,
    spec: &TensorSpec,
) -> Vec<TDim> {
    let declared = proto
        .graph
        .as_ref()
        .and_then(|g| g.input.iter().find(|v| v.name == spec.name))
        .and_then(|v| v.r#type.as_ref())
        .and_then(|t| match &t.value {
            Some(pb::type_proto::Value::TensorType(tensor)) => tensor.shape.clone(),
            None => None,
        });
    spec.shape
        .iter()
        .enumerate()
        .map(|(axis, &dim)| {
            if dim > 0 {
                return TDim::from(dim);
            }
            let param =
                declared.as_ref().and_then(|s| s.dim.get(axis)).and_then(|d| match &d.value {
                    Some(pb::tensor_shape_proto::dimension::Value::DimParam(p))
                        if !p.is_empty() =>
                    {
                        Some(p.clone())
                    }
                    _ => None,
                });
            let name = param.unwrap_or_else(|| {
                if axis == 0 {
                    "N".to_owned()
                } else {
                    format!("in{index}_dim{axis}")
                }
            });
            TDim::from(model.sym(&name))
        })
        .collect()
}

fn datatype_of_onnx(elem_type: i32) -> Option<DataType> {
    Some(match elem_type {
        1 => DataType::F32,
        2 => DataType::U8,
        3 => DataType::I8,
        4 => DataType::U16,
        5 => DataType::I16,
        6 => DataType::I32,
        7 => DataType::I64,
        8 => DataType::Bytes,
        9 => DataType::Bool,
        10 => DataType::F16,
        11 => DataType::F64,
        12 => DataType::U32,
        13 => DataType::U64,
        _ => return None,
    })
}

macro_rules! conversions {
    ($(($variant:ident, $ty:ty, $name:literal)),* $(,)?) => {
        fn datum_type_of(datatype: DataType) -> Option<DatumType> {
            match datatype {
                $(DataType::$variant => Some(<$ty>::datum_type()),)*
                DataType::Bytes => Some(String::datum_type()),
            }
        }

        fn zeros(datatype: DataType, count: usize) -> Option<TensorData> {
            match datatype {
                $(DataType::$variant => Some(TensorData::$variant(vec![<$ty>::default(); count])),)*
                DataType::Bytes => Some(TensorData::Bytes(vec![Vec::new(); count])),
            }
        }

        fn to_tract(tensor: Tensor) -> Result<TractTensor, Error> {
            let result = match &tensor.data {
                $(TensorData::$variant(v) => TractTensor::from_shape::<$ty>(&tensor.shape, v),)*
                TensorData::Bytes(v) => {
                    let strings = utf8_strings(&tensor.name, v)?;
                    let array = tract_ndarray::ArrayD::from_shape_vec(tensor.shape.clone(), strings);
                    return array.map(TractTensor::from).map_err(|e| {
                        Error::internal(format!("cannot build input `{}`", tensor.name), e)
                    });
                }
            };
            result.map_err(|e| engine_error(format!("cannot build input `{}`", tensor.name), e))
        }

        fn from_tract(name: &str, value: &TractTensor) -> Result<Tensor, Error> {
            // tract computes some integer outputs (labels among them) as symbolic dimensions.
            let value = if value.datum_type() == TDim::datum_type() {
                value.cast_to::<i64>().map_err(|e| engine_error("cannot read an output", e))?
            } else {
                std::borrow::Cow::Borrowed(value)
            };
            let datum_type = value.datum_type();
            let data = $(if datum_type == <$ty>::datum_type() {
                TensorData::$variant(plain_slice::<$ty>(&value)?.to_vec())
            } else)* if datum_type == String::datum_type() {
                TensorData::Bytes(plain_slice::<String>(&value)?.iter().map(|s| s.as_bytes().to_vec()).collect())
            } else {
                return Err(engine_problem(format!("output `{name}` has unsupported type {datum_type:?}")));
            };
            Ok(Tensor { name: name.to_owned(), shape: value.shape().to_vec(), data })
        }
    };
}

crate::for_each_numeric_type!(conversions);

/// An output's elements.
fn plain_slice<T: Datum>(value: &TractTensor) -> Result<&[T], Error> {
    value
        .try_as_plain_ram()
        .and_then(|v| v.as_slice::<T>())
        .map_err(|e| engine_error("cannot read an output", e))
}

/// `BYTES` elements as the strings tract's string operators take: they must be UTF-8 (400).
fn utf8_strings(input: &str, elements: &[Vec<u8>]) -> Result<Vec<String>, Error> {
    elements
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            String::from_utf8(bytes.clone()).map_err(|e| {
                Error::invalid_input(
                    input,
                    format!("element {i} is not UTF-8 ({e}); the model takes strings"),
                )
            })
        })
        .collect()
}
