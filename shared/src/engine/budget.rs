//! The engine's memory budget and its containment: nothing a caller or an uploader sends makes
//! the engine allocate past a configured number of bytes, and nothing that fails inside tract
//! takes the process down.
//!
//! Three layers, from the most precise to the last resort:
//! 1. **Before each node runs** ([`BudgetedPlan::run`]), the sizes of its outputs are worked
//!    out from the plan's facts and the symbols resolved so far, or, for shapes that depend on
//!    input values (`Range`, `ConstantOfShape`, `Expand`, `Tile`, `Resize`, shapes computed
//!    from `NonZero`), from the operator's own shape rule applied to the actual inputs. If the
//!    tensors alive at that point plus the new outputs would pass the budget, the run stops with
//!    [`Error::OverBudget`] naming the node and its output, before anything is allocated. A
//!    run whose every output size follows from its input shapes, all of them together within
//!    the budget, cannot pass it and skips the check (worked out once per input shapes).
//! 2. **An allocation cap** ([`CappedAllocator`], the process's global allocator): while the
//!    engine works on a thread ([`contained`]), a single allocation larger than the cap is
//!    refused. tract allocates tensors through one function that panics on a refused
//!    allocation, so a size no check foresaw (constant folding at load time, scratch space)
//!    becomes a panic instead of an out-of-memory kill.
//! 3. **Containment** ([`contained`]): engine work runs under `catch_unwind`, and release
//!    builds unwind (`panic = "unwind"` in the workspace manifest), so a panic inside tract is
//!    an error for one request or upload, and the warm environment with its cached models
//!    survives.
//!
//! The same allocator also measures what a model holds ([`measured`]): the net bytes a thread
//! allocates while it loads and optimises a model, or builds a plan, are what the result keeps
//! alive, and the memory cache weighs models by them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};

use tract_onnx::prelude::{
    IntoArcTensor, SymbolValues, TDim, TValue, TVec, TractError, TractResult, TypedFact,
    TypedModel, TypedNode,
};
use tract_onnx::tract_core::ops::OpState;
use tract_onnx::tract_core::plan::{EvalContext, SimplePlan};

use super::settle::eval_node;
use super::states::States;
use super::{engine_error, rejected, Plan};
use crate::error::Error;

thread_local! {
    /// The largest single allocation allowed on this thread now.
    static CAP: Cell<usize> = const { Cell::new(usize::MAX) };
    /// The size of the last allocation refused on this thread (0: none).
    static REFUSED: Cell<usize> = const { Cell::new(0) };
    /// Whether this thread's allocations are being counted ([`measured`]).
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    /// Bytes allocated minus bytes freed on this thread since the measurement began.
    static NET: Cell<isize> = const { Cell::new(0) };
}

/// The system allocator, refusing single allocations over the calling thread's cap (no cap
/// outside [`contained`]) and counting the calling thread's net allocations while it is
/// [`measured`].
pub struct CappedAllocator;

/// Whether to refuse an allocation of `size` bytes on this thread. Never while the thread
/// panics: the panic's message, its backtrace (`RUST_BACKTRACE`) and the unwinding need memory
/// to report the failure, and a refusal there would abort the process or deadlock it.
fn refuses(size: usize) -> bool {
    if std::thread::panicking() {
        return false;
    }
    CAP.try_with(|cap| size > cap.get())
        .unwrap_or(false)
        .then(|| REFUSED.try_with(|refused| refused.set(size)))
        .is_some()
}

/// Adds `bytes` (negative: freed) to this thread's count when a measurement is active.
fn count(bytes: isize) {
    if MEASURING.try_with(Cell::get).unwrap_or(false) {
        let _ = NET.try_with(|net| net.set(net.get().wrapping_add(bytes)));
    }
}

/// `ptr` passed on, counting `bytes` when it is an allocation (not null).
fn counted(ptr: *mut u8, bytes: isize) -> *mut u8 {
    if !ptr.is_null() {
        count(bytes);
    }
    ptr
}

