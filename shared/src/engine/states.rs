//! Plan states kept between runs.
//!
//! tract starts each run of a plan with a new state: one slot per node for its values (the
//! constants copied in), and one operator state per node, each asked of its operator. On the
//! small models a warm run takes 5-10 µs, and starting that state (and dropping it after) is
//! a measurable part of it. A state that finished a run is as good as new: tract clears its
//! values and the symbols it resolved at the end of every run. So a plan keeps the states of
//! its finished runs and lends one to the next run; runs side by side (a batch split across
//! threads, requests on several threads) each take their own.
//!
//! What a run leaves behind outside its state goes when the run ends. tract's matrix products
//! keep scratch space in a table of the thread that runs them, under the state's session, and
//! free it when the state is dropped, on the thread that drops it. A state lent to runs on
//! other threads would leave an entry on each, and one dropped on yet another thread (a model
//! evicted from the cache) would leave them for good. So at the end of each run its session
//! ends on the thread that ran it, as a dropped state's would; the scratch space goes to the
//! thread's spare, where the next run finds it.
//!
//! A run that fails drops its state: it may stop halfway, with values still in its slots. So
//! does a run of a plan with operator states (a scan keeps its hidden state from one run to
//! the next unless told to reset it, and its body runs on a state and session of its own):
//! the next run starts it anew, as tract does.

use std::sync::{Arc, Mutex, PoisonError};

use tract_onnx::prelude::{TValue, TVec, TractError, TractResult, TypedFact, TypedNode, TypedOp};
use tract_onnx::tract_core::ops::OpState;
use tract_onnx::tract_core::plan::{EvalContext, SessionId, SimpleState};

use super::{engine_error, Plan};
use crate::error::Error;

type State = SimpleState<TypedFact, Box<dyn TypedOp>>;

/// The idle states of one plan.
#[derive(Debug, Default)]
pub(super) struct States {
    idle: Mutex<Vec<State>>,
}

