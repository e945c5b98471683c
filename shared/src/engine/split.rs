//! Batches across threads. A batch of independent rows (the assumption the per-shape padding
//! already makes, on the same batch axes) is split into one share per engine thread; each
//! share runs on its own plan state, on one thread, and the outputs are joined back in row
//! order. tract parallelises matrix products only, so this is what makes a second vCPU count
//! for convolutions.
//!
//! Splitting costs a hand-off to the pool and a copy of the inputs and outputs, and it makes
//! every thread read all the weights (where threaded matrix products share them out), so it
//! is chosen by measurement: a batch runs whole (matrix products on all threads) until a
//! whole run shows that each share would take at least `Settings::min_share_micros`; then
//! one split run is tried, and from there on batches take whichever way has been faster per
//! row. One-row requests and small models run whole, as before.
//!
//! A run of one row cannot be split, and tract's threaded matrix products can make it slower
//! than one thread does (their hand-offs cost more than small products save: one PaddleOCR
//! image took 1.7x as long on two threads). So one-row runs are measured both ways, matrix
//! products on every thread and on the calling thread alone, and take the faster; every
//! `RECHECK_ONE_ROW`th goes the other way, so that a change (another model loaded beside it,
//! a busier CPU) is seen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tract_onnx::prelude::Tensor as TractTensor;

use super::engine_error;
use crate::error::Error;
use crate::manifest::Signature;

/// How a model's batches are split.
#[derive(Debug)]
pub(super) struct Splitter {
    /// For each input, the axes that carry the batch.
    batch_axes: Vec<Vec<usize>>,
    threads: usize,
    min_share: Duration,
    /// Wall-clock nanoseconds per row of the last batch run whole (0: none yet).
    whole_nanos: AtomicU64,
    /// Wall-clock nanoseconds per row of the last batch run split (0: none yet).
    split_nanos: AtomicU64,
    /// Batches run split so far.
    splits: AtomicU64,
    /// Wall-clock nanoseconds of the last one-row run with matrix products on every thread
    /// (`[0]`) and on one thread (`[1]`) (0: none yet).
    one_row_nanos: [AtomicU64; 2],
    /// One-row runs so far.
    one_row_runs: AtomicU64,
}

/// Every this many one-row runs, one goes the way measured slower.
const RECHECK_ONE_ROW: u64 = 64;

impl Splitter {
    pub(super) fn new(batch_axes: Vec<Vec<usize>>, threads: usize, min_share: Duration) -> Self {
        Self {
            batch_axes,
            threads,
            min_share,
            whole_nanos: AtomicU64::new(0),
            split_nanos: AtomicU64::new(0),
            splits: AtomicU64::new(0),
            one_row_nanos: [AtomicU64::new(0), AtomicU64::new(0)],
            one_row_runs: AtomicU64::new(0),
        }
    }

    /// Whether a batch of `rows` rows run whole should have its matrix products on every
    /// thread: always but for one row, which goes the way measured faster (threaded first,
    /// then one thread, then the faster but every `RECHECK_ONE_ROW`th run).
    pub(super) fn threaded(&self, rows: Option<usize>) -> bool {
        if rows != Some(1) {
            return true;
        }
        let [threaded, single] = self.one_row_nanos.each_ref().map(|n| n.load(Ordering::Relaxed));
        if threaded == 0 || single == 0 {
            return threaded == 0;
        }
        let run = self.one_row_runs.fetch_add(1, Ordering::Relaxed) + 1;
        (threaded <= single) != run.is_multiple_of(RECHECK_ONE_ROW)
    }

    /// Records a one-row run, `threaded` or on one thread, and how long it took (`None`: its
    /// time says nothing of later runs).
    pub(super) fn record_one_row(&self, threaded: bool, elapsed: Option<Duration>) {
        let Some(elapsed) = elapsed else { return };
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.one_row_nanos[usize::from(!threaded)].store(nanos, Ordering::Relaxed);
    }

    /// The rows of each share `inputs` should be split into, or `None` to run them whole: a
    /// single row, rows whose batch axes disagree, shares too small to pay for the split (or
    /// no whole run measured yet), or splitting measured slower per row than running whole.
    pub(super) fn shares(&self, inputs: &[TractTensor]) -> Option<Vec<usize>> {
        let rows = self.rows(inputs)?;
        let count = self.threads.min(rows);
        let whole = self.whole_nanos.load(Ordering::Relaxed);
        // A whole run has matrix products on every thread: its wall time is at most what one
        // share would take on one thread.
        let share_nanos = whole.saturating_mul(rows as u64);
        if count < 2 || whole == 0 || share_nanos < self.min_share.as_nanos() as u64 {
            return None;
        }
        let split = self.split_nanos.load(Ordering::Relaxed);
        if split != 0 && split >= whole {
            return None;
        }
        Some((0..count).map(|i| rows / count + usize::from(i < rows % count)).collect())
    }

