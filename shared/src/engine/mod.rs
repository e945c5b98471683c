//! The inference engine: the only module that knows tract.
//!
//! Load once, optimise once, run many. At load the model's inputs get their declared types
//! and shapes, with every dynamic dimension (the batch first) made symbolic, so one optimised
//! plan serves any batch size the model allows without reloading ([`translate`]); a model
//! whose shapes are computed at run time gets plans per input shape ([`plans`]). A model runs
//! its batches whole, split into shares across the engine's threads, or row by row ([`run`]).
//!
//! Uploads are validated here too ([`validate()`]); the signature reader ([`read_signature`])
//! reads a file's declared inputs and outputs without translating it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tract_linalg::multithread::Executor;
use tract_onnx::pb;
use tract_onnx::prelude::{Framework, TypedFact, TypedModel, TypedOp};

use crate::error::Error;
use crate::manifest::{Loader, Planning, Signature};
use crate::tensor::Tensor;

mod blocks;
mod branches;
mod budget;
mod convert;
mod convs;
mod cpus;
mod crew;
mod depthwise;
mod fold;
mod hardswish;
mod images;
mod ml;
#[cfg(feature = "nnef")]
mod nnef;
mod onehot;
mod ops;
mod pad;
mod plans;
mod pointwise;
mod pool;
mod products;
mod profile;
mod reduce;
mod regroup;
mod rewrite;
mod roles;
mod run;
mod settle;
mod signature;
mod softmax;
mod split;
mod states;
mod stream;
mod translate;
mod validate;

use budget::{contained, measured_net, BudgetedPlan};
use plans::Unplanned;
use signature::signature_of;
use split::Splitter;
use translate::translate;
use validate::check_declared;

#[cfg(feature = "nnef")]
pub use nnef::to_nnef;
pub use profile::{profile, NodeTime};
pub use signature::read_signature;
pub use stream::{Decoded, StreamDecoder};
pub use validate::{validate, Validated};

type Plan = tract_onnx::tract_core::plan::SimplePlan<TypedFact, Box<dyn TypedOp>>;

/// A loaded, optimised model, ready to run batches.
#[derive(Clone)]
pub struct Model {
    plans: Plans,
    /// Shared by the model's clones: a split batch's shares each run on one.
    signature: Arc<Signature>,
    resources: Resources,
    /// Heap bytes the model holds, measured while it was loaded ([`Model::memory_bytes`]).
    held: u64,
    /// How batches are split across the engine's threads; `None` when they are not.
    splitter: Option<Arc<Splitter>>,
    /// Whether an `If` decides on values computed from a batch's rows
    /// ([`Model::rows_independent`]).
    rows_tied: bool,
}

#[derive(Clone)]
enum Plans {
    Symbolic(Arc<BudgetedPlan>),
    PerShape(Arc<plans::ShapePlans>),
}

/// What one run of a model may use: memory and threads, from the engine's [`Settings`].
#[derive(Debug, Clone)]
struct Resources {
    /// Bytes of tensors alive at once during a run, inputs included.
    budget: u64,
    /// The largest single allocation while the engine works on the model: the budget, or
    /// twice the model file for work that handles its weights (loading, building a plan).
    cap: u64,
    /// The engine's threads beyond the calling one; `None` for one thread.
    crew: Option<Arc<crew::Crew>>,
    /// How many optimised plans a per-shape model keeps.
    shape_plans: u64,
    /// What a per-shape model's batch does when its bucket has no plan yet.
    unplanned: Unplanned,
}

impl Resources {
    fn new(settings: &Settings, file_bytes: u64) -> Self {
        Self {
            budget: settings.memory_bytes,
            cap: Self::cap(settings, file_bytes),
            crew: crew::crew(settings.threads),
            shape_plans: settings.shape_plans.max(1),
            unplanned: match settings.plans_behind {
                true => Unplanned::StandIn,
                false => Unplanned::Build,
            },
        }
    }