impl States {
    /// Runs `plan` on `inputs` with `eval` running each node (as tract's
    /// `run_plan_with_eval`), on an idle state or a new one when none is idle, and keeps the
    /// state for the next run when the run succeeded and no operator holds a state in it. A
    /// failed run is `failed` of its error.
    pub(super) fn run<E>(
        &self,
        plan: &Arc<Plan>,
        inputs: TVec<TValue>,
        mut eval: E,
        failed: impl FnOnce(TractError) -> Error,
    ) -> Result<TVec<TValue>, Error>
    where
        E: for<'a, 'b, 'c> FnMut(
            &'a EvalContext<'a>,
            Option<&'b mut (dyn OpState + 'static)>,
            &'c TypedNode,
            TVec<TValue>,
        ) -> TractResult<TVec<TValue>>,
    {
        let idle = self.lock().pop();
        let mut state = match idle {
            Some(state) => state,
            None => plan.spawn().map_err(|e| engine_error("cannot start a run", e))?,
        };
        let mut session = None;
        let outputs = state
            .run_plan_with_eval(inputs, |ctx, op_state, node, inputs| {
                session = Some(ctx.session);
                eval(ctx, op_state, node, inputs)
            })
            .map_err(failed)?;
        if let Some(session) = session {
            end_session(plan, session);
        }
        // An operator's state may carry one run into the next (a scan's hidden state) and
        // holds sessions of its own: it goes with the run, as tract would have it.
        if state.op_states.iter().all(Option::is_none) {
            self.lock().push(state);
        }
        Ok(outputs)
    }

    /// How many states are idle.
    #[cfg(test)]
    pub(super) fn idle(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<State>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the operators of `plan` keep for `session` on this thread, freed as when a state is
/// dropped.
fn end_session(plan: &Plan, session: SessionId) {
    for (index, node) in plan.model().nodes.iter().enumerate() {
        node.op().drop_session(session, index);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use tract_onnx::tract_core::internal::*;

    use super::*;
    use crate::engine::settle::eval_node;

    thread_local! {
        /// The sessions a [`Keeper`] keeps something for on this thread.
        static KEPT: RefCell<Vec<SessionId>> = const { RefCell::new(Vec::new()) };
    }

    /// Passes its input on and keeps something for each session it runs in, on the thread
    /// that runs it, until told the session ended: as tract's matrix products keep their
    /// scratch space.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Keeper;

    impl Op for Keeper {
        fn name(&self) -> StaticName {
            "Keeper".into()
        }

        op_as_typed_op!();
    }

    impl EvalOp for Keeper {
        not_out_of_plan!();

        fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
            KEPT.with_borrow_mut(|kept| kept.push(ctx.session));
            Ok(inputs)
        }

        fn drop_session(&self, session: SessionId, _node_id: usize) {
            KEPT.with_borrow_mut(|kept| kept.retain(|&s| s != session));
        }
    }

    impl TypedOp for Keeper {
        fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
            Ok(tvec!(inputs[0].clone()))
        }

        as_op!();
    }

    fn keeper_plan() -> Arc<Plan> {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2])).unwrap();
        let kept = model.wire_node("keeper", Keeper, &[x]).unwrap();
        model.select_output_outlets(&kept).unwrap();
        SimplePlan::new(model).unwrap()
    }

    fn run(states: &States, plan: &Arc<Plan>) -> Result<TVec<TValue>, Error> {
        let x = Tensor::from_shape(&[2], &[1f32, 2.0]).unwrap();
        states.run(plan, tvec!(x.into_tvalue()), eval_node, super::super::rejected)
    }

    #[test]
    fn a_run_leaves_nothing_kept_for_its_session_on_any_thread() {
        let (states, plan) = (States::default(), keeper_plan());
        run(&states, &plan).unwrap();
        assert_eq!(states.idle(), 1);
        assert_eq!(KEPT.with_borrow(Vec::len), 0);
        // The same state, lent to a run on another thread, and dropped on this one.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                run(&states, &plan).unwrap();
                assert_eq!(KEPT.with_borrow(Vec::len), 0);
            });
        });
        assert_eq!(states.idle(), 1);
        drop(states);
        assert_eq!(KEPT.with_borrow(Vec::len), 0);
    }

    /// Counts the runs of the state it keeps, as a scan carries its hidden state along.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Tally;

    #[derive(Debug, Clone)]
    struct Count(i64);

    impl Op for Tally {
        fn name(&self) -> StaticName {
            "Tally".into()
        }

        op_as_typed_op!();
    }

    impl EvalOp for Tally {
        not_out_of_plan!();

        fn state(&self, _ctx: &EvalContext) -> TractResult<Option<Box<dyn OpState>>> {
            Ok(Some(Box::new(Count(0))))
        }
    }

    impl OpState for Count {
        fn eval(
            &mut self,
            _ctx: &EvalContext,
            _op: &dyn Op,
            _inputs: TVec<TValue>,
        ) -> TractResult<TVec<TValue>> {
            self.0 += 1;
            Ok(tvec!(tensor0(self.0).into_tvalue()))
        }

        fn reset_lanes(&mut self, _lanes: &[LaneId]) -> TractResult<()> {
            Ok(())
        }
    }

    impl TypedOp for Tally {
        fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
            Ok(tvec!(i64::scalar_fact()))
        }

        as_op!();
    }

    #[test]
    fn a_plan_whose_operators_keep_state_starts_each_run_anew() {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2])).unwrap();
        let count = model.wire_node("tally", Tally, &[x]).unwrap();
        model.select_output_outlets(&count).unwrap();
        let (states, plan) = (States::default(), SimplePlan::new(model).unwrap());
        for _ in 0..2 {
            let outputs = run(&states, &plan).unwrap();
            assert_eq!(outputs[0].try_as_plain_ram().unwrap().as_slice::<i64>().unwrap(), [1]);
            assert_eq!(states.idle(), 0);
        }
    }
}
