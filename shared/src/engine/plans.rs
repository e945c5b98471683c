//! Optimised plans per input shape, for models whose symbolic dimensions do not survive
//! optimisation (shapes computed at run time: `Reshape` or `BroadcastTo` fed by `Shape`,
//! `Squeeze` of a computed axis), or whose graph branches on the value of an input (Silero
//! VAD's `If(sr == 16000)`).
//!
//! Each distinct set of input shapes gets its own optimised plan, kept in a bounded LRU
//! cache (`Settings::shape_plans`). Scalar integer inputs of a graph with `If` nodes are
//! selectors: a plan is built for their values as well (a plan per sample rate), so that
//! the `If`s they decide fold away. Batch sizes are bucketed: a batch of 5 runs on the plan for 8,
//! its inputs padded with zero rows along their batch axes and its outputs cut back to 5
//! rows, so a model is optimised at most once per power of two. Padding assumes the rows of
//! a batch are independent, as they are in graphs exported for inference; when an output
//! shows no batch axis to cut, or an `If` decides on values of the rows (a padded row could
//! change its decision: `min(x) > 0`), the batch runs at its exact size instead.
//!
//! A plan takes tens of milliseconds to build (translating and optimising the graph for its
//! shapes). Once a model has a plan, a batch whose bucket has none yet does not wait for one:
//! it runs on the plan of another bucket of the same shapes otherwise (padded up to a larger
//! bucket, or in shares of a smaller one) while its own plan is built behind it on a thread
//! of its own, one at a time; the next batches of that bucket find it ready.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use tract_onnx::pb;
use tract_onnx::prelude::{IntoTensor, TValue, Tensor as TractTensor};

use super::budget::{check_facts, contained, measured, BudgetedPlan};
use super::roles::{batch_axes, scalar_i64, selectors};
use super::split::{batch_rows, cut, join};
use super::translate::{translate, Concrete};
use super::{engine_error, engine_problem};
use crate::error::Error;
use crate::manifest::{Loader, Signature};

/// A plan and the heap bytes building it left allocated.
type SizedPlan = (Arc<BudgetedPlan>, u64);

/// The most shares a batch standing in on a smaller bucket's plan is cut into; beyond, the
/// smaller plan's per-row cost could outweigh building the batch's own.
const STAND_IN_SHARES: usize = 16;

/// What a batch does when its bucket has no plan yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unplanned {
    /// Waits for its plan to be built.
    Build,
    /// Runs on another bucket's plan, if there is one, while its own is built behind it.
    StandIn,
}

/// The plans of one model, built on demand.
pub(super) struct ShapePlans {
    proto: pb::ModelProto,
    loader: Loader,
    plans: moka::sync::Cache<Concrete, SizedPlan>,
    /// Bytes of the plans cached now.
    plan_bytes: Arc<AtomicU64>,
    /// For each input, the axes that carry the batch; `None` when the model has none.
    batch_axes: Option<Vec<Vec<usize>>>,
    /// Whether batches are bucketed (padded, or run in shares of another bucket's plan): the
    /// model has batch axes and no `If` deciding on values of the rows.
    bucketed: bool,
    /// For each input, whether it is a selector whose value each plan is built for.
    selectors: Vec<bool>,
    /// The largest single allocation while building a plan.
    cap: u64,
    /// Whether a plan is being built behind the requests, and its end signalled.
    building: (Mutex<bool>, Condvar),
    /// Facts whose plan failed to build behind a request: from then on built in the request,
    /// which reports why.
    failed: Mutex<HashSet<Concrete>>,
    /// Batches run on another bucket's plan so far.
    stand_ins: AtomicU64,
    /// Plans built so far, in requests or behind them.
    builds: AtomicU64,
}