    /// Batches run split so far.
    pub(super) fn splits(&self) -> u64 {
        self.splits.load(Ordering::Relaxed)
    }

    /// Records a run of `rows` rows, whole (`shares` 1) or in `shares` shares side by side,
    /// and how long it took; `None` when its time says nothing of later runs (it built a plan,
    /// for one), which then count as a split but are not compared.
    pub(super) fn record(&self, rows: usize, shares: usize, elapsed: Option<Duration>) {
        if shares > 1 {
            self.splits.fetch_add(1, Ordering::Relaxed);
        }
        let Some(elapsed) = elapsed else { return };
        let nanos = elapsed.as_nanos() / rows.max(1) as u128;
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX).max(1);
        match shares > 1 {
            true => self.split_nanos.store(nanos, Ordering::Relaxed),
            false => self.whole_nanos.store(nanos, Ordering::Relaxed),
        }
    }

    /// The batch size of `inputs`, when every batch axis agrees on one.
    pub(super) fn rows(&self, inputs: &[TractTensor]) -> Option<usize> {
        batch_rows(inputs, &self.batch_axes)
    }

    /// `inputs` cut into shares of `sizes` rows along their batch axes.
    pub(super) fn split(
        &self,
        inputs: &[TractTensor],
        sizes: &[usize],
    ) -> Result<Vec<Vec<TractTensor>>, Error> {
        split(inputs, &self.batch_axes, sizes)
    }
}

