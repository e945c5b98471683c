//! Running a loaded model's batches: whole, split into shares across the engine's threads, or
//! row by row, as the model's [`Splitter`] chose for the batch's size; and their outputs
//! converted to the request's tensors.

use std::sync::Arc;
use std::time::Instant;

use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::{IntoTensor, TValue, Tensor as TractTensor};

use super::budget::contained;
use super::convert::{from_tract, from_tract_joined, to_tract};
use super::plans::Unplanned;
use super::split::{self, Splitter, Way};
use super::{cpus, crew, Model, Plans};
use crate::error::Error;
use crate::manifest::TensorSpec;
use crate::tensor::Tensor;

impl Model {
    /// Runs one batch. `inputs` must be in the signature's order and already checked against
    /// it (the protocol codec does that); outputs come back in the signature's order.
    ///
    /// The run stays within the model's memory budget ([`Error::OverBudget`] when it cannot)
    /// and a failure inside the engine is an error, never a crash.
    ///
    /// On a per-shape model, a batch whose bucket has no plan yet runs on another bucket's
    /// plan while its own is built behind it (see [`plans`](super::plans)), unless the settings
    /// say to wait.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        self.run_as(inputs, self.resources.unplanned)
    }

    /// [`Model::run`], with `unplanned` saying what a batch whose bucket has no plan does.
    pub(super) fn run_as(
        &self,
        inputs: Vec<Tensor>,
        unplanned: Unplanned,
    ) -> Result<Vec<Tensor>, Error> {
        let started = Instant::now();
        let shapes = || inputs.iter().map(|input| input.shape.as_slice());
        // A batch with a way to choose: one of several rows, or on several threads.
        let choice = self.splitter.as_deref().map(|splitter| (splitter, splitter.rows(shapes())));
        let (outputs, shares) = match choice.filter(|&(splitter, rows)| splitter.chooses(rows)) {
            Some((splitter, rows)) => {
                let crew = self.resources.crew.as_deref();
                let way = splitter.way(rows, || crew.is_some_and(crew::Crew::awake));
                // A split being tried, or the fastest way: the hands are kept awake for it (a
                // split hands its shares over at once, waking them, and keeps them awake after).
                let wanted = |_: &&crew::Crew| rows.is_some_and(|r| splitter.wants_threads(r));
                if let Some(crew) = crew.filter(|_| !matches!(way, Way::Split(_))).filter(wanted) {
                    crew.keep_awake(crew::KEEP_AWAKE);
                }
                let unsteady = self.unsteady();
                let (outputs, shares) = match &way {
                    // Each share converts its own rows.
                    Way::Split(sizes) => self.run_split(splitter, inputs, sizes, unplanned)?,
                    Way::Threaded => self.whole(inputs, self.resources.executor(), unplanned)?,
                    Way::Single => self.whole(inputs, Executor::SingleThread, unplanned)?,
                    Way::RowByRow => {
                        let rows = rows.unwrap_or(1);
                        self.run_row_by_row(splitter, tract(inputs)?, rows, unplanned)?
                    }
                };
                // A split that ran whole says nothing of how fast splitting is.
                let ran_as_chosen = shares > 1 || matches!(way, Way::Threaded | Way::Single);
                if let Some(rows) = rows.filter(|_| ran_as_chosen) {
                    // A run that built a plan, or ran on another bucket's, says nothing of
                    // later runs.
                    let steady = self.unsteady() == unsteady;
                    splitter.record(rows, &way, steady.then(|| started.elapsed()));
                }
                (outputs, shares)
            }
            None => self.whole(inputs, self.resources.executor(), unplanned)?,
        };
        tracing::trace!(shares, elapsed_ms = crate::elapsed_ms(started), "run");
        Ok(outputs)
    }

    /// Runs one batch whole with matrix products on `executor`, within the model's budget,
    /// and gives its outputs (one share in the second place).
    fn whole(
        &self,
        inputs: Vec<Tensor>,
        executor: Executor,
        unplanned: Unplanned,
    ) -> Result<(Vec<Tensor>, usize), Error> {
        let outputs = self.run_whole(tract(inputs)?, executor, self.resources.budget, unplanned)?;
        Ok((self.outputs(outputs)?, 1))
    }

    /// A run's outputs as the signature names them.
    fn outputs(&self, values: Vec<TractTensor>) -> Result<Vec<Tensor>, Error> {
        let output = |(spec, value): (&TensorSpec, TractTensor)| from_tract(&spec.name, &value);
        self.signature.outputs.iter().zip(values).map(output).collect()
    }

    /// Runs one batch whole with matrix products on `executor`, within `budget` bytes of
    /// tensors alive at once.
    fn run_whole(
        &self,
        inputs: Vec<TractTensor>,
        executor: Executor,
        budget: u64,
        unplanned: Unplanned,
    ) -> Result<Vec<TractTensor>, Error> {
        multithread_tract_scope(executor, || match &self.plans {
            Plans::Symbolic(plan) => contained(budget, "running the model", || {
                let values = inputs.into_iter().map(TValue::from).collect();
                Ok(tensors(plan.run(values, budget)?))
            }),
            Plans::PerShape(plans) => contained(self.resources.cap, "running the model", || {
                plans.run(inputs, &self.signature, budget, unplanned).map(tensors)
            }),
        })
    }

    /// Runs one batch in shares side by side on the engine's threads, one share each (cut
    /// from the request's batch, converted to tract's tensors and run on its own plan state
    /// by the thread that runs it: [`Splitter::split_request`]), and joins their outputs in
    /// row order (the shares' count in the second place); runs it whole when its outputs
    /// cannot be joined. The shares' rows are `sizes` cut again by the speed of
    /// each thread's CPU ([`crew::Crew::weigh`]) when the model runs any batch size as it
    /// comes (planned symbolically); their times update those speeds. Each share runs row by
    /// row where the batch's rows ran faster so than whole on one thread
    /// ([`Splitter::rows_apart_faster`]).
    fn run_split(
        &self,
        splitter: &Splitter,
        inputs: Vec<Tensor>,
        sizes: &[usize],
        unplanned: Unplanned,
    ) -> Result<(Vec<Tensor>, usize), Error> {
        let Some(crew) = &self.resources.crew else {
            return self.whole(inputs, Executor::SingleThread, unplanned);
        };
        // A per-shape model pads a share to its bucket's size: shares cut unevenly across a
        // bucket's bound (17 and 15 of 32) ran PaddleOCR's batch of 32 no faster than whole.
        let sizes = match &self.plans {
            Plans::Symbolic(_) => crew.weigh(sizes),
            Plans::PerShape(_) => sizes.to_vec(),
        };
        // What the hands' shares read, in one allocation: each hand then drops one reference
        // when its share ends (and the caller the model's last, on its own CPU) rather than
        // one per part of the model, each counted on a line of the caller's cache.
        let batch = Arc::new((self.clone(), splitter.split_request(inputs, &sizes)?));
        let rows: usize = sizes.iter().sum();
        let by_rows = splitter.rows_apart_faster(rows);
        let work = move |model: &Model, shares: &split::Shares, index: usize| {
            let (cpu, started) = (cpus::current_cpu(), Instant::now());
            let (share, share_rows) = (shares.cut(index)?, shares.rows(index));
            // The share's part of the budget goes with its part of the rows.
            let part = u128::from(model.resources.budget) * share_rows as u128;
            let budget = u64::try_from(part / rows.max(1) as u128).unwrap_or(u64::MAX);
            let outputs = model.run_share(share, share_rows, by_rows, budget, unplanned)?;
            Ok::<_, Error>((outputs, (cpu, share_rows, started.elapsed())))
        };
        let others = (1..sizes.len())
            .map(|index| {
                let batch = Arc::clone(&batch);
                move || work(&batch.0, &batch.1, index)
            })
            .collect();
        let mine = || {
            let ran = work(self, &batch.1, 0);
            // The next batch is likely split too: its shares start without a wake-up. (Said
            // once the caller's share is done, while a hand's may still run.)
            crew.keep_awake(crew::KEEP_AWAKE);
            ran
        };
        let ran = crew.run(mine, others);
        let (outputs, times): (Vec<_>, Vec<_>) = ran.into_iter().collect::<Result<_, _>>()?;
        crew.learn(&times);
        self.join(splitter, outputs, &batch.1, unplanned)
    }

    /// Runs one batch of `rows` rows on the calling thread one row after another
    /// ([`Way::RowByRow`]), each row within the whole budget, and joins their outputs in row
    /// order (the rows' count in the second place); runs it whole when its outputs cannot be
    /// joined.
    fn run_row_by_row(
        &self,
        splitter: &Splitter,
        inputs: Vec<TractTensor>,
        rows: usize,
        unplanned: Unplanned,
    ) -> Result<(Vec<Tensor>, usize), Error> {
        let shares = splitter.split(inputs, &vec![1; rows]);
        let outputs = self.run_each(&shares, self.resources.budget, unplanned)?;
        self.join(splitter, outputs, &shares, unplanned)
    }

    /// Runs the share of a split batch (`inputs`, `rows` rows) on the calling thread within
    /// `budget`: whole, or `by_rows` one row after another, their outputs joined in row order
    /// (whole when they cannot be joined).
    fn run_share(
        &self,
        inputs: Vec<TractTensor>,
        rows: usize,
        by_rows: bool,
        budget: u64,
        unplanned: Unplanned,
    ) -> Result<Vec<TractTensor>, Error> {
        let splitter = self.splitter.as_deref().filter(|_| by_rows && rows > 1);
        let Some(splitter) = splitter else {
            return self.run_whole(inputs, Executor::SingleThread, budget, unplanned);
        };
        let each = splitter.split(inputs, &vec![1; rows]);
        let outputs = self.run_each(&each, budget, unplanned)?;
        match split::join(&outputs, &each.sizes(), &self.signature)? {
            Some(joined) => Ok(joined),
            None => self.run_whole(each.inputs()?, Executor::SingleThread, budget, unplanned),
        }
    }

    /// Runs every share of `shares` on the calling thread in turn, each within `budget`.
    fn run_each(
        &self,
        shares: &split::Shares,
        budget: u64,
        unplanned: Unplanned,
    ) -> Result<Vec<Vec<TractTensor>>, Error> {
        (0..shares.count())
            .map(|index| {
                self.run_whole(shares.cut(index)?, Executor::SingleThread, budget, unplanned)
            })
            .collect()
    }

    /// The outputs of a batch's `shares` joined in row order (converted from tract's as they
    /// are joined), and how many shares ran; when an output cannot be joined, the batch run
    /// whole instead (one share), and every later batch too.
    fn join(
        &self,
        splitter: &Splitter,
        outputs: Vec<Vec<TractTensor>>,
        shares: &split::Shares,
        unplanned: Unplanned,
    ) -> Result<(Vec<Tensor>, usize), Error> {
        let sizes = shares.sizes();
        let convert = |spec: &TensorSpec, parts: &[&TractTensor], axis| {
            from_tract_joined(&spec.name, parts, axis)
        };
        if let Some(joined) = split::join_with(&outputs, &sizes, &self.signature, convert)? {
            return Ok((joined, sizes.len()));
        }
        tracing::debug!("an output has no batch axis to join: running whole");
        splitter.unjoinable();
        let (executor, inputs) = (self.resources.executor(), shares.inputs()?);
        let whole = self.run_whole(inputs, executor, self.resources.budget, unplanned)?;
        Ok((self.outputs(whole)?, 1))
    }
}

/// `inputs` as tract's tensors.
fn tract(inputs: Vec<Tensor>) -> Result<Vec<TractTensor>, Error> {
    inputs.into_iter().map(to_tract).collect()
}

/// A run's outputs as tensors (taken, not copied, where the run holds them alone).
fn tensors(values: impl IntoIterator<Item = TValue>) -> Vec<TractTensor> {
    values.into_iter().map(TValue::into_tensor).collect()
}