impl ShapePlans {
    /// Plans of `proto` per input shape. `rows_tied`: an `If` decides on values computed from
    /// a batch's rows ([`super::roles::branches_on_rows`]), so a batch is never padded.
    pub(super) fn new(
        proto: pb::ModelProto,
        loader: Loader,
        signature: &Signature,
        rows_tied: bool,
        plan_limit: u64,
        cap: u64,
    ) -> Self {
        let plan_bytes = Arc::new(AtomicU64::new(0));
        let evicted = Arc::clone(&plan_bytes);
        let plans = moka::sync::Cache::builder()
            .max_capacity(plan_limit)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .eviction_listener(move |_, (_, bytes): SizedPlan, _| {
                evicted.fetch_sub(bytes, Ordering::Relaxed);
            })
            .build();
        let batch_axes = batch_axes(&proto, signature);
        let bucketed = batch_axes.is_some() && !rows_tied;
        let selectors = selectors(&proto, signature);
        Self {
            proto,
            loader,
            plans,
            plan_bytes,
            batch_axes,
            bucketed,
            selectors,
            cap,
            building: (Mutex::new(false), Condvar::new()),
            failed: Mutex::new(HashSet::new()),
            stand_ins: AtomicU64::new(0),
            builds: AtomicU64::new(0),
        }
    }

    /// For each input, the axes that carry the batch; `None` when the model has none.
    pub(super) fn batch_axes(&self) -> Option<&[Vec<usize>]> {
        self.batch_axes.as_deref()
    }

    /// Bytes of the plans cached now, as measured when each was built.
    pub(super) fn memory_bytes(&self) -> u64 {
        self.plan_bytes.load(Ordering::Relaxed)
    }

    /// How many plans are cached now.
    pub(super) fn plan_count(&self) -> u64 {
        self.plans.run_pending_tasks();
        self.plans.entry_count()
    }

    /// Batches run on another bucket's plan so far.
    pub(super) fn stand_ins(&self) -> u64 {
        self.stand_ins.load(Ordering::Relaxed)
    }

    /// Plans built and batches run on another bucket's plan so far: a run during which this
    /// changed did work, or ran at a speed, that later runs of its shapes will not.
    pub(super) fn unsteady(&self) -> u64 {
        self.stand_ins().wrapping_add(self.builds.load(Ordering::Relaxed))
    }

    /// Waits until no plan is being built behind the requests.
    pub(super) fn wait_for_builds(&self) {
        let (building, ended) = &self.building;
        let guard = building.lock().unwrap_or_else(PoisonError::into_inner);
        drop(ended.wait_while(guard, |b| *b).unwrap_or_else(PoisonError::into_inner));
    }

    /// Runs one batch within `budget` bytes of live tensors (see [`BudgetedPlan::run`]);
    /// `unplanned` says what it does when its bucket has no plan yet.
    pub(super) fn run(
        self: &Arc<Self>,
        inputs: Vec<TractTensor>,
        signature: &Signature,
        budget: u64,
        unplanned: Unplanned,
    ) -> Result<Vec<TValue>, Error> {
        if let Some((batch, padded)) = self.bucket(&inputs) {
            if unplanned == Unplanned::StandIn {
                if let Some(outputs) = self.stand_in(&inputs, batch, padded, signature, budget)? {
                    return Ok(outputs);
                }
            }
            if batch != padded {
                if let Some(outputs) = self.run_padded(&inputs, batch, padded, signature, budget)? {
                    return Ok(outputs);
                }
                tracing::debug!(
                    batch,
                    padded,
                    "an output has no batch axis to cut: running unpadded"
                );
            }
        }
        self.run_exact(inputs, budget)
    }

    /// `inputs` of `batch` rows padded to `rows` and run, their outputs cut back; `None` when
    /// an output has no batch axis to cut.
    fn run_padded(
        &self,
        inputs: &[TractTensor],
        batch: usize,
        rows: usize,
        signature: &Signature,
        budget: u64,
    ) -> Result<Option<Vec<TValue>>, Error> {
        if batch == rows {
            return self.run_exact(inputs.to_vec(), budget).map(Some);
        }
        let outputs = self.run_exact(self.pad(inputs, batch, rows)?, budget)?;
        unpad(outputs, batch, rows, signature)
    }

