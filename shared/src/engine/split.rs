//! Batches across threads. A batch of independent rows (the assumption the per-shape padding
//! already makes, on the same batch axes) can run three ways: whole with tract's matrix
//! products on every engine thread, whole on the calling thread alone, or split into one
//! share per thread ([`Shares`]), each share on its own plan state, the outputs joined back
//! in row order. tract parallelises matrix products only, so splitting is what makes a second
//! vCPU count for convolutions; and its threaded products can make a run slower than one
//! thread does (their hand-offs cost more than small products save: one PaddleOCR image took
//! 1.7x as long on two threads, the small CNN's batch of 8 1.2x).
//!
//! Which way is fastest depends on the model, the batch size and the machine, so it is
//! measured. Batch sizes are grouped by powers of two; in each group every way is tried
//! `WARM_UP` times in turn (a split only once a whole run took at least
//! `Settings::min_share_micros`, below which a split cannot pay for its hand-off to a thread
//! already awake, about a microsecond), then runs take the way with the lowest time per row
//! (the lower quartile of its last `SAMPLES` runs), and every `RECHECK`th run of the group goes one
//! of the other ways, whose time then joins what was known of it, so that a change (another
//! model loaded beside it, a busier CPU) or a warm-up that went badly is seen.
//!
//! A split is tried (warmed up or rechecked) in `TRY_RUNS` runs in a row, and only while the
//! threads that take its shares are awake. Asleep, they took longer to wake than a small
//! batch's share takes; and the first split after a while runs with the weights out of the
//! other CPU's cache. Tried once, right after the threads slept, every split of the small
//! CNN's batch of 8 measured 1.4-2x its steady time and lost to one thread, which steady
//! splits beat by 1.3-1.5x. A try that finds the threads asleep is put off to the group's
//! next run, and the caller wakes them ([`Splitter::split_due`]). A model whose outputs
//! cannot be joined back runs whole.
//!
//! A fourth way runs a batch whole on the calling thread, one row after another
//! ([`Way::RowByRow`]), its rows' outputs joined as a split's shares are. It is measured
//! beside the others, on one thread as on several, once a whole run of the batch took
//! `Settings::row_by_row_micros` (1 ms): a large model's intermediate tensors for one row
//! stay in the CPU's cache where a whole batch's do not. magika's batch of 8 (its 256-channel
//! activations 4 MiB a batch, 0.5 MiB a row) took 77-79 ms row by row against 84-89 ms whole,
//! its batch of 1 8.6-9.7 ms. On one thread the splitter measures nothing else, and leaves a
//! batch of one row alone.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tract_onnx::prelude::Tensor as TractTensor;

use super::convert::{to_tract, to_tract_rows};
use super::engine_error;
use crate::error::Error;
use crate::manifest::{Signature, TensorSpec};
use crate::tensor::{Tensor, TensorData};

/// How one batch runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Way {
    /// Whole, with matrix products on every engine thread.
    Threaded,
    /// Whole, on the calling thread alone.
    Single,
    /// In shares of these many rows side by side, one per thread.
    Split(Vec<usize>),
    /// Whole, on the calling thread, one row after another: each row's intermediate tensors
    /// stay in the CPU's cache where a whole batch's would not.
    RowByRow,
}

impl Way {
    /// The way's place among a group's measurements.
    fn index(&self) -> usize {
        match self {
            Way::Threaded => THREADED,
            Way::Split(_) => SPLIT,
            Way::Single => SINGLE,
            Way::RowByRow => ROW_BY_ROW,
        }
    }
}

/// The ways' places among a group's measurements ([`Way::index`]), in the order they warm up
/// and win ties.
const THREADED: usize = 0;
const SPLIT: usize = 1;
const SINGLE: usize = 2;
const ROW_BY_ROW: usize = 3;
/// How many ways there are.
const WAYS: usize = 4;

/// A batch whose whole run took this long or longer splits even while the threads sleep: their
/// wake-up (40-50 µs on a 2-vCPU VM) is a small part of it. (Waiting for them to spin,
/// magika's batch of 8, 64 KiB of input decoded in a few microseconds after the threads were
/// woken, found them still waking on every run, and ran on one thread: 75 ms against 40-50 ms
/// split.)
const LONG_SPLIT: Duration = Duration::from_millis(1);

/// Batch sizes are grouped by powers of two: 1, 2, 3-4, 5-8, ..., the last group holding
/// every larger size.
const GROUPS: usize = 16;

/// Runs of each way in a group before their times are compared (the fastest of them: a first
/// run warms the way up).
const WARM_UP: u64 = 3;

/// Runs in a row a split is tried for, when warmed up or rechecked: its first runs after a
/// while are slower than those that follow them. Tried three runs in a row, two of them
/// often took the small CNN's batch of 32 at 14-32 µs per row against 6-7 µs in the splits
/// after them, and the split lost; tried five, its time is a steady split's (by their median:
/// the small CNN's batch of 8 on two threads 0.98-1.21x -> 0.98-1.45x in eight rounds of
/// each, 0.96-1.55x -> 0.97-1.56x, median 1.0 -> 1.41x, in eight more).
const TRY_RUNS: u64 = 5;

/// Every this many runs of a group after its warm-up, one goes a way measured slower: with
/// two others, each is measured every `2 * RECHECK` runs, and a way that became the fastest
/// takes over after two of them.
const RECHECK: u64 = 32;

/// The group of batch sizes `rows` belongs to.
fn group(rows: usize) -> usize {
    let bits = (usize::BITS - rows.saturating_sub(1).leading_zeros()) as usize;
    bits.min(GROUPS - 1)
}