// SAFETY: every call is forwarded to `System` unchanged, or answered with null, which is how
// an allocator reports failure.
unsafe impl GlobalAlloc for CappedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if refuses(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's guarantees.
        counted(unsafe { System.alloc(layout) }, layout.size() as isize)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if refuses(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's guarantees.
        counted(unsafe { System.alloc_zeroed(layout) }, layout.size() as isize)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if refuses(new_size) {
            return std::ptr::null_mut();
        }
        let grown = (new_size as isize).wrapping_sub(layout.size() as isize);
        // SAFETY: forwarded with the caller's guarantees.
        counted(unsafe { System.realloc(ptr, layout, new_size) }, grown)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Runs `work` and returns its result with the net bytes this thread allocated meanwhile
/// (allocated minus freed, at least 0): what the result keeps alive, when `work` builds it
/// on this thread. Memory freed here that was allocated before counts against it; nested
/// measurements count into the outer one too, and a panic in `work` ends the measurement.
pub(super) fn measured<T>(work: impl FnOnce() -> T) -> (T, u64) {
    let (result, net) = measured_net(work);
    (result, u64::try_from(net).unwrap_or(0))
}

/// [`measured`], the count kept signed: negative when `work` freed more than it kept of
/// what it allocated (it freed memory allocated before it began).
pub(super) fn measured_net<T>(work: impl FnOnce() -> T) -> (T, isize) {
    /// Restores the outer measurement, adding this one's count to it, even on a panic.
    struct Measurement {
        outer: bool,
        before: isize,
    }
    impl Drop for Measurement {
        fn drop(&mut self) {
            let net = NET.get();
            MEASURING.set(self.outer);
            NET.set(if self.outer { self.before.wrapping_add(net) } else { 0 });
        }
    }
    let measurement = Measurement { outer: MEASURING.replace(true), before: NET.replace(0) };
    let result = work();
    let net = NET.get();
    drop(measurement);
    (result, net)
}

#[global_allocator]
static ALLOCATOR: CappedAllocator = CappedAllocator;

/// Runs engine work with single allocations capped at `cap` bytes on this thread and panics
/// contained. A refused allocation is [`Error::OverBudget`]; any other panic is
/// [`Error::InferenceRejected`] with its message, logged with `stage`.
pub(super) fn contained<T>(
    cap: u64,
    stage: &str,
    work: impl FnOnce() -> Result<T, Error>,
) -> Result<T, Error> {
    let previous = CAP.replace(usize::try_from(cap).unwrap_or(usize::MAX));
    REFUSED.set(0);
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(work));
    CAP.set(previous);
    let refused = REFUSED.replace(0);
    outcome.unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        tracing::warn!(stage, refused, panic = %message, "engine panic contained");
        Err(if refused > 0 {
            Error::OverBudget {
                what: format!("an allocation while {stage}"),
                bytes: refused as u64,
                limit: cap,
            }
        } else {
            Error::InferenceRejected {
                problem: format!("the engine failed while {stage}: {message}"),
            }
        })
    })
}

/// A tensor over the budget, found before its node ran.
#[derive(Debug, thiserror::Error)]
#[error("{what} would need {bytes} bytes")]
struct NodeOverBudget {
    what: String,
    bytes: u64,
}

/// An optimised plan that runs within a memory budget.
#[derive(Debug)]
pub(super) struct BudgetedPlan {
    plan: Arc<Plan>,
    /// By node id: the nodes whose outputs are no longer needed once this one ran.
    frees: Vec<Vec<usize>>,
    /// The input shapes of the last run whose every output's size followed from them, and the
    /// bytes of all those outputs together.
    all_outputs: Mutex<Option<(Vec<TVec<usize>>, u64)>>,
    /// States of finished runs, lent to the next ones.
    states: States,
}

impl BudgetedPlan {
    pub(super) fn new(model: TypedModel) -> Result<Self, Error> {
        let plan = SimplePlan::new(model).map_err(|e| engine_error("cannot plan the model", e))?;
        let frees = frees(&plan);
        Ok(Self { plan, frees, all_outputs: Mutex::default(), states: States::default() })
    }

    /// Runs the plan, stopping before any node whose outputs would take the tensors alive at
    /// that point past `budget` bytes. When the outputs of every node, all alive at once, fit
    /// the budget (as for most models: their sizes follow from the inputs' shapes), no node
    /// can pass it and the nodes run without the check (a tenth of a microsecond per node,
    /// 15 % of a small MLP's run).
    pub(super) fn run(&self, inputs: TVec<TValue>, budget: u64) -> Result<TVec<TValue>, Error> {
        if self.all_outputs_bytes(&inputs).is_some_and(|bytes| bytes <= budget) {
            return self.states.run(&self.plan, inputs, eval_node, rejected);
        }
        self.run_checked(inputs, budget)
    }