    /// Runs a batch whose bucket (`padded` rows) has no plan on the plan of the nearest bucket
    /// that has one for the same facts otherwise, and builds the bucket's own plan behind
    /// it. `None` when the bucket has a plan, its plan failed to build behind an earlier
    /// batch, no other bucket has one (or only one that would need more than
    /// [`STAND_IN_SHARES`] shares), or the outputs cannot be cut or joined by row.
    fn stand_in(
        self: &Arc<Self>,
        inputs: &[TractTensor],
        batch: usize,
        padded: usize,
        signature: &Signature,
        budget: u64,
    ) -> Result<Option<Vec<TValue>>, Error> {
        let wanted = self.with_rows(&self.concrete(inputs)?, padded);
        let failed =
            || self.failed.lock().unwrap_or_else(PoisonError::into_inner).contains(&wanted);
        if self.plans.contains_key(&wanted) || failed() {
            return Ok(None);
        }
        let Some(rows) = self.planned_rows(&wanted, batch) else { return Ok(None) };
        if batch.div_ceil(rows) > STAND_IN_SHARES {
            return Ok(None);
        }
        let outputs = match rows >= batch {
            true => self.run_padded(inputs, batch, rows, signature, budget)?,
            false => self.run_in_shares(inputs, batch, rows, signature, budget)?,
        };
        if outputs.is_some() {
            self.stand_ins.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(batch, padded, rows, "batch run on another bucket's plan");
            self.build_behind(wanted, budget);
        }
        Ok(outputs)
    }

    /// The rows of the bucket whose plan stands in for `wanted`'s, for a batch of `batch`
    /// rows: the smallest planned bucket that holds the batch, else the largest planned.
    fn planned_rows(&self, wanted: &Concrete, batch: usize) -> Option<usize> {
        let others = self.with_rows(wanted, 0);
        let axes = self.batch_axes.as_deref()?;
        let (input, axis) = axes.iter().enumerate().find_map(|(i, a)| Some((i, *a.first()?)))?;
        let planned: Vec<usize> = self
            .plans
            .iter()
            .filter(|(facts, _)| self.with_rows(facts, 0) == others)
            .filter_map(|(facts, _)| facts.shapes.get(input)?.get(axis).copied())
            .collect();
        let larger = planned.iter().copied().filter(|&rows| rows >= batch).min();
        larger.or_else(|| planned.into_iter().max())
    }

    /// `inputs` of `batch` rows run in shares of `rows` rows (the last padded), their outputs
    /// joined; `None` when an output cannot be cut or joined by row.
    fn run_in_shares(
        &self,
        inputs: &[TractTensor],
        batch: usize,
        rows: usize,
        signature: &Signature,
        budget: u64,
    ) -> Result<Option<Vec<TValue>>, Error> {
        let axes = self.batch_axes.as_deref().unwrap_or_default();
        let starts = (0..batch).step_by(rows);
        let sizes: Vec<usize> = starts.clone().map(|start| rows.min(batch - start)).collect();
        let mut outputs = Vec::with_capacity(sizes.len());
        for (start, &size) in starts.zip(&sizes) {
            let share = cut(inputs, axes, start, size)?;
            let Some(out) = self.run_padded(&share, size, rows, signature, budget)? else {
                return Ok(None);
            };
            outputs.push(out.into_iter().map(TValue::into_tensor).collect());
        }
        Ok(join(&outputs, &sizes, signature)?
            .map(|joined| joined.into_iter().map(TValue::from).collect()))
    }

    /// Builds the plan for `concrete` on a thread of its own, unless one is being built
    /// already or `concrete` has its plan (built behind the batch that stood in for it,
    /// when that batch outlasted the build); a plan that fails to build is built in the
    /// request from then on.
    fn build_behind(self: &Arc<Self>, concrete: Concrete, budget: u64) {
        {
            let mut building = self.building.0.lock().unwrap_or_else(PoisonError::into_inner);
            // A build inserts its plan before it clears `building`.
            if *building || self.plans.contains_key(&concrete) {
                return;
            }
            *building = true;
        }
        let plans = Arc::clone(self);
        let build = move || {
            lower_priority();
            let built = contained(plans.cap, "building a plan", || plans.build(&concrete, budget));
            match built {
                Ok(plan) => plans.plans.insert(concrete, plan),
                Err(error) => {
                    let error = crate::error::chain(&error);
                    tracing::warn!(shapes = ?concrete.shapes, %error, "a plan failed to build");
                    let mut failed = plans.failed.lock().unwrap_or_else(PoisonError::into_inner);
                    // Bounded: dynamic dimensions besides the batch make facts without end.
                    if failed.len() >= 64 {
                        failed.clear();
                    }
                    failed.insert(concrete);
                }
            }
            plans.end_build();
        };
        if let Err(error) = std::thread::Builder::new().name("maas-plan".to_owned()).spawn(build) {
            tracing::warn!(%error, "no thread to build a plan on");
            self.end_build();
        }
    }