/// Samples kept of each way in each group: a way's time is their lower quartile (the second
/// fastest of five), so that runs that paid for something else (the first after a pause, with
/// the weights out of the CPU's cache: 2-4x a steady run on the small CNN, whole or split) do
/// not decide the way, and a way run only now and then is judged on more than its last run.
/// Judged by the median, the small CNN's batch of 8 split in 27-39 runs of 400, as a split's
/// five runs tried in a row held two such runs (50, 59, 71, 166 and 195 µs against 55-60 µs
/// whole); by the lower quartile, in 246-371, and the two threads ran it 0.95-0.99x -> 1.09-1.28x
/// as fast as one (the batch of 32 1.05-1.55x -> 1.51-1.62x), in three rounds of each.
const SAMPLES: usize = 5;

/// What is known of one way in one group of batch sizes.
#[derive(Debug, Default)]
struct Measured {
    /// Wall-clock nanoseconds per row of the last `SAMPLES` runs, in a ring.
    samples: [AtomicU64; SAMPLES],
    /// Runs measured so far.
    runs: AtomicU64,
}

impl Measured {
    /// The lower quartile of the samples (the fastest of up to three), 0 before any.
    fn nanos(&self) -> u64 {
        let count = (self.runs() as usize).min(SAMPLES);
        let mut samples = [0; SAMPLES];
        for (sample, taken) in samples.iter_mut().zip(&self.samples[..count]) {
            *sample = taken.load(Ordering::Relaxed);
        }
        let samples = &mut samples[..count];
        samples.sort_unstable();
        samples.get(count / 4).copied().unwrap_or(0)
    }

    fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Records a run of `nanos` per row.
    fn record(&self, nanos: u64) {
        let slot = self.runs.fetch_add(1, Ordering::Relaxed) as usize % SAMPLES;
        self.samples[slot].store(nanos.max(1), Ordering::Relaxed);
    }
}

/// How a model's batches run, and what was measured of each way.
#[derive(Debug)]
pub(super) struct Splitter {
    /// For each input, the axes that carry the batch.
    batch_axes: Arc<[Vec<usize>]>,
    threads: usize,
    min_share: Duration,
    /// Per group of batch sizes, per way (`Way::index`).
    measured: [[Measured; WAYS]; GROUPS],
    /// Runs per group of batch sizes after its warm-up.
    runs: [AtomicU64; GROUPS],
    /// Per group of batch sizes: the runs of a split being tried still to go (put off until
    /// the threads are awake, or after its first).
    owed: [AtomicU64; GROUPS],
    /// Batches run split so far.
    splits: AtomicU64,
    /// The shortest whole run of a batch after which it may run row by row.
    min_row_by_row: Duration,
    /// Batches run row by row so far.
    rows_apart: AtomicU64,
    /// Set when the outputs of a split batch could not be joined: batches then run whole.
    unjoinable: AtomicBool,
}

impl Splitter {
    /// A splitter of batches on `batch_axes` over `threads` threads (1: a batch runs whole or
    /// row by row), splitting batches whose whole runs took `min_share` or longer and running
    /// row by row those whose whole runs took `min_row_by_row` or longer.
    pub(super) fn new(
        batch_axes: Vec<Vec<usize>>,
        threads: usize,
        min_share: Duration,
        min_row_by_row: Duration,
    ) -> Self {
        Self {
            batch_axes: batch_axes.into(),
            threads,
            min_share,
            min_row_by_row,
            measured: Default::default(),
            runs: Default::default(),
            owed: Default::default(),
            splits: AtomicU64::new(0),
            rows_apart: AtomicU64::new(0),
            unjoinable: AtomicBool::new(false),
        }
    }

    /// The way a batch of `rows` rows ([`Splitter::rows`]) runs: threaded when its batch axes
    /// disagree (`None`); else a way its group of sizes has not warmed up yet; else the
    /// fastest there, but every `RECHECK`th run another. A split being tried runs
    /// `TRY_RUNS` times in a row. A split, tried or the fastest, waits for the threads that
    /// would take its shares to be `awake`: asleep, this run goes on the calling thread alone
    /// (and a try is put off to the group's next runs, which split, awake or not). A threaded
    /// run would close the threads' window, and leave tract's pool spinning beside the split
    /// (the small CNN's batch of 8 split right after a threaded run took 3x as long as
    /// whole); and a split whose threads must wake first took 120-1000 µs on the small CNN's
    /// batch of 8, against 80-150 µs on one thread, in the first run after a pause of 5 ms.
    /// (`awake` is asked only of a split: it looks at each thread; a batch whose whole run
    /// took `LONG_SPLIT` or longer splits awake or not.) On one thread a batch
    /// runs whole unless it may run row by row. A split needs a whole run of the batch
    /// ([`Splitter::whole_run`]) of `min_share` or more, row by row one of `min_row_by_row`.
    pub(super) fn way(&self, rows: Option<usize>, awake: impl FnOnce() -> bool) -> Way {
        let Some(rows) = rows else { return Way::Threaded };
        let group = group(rows);
        let whole = self.whole_run(rows, &self.measured[group]);
        let over = |least: Duration| whole.is_some_and(|whole| whole >= least);
        let by_rows = over(self.min_row_by_row);
        if self.threads < 2 && !by_rows {
            return Way::Single;
        }
        let splits = self.threads >= 2 && over(self.min_share);
        let owed = &self.owed[group];
        let took = owed.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if took.is_ok() {
            if splits {
                return self.way_at(SPLIT, rows);
            }
            owed.store(0, Ordering::Relaxed);
        }
        let (way, tried) = self.pick(group, splits, by_rows);
        if way != SPLIT {
            return self.way_at(way, rows);
        }
        match (tried, over(LONG_SPLIT) || awake()) {
            (false, true) => self.way_at(SPLIT, rows),
            (false, false) => Way::Single,
            (true, true) => {
                owed.store(TRY_RUNS - 1, Ordering::Relaxed);
                self.way_at(SPLIT, rows)
            }
            (true, false) => {
                owed.store(TRY_RUNS, Ordering::Relaxed);
                Way::Single
            }
        }
    }

