//! The inference engine: the only module that knows tract.
//!
//! Load once, optimise once, run many. At load the model's inputs get their declared types
//! and shapes, with every dynamic dimension (the batch first) made symbolic, so one optimised
//! plan serves any batch size the model allows without reloading ([`translate`]); a model
//! whose shapes are computed at run time gets plans per input shape ([`plans`]).
//!
//! Uploads are validated here too ([`validate()`]); the signature reader ([`read_signature`])
//! reads a file's declared inputs and outputs without translating it.

use std::path::Path;
use std::sync::Arc;

use tract_onnx::pb;
use tract_onnx::prelude::{Framework, TValue, TypedFact, TypedModel, TypedOp};

use crate::error::Error;
use crate::manifest::{Loader, Planning, Signature};
use crate::tensor::Tensor;

mod budget;
mod convert;
mod fold;
mod ml;
mod nnef;
mod plans;
mod signature;
mod translate;
mod validate;

use budget::{contained, measured, BudgetedPlan};
use convert::{from_tract, to_tract};
use signature::signature_of;
use translate::translate;
use validate::check_declared;

pub use nnef::to_nnef;
pub use plans::set_plan_limit;
pub use signature::read_signature;
pub use validate::{validate, Validated};

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
            typed.into_optimized().map_err(|e| engine_error("cannot optimise the model", e))?;
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