    /// Marks the plan built behind the requests as done, and wakes whoever waits for it.
    fn end_build(&self) {
        let (building, ended) = &self.building;
        *building.lock().unwrap_or_else(PoisonError::into_inner) = false;
        ended.notify_all();
    }

    /// `concrete` with `rows` on every batch axis.
    fn with_rows(&self, concrete: &Concrete, rows: usize) -> Concrete {
        let mut concrete = concrete.clone();
        let axes = self.batch_axes.as_deref().unwrap_or_default();
        for (shape, axes) in concrete.shapes.iter_mut().zip(axes) {
            for &axis in axes {
                if let Some(dim) = shape.get_mut(axis) {
                    *dim = rows;
                }
            }
        }
        concrete
    }

    /// The batch size and its bucket, when batches are bucketed and every batch axis agrees
    /// on the size.
    fn bucket(&self, inputs: &[TractTensor]) -> Option<(usize, usize)> {
        if !self.bucketed {
            return None;
        }
        let batch = batch_rows(inputs, self.batch_axes.as_ref()?)?;
        Some((batch, batch.next_power_of_two()))
    }

    fn pad(
        &self,
        inputs: &[TractTensor],
        batch: usize,
        padded: usize,
    ) -> Result<Vec<TractTensor>, Error> {
        let axes = self.batch_axes.as_deref().unwrap_or_default();
        inputs
            .iter()
            .zip(axes)
            .map(|(input, axes)| {
                let mut input = input.clone();
                for &axis in axes {
                    let mut shape = input.shape().to_vec();
                    shape[axis] = padded - batch;
                    let zeros = TractTensor::zero_dt(input.datum_type(), &shape)
                        .and_then(|zeros| TractTensor::stack_tensors(axis, &[input, zeros]));
                    input = zeros.map_err(|e| engine_error("cannot pad a batch", e))?;
                }
                Ok(input)
            })
            .collect()
    }

    fn run_exact(&self, inputs: Vec<TractTensor>, budget: u64) -> Result<Vec<TValue>, Error> {
        let concrete = self.concrete(&inputs)?;
        let (plan, _) = self
            .plans
            .try_get_with(concrete.clone(), || self.build(&concrete, budget))
            .map_err(|e| {
                if let over @ Error::OverBudget { .. } = &*e {
                    return over.clone();
                }
                // The inputs passed the signature's checks: a shape the model cannot be planned
                // for is the request's problem.
                let values = concrete.values.iter().flatten().collect::<Vec<_>>();
                let values = match values.is_empty() {
                    true => String::new(),
                    false => format!(" and selector values {values:?}"),
                };
                Error::InferenceRejected {
                    problem: format!(
                        "no plan for input shapes {:?}{values}: {}",
                        concrete.shapes,
                        crate::error::chain(&*e).trim_start_matches("engine failure: ")
                    ),
                }
            })?;
        let values = inputs.into_iter().map(TValue::from).collect();
        Ok(plan.run(values, budget)?.into_vec())
    }

    /// The facts of a plan for `inputs`: their shapes and their selectors' values.
    fn concrete(&self, inputs: &[TractTensor]) -> Result<Concrete, Error> {
        let shapes = inputs.iter().map(|t| t.shape().to_vec()).collect();
        let values = inputs
            .iter()
            .zip(&self.selectors)
            .map(|(input, &selector)| match selector {
                true => scalar_i64(input).map(Some),
                false => Ok(None),
            })
            .collect::<Result<_, _>>()?;
        Ok(Concrete { shapes, values })
    }