    /// Whether a batch of `rows` rows ([`Splitter::rows`]) has more than one way to run: on
    /// one thread, a batch of one row (or whose batch axes disagree) runs whole, unmeasured.
    pub(super) fn chooses(&self, rows: Option<usize>) -> bool {
        self.threads >= 2 || rows.is_some_and(|rows| rows >= 2)
    }

    /// The way at `index` (`Way::index`) for a batch of `rows` rows.
    fn way_at(&self, index: usize, rows: usize) -> Way {
        match index {
            THREADED => Way::Threaded,
            SPLIT => Way::Split(self.sizes(rows)),
            ROW_BY_ROW => Way::RowByRow,
            _ => Way::Single,
        }
    }

    /// The way (`Way::index`) a run of `group` takes, and whether it is tried rather than the
    /// fastest: the first of the least run while one has not warmed up, so the ways warm up
    /// in turn; then the fastest, but every `RECHECK`th run another. Threaded products are
    /// among the ways with several threads, a split when it `splits`, and rows one by one
    /// when the batch goes `by_rows` ([`Splitter::way`] says when). (Picked by index, without building
    /// a list of the ways on every run: with one, a model on two threads ran the small MLP's
    /// single rows, 4-8 µs each, 0.95-0.97x as fast as on one thread; without, 0.96-1.00x.)
    fn pick(&self, group: usize, splits: bool, by_rows: bool) -> (usize, bool) {
        let measured = &self.measured[group];
        let threaded = self.threads >= 2;
        let ways =
            [THREADED, SPLIT, SINGLE, ROW_BY_ROW].into_iter().filter(move |&way| match way {
                THREADED => threaded,
                SPLIT => splits,
                ROW_BY_ROW => by_rows,
                _ => true,
            });
        let cold = ways.clone().min_by_key(|&way| measured[way].runs()).unwrap_or(SINGLE);
        if measured[cold].runs() < WARM_UP {
            return (cold, true);
        }
        let fastest = ways.clone().min_by_key(|&way| measured[way].nanos()).unwrap_or(SINGLE);
        let run = self.runs[group].fetch_add(1, Ordering::Relaxed) + 1;
        if !run.is_multiple_of(RECHECK) {
            return (fastest, false);
        }
        let mut others = ways.filter(|&way| way != fastest);
        let other = (run / RECHECK) as usize % others.clone().count().max(1);
        (others.nth(other).unwrap_or(fastest), true)
    }

    /// Whether a split of a batch of `rows` rows is being tried: the next batch of its size
    /// splits, and the threads should be woken for it.
    pub(super) fn split_due(&self, rows: usize) -> bool {
        self.owed[group(rows)].load(Ordering::Relaxed) > 0
    }

    /// How long a whole run of a batch of `rows` rows takes, by the fastest whole way
    /// measured in its group (`measured`); `None` when it cannot be cut into rows (one row,
    /// outputs that cannot be joined) or no whole run was measured.
    fn whole_run(&self, rows: usize, measured: &[Measured; WAYS]) -> Option<Duration> {
        if rows < 2 || self.unjoinable.load(Ordering::Relaxed) {
            return None;
        }
        let whole = [THREADED, SINGLE].map(|way| measured[way].nanos());
        let per_row = whole.into_iter().filter(|&nanos| nanos > 0).min()?;
        Some(Duration::from_nanos(per_row.saturating_mul(rows as u64)))
    }

    /// The rows of each share a batch of `rows` rows is split into.
    fn sizes(&self, rows: usize) -> Vec<usize> {
        // One share per thread. More, taken by the threads one by one so that a slower vCPU
        // would take fewer, cost each share's run of its own: four per thread ran PaddleOCR's
        // batch of 8 at 1.3-1.8x (1.7-1.9x in two shares) and the large MLP's batch of 32 at
        // 1.1x (1.6x); two per thread took the small CNN's batch of 8 from 0.061 to 0.077 ms.
        // The shares are cut by each CPU's speed instead (`cpus::Speeds`).
        let count = self.threads.min(rows);
        (0..count).map(|i| rows / count + usize::from(i < rows % count)).collect()
    }