/// `inputs` cut into shares of `sizes` rows along their `batch_axes`.
pub(super) fn split(
    inputs: &[TractTensor],
    batch_axes: &[Vec<usize>],
    sizes: &[usize],
) -> Result<Vec<Vec<TractTensor>>, Error> {
    let mut start = 0;
    let mut shares = Vec::with_capacity(sizes.len());
    for &size in sizes {
        let share = inputs
            .iter()
            .zip(batch_axes)
            .map(|(input, axes)| {
                axes.iter().try_fold(input.clone(), |tensor, &axis| {
                    tensor
                        .slice(axis, start, start + size)
                        .map_err(|e| engine_error("cannot split a batch", e))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        shares.push(share);
        start += size;
    }
    Ok(shares)
}

/// The batch size of `inputs` along each one's `batch_axes`, when every batch axis agrees on
/// one that is not 0.
pub(super) fn batch_rows(inputs: &[TractTensor], batch_axes: &[Vec<usize>]) -> Option<usize> {
    let mut sizes = inputs
        .iter()
        .zip(batch_axes)
        .flat_map(|(t, axes)| axes.iter().map(|&a| t.shape().get(a).copied()));
    let rows = sizes.next()??;
    sizes.all(|s| s == Some(rows)).then_some(rows).filter(|&r| r > 0)
}

/// The shares' outputs joined back along each output's batch axis: the first axis declared
/// dynamic whose size is each share's row count. `None` when an output has no such axis
/// (its rows cannot be told apart): the batch must then run whole.
pub(super) fn join(
    shares: Vec<Vec<TractTensor>>,
    sizes: &[usize],
    signature: &Signature,
) -> Result<Option<Vec<TractTensor>>, Error> {
    let mut joined = Vec::with_capacity(signature.outputs.len());
    for (index, spec) in signature.outputs.iter().enumerate() {
        let parts: Vec<&TractTensor> = shares.iter().filter_map(|s| s.get(index)).collect();
        let Some(first) = parts.first() else { return Ok(None) };
        if parts.len() != sizes.len() {
            return Ok(None);
        }
        let dynamic = |axis: usize| spec.shape.get(axis).is_none_or(|&d| d < 0);
        let fits = |axis: usize| {
            dynamic(axis)
                && parts.iter().zip(sizes).all(|(part, &size)| {
                    part.rank() == first.rank()
                        && part.shape().get(axis) == Some(&size)
                        && (0..first.rank()).all(|other| {
                            other == axis || part.shape()[other] == first.shape()[other]
                        })
                })
        };
        let Some(axis) = (0..first.rank()).find(|&axis| fits(axis)) else { return Ok(None) };
        let parts: Vec<TractTensor> = parts.into_iter().cloned().collect();
        let whole = TractTensor::stack_tensors(axis, &parts)
            .map_err(|e| engine_error("cannot join a split batch", e))?;
        joined.push(whole);
    }
    Ok(Some(joined))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::TensorSpec;
    use crate::tensor::DataType;

    fn splitter(threads: usize) -> Splitter {
        Splitter::new(vec![vec![0], vec![1]], threads, Duration::from_micros(100))
    }

    fn rows(count: usize, width: usize) -> TractTensor {
        let values: Vec<f32> = (0..count * width).map(|v| v as f32).collect();
        TractTensor::from_shape(&[count, width], &values).unwrap()
    }

    #[test]
    fn small_or_unmeasured_batches_run_whole_and_large_ones_split_evenly() {
        let splitter = splitter(3);
        let state = TractTensor::zero::<f32>(&[2, 7, 4]).unwrap();
        let inputs = [rows(7, 2), state];
        assert_eq!(splitter.shares(&inputs), None, "not measured yet");
        splitter.record(7, 1, None);
        assert_eq!(splitter.shares(&inputs), None, "a run whose time says nothing");
        splitter.record(7, 1, Some(Duration::from_micros(70)));
        assert_eq!(splitter.shares(&inputs), None, "a whole run of 70 µs does not pay");
        splitter.record(7, 1, Some(Duration::from_millis(7)));
        assert_eq!(splitter.shares(&inputs), Some(vec![3, 2, 2]));
        splitter.record(7, 3, None);
        assert_eq!(splitter.shares(&inputs), Some(vec![3, 2, 2]), "a split run not compared");
        splitter.record(7, 3, Some(Duration::from_millis(3)));
        assert_eq!(splitter.shares(&inputs), Some(vec![3, 2, 2]), "splitting was faster");
        splitter.record(7, 3, Some(Duration::from_millis(8)));
        assert_eq!(splitter.shares(&inputs), None, "splitting was slower than running whole");
        assert_eq!(splitter.splits(), 3, "every split run counts");
        let one = [rows(1, 2), TractTensor::zero::<f32>(&[2, 1, 4]).unwrap()];
        assert_eq!(splitter.shares(&one), None, "one row");
        let disagreeing = [rows(7, 2), TractTensor::zero::<f32>(&[2, 6, 4]).unwrap()];
        assert_eq!(splitter.shares(&disagreeing), None);
    }

    #[test]
    fn one_row_runs_go_the_way_measured_faster_and_now_and_then_the_other() {
        let splitter = splitter(2);
        assert!(splitter.threaded(Some(7)), "batches have threaded matrix products");
        assert!(splitter.threaded(None));
        assert!(splitter.threaded(Some(1)), "one row: threaded first");
        splitter.record_one_row(true, None);
        assert!(splitter.threaded(Some(1)), "a run whose time says nothing");
        splitter.record_one_row(true, Some(Duration::from_micros(170)));
        assert!(!splitter.threaded(Some(1)), "then one thread");
        splitter.record_one_row(false, Some(Duration::from_micros(100)));
        let ways: Vec<bool> =
            (0..RECHECK_ONE_ROW * 2).map(|_| splitter.threaded(Some(1))).collect();
        let threaded: Vec<usize> = (0..ways.len()).filter(|&i| ways[i]).collect();
        let last = RECHECK_ONE_ROW as usize - 1;
        assert_eq!(threaded, [last, last + RECHECK_ONE_ROW as usize], "one thread was faster");
        splitter.record_one_row(true, Some(Duration::from_micros(90)));
        assert!(splitter.threaded(Some(1)), "threaded measured faster again");
        assert!(splitter.threaded(Some(7)));
    }

    #[test]
    fn shares_cut_every_batch_axis_and_join_back_in_row_order() {
        let splitter = splitter(2);
        let state: Vec<f32> = (0..2 * 5 * 3).map(|v| -(v as f32)).collect();
        let state = TractTensor::from_shape(&[2, 5, 3], &state).unwrap();
        let inputs = [rows(5, 2), state.clone()];
        let shares = splitter.split(&inputs, &[3, 2]).unwrap();
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
        let joined = join(shares, &[3, 2], &signature).unwrap().unwrap();
        assert_eq!(joined, inputs.to_vec());
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
        assert_eq!(join(shares, &[3, 2], &signature).unwrap(), None);
    }
}
