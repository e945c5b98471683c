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
//! shows no batch axis to cut, the batch runs at its exact size instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tract_onnx::pb;
use tract_onnx::prelude::{TValue, Tensor as TractTensor};

use super::budget::{check_facts, measured, BudgetedPlan};
use super::roles::{batch_axes, scalar_i64, selectors};
use super::split::batch_rows;
use super::translate::{translate, Concrete};
use super::{engine_error, engine_problem};
use crate::error::Error;
use crate::manifest::{Loader, Signature};

/// A plan and the heap bytes building it left allocated.
type SizedPlan = (Arc<BudgetedPlan>, u64);

/// The plans of one model, built on demand.
pub(super) struct ShapePlans {
    proto: pb::ModelProto,
    loader: Loader,
    plans: moka::sync::Cache<Concrete, SizedPlan>,
    /// Bytes of the plans cached now.
    plan_bytes: Arc<AtomicU64>,
    /// For each input, the axes that carry the batch; `None` when batches are not bucketed.
    batch_axes: Option<Vec<Vec<usize>>>,
    /// For each input, whether it is a selector whose value each plan is built for.
    selectors: Vec<bool>,
}

impl ShapePlans {
    pub(super) fn new(
        proto: pb::ModelProto,
        loader: Loader,
        signature: &Signature,
        plan_limit: u64,
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
        let selectors = selectors(&proto, signature);
        Self { proto, loader, plans, plan_bytes, batch_axes, selectors }
    }

    /// For each input, the axes that carry the batch; `None` when batches are not bucketed.
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