    /// Whether a batch of `shapes` would most likely run split: a split was put off to it
    /// ([`Splitter::split_due`]), or its group of sizes has warmed up and a split is the
    /// fastest way measured there. (Asks without counting a run, unlike [`Splitter::way`].)
    pub(super) fn would_split<'a>(&self, shapes: impl Iterator<Item = &'a [usize]>) -> bool {
        rows_of(shapes, &self.batch_axes).is_some_and(|rows| self.wants_threads(rows))
    }

    /// Whether a batch of `rows` rows would most likely run split ([`Splitter::would_split`]):
    /// the threads should be awake for it.
    pub(super) fn wants_threads(&self, rows: usize) -> bool {
        if rows < 2 || self.threads < 2 {
            return false;
        }
        if self.split_due(rows) {
            return true;
        }
        let measured = &self.measured[group(rows)];
        let warm = [THREADED, SPLIT, SINGLE].iter().all(|&way| measured[way].runs() >= WARM_UP);
        let fastest =
            (0..WAYS).filter(|&i| measured[i].nanos() > 0).min_by_key(|&i| measured[i].nanos());
        warm && fastest == Some(SPLIT)
    }

    /// Whether batches of `rows` rows ran faster row by row than whole on the calling thread,
    /// as last measured in their group: the shares of a split of them run row by row too.
    pub(super) fn rows_apart_faster(&self, rows: usize) -> bool {
        let measured = &self.measured[group(rows)];
        let (apart, whole) = (measured[ROW_BY_ROW].nanos(), measured[SINGLE].nanos());
        apart > 0 && whole > 0 && apart < whole
    }

    /// Batches run split so far.
    pub(super) fn splits(&self) -> u64 {
        self.splits.load(Ordering::Relaxed)
    }

    /// Batches run row by row so far.
    pub(super) fn row_by_row_runs(&self) -> u64 {
        self.rows_apart.load(Ordering::Relaxed)
    }

    /// Records a run of `rows` rows the `way` it ran, and how long it took; `None` when its
    /// time says nothing of later runs (it built a plan, for one), which then counts as a
    /// split but is not measured.
    pub(super) fn record(&self, rows: usize, way: &Way, elapsed: Option<Duration>) {
        match way {
            Way::Split(_) => _ = self.splits.fetch_add(1, Ordering::Relaxed),
            Way::RowByRow => _ = self.rows_apart.fetch_add(1, Ordering::Relaxed),
            _ => {}
        }
        let Some(elapsed) = elapsed else { return };
        let nanos = elapsed.as_nanos() / rows.max(1) as u128;
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
        self.measured[group(rows)][way.index()].record(nanos);
    }

    /// Notes that a split batch's outputs could not be joined: batches run whole from now on.
    pub(super) fn unjoinable(&self) {
        self.unjoinable.store(true, Ordering::Relaxed);
    }

    /// The batch size of inputs of `shapes`, when every batch axis agrees on one.
    pub(super) fn rows<'a>(&self, shapes: impl Iterator<Item = &'a [usize]>) -> Option<usize> {
        rows_of(shapes, &self.batch_axes)
    }

    /// `inputs` to be cut into shares of `sizes` rows along their batch axes.
    pub(super) fn split(&self, inputs: Vec<TractTensor>, sizes: &[usize]) -> Shares {
        Shares::new(Batch::Tract(inputs), Arc::clone(&self.batch_axes), sizes)
    }

    /// The request's `inputs` to be cut into shares of `sizes` rows: each share's rows are
    /// converted to tract's tensors by the thread that runs it where every input has its
    /// batch on its first axis alone (its rows side by side) and no strings; otherwise the
    /// whole batch is converted here, once (strings are checked whole, so that an error
    /// names the element's place in the batch).
    pub(super) fn split_request(
        &self,
        inputs: Vec<Tensor>,
        sizes: &[usize],
    ) -> Result<Shares, Error> {
        let rows_apart = inputs
            .iter()
            .zip(self.batch_axes.iter())
            .all(|(input, axes)| axes[..] == [0] && !matches!(input.data, TensorData::Bytes(_)));
        let batch = if rows_apart {
            Batch::Request(inputs)
        } else {
            Batch::Tract(inputs.into_iter().map(to_tract).collect::<Result<_, _>>()?)
        };
        Ok(Shares::new(batch, Arc::clone(&self.batch_axes), sizes))
    }
}

/// A batch to be cut into shares: tract's tensors, or the request's, each share's rows
/// converted to tract's by the thread that runs it. (Converting the whole batch first, on the
/// calling thread before any share started, took the small CNN's batch of 32 5.5-6.8 µs of
/// an 85-100 µs split, its batch of 8 1.5-1.7 µs of 28.)
enum Batch {
    Tract(Vec<TractTensor>),
    /// Each input's batch on its first axis alone.
    Request(Vec<Tensor>),
}

/// The shares of a split batch, in row order. Each thread cuts the rows of the share it runs
/// from the batch: the shares are cut side by side, and each lands in the cache of the CPU
/// that reads it. (Cut by the calling thread before any share started, each from a copy of
/// the whole batch, the small CNN's batch of 32 took 13 µs of a 220 µs split to cut.)
pub(super) struct Shares {
    inputs: Batch,
    batch_axes: Arc<[Vec<usize>]>,
    /// The first row and the row count of each share.
    rows: Vec<(usize, usize)>,
}

impl Shares {
    fn new(inputs: Batch, batch_axes: Arc<[Vec<usize>]>, sizes: &[usize]) -> Self {
        let starts = sizes.iter().scan(0, |start, &size| {
            *start += size;
            Some(*start - size)
        });
        let rows = starts.zip(sizes.iter().copied()).collect();
        Self { inputs, batch_axes, rows }
    }

    /// Share `index`, cut from the batch (none past the last share).
    pub(super) fn cut(&self, index: usize) -> Result<Vec<TractTensor>, Error> {
        let (start, size) = self.rows.get(index).copied().unwrap_or((0, 0));
        match &self.inputs {
            Batch::Tract(inputs) => cut(inputs, &self.batch_axes, start, size),
            // Rows along the first axis lie side by side: only theirs are converted.
            Batch::Request(inputs) => {
                inputs.iter().map(|input| to_tract_rows(input, Some((start, size)))).collect()
            }
        }
    }

    /// The rows of share `index`.
    pub(super) fn rows(&self, index: usize) -> usize {
        self.rows.get(index).map_or(0, |&(_, size)| size)
    }

    /// How many shares there are.
    pub(super) fn count(&self) -> usize {
        self.rows.len()
    }

    /// The rows of every share, in row order.
    pub(super) fn sizes(&self) -> Vec<usize> {
        self.rows.iter().map(|&(_, size)| size).collect()
    }

    /// The whole batch.
    pub(super) fn inputs(&self) -> Result<Vec<TractTensor>, Error> {
        match &self.inputs {
            Batch::Tract(inputs) => Ok(inputs.clone()),
            Batch::Request(inputs) => {
                inputs.iter().map(|input| to_tract_rows(input, None)).collect()
            }
        }
    }
}

