//! Optimised plans per input shape, for models whose symbolic dimensions do not survive
//! optimisation (shapes computed at run time: `Reshape` or `BroadcastTo` fed by `Shape`,
//! `Squeeze` of a computed axis).
//!
//! Each distinct set of input shapes gets its own optimised plan, kept in a bounded LRU
//! cache ([`set_plan_limit`]). Batch sizes are bucketed: a batch of 5 runs on the plan for 8,
//! its inputs padded with zero rows along their batch axes and its outputs cut back to 5
//! rows, so a model is optimised at most once per power of two. Padding assumes the rows of
//! a batch are independent, as they are in graphs exported for inference; when an output
//! shows no batch axis to cut, the batch runs at its exact size instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tract_onnx::pb;
use tract_onnx::prelude::{TValue, Tensor as TractTensor};

use super::budget::{check_facts, measured, BudgetedPlan};
use super::{engine_error, engine_problem, translate};
use crate::error::Error;
use crate::manifest::{Loader, Signature};

static PLAN_LIMIT: AtomicU64 = AtomicU64::new(8);

/// How many optimised plans each per-shape model keeps (least recently used dropped first).
pub fn set_plan_limit(plans: u64) {
    PLAN_LIMIT.store(plans.max(1), Ordering::Relaxed);
}

/// A plan and the heap bytes building it left allocated.
type SizedPlan = (Arc<BudgetedPlan>, u64);

/// The plans of one model, built on demand.
pub(super) struct ShapePlans {
    proto: pb::ModelProto,
    loader: Loader,
    plans: moka::sync::Cache<Vec<Vec<usize>>, SizedPlan>,
    /// Bytes of the plans cached now.
    plan_bytes: Arc<AtomicU64>,
    /// For each input, the axes that carry the batch; `None` when batches are not bucketed.
    batch_axes: Option<Vec<Vec<usize>>>,
}

impl ShapePlans {
    pub(super) fn new(proto: pb::ModelProto, loader: Loader, signature: &Signature) -> Self {
        let plan_bytes = Arc::new(AtomicU64::new(0));
        let evicted = Arc::clone(&plan_bytes);
        let plans = moka::sync::Cache::builder()
            .max_capacity(PLAN_LIMIT.load(Ordering::Relaxed))
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .eviction_listener(move |_, (_, bytes): SizedPlan, _| {
                evicted.fetch_sub(bytes, Ordering::Relaxed);
            })
            .build();
        let batch_axes = batch_axes(&proto, signature);
        Self { proto, loader, plans, plan_bytes, batch_axes }
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

    /// Runs one batch within `budget` bytes of live tensors (see [`BudgetedPlan::run`]).
    pub(super) fn run(
        &self,
        inputs: Vec<TractTensor>,
        signature: &Signature,
        budget: u64,
    ) -> Result<Vec<TValue>, Error> {
        if let Some((batch, padded)) = self.bucket(&inputs).filter(|(b, p)| b != p) {
            let padded_inputs = self.pad(&inputs, batch, padded)?;
            let outputs = self.run_exact(padded_inputs, budget)?;
            if let Some(outputs) = unpad(outputs, batch, padded, signature)? {
                return Ok(outputs);
            }
            tracing::debug!(batch, padded, "an output has no batch axis to cut: running unpadded");
        }
        self.run_exact(inputs, budget)
    }

    /// The batch size and its bucket, when every batch axis agrees on the size.
    fn bucket(&self, inputs: &[TractTensor]) -> Option<(usize, usize)> {
        let axes = self.batch_axes.as_ref()?;
        let mut sizes =
            inputs.iter().zip(axes).flat_map(|(t, axes)| axes.iter().map(|&a| t.shape()[a]));
        let batch = sizes.next()?;
        (batch > 0 && sizes.all(|s| s == batch)).then(|| (batch, batch.next_power_of_two()))
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
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
        let (plan, _) = self
            .plans
            .try_get_with(shapes.clone(), || self.build(&shapes, budget))
            .map_err(|e| {
                if let over @ Error::OverBudget { .. } = &*e {
                    return over.clone();
                }
                // The inputs passed the signature's checks: a shape the model cannot be planned
                // for is the request's problem.
                Error::InferenceRejected {
                    problem: format!(
                        "no plan for input shapes {shapes:?}: {}",
                        crate::error::chain(&*e).trim_start_matches("engine failure: ")
                    ),
                }
            })?;
        let values = inputs.into_iter().map(TValue::from).collect();
        Ok(plan.run(values, budget)?.into_vec())
    }

    /// Builds the plan for `shapes`, counting the bytes it holds into the model's.
    fn build(&self, shapes: &[Vec<usize>], budget: u64) -> Result<SizedPlan, Error> {
        let started = std::time::Instant::now();
        let (plan, bytes) = measured(|| {
            let (typed, _) = translate(&self.proto, self.loader, Some(shapes))?;
            check_facts(&typed, budget)?;
            let optimized = super::rewrite::optimise(typed)
                .map_err(|e| engine_error("cannot optimise the model", e))?;
            BudgetedPlan::new(optimized).map(Arc::new)
        });
        crate::malloc::trim();
        let plan = plan?;
        self.plan_bytes.fetch_add(bytes, Ordering::Relaxed);
        tracing::info!(
            ?shapes,
            bytes,
            elapsed_ms = crate::elapsed_ms(started),
            "plan built for a shape"
        );
        Ok((plan, bytes))
    }
}

/// The axes of each input that carry the batch: those declared with the same dimension
/// name as the first input's first axis, or, when that is unnamed, every dynamic first axis.
/// `None` when the first input has no dynamic first axis.
pub(super) fn batch_axes(proto: &pb::ModelProto, signature: &Signature) -> Option<Vec<Vec<usize>>> {
    let graph = proto.graph.as_ref()?;
    let names = |input: &str| -> Vec<Option<String>> {
        let value = graph.input.iter().find(|v| v.name == input);
        let tensor = value.and_then(|v| v.r#type.as_ref()).and_then(|t| match &t.value {
            Some(pb::type_proto::Value::TensorType(tensor)) => tensor.shape.as_ref(),
            _ => None,
        });
        let dims = tensor.map(|s| s.dim.as_slice()).unwrap_or_default();
        dims.iter()
            .map(|d| match &d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) if !p.is_empty() => {
                    Some(p.clone())
                }
                _ => None,
            })
            .collect()
    };
    let first = signature.inputs.first()?;
    if first.shape.first() != Some(&-1) {
        return None;
    }
    let batch_name = names(&first.name).into_iter().next().flatten();
    let axes = signature.inputs.iter().map(|spec| {
        let declared = names(&spec.name);
        let dynamic = spec.shape.iter().enumerate().filter(|(_, &d)| d < 0).map(|(axis, _)| axis);
        match &batch_name {
            Some(name) => {
                dynamic.filter(|&a| declared.get(a) == Some(&Some(name.clone()))).collect()
            }
            None => dynamic.filter(|&a| a == 0).collect(),
        }
    });
    Some(axes.collect())
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
