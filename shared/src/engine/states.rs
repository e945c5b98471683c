//! Plan states kept between runs.
//!
//! tract starts each run of a plan with a new state: one slot per node for its values, and
//! one operator state per node, each asked of its operator. On the small models a warm run
//! takes 5-10 µs, and starting that state (and dropping it after) is a measurable part of it.
//! A state that finished a run is as good as new: tract clears its values and the symbols
//! it resolved at the end of every run. So a plan keeps the states of its finished runs and
//! lends one to the next run; runs side by side (a batch split across threads, requests on
//! several threads) each take their own.
//!
//! A run that fails drops its state: it may stop halfway, with values still in its slots.

use std::sync::{Arc, Mutex, PoisonError};

use tract_onnx::prelude::{TypedFact, TypedOp};
use tract_onnx::tract_core::plan::SimpleState;

use super::{engine_error, Plan};
use crate::error::Error;

type State = SimpleState<TypedFact, Box<dyn TypedOp>>;

/// The idle states of one plan.
#[derive(Debug, Default)]
pub(super) struct States {
    idle: Mutex<Vec<State>>,
}

impl States {
    /// Runs `work` on an idle state of `plan`, or a new one when none is idle, and keeps the
    /// state for the next run when `work` succeeded.
    pub(super) fn with<T>(
        &self,
        plan: &Arc<Plan>,
        work: impl FnOnce(&mut State) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let idle = self.lock().pop();
        let mut state = match idle {
            Some(state) => state,
            None => plan.spawn().map_err(|e| engine_error("cannot start a run", e))?,
        };
        let result = work(&mut state)?;
        self.lock().push(state);
        Ok(result)
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