/// The `size` rows of `inputs` from row `start` on, along their `batch_axes`.
pub(super) fn cut(
    inputs: &[TractTensor],
    batch_axes: &[Vec<usize>],
    start: usize,
    size: usize,
) -> Result<Vec<TractTensor>, Error> {
    let slice = |tensor: &TractTensor, axis: usize| {
        tensor.slice(axis, start, start + size).map_err(|e| engine_error("cannot split a batch", e))
    };
    // Sliced from the batch itself: no copy of the whole batch first.
    let cut = |(input, axes): (&TractTensor, &Vec<usize>)| match axes.split_first() {
        Some((&first, others)) => {
            others.iter().try_fold(slice(input, first)?, |tensor, &axis| slice(&tensor, axis))
        }
        None => Ok(input.clone()),
    };
    inputs.iter().zip(batch_axes).map(cut).collect()
}

/// The batch size of `inputs` along each one's `batch_axes`, when every batch axis agrees on
/// one that is not 0.
pub(super) fn batch_rows(inputs: &[TractTensor], batch_axes: &[Vec<usize>]) -> Option<usize> {
    rows_of(inputs.iter().map(|t| t.shape()), batch_axes)
}

/// The batch size of inputs of `shapes` along each one's `batch_axes`, when every batch
/// axis agrees on one that is not 0.
pub(super) fn rows_of<'a>(
    shapes: impl Iterator<Item = &'a [usize]>,
    batch_axes: &[Vec<usize>],
) -> Option<usize> {
    let mut sizes = shapes
        .zip(batch_axes)
        .flat_map(|(shape, axes)| axes.iter().map(|&a| shape.get(a).copied()));
    let rows = sizes.next()??;
    sizes.all(|s| s == Some(rows)).then_some(rows).filter(|&r| r > 0)
}

/// The shares' outputs joined back along each output's batch axis ([`join_axis`]); `None`
/// when an output cannot be joined: the batch must then run whole.
pub(super) fn join(
    shares: &[Vec<TractTensor>],
    sizes: &[usize],
    signature: &Signature,
) -> Result<Option<Vec<TractTensor>>, Error> {
    join_with(shares, sizes, signature, |_, parts, axis| {
        TractTensor::stack_tensors(axis, parts)
            .map_err(|e| engine_error("cannot join a split batch", e))
    })
}

/// Each output of the shares (of `sizes` rows) joined by `join` from its spec, its parts in
/// row order and the axis they join along ([`join_axis`]); `None` when an output cannot be
/// joined: the batch must then run whole.
pub(super) fn join_with<T>(
    shares: &[Vec<TractTensor>],
    sizes: &[usize],
    signature: &Signature,
    join: impl Fn(&TensorSpec, &[&TractTensor], usize) -> Result<T, Error>,
) -> Result<Option<Vec<T>>, Error> {
    let mut joined = Vec::with_capacity(signature.outputs.len());
    for (index, spec) in signature.outputs.iter().enumerate() {
        let parts = parts(shares, index);
        let Some(axis) = join_axis(&parts, sizes, spec) else { return Ok(None) };
        joined.push(join(spec, &parts, axis)?);
    }
    Ok(Some(joined))
}

/// Output `index` of every share, in row order.
fn parts(shares: &[Vec<TractTensor>], index: usize) -> Vec<&TractTensor> {
    shares.iter().filter_map(|share| share.get(index)).collect()
}