    /// Builds the plan for `concrete` facts, counting the bytes it holds into the model's.
    fn build(&self, concrete: &Concrete, budget: u64) -> Result<SizedPlan, Error> {
        self.builds.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let (plan, bytes) = measured(|| {
            let (typed, _) = translate(&self.proto, self.loader, Some(concrete))?;
            check_facts(&typed, budget)?;
            let optimized = super::rewrite::optimise(typed)
                .map_err(|e| engine_error("cannot optimise the model", e))?;
            BudgetedPlan::new(optimized).map(Arc::new)
        });
        crate::malloc::trim();
        let plan = plan?;
        self.plan_bytes.fetch_add(bytes, Ordering::Relaxed);
        tracing::info!(
            shapes = ?concrete.shapes,
            values = ?concrete.values,
            bytes,
            elapsed_ms = crate::elapsed_ms(started),
            "plan built for a shape"
        );
        Ok((plan, bytes))
    }
}

/// Gives the calling thread a lower scheduling priority (nice 10), so that on a function
/// with one vCPU a plan built behind the requests yields the CPU to them. Linux only (where
/// a thread has its own nice value); a failure leaves the priority as it was.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority changes the calling thread's nice value (`who` 0); raising it
        // needs no privilege and touches no memory.
        let lowered = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) } == 0;
        if !lowered {
            tracing::debug!("the plan builder's priority could not be lowered");
        }
    }
}