    /// The largest single allocation while loading a file of `file_bytes` bytes.
    fn cap(settings: &Settings, file_bytes: u64) -> u64 {
        settings.memory_bytes.max(file_bytes.saturating_mul(2))
    }

    /// Where tract runs its matrix products: on the crew's threads, else the calling one.
    fn executor(&self) -> Executor {
        self.crew.as_ref().map_or(Executor::SingleThread, |crew| crew.executor())
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
    /// `settings`: a model placed in the store without validation gets the same size checks
    /// as an upload, and a failure is an error for this model only.
    pub fn load_path(
        path: &Path,
        loader: Loader,
        planning: Planning,
        settings: &Settings,
    ) -> Result<Self, Error> {
        let file_bytes = std::fs::metadata(path).map_or(0, |m| m.len());
        let decode = || {
            tract_onnx::onnx()
                .proto_model_for_path(path)
                .map_err(|e| engine_error("cannot parse the ONNX file", e))
        };
        Self::load(decode, file_bytes, 0, loader, planning, settings)
    }

    /// [`Model::load_path`] for a file [`StreamDecoder`] decoded as it was fetched (and the
    /// fetch checked against its manifest), without decoding it again.
    pub fn load_decoded(
        decoded: Decoded,
        loader: Loader,
        planning: Planning,
        settings: &Settings,
    ) -> Result<Self, Error> {
        let Decoded { proto, held, file_bytes } = decoded;
        Self::load(|| Ok(proto), file_bytes, held, loader, planning, settings)
    }

    /// Loads the model `decode` gives from a file of `file_bytes` bytes. It holds what this
    /// thread allocated meanwhile and did not free, plus `decoded_held`: the heap bytes of a
    /// model decoded on another thread, whatever of which the load freed having counted
    /// against its own measurement.
    fn load(
        decode: impl FnOnce() -> Result<pb::ModelProto, Error>,
        file_bytes: u64,
        decoded_held: isize,
        loader: Loader,
        planning: Planning,
        settings: &Settings,
    ) -> Result<Self, Error> {
        let resources = Resources::new(settings, file_bytes);
        let (model, net) = measured_net(|| {
            contained(resources.cap, "loading the model", || {
                let proto = decode()?;
                check_declared(&proto, settings)?;
                let (rows_tied, splitter) = splitting(&proto, settings);
                let model = match planning {
                    Planning::Symbolic => {
                        let (typed, signature) = translate(&proto, loader, None)?;
                        // The decoded file is not needed to optimise: freed before, it does
                        // not add to the load's peak.
                        drop(proto);
                        Self::optimise(typed, signature, &resources)
                    }
                    Planning::PerShape => {
                        Self::planned_per_shape(proto, loader, rows_tied, &resources)
                    }
                };
                model.map(|model| Self { splitter, rows_tied, ..model })
            })
        });
        // What the load freed goes back to the system, not into this thread's arena.
        crate::malloc::trim();
        let held = u64::try_from(net.saturating_add(decoded_held)).unwrap_or(0);
        Ok(Self { held, ..model? })
    }

    /// A model of `plans`, holding nothing measured yet and splitting no batches (a load sets
    /// both).
    fn new(plans: Plans, signature: Signature, resources: &Resources) -> Self {
        let resources = resources.clone();
        let signature = Arc::new(signature);
        Self { plans, signature, resources, held: 0, splitter: None, rows_tied: false }
    }

    /// A model whose plans are built per input shape, on first use.
    fn per_shape(
        proto: pb::ModelProto,
        loader: Loader,
        resources: &Resources,
    ) -> Result<Self, Error> {
        let tied = rows_tied(&proto);
        Self::planned_per_shape(proto, loader, tied, resources)
    }

    /// [`Self::per_shape`], whether its rows are tied already read ([`rows_tied`]).
    fn planned_per_shape(
        proto: pb::ModelProto,
        loader: Loader,
        rows_tied: bool,
        resources: &Resources,
    ) -> Result<Self, Error> {
        let signature = signature_of(&proto)?;
        let (limit, cap) = (resources.shape_plans, resources.cap);
        let plans = plans::ShapePlans::new(proto, loader, &signature, rows_tied, limit, cap);
        Ok(Self::new(Plans::PerShape(Arc::new(plans)), signature, resources))
    }

    /// Builds a per-shape model's plans for batches of `rows` rows ahead of requests (at
    /// start-up: `MAAS_PRELOAD_BATCHES`), by running zeros through it, so that the first
    /// request in those buckets does not wait for an optimisation. Returns how long each
    /// took (ms). A symbolic model has its one plan already: nothing to do. A model with
    /// dynamic dimensions besides the batch cannot be prepared: the sizes requests will
    /// bring are unknown.
    pub fn prepare(&self, rows: &[usize]) -> Result<Vec<(usize, f64)>, Error> {
        let Plans::PerShape(plans) = &self.plans else { return Ok(Vec::new()) };
        let axes =
            plans.batch_axes().ok_or_else(|| engine_problem("the model has no batch axis"))?;
        let others = self.signature.inputs.iter().zip(axes).any(|(spec, axes)| {
            (0..spec.shape.len()).any(|axis| spec.shape[axis] < 0 && !axes.contains(&axis))
        });
        if others {
            return Err(engine_problem("the model has dynamic dimensions besides the batch"));
        }
        rows.iter()
            .map(|&rows| {
                let started = Instant::now();
                let inputs = validate::trial_inputs(&self.signature, rows.max(1), 1, Some(axes))?;
                self.run_as(inputs, Unplanned::Build)?;
                Ok((rows, crate::elapsed_ms(started)))
            })
            .collect()
    }

    /// How many batches of a per-shape model ran on another bucket's plan while their own
    /// was built behind them, so far.
    pub fn stand_in_runs(&self) -> u64 {
        match &self.plans {
            Plans::Symbolic(_) => 0,
            Plans::PerShape(plans) => plans.stand_ins(),
        }
    }

    /// See [`plans::ShapePlans::unsteady`]; 0 for a model with one symbolic plan.
    fn unsteady(&self) -> u64 {
        match &self.plans {
            Plans::Symbolic(_) => 0,
            Plans::PerShape(plans) => plans.unsteady(),
        }
    }

    /// Waits until a per-shape model builds no plan behind its requests.
    pub fn wait_for_plans(&self) {
        if let Plans::PerShape(plans) = &self.plans {
            plans.wait_for_builds();
        }
    }

    /// Whether each row of a batch gets the outputs it would get alone: not when an `If`
    /// decides on values computed from the rows (`If(sum(x) > 0)` takes one branch for the
    /// whole batch). Batches of such a model are neither split nor padded, and batch-predict
    /// runs its records one by one.
    pub fn rows_independent(&self) -> bool {
        !self.rows_tied
    }

    /// How many batches ran split across the engine's threads so far.
    pub fn split_runs(&self) -> u64 {
        self.splitter.as_ref().map_or(0, |s| s.splits())
    }

    /// How many batches ran row by row so far.
    pub fn row_by_row_runs(&self) -> u64 {
        self.splitter.as_ref().map_or(0, |s| s.row_by_row_runs())
    }

    /// Says a batch of `inputs` is about to run (a request was decoded and goes to
    /// [`Model::run`] next): when batches of its size run split, or a split of them is being
    /// tried, the engine's threads wake now and spin (`engine/crew.rs`), so that its shares
    /// start without waiting for a sleeping thread. Other batches leave them alone: a
    /// spinning thread took 8 % from a one-row run beside it on this VM.
    pub fn expect_run(&self, inputs: &[Tensor]) {
        let (Some(crew), Some(splitter)) = (&self.resources.crew, &self.splitter) else { return };
        if splitter.would_split(inputs.iter().map(|t| t.shape.as_slice())) {
            crew.keep_awake(crew::KEEP_AWAKE);
        }
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
    fn optimise(
        typed: TypedModel,
        signature: Signature,
        resources: &Resources,
    ) -> Result<Self, Error> {
        budget::check_facts(&typed, resources.budget)?;
        let optimized =
            rewrite::optimise(typed).map_err(|e| engine_error("cannot optimise the model", e))?;
        let plan = BudgetedPlan::new(optimized)?;
        Ok(Self::new(Plans::Symbolic(Arc::new(plan)), signature, resources))
    }

    /// The inputs and outputs as the ONNX file declares them.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }
}

/// The batch axes of the model in `proto` and whether an `If` decides on values computed from
/// a batch's rows ([`roles::branches_on_rows`] on them); `None` without batch axes.
fn batch_layout(proto: &pb::ModelProto) -> Option<(Vec<Vec<usize>>, bool)> {
    let signature = signature_of(proto).ok()?;
    let axes = roles::batch_axes(proto, &signature)?;
    let rows_tied = roles::branches_on_rows(proto, &signature, &axes);
    Some((axes, rows_tied))
}

/// Whether an `If` of the model in `proto` decides on values computed from a batch's rows
/// ([`batch_layout`]; `false` without batch axes).
fn rows_tied(proto: &pb::ModelProto) -> bool {
    batch_layout(proto).is_some_and(|(_, tied)| tied)
}

/// Whether the rows of the model in `proto` are tied ([`batch_layout`]; `false` without batch
/// axes), and how its batches are split across threads: on its batch axes, when the settings
/// give the engine more than one thread and its rows are not tied.
fn splitting(proto: &pb::ModelProto, settings: &Settings) -> (bool, Option<Arc<Splitter>>) {
    let Some((axes, rows_tied)) = batch_layout(proto) else { return (false, None) };
    let min_share = Duration::from_micros(settings.min_share_micros);
    let min_row_by_row = Duration::from_micros(settings.row_by_row_micros);
    let splitter = (!rows_tied)
        .then(|| Arc::new(Splitter::new(axes, settings.threads, min_share, min_row_by_row)));
    (rows_tied, splitter)
}

/// How the engine validates, loads and runs models. Every call that loads a model takes them,
/// and a model runs with the settings it was loaded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// The largest tensor a declared shape may describe, with dynamic dimensions at 1.
    pub max_tensor_bytes: u64,
    /// The memory budget of one run: bytes of tensors alive at once (inputs included), and
    /// the largest single allocation the engine may make for a request.
    pub memory_bytes: u64,
    /// Threads for tract's matrix products (1: the calling thread only). Lambda gives 1 vCPU
    /// per 1769 MB of memory, up to 6.
    pub threads: usize,
    /// How many optimised plans each per-shape model keeps (least recently used dropped
    /// first).
    pub shape_plans: u64,
    /// With several threads, a batch may be split into one share per thread once a whole run
    /// of it took at least this many microseconds (`engine/split.rs` says how the way a batch
    /// runs is chosen).
    pub min_share_micros: u64,
    /// A batch may run row by row on one thread once a whole run of it took at least this
    /// many microseconds, and does when that was measured faster (a large model's rows one
    /// at a time keep their intermediate tensors in the CPU's cache).
    pub row_by_row_micros: u64,
    /// On a per-shape model, a batch whose bucket has no plan yet runs on another bucket's
    /// plan, if one has a plan, while its own is built on a thread of its own (`false`: it
    /// waits for its plan to be built).
    pub plans_behind: bool,
}

impl Default for Settings {
    /// The defaults off Lambda: 256 MiB per declared tensor, 1 GiB per run, one thread,
    /// 8 plans per shape, batches split once a whole run took 20 µs and tried row by row
    /// once it took 1 ms, new buckets' plans built behind the requests.
    fn default() -> Self {
        Self {
            max_tensor_bytes: 256 << 20,
            memory_bytes: 1 << 30,
            threads: 1,
            shape_plans: 8,
            min_share_micros: 20,
            row_by_row_micros: 1000,
            plans_behind: true,
        }
    }
}