/// The axis along which `parts` (an output, `spec`, of shares of `sizes` rows) join back:
/// the first axis declared dynamic whose size is each share's row count, the other axes and
/// the element type the same in every share. `None` when there is no such axis (the output's
/// rows cannot be told apart).
fn join_axis(parts: &[&TractTensor], sizes: &[usize], spec: &TensorSpec) -> Option<usize> {
    let first = parts.first()?;
    if parts.len() != sizes.len() {
        return None;
    }
    let dynamic = |axis: usize| spec.shape.get(axis).is_none_or(|&d| d < 0);
    let fits = |axis: usize| {
        dynamic(axis)
            && parts.iter().zip(sizes).all(|(part, &size)| {
                part.rank() == first.rank()
                    && part.datum_type() == first.datum_type()
                    && part.shape().get(axis) == Some(&size)
                    && (0..first.rank())
                        .all(|other| other == axis || part.shape()[other] == first.shape()[other])
            })
    };
    (0..first.rank()).find(|&axis| fits(axis))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DataType;

    fn splitter(threads: usize) -> Splitter {
        let (min_share, min_row_by_row) = (Duration::from_micros(100), Duration::from_millis(1));
        Splitter::new(vec![vec![0], vec![1]], threads, min_share, min_row_by_row)
    }

    fn rows(count: usize, width: usize) -> TractTensor {
        let values: Vec<f32> = (0..count * width).map(|v| v as f32).collect();
        TractTensor::from_shape(&[count, width], &values).unwrap()
    }

    /// The ways `runs` batches of `inputs` take, each recorded as taking `micros` of the way.
    fn run(
        splitter: &Splitter,
        inputs: &[TractTensor],
        runs: u64,
        micros: impl Fn(&Way) -> u64,
    ) -> Vec<Way> {
        let rows = splitter.rows(inputs.iter().map(|t| t.shape())).unwrap();
        (0..runs)
            .map(|_| {
                let way = splitter.way(Some(rows), || true);
                splitter.record(rows, &way, Some(Duration::from_micros(micros(&way))));
                way
            })
            .collect()
    }

    /// Runs until every way of a new group has warmed up, the split tried `TRY_RUNS` in a row
    /// while the threads are awake.
    const WARM_RUNS: u64 = 3 * WARM_UP + TRY_RUNS - WARM_UP;

    /// `turn` once per warm-up run.
    fn turns<T: Clone>(turn: &[T]) -> Vec<T> {
        turn.iter().cycle().take(turn.len() * WARM_UP as usize).cloned().collect()
    }

    #[test]
    fn every_way_warms_up_in_turn_then_the_fastest_runs_and_now_and_then_another() {
        let splitter = splitter(3);
        let state = TractTensor::zero::<f32>(&[2, 7, 4]).unwrap();
        let inputs = [rows(7, 2), state];
        let split = Way::Split(vec![3, 2, 2]);
        assert_eq!(splitter.way(Some(7), || true), Way::Threaded, "threaded first");
        splitter.record(7, &Way::Threaded, None);
        assert_eq!(splitter.way(Some(7), || true), Way::Threaded, "a run whose time says nothing");
        let micros = |way: &Way| match way {
            Way::Threaded => 900,
            Way::Split(_) => 400,
            Way::Single | Way::RowByRow => 700,
        };
        let warm_up = WARM_RUNS as usize;
        let ways = run(&splitter, &inputs, WARM_RUNS + RECHECK * 2, micros);
        // The split tried `TRY_RUNS` times in a row; one thread and threaded products in turn.
        let (threaded, single) = (Way::Threaded, Way::Single);
        let tried = [vec![threaded.clone()], vec![split.clone(); TRY_RUNS as usize]].concat();
        let turn = [single.clone(), threaded.clone(), single.clone(), threaded, single];
        assert_eq!(ways[..warm_up], [&tried[..], &turn[..]].concat());
        let others: Vec<(usize, &Way)> =
            ways[warm_up..].iter().enumerate().filter(|(_, way)| **way != split).collect();
        let last = RECHECK as usize - 1;
        assert_eq!(others, [(last, &Way::Single), (last + RECHECK as usize, &Way::Threaded)]);
        assert_eq!(splitter.splits(), TRY_RUNS + RECHECK * 2 - 2, "every split run counts");
        // Two slow runs of five (threads woken after a pause) do not decide the way.
        let micros_of = |micros| Some(Duration::from_micros(micros));
        for slow in 0..2 {
            assert_eq!(splitter.way(Some(7), || true), split, "after {slow} slow runs");
            splitter.record(7, &split, micros_of(5000));
        }
        // Splitting grows slower than one thread: one thread takes over once four of the
        // split's last five runs were slower.
        let ways = run(&splitter, &inputs, 5, |way| if *way == split { 800 } else { micros(way) });
        assert_eq!(ways, [vec![split.clone(); 2], vec![Way::Single; 3]].concat());
        // A way measured slower takes over once rechecks find it faster (two of five).
        let ways = run(&splitter, &inputs, RECHECK * 8, |way| match way {
            Way::Threaded => 100,
            _ => 800,
        });
        let threaded: Vec<usize> = (0..ways.len()).filter(|&i| ways[i] == Way::Threaded).collect();
        assert!(threaded[1] - threaded[0] > RECHECK as usize, "rechecked: {threaded:?}");
        let others: Vec<usize> =
            (threaded[1]..ways.len()).filter(|&i| !threaded.contains(&i)).collect();
        let rechecks = others.windows(2).all(|pair| pair[1] - pair[0] == RECHECK as usize);
        assert!(rechecks && others.len() < 5, "from the second on, but for rechecks: {others:?}");
    }

    #[test]
    fn one_thread_runs_a_long_batch_whole_or_row_by_row_whichever_was_faster() {
        let (splitter, short) = (splitter(1), splitter(1));
        let inputs = [rows(7, 2), TractTensor::zero::<f32>(&[2, 7, 4]).unwrap()];
        // One row on one thread, or rows whose batch axes disagree: nothing to choose.
        assert!(!splitter.chooses(Some(1)) && !splitter.chooses(None) && splitter.chooses(Some(7)));
        assert!(super::tests::splitter(2).chooses(Some(1)), "threaded or not, on two threads");
        // A whole run of 7 rows measured at 7 ms (over the 1 ms minimum): rows one by one
        // are tried in turn with whole runs, then the faster runs and the other is rechecked.
        let faster_by_rows = |way: &Way| match way {
            Way::RowByRow => 5000,
            _ => 7000,
        };
        let ways = run(&splitter, &inputs, 6 + RECHECK * 2, faster_by_rows);
        let turns = turns(&[Way::Single, Way::RowByRow]);
        assert_eq!(ways[..6], turns[..], "warmed up in turn");
        let whole: Vec<usize> = (6..ways.len()).filter(|&i| ways[i] != Way::RowByRow).collect();
        let last = 6 + RECHECK as usize - 1;
        assert_eq!(whole, [last, last + RECHECK as usize], "whole only when rechecked");
        assert_eq!(splitter.row_by_row_runs(), 3 + RECHECK * 2 - 2);
        assert!(splitter.rows_apart_faster(7), "a split's shares would run row by row");
        // Whole runs faster: they take over once four of the last five runs by rows were slower.
        let ways = run(&splitter, &inputs, 8, |way| 12000 - faster_by_rows(way));
        assert_eq!(ways, [vec![Way::RowByRow; 4], vec![Way::Single; 4]].concat());
        assert!(!splitter.rows_apart_faster(7), "a split's shares would run whole");
        // Never threaded products or a split on one thread.
        assert!(!ways.iter().any(|way| matches!(way, Way::Threaded | Way::Split(_))));
        // A batch whose whole run is under the minimum (0.7 ms) runs whole only.
        let ways = run(&short, &inputs, 3 * RECHECK, |way| faster_by_rows(way) / 10);
        assert!(ways.iter().all(|way| *way == Way::Single), "{ways:?}");
    }

    /// Runs of `rows` rows while the threads sleep: the ways they take, each recorded as
    /// taking `micros` of the way, and whether a split is being tried after it (the threads
    /// to be woken for the next run).
    fn run_asleep(
        splitter: &Splitter,
        rows: usize,
        runs: u64,
        micros: fn(&Way) -> u64,
    ) -> Vec<(Way, bool)> {
        (0..runs)
            .map(|_| {
                let way = splitter.way(Some(rows), || false);
                splitter.record(rows, &way, Some(Duration::from_micros(micros(&way))));
                (way, splitter.split_due(rows))
            })
            .collect()
    }

    #[test]
    fn a_split_runs_once_the_threads_are_awake_and_is_tried_in_runs_in_a_row() {
        let splitter = splitter(2);
        let split = Way::Split(vec![4, 4]);
        let (threaded, single) = ((Way::Threaded, false), (Way::Single, false));
        let fast = |way: &Way| if matches!(way, Way::Split(_)) { 300 } else { 900 };
        let ways = run_asleep(&splitter, 8, 2, fast);
        assert_eq!(ways, [threaded.clone(), (Way::Single, true)], "the split's try put off");
        let shapes = [vec![8, 2], vec![2, 8, 4]];
        assert!(splitter.would_split(shapes.iter().map(Vec::as_slice)), "announced");
        let ways = run_asleep(&splitter, 8, TRY_RUNS + 5, fast);
        let tried = TRY_RUNS as usize;
        let due = |run: usize| (split.clone(), run + 1 < tried);
        assert_eq!(ways[..tried], (0..tried).map(due).collect::<Vec<_>>(), "asleep or not");
        let turn = [threaded.clone(), single.clone(), threaded, single.clone()];
        assert_eq!(ways[tried..tried + 4], turn, "the others warm up");
        assert_eq!(ways[tried + 4], single, "the fastest, a split, waits for the threads");
        assert!(splitter.wants_threads(8), "which are to be woken for it");
        assert_eq!(splitter.way(Some(8), || true), split, "awake, they take its shares");
        // One thread measured fastest: a recheck's split is put off to the next runs too.
        let splitter = self::splitter(2);
        let slow = |way: &Way| if matches!(way, Way::Split(_)) { 950 } else { 800 };
        let ways = run_asleep(&splitter, 8, 12 + RECHECK * 2 + 8, slow);
        let splits: Vec<usize> = (0..ways.len()).filter(|&i| ways[i].0 == split).collect();
        assert_eq!(splits.len() as u64, 2 * TRY_RUNS, "the warm-up and a recheck: {splits:?}");
        assert!(splits.iter().all(|&i| ways[i - 1].1), "each after a run that woke the threads");
        let second = splits[TRY_RUNS as usize];
        assert!(ways[splits[0] - 1].0 == Way::Single && ways[second - 1].0 == Way::Single);
        // A batch whose whole run took 1 ms or more splits while the threads sleep (and is
        // tried row by row too: 9 ms, slower).
        let splitter = self::splitter(2);
        let long = |way: &Way| if matches!(way, Way::Split(_)) { 3000 } else { 9000 };
        let warm = (WARM_RUNS + WARM_UP) as usize;
        let ways = run_asleep(&splitter, 8, warm as u64 + 4, long);
        assert_eq!(ways[1].0, split, "tried at once: {ways:?}");
        assert!(ways[warm..].iter().all(|(way, _)| *way == split), "{ways:?}");
    }

    #[test]
    fn batch_sizes_are_measured_in_groups_and_one_row_never_splits() {
        let splitter = splitter(2);
        let one = [rows(1, 2), TractTensor::zero::<f32>(&[2, 1, 4]).unwrap()];
        let ways = run(&splitter, &one, 2 * WARM_UP + 1, |way| match way {
            Way::Single => 20,
            _ => 30,
        });
        let turn = [Way::Threaded, Way::Single];
        assert_eq!(ways, [turns(&turn), vec![Way::Single]].concat());
        // Batches of 5 to 8 rows are a group of their own, which starts threaded again.
        let eight = [rows(8, 2), TractTensor::zero::<f32>(&[2, 8, 4]).unwrap()];
        assert_eq!(
            splitter.way(splitter.rows(eight.iter().map(|t| t.shape())), || true),
            Way::Threaded
        );
        let disagreeing = [rows(7, 2), TractTensor::zero::<f32>(&[2, 6, 4]).unwrap()];
        assert_eq!(splitter.rows(disagreeing.iter().map(|t| t.shape())), None);
        assert_eq!(splitter.way(None, || true), Way::Threaded);
    }

    #[test]
    fn batches_under_the_minimum_share_or_with_unjoinable_outputs_run_whole() {
        let splitter = splitter(2);
        let inputs = [rows(4, 2), TractTensor::zero::<f32>(&[2, 4, 4]).unwrap()];
        // 4 rows of 20 µs take 80 µs whole, under the 100 µs minimum.
        let ways = run(&splitter, &inputs, 6, |_| 80);
        assert!(ways.iter().all(|way| !matches!(way, Way::Split(_))), "{ways:?}");
        let splitter = self::splitter(2);
        assert_eq!(run(&splitter, &inputs, 2, |_| 800)[1], Way::Split(vec![2, 2]));
        splitter.unjoinable();
        let ways = run(&splitter, &inputs, 4, |_| 800);
        assert!(ways.iter().all(|way| !matches!(way, Way::Split(_))), "{ways:?}");
    }

    #[test]
    fn a_batch_announced_says_whether_it_splits_and_shares_are_cut_in_row_order() {
        let splitter = splitter(2);
        let inputs = [rows(30, 2), TractTensor::zero::<f32>(&[2, 30, 4]).unwrap()];
        let shapes = || inputs.iter().map(|t| t.shape());
        assert!(!splitter.would_split(shapes()), "nothing measured yet");
        let micros = |way: &Way| if matches!(way, Way::Split(_)) { 300 } else { 900 };
        let ways = run(&splitter, &inputs, WARM_RUNS, micros);
        assert_eq!(ways[1], Way::Split(vec![15; 2]));
        assert!(splitter.would_split(shapes()), "a split measured fastest");
        let one = [rows(1, 2), TractTensor::zero::<f32>(&[2, 1, 4]).unwrap()];
        assert!(!splitter.would_split(one.iter().map(|t| t.shape())), "another group");
        let slower = self::splitter(2);
        run(&slower, &inputs, WARM_RUNS, |way| 1200 - micros(way));
        assert!(!slower.would_split(shapes()), "a split measured slower");
        let shares = splitter.split(inputs.to_vec(), &[4, 4, 22]);
        let cut: Vec<_> = (0..3).map(|i| shares.cut(i).unwrap()[1].clone()).collect();
        let sizes: Vec<_> = cut.iter().map(|share| share.shape()[1]).collect();
        assert_eq!(sizes, [4, 4, 22]);
        assert_eq!((0..3).map(|i| shares.rows(i)).collect::<Vec<_>>(), [4, 4, 22]);
        assert_eq!(cut[2], inputs[1].slice(1, 8, 30).unwrap(), "in row order");
    }

    #[test]
    fn shares_cut_every_batch_axis_and_join_back_in_row_order() {
        let splitter = splitter(2);
        let state: Vec<f32> = (0..2 * 5 * 3).map(|v| -(v as f32)).collect();
        let state = TractTensor::from_shape(&[2, 5, 3], &state).unwrap();
        let inputs = [rows(5, 2), state.clone()];
        let shares = splitter.split(inputs.to_vec(), &[3, 2]);
        let shares: Vec<_> = (0..2).map(|i| shares.cut(i).unwrap()).collect();
        assert_eq!(shares[0][0], rows(5, 2).slice(0, 0, 3).unwrap());
        assert_eq!(shares[1][1], state.slice(1, 3, 5).unwrap());
        let spec = |name: &str, shape: Vec<i64>| TensorSpec {
            name: name.into(),
            datatype: DataType::F32,
            shape,
        };
        // Outputs as a model would give them: the rows, and the state (batch on axis 1).
        let signature = Signature {
            inputs: vec![],
            outputs: vec![spec("y", vec![-1, 2]), spec("state", vec![2, -1, 3])],
        };
        let joined = join(&shares, &[3, 2], &signature).unwrap().unwrap();
        assert_eq!(joined, inputs.to_vec());
    }

    #[test]
    fn a_requests_batch_cuts_into_the_shares_its_tract_tensors_would() {
        let splitter = splitter(2);
        let request = |name: &str, shape: Vec<usize>, data: TensorData| Tensor {
            name: name.into(),
            shape,
            data,
        };
        let values = |count: usize| (0..count).map(|v| v as f32 * 0.5).collect::<Vec<_>>();
        // The rows (batch on the first axis), a state (batch on its second), strings.
        let inputs = vec![
            request("x", vec![5, 2, 3], TensorData::F32(values(30))),
            request("state", vec![2, 5, 3], TensorData::F32(values(30))),
            request(
                "text",
                vec![5],
                TensorData::Bytes(
                    ["a", "b", "c", "d", "é"].map(|t| t.as_bytes().to_vec()).to_vec(),
                ),
            ),
        ];
        let tract: Vec<TractTensor> =
            inputs.iter().map(|t| to_tract_rows(t, None).unwrap()).collect();
        let splitter = Splitter::new(
            vec![vec![0], vec![1], vec![0]],
            2,
            splitter.min_share,
            splitter.min_row_by_row,
        );
        let (of_request, of_tract) = (
            splitter.split_request(inputs.clone(), &[2, 3]).unwrap(),
            splitter.split(tract.clone(), &[2, 3]),
        );
        for index in 0..2 {
            assert_eq!(
                of_request.cut(index).unwrap(),
                of_tract.cut(index).unwrap(),
                "share {index}"
            );
        }
        assert_eq!(of_request.cut(1).unwrap()[0], tract[0].slice(0, 2, 5).unwrap());
        assert_eq!(of_request.inputs().unwrap(), tract);
        // The rows alone, converted share by share.
        let rows_only =
            Splitter::new(vec![vec![0]], 2, splitter.min_share, splitter.min_row_by_row);
        let of_rows = rows_only.split_request(inputs[..1].to_vec(), &[2, 3]).unwrap();
        assert!(matches!(of_rows.inputs, Batch::Request(_)), "converted share by share");
        let of_tract_rows = rows_only.split(tract[..1].to_vec(), &[2, 3]);
        for index in 0..2 {
            assert_eq!(
                of_rows.cut(index).unwrap(),
                of_tract_rows.cut(index).unwrap(),
                "rows {index}"
            );
        }
        assert_eq!(of_rows.inputs().unwrap(), tract[..1]);
    }

    #[test]
    fn strings_that_are_not_utf8_are_refused_naming_the_element_in_the_batch() {
        let input = Tensor {
            name: "text".into(),
            shape: vec![4],
            data: TensorData::Bytes(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), vec![0xff]]),
        };
        let splitter = Splitter::new(vec![vec![0]], 2, Duration::ZERO, Duration::ZERO);
        let error =
            splitter.split_request(vec![input], &[2, 2]).err().expect("refused").to_string();
        assert!(error.contains("element 3"), "{error}");
    }

    #[test]
    fn an_output_without_a_batch_axis_cannot_be_joined() {
        let signature = Signature {
            inputs: vec![],
            outputs: vec![TensorSpec {
                name: "sum".into(),
                datatype: DataType::F32,
                shape: vec![4],
            }],
        };
        let shares = vec![vec![rows(1, 4)], vec![rows(1, 4)]];
        assert_eq!(join(&shares, &[3, 2], &signature).unwrap(), None);
    }
}