    /// The bytes of every node's outputs together for `inputs`, when their shapes follow from
    /// the inputs' shapes (every dimension a number or a symbol that an input's shape sets).
    fn all_outputs_bytes(&self, inputs: &[TValue]) -> Option<u64> {
        let mut known = self.all_outputs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((shapes, bytes)) = known.as_ref() {
            if shapes.len() == inputs.len()
                && shapes.iter().zip(inputs).all(|(s, i)| s[..] == *i.shape())
            {
                return Some(*bytes);
            }
        }
        let model = self.plan.model();
        let mut symbols = SymbolValues::default();
        for (&source, input) in model.inputs.iter().zip(inputs) {
            let dims = model.outlet_fact(source).ok()?.shape.iter().zip(input.shape());
            for (dim, &size) in dims {
                if let TDim::Sym(symbol) = dim {
                    // Two inputs that disagree on a size: tract refuses them, checked.
                    if symbols.get(symbol).is_some_and(|known| known != size as i64) {
                        return None;
                    }
                    symbols.set(symbol, size as i64);
                }
            }
        }
        let mut bytes = 0u64;
        for &node in self.plan.order_without_consts() {
            for output in &model.nodes[node].outputs {
                let shape = output.fact.shape.eval_to_usize(&symbols).ok()?;
                bytes = bytes.saturating_add(tensor_bytes(&shape, output.fact.datum_type));
            }
        }
        *known = Some((inputs.iter().map(|i| i.shape().into()).collect(), bytes));
        Some(bytes)
    }