/// The outputs cut back from `padded` to `batch` rows along their batch axis (the first
/// dynamic axis of that size), or `None` when an output has no such axis.
fn unpad(
    outputs: Vec<TValue>,
    batch: usize,
    padded: usize,
    signature: &Signature,
) -> Result<Option<Vec<TValue>>, Error> {
    let mut cut = Vec::with_capacity(outputs.len());
    for (output, spec) in outputs.iter().zip(&signature.outputs) {
        let shape = output.shape();
        let dynamic = |axis: usize| spec.shape.get(axis).is_none_or(|&d| d < 0);
        let axis = (0..shape.len()).find(|&axis| shape[axis] == padded && dynamic(axis));
        let Some(axis) = axis else { return Ok(None) };
        let rows =
            output.slice(axis, 0, batch).map_err(|e| engine_error("cannot cut a batch", e))?;
        cut.push(TValue::from(rows));
    }
    if cut.len() != signature.outputs.len() {
        return Err(engine_problem("the model gave fewer outputs than it declares"));
    }
    Ok(Some(cut))
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::engine::signature::signature_of;

    const MLP: &[u8] = include_bytes!("../../../tests/zoo/torch_mlp_legacy.onnx");

    /// `proto`'s plans per shape as a load makes them (whether its rows are tied read from
    /// the model), 8 kept, no allocation cap.
    fn shape_plans(proto: pb::ModelProto, signature: &Signature) -> Arc<ShapePlans> {
        let tied = crate::engine::rows_tied(&proto);
        Arc::new(ShapePlans::new(proto, Loader::Plain, signature, tied, 8, u64::MAX))
    }

    /// A plan asked for behind a batch once the batch's bucket has one (the batch standing
    /// in outlasted the build) is not built a second time.
    #[test]
    fn a_bucket_with_a_plan_is_not_built_again_behind_a_batch() {
        let proto = pb::ModelProto::decode(MLP).unwrap();
        let signature = signature_of(&proto).unwrap();
        let plans = shape_plans(proto, &signature);
        let width = signature.inputs[0].shape[1] as usize;
        let inputs = vec![TractTensor::zero::<f32>(&[2, width]).unwrap()];
        let budget = 1 << 30;
        plans.run(inputs.clone(), &signature, budget, Unplanned::Build).unwrap();
        assert_eq!(plans.builds.load(Ordering::Relaxed), 1, "the batch's own plan");

        plans.build_behind(plans.concrete(&inputs).unwrap(), budget);
        plans.wait_for_builds();
        assert_eq!(plans.builds.load(Ordering::Relaxed), 1, "built again behind the batch");
        plans.build_behind(plans.with_rows(&plans.concrete(&inputs).unwrap(), 4), budget);
        plans.wait_for_builds();
        assert_eq!(plans.builds.load(Ordering::Relaxed), 2, "a bucket without a plan");
    }

    /// `x [N, 4]` -> `y = x * 2 if min(x) > 0 else x - 1`: a zero row padded onto a batch of
    /// positive rows would take the other branch.
    fn if_on_min() -> pb::ModelProto {
        use pb::tensor_shape_proto::{dimension, Dimension};
        let tensor = |name: &str| {
            let dims = [dimension::Value::DimParam("N".into()), dimension::Value::DimValue(4)];
            let dim = dims.map(|value| Dimension { value: Some(value), ..Default::default() });
            let shape = pb::TensorShapeProto { dim: dim.to_vec() };
            let tensor = pb::type_proto::Tensor { elem_type: 1, shape: Some(shape) };
            let value = pb::type_proto::Value::TensorType(tensor);
            let r#type = pb::TypeProto { value: Some(value), ..Default::default() };
            pb::ValueInfoProto { name: name.into(), r#type: Some(r#type), ..Default::default() }
        };
        let node = |op_type: &str, inputs: &[&str], output: &str| pb::NodeProto {
            op_type: op_type.into(),
            input: inputs.iter().map(|&i| i.to_owned()).collect(),
            output: vec![output.into()],
            ..Default::default()
        };
        let scalar = |name: &str, value: f32| pb::TensorProto {
            name: name.into(),
            data_type: 1,
            float_data: vec![value],
            ..Default::default()
        };
        let attribute = |name: &str, r#type, f: fn(&mut pb::AttributeProto)| {
            let mut attribute = pb::AttributeProto {
                name: name.into(),
                r#type: r#type as i32,
                ..Default::default()
            };
            f(&mut attribute);
            attribute
        };
        let branch = |name: &str, op_type: &str, constant: f32| pb::GraphProto {
            name: name.into(),
            node: vec![node(op_type, &["x", name], &format!("{name}_y"))],
            initializer: vec![scalar(name, constant)],
            output: vec![tensor(&format!("{name}_y"))],
            ..Default::default()
        };
        use pb::attribute_proto::AttributeType;
        let mut min = node("ReduceMin", &["x"], "min");
        min.attribute = vec![attribute("keepdims", AttributeType::Int, |a| a.i = 0)];
        let mut choice = node("If", &["positive"], "y");
        let mut then_branch = attribute("then_branch", AttributeType::Graph, |_| {});
        then_branch.g = Some(branch("then", "Mul", 2.0));
        let mut else_branch = attribute("else_branch", AttributeType::Graph, |_| {});
        else_branch.g = Some(branch("else", "Sub", 1.0));
        choice.attribute = vec![then_branch, else_branch];
        let graph = pb::GraphProto {
            name: "if_on_min".into(),
            node: vec![min, node("Greater", &["min", "zero"], "positive"), choice],
            initializer: vec![scalar("zero", 0.0)],
            input: vec![tensor("x")],
            output: vec![tensor("y")],
            ..Default::default()
        };
        let opset = pb::OperatorSetIdProto { version: 17, ..Default::default() };
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![opset],
            graph: Some(graph),
            ..Default::default()
        }
    }

    /// A batch of 3 positive rows, padded to 4 with a zero row, would take the `else` branch.
    #[test]
    fn a_batch_whose_rows_decide_an_if_is_not_padded() {
        let proto = if_on_min();
        let signature = signature_of(&proto).unwrap();
        let plans = shape_plans(proto, &signature);
        let x = TractTensor::from_shape(&[3, 4], &[0.5f32; 12]).unwrap();
        let run = |x: &TractTensor, unplanned| {
            let y = plans.run(vec![x.clone()], &signature, 1 << 30, unplanned).unwrap();
            y[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
        };
        for unplanned in [Unplanned::Build, Unplanned::StandIn] {
            assert_eq!(run(&x, unplanned), [1.0; 12], "{unplanned:?}");
        }
        let negative = TractTensor::from_shape(&[3, 4], &[-0.5f32; 12]).unwrap();
        assert_eq!(run(&negative, Unplanned::Build), [-1.5; 12], "the else branch");
    }

    /// The nice value of the calling thread.
    fn nice() -> i32 {
        // SAFETY: getpriority reads the calling thread's nice value (`who` 0).
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_plan_builder_alone_runs_at_a_lower_priority() {
        let before = nice();
        let builder = std::thread::spawn(|| {
            lower_priority();
            nice()
        });
        // Nice 10, or a higher value the process already had (lowering it needs privilege).
        assert_eq!(builder.join().unwrap(), before.max(10), "the builder's thread");
        assert_eq!(nice(), before, "the other threads keep theirs");
    }
}