    /// [`Self::run`] checking each node before it runs.
    fn run_checked(&self, inputs: TVec<TValue>, budget: u64) -> Result<TVec<TValue>, Error> {
        let mut ledger = Ledger { held: vec![0; self.plan.model().nodes.len()], live: 0, budget };
        let over_budget = |err: TractError| match err.chain().find_map(|e| e.downcast_ref()) {
            Some(NodeOverBudget { what, bytes }) => {
                Error::OverBudget { what: what.clone(), bytes: *bytes, limit: budget }
            }
            None => rejected(err),
        };
        let eval =
            |ctx: &EvalContext,
             op_state: Option<&mut (dyn OpState + 'static)>,
             node: &TypedNode,
             inputs| { ledger.eval(&self.frees, ctx, op_state, node, inputs) };
        self.states.run(&self.plan, inputs, eval, over_budget)
    }
}

/// The bytes of tensors alive during a checked run.
struct Ledger {
    /// By node id: the bytes of its outputs, while they are alive.
    held: Vec<u64>,
    live: u64,
    budget: u64,
}

impl Ledger {
    /// Runs `node` unless its outputs would take the tensors alive past the budget, then
    /// frees what `frees` says no later node reads.
    fn eval(
        &mut self,
        frees: &[Vec<usize>],
        ctx: &EvalContext,
        op_state: Option<&mut (dyn OpState + 'static)>,
        node: &TypedNode,
        inputs: TVec<TValue>,
    ) -> TractResult<TVec<TValue>> {
        let live = self.live;
        let mut reserved = live;
        for (slot, bytes) in planned_bytes(ctx, node, &inputs).into_iter().enumerate() {
            reserved = reserved.saturating_add(bytes.unwrap_or(0));
            if reserved > self.budget {
                let fact = &node.outputs[slot].fact;
                let what = format!(
                    "output {slot} of node `{}` ({:?}, shape {:?}), with {live} bytes of other \
                     tensors alive,",
                    node.name, fact.datum_type, fact.shape
                );
                return Err(TractError::new(NodeOverBudget { what, bytes: reserved }));
            }
        }
        let outputs = eval_node(ctx, op_state, node, inputs)?;
        self.held[node.id] = outputs.iter().map(|t| tensor_bytes(t.shape(), t.datum_type())).sum();
        self.live = self.live.saturating_add(self.held[node.id]);
        for &done in &frees[node.id] {
            self.live = self.live.saturating_sub(std::mem::take(&mut self.held[done]));
        }
        Ok(outputs)
    }
}

/// For each node, the producers whose outputs it is the last in the plan's order to read.
/// Model outputs are never freed.
fn frees(plan: &Plan) -> Vec<Vec<usize>> {
    let model = plan.model();
    let mut last_reader: Vec<Option<usize>> = vec![None; model.nodes.len()];
    for &node in plan.order_without_consts() {
        for input in &model.nodes[node].inputs {
            last_reader[input.node] = Some(node);
        }
    }
    for output in &model.outputs {
        last_reader[output.node] = None;
    }
    let mut frees = vec![Vec::new(); model.nodes.len()];
    for (producer, reader) in last_reader.into_iter().enumerate() {
        if let Some(reader) = reader {
            frees[reader].push(producer);
        }
    }
    frees
}

/// The size of each output of `node` when it can be known before it runs: from the plan's
/// facts under the symbols resolved so far, or else from the operator's shape rule applied
/// to the actual inputs (small inputs as constants, so that shapes read from values resolve).
fn planned_bytes(
    ctx: &EvalContext,
    node: &tract_onnx::prelude::TypedNode,
    inputs: &[TValue],
) -> Vec<Option<u64>> {
    let from_plan: Vec<Option<u64>> = node
        .outputs
        .iter()
        .map(|o| {
            let shape = o.fact.shape.eval_to_usize(ctx.symbols).ok()?;
            Some(tensor_bytes(&shape, o.fact.datum_type))
        })
        .collect();
    if from_plan.iter().all(Option::is_some) {
        return from_plan;
    }
    let from_inputs = output_facts_of(node, inputs).unwrap_or_default();
    from_plan
        .into_iter()
        .enumerate()
        .map(|(slot, known)| {
            known.or_else(|| {
                let fact = from_inputs.get(slot)?;
                Some(tensor_bytes(fact.shape.as_concrete()?, fact.datum_type))
            })
        })
        .collect()
}

/// Inputs with at most this many elements are given to shape rules as constants.
const CONSTANT_INPUT_ELEMENTS: usize = 64;

fn output_facts_of(
    node: &tract_onnx::prelude::TypedNode,
    inputs: &[TValue],
) -> TractResult<TVec<TypedFact>> {
    let facts = inputs
        .iter()
        .map(|value| {
            if value.len() <= CONSTANT_INPUT_ELEMENTS {
                TypedFact::try_from(value.clone().into_arc_tensor())
            } else {
                Ok(TypedFact::shape_and_dt_of(value))
            }
        })
        .collect::<TractResult<TVec<TypedFact>>>()?;
    let refs: TVec<&TypedFact> = facts.iter().collect();
    node.op.output_facts(&refs)
}

/// Bytes of a tensor of `shape` and `datum_type`; `u64::MAX` when that overflows.
pub(super) fn tensor_bytes(shape: &[usize], datum_type: tract_onnx::prelude::DatumType) -> u64 {
    shape
        .iter()
        .try_fold(datum_type.size_of() as u64, |acc, &d| acc.checked_mul(d as u64))
        .unwrap_or(u64::MAX)
}

/// Refuses a model in which some tensor is over `limit` bytes even at the smallest run: every
/// dynamic dimension at 1. Checked at load and at upload, before optimisation folds constants.
pub(super) fn check_facts(model: &TypedModel, limit: u64) -> Result<(), Error> {
    for node in &model.nodes {
        for (slot, output) in node.outputs.iter().enumerate() {
            let mut smallest = SymbolValues::default();
            for symbol in output.fact.shape.iter().flat_map(|d| d.symbols()) {
                smallest.set(&symbol, 1);
            }
            let Ok(shape) = output.fact.shape.eval_to_usize(&smallest) else { continue };
            let bytes = tensor_bytes(&shape, output.fact.datum_type);
            if bytes > limit {
                return Err(Error::OverBudget {
                    what: format!(
                        "output {slot} of node `{}` ({:?}, shape {:?})",
                        node.name, output.fact.datum_type, output.fact.shape
                    ),
                    bytes,
                    limit,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::{DatumType, Tensor as TractTensor};

    /// Allocates as tract does: a refused allocation is a panic.
    fn allocate_like_tract(bytes: usize) {
        let layout = Layout::from_size_align(bytes, 16).unwrap();
        // SAFETY: a non-zero size; freed at once. `black_box` keeps optimised builds from
        // removing the pair, which would never reach the allocator.
        let ptr = std::hint::black_box(unsafe { std::alloc::alloc(layout) });
        assert!(!ptr.is_null(), "failed to allocate {layout:?}");
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(ptr, layout) };
    }

    #[test]
    fn an_allocation_over_the_cap_is_over_budget_and_the_cap_ends_with_the_work() {
        let err = contained(1 << 20, "testing", || {
            allocate_like_tract(1 << 10);
            allocate_like_tract(8 << 20);
            Ok(())
        })
        .unwrap_err();
        assert!(
            matches!(err, Error::OverBudget { bytes, limit, .. } if bytes == 8 << 20 && limit == 1 << 20),
            "{err:?}"
        );
        assert_eq!(err.status(), 422);
        // Outside the contained work nothing is capped.
        allocate_like_tract(8 << 20);
    }

    #[test]
    fn a_panic_in_engine_work_is_an_error_naming_it() {
        let err =
            contained::<()>(u64::MAX, "testing", || panic!("index out of bounds")).unwrap_err();
        assert_eq!(err.status(), 422);
        assert!(err.to_string().contains("while testing: index out of bounds"), "{err}");
    }

    #[test]
    fn a_panic_reports_itself_even_when_its_message_is_over_the_cap() {
        let detail = "x".repeat(4096);
        let err =
            contained::<()>(64, "testing", || panic!("index out of bounds: {detail}")).unwrap_err();
        assert!(err.to_string().contains(&detail), "{err}");
    }

    #[test]
    fn nested_work_restores_the_outer_cap() {
        contained(1 << 20, "outer", || {
            contained(u64::MAX, "inner", || Ok(()))?;
            let inner = contained(u64::MAX, "inner", || {
                allocate_like_tract(4 << 20);
                Ok(())
            });
            assert!(inner.is_ok());
            Ok(())
        })
        .unwrap();
        let err = contained(1 << 20, "outer", || {
            contained(u64::MAX, "inner", || Ok(()))?;
            allocate_like_tract(4 << 20);
            Ok(())
        });
        assert!(matches!(err, Err(Error::OverBudget { .. })), "{err:?}");
    }

    #[test]
    fn a_measurement_counts_what_the_work_keeps_not_what_it_freed() {
        let (kept, bytes) = measured(|| {
            let scratch = vec![1u8; 4 << 20];
            drop(scratch);
            vec![1u8; 1 << 20]
        });
        assert_eq!(kept.len(), 1 << 20);
        assert!((1 << 20..(1 << 20) + 4096).contains(&bytes), "{bytes} bytes");
        // Freeing what was allocated before is no negative weight.
        let (_, bytes) = measured(|| drop(kept));
        assert_eq!(bytes, 0);
    }

    #[test]
    fn a_nested_measurement_counts_into_the_outer_one() {
        let ((outer, (inner, inner_bytes)), outer_bytes) = measured(|| {
            let outer = vec![1u8; 2 << 20];
            (outer, measured(|| vec![1u8; 1 << 20]))
        });
        assert!((1 << 20..2 << 20).contains(&inner_bytes), "inner: {inner_bytes} bytes");
        assert!((3 << 20..4 << 20).contains(&outer_bytes), "outer: {outer_bytes} bytes");
        assert_eq!(outer.len() + inner.len(), 3 << 20);
    }

    #[test]
    fn tensor_sizes_saturate_instead_of_overflowing() {
        assert_eq!(tensor_bytes(&[2, 3], DatumType::F32), 24);
        assert_eq!(tensor_bytes(&[], DatumType::I64), 8);
        assert_eq!(tensor_bytes(&[1 << 40, 1 << 40], DatumType::F32), u64::MAX);
    }

    /// `x + 1` three times over `x` of `N × 1000` floats (`N` symbolic), as a plan.
    fn three_adds() -> BudgetedPlan {
        use tract_onnx::prelude::{tvec, Datum};
        use tract_onnx::tract_core::model::SpecialOps;
        use tract_onnx::tract_core::ops::math::add;
        let mut model = TypedModel::default();
        let n = model.symbols.sym("N");
        let shape: TVec<TDim> = tvec![n.into(), 1000.into()];
        let fact = TypedFact::dt_shape(f32::datum_type(), shape);
        let mut last = model.add_source("x", fact).unwrap();
        let one = TractTensor::from_shape(&[1, 1], &[1f32]).unwrap();
        let one = model.add_const("one", one).unwrap();
        for i in 0..3 {
            last = model.wire_node(format!("add{i}"), add(), &[last, one]).unwrap()[0];
        }
        model.select_output_outlets(&[last]).unwrap();
        BudgetedPlan::new(model).unwrap()
    }

    fn rows(n: usize) -> TVec<TValue> {
        let x = TractTensor::from_shape(&[n, 1000], &vec![0.5f32; n * 1000]).unwrap();
        std::iter::once(x.into()).collect()
    }

    #[test]
    fn every_outputs_size_follows_from_the_input_shapes_once_per_shape() {
        let plan = three_adds();
        // The input and three sums of 2 × 1000 floats.
        assert_eq!(plan.all_outputs_bytes(&rows(2)), Some(4 * 8000));
        assert_eq!(plan.all_outputs_bytes(&rows(3)), Some(4 * 12000));
        let outputs = plan.run(rows(2), 1 << 20).unwrap();
        let sums = outputs[0].try_as_plain_ram().unwrap();
        assert!(sums.as_slice::<f32>().unwrap().iter().all(|&v| v == 3.5));
    }

    #[test]
    fn a_run_whose_outputs_together_pass_the_budget_is_checked_node_by_node() {
        let plan = three_adds();
        // 32 000 bytes of outputs in all, at most 16 000 alive at once: runs.
        let outputs = plan.run(rows(2), 20_000).unwrap();
        assert_eq!(outputs[0].shape(), &[2, 1000]);
        // Under the input and one sum: the first sum is refused before it is computed.
        let err = plan.run(rows(2), 10_000).unwrap_err();
        assert!(
            matches!(&err, Error::OverBudget { what, bytes: 16_000, limit: 10_000 } if what.contains("add0")),
            "{err:?}"
        );
    }

    #[test]
    fn a_finished_run_lends_its_state_to_the_next_and_a_failed_one_drops_it() {
        let plan = three_adds();
        assert_eq!(plan.states.idle(), 0);
        plan.run(rows(2), 1 << 20).unwrap();
        assert_eq!(plan.states.idle(), 1);
        // The kept state resolved N = 2; the next run, on 3 rows, resolves it again.
        let outputs = plan.run(rows(3), 1 << 20).unwrap();
        assert_eq!(outputs[0].shape(), &[3, 1000]);
        let sums = outputs[0].try_as_plain_ram().unwrap();
        assert!(sums.as_slice::<f32>().unwrap().iter().all(|&v| v == 3.5));
        assert_eq!(plan.states.idle(), 1);
        // Stopped halfway: its state is not lent again.
        plan.run(rows(2), 10_000).unwrap_err();
        assert_eq!(plan.states.idle(), 0);
        assert_eq!(plan.run(rows(1), 1 << 20).unwrap()[0].shape(), &[1, 1000]);
        assert_eq!(plan.states.idle(), 1);
    }

    #[test]
    fn runs_side_by_side_each_take_their_own_state() {
        let plan = three_adds();
        let started = std::sync::Barrier::new(2);
        std::thread::scope(|scope| {
            for n in [2, 3] {
                let (plan, started) = (&plan, &started);
                scope.spawn(move || {
                    // Both hold a state at once when they run their first node.
                    let wait = |node: &TypedNode| {
                        if node.name == "add0" {
                            started.wait();
                        }
                    };
                    let outputs = plan.states.run(
                        &plan.plan,
                        rows(n),
                        |ctx, state, node, inputs| {
                            wait(node);
                            eval_node(ctx, state, node, inputs)
                        },
                        rejected,
                    );
                    assert_eq!(outputs.unwrap()[0].shape(), &[n, 1000]);
                });
            }
        });
        assert_eq!(plan.states.idle(), 2);
    }
}
