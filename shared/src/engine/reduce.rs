//! The maximum or minimum of `f32` tensors over consecutive axes, as global max pools and
//! `ReduceMax` compute it. tract reduces max and min one output at a time, with a slice of the
//! input built anew (and allocated) for each; magika's maximum over 508 positions of each of
//! 512 channels took 7 % of its run at batch 8 (`scripts/benchmarks.md`, "Engine speed II").
//! [`Extreme`] views the input as `[outer, reduced, inner]` and reduces it in one pass. It
//! takes the maximum (or minimum) of the same values as tract; NaNs are passed over, as
//! `f32::max` does.

use std::ops::Range;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};

use super::ops::stateless_op;

/// Lanes of the running extreme over a contiguous run of values.
const LANES: usize = 8;

/// The maximum (or minimum) over the axes `axes` of an `f32` input, kept as axes of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Extreme {
    axes: Range<usize>,
    max: bool,
}

impl Extreme {
    /// The op computing tract's `reduce` on `input`, when it is a maximum or minimum over
    /// consecutive axes of an `f32` tensor.
    pub(super) fn replacing(reduce: &Reduce, input: &TypedFact) -> Option<Self> {
        let max = match reduce.reducer {
            Reducer::Max => true,
            Reducer::Min => false,
            _ => return None,
        };
        let (&first, &last) = (reduce.axes.first()?, reduce.axes.last()?);
        let consecutive = reduce.axes.iter().enumerate().all(|(at, &axis)| axis == first + at);
        let fits = consecutive && last < input.rank() && input.datum_type == f32::datum_type();
        fits.then_some(Self { axes: first..last + 1, max })
    }
}

/// The extreme of a contiguous run by `pick`, in lanes the compiler vectorises.
fn of_run(values: &[f32], start: f32, pick: impl Fn(f32, f32) -> f32 + Copy) -> f32 {
    let mut lanes = [start; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = pick(*lane, v);
        }
    }
    let rest = chunks.remainder().iter().copied();
    lanes.into_iter().chain(rest).fold(start, pick)
}

/// `values` viewed as `[outer, reduced, inner]` reduced by `pick` over its middle axis into
/// `out` (`outer × inner`, filled with `start`).
fn reduce(
    values: &[f32],
    (reduced, inner): (usize, usize),
    start: f32,
    pick: impl Fn(f32, f32) -> f32 + Copy,
    out: &mut [f32],
) {
    if reduced == 0 || inner == 0 {
        return;
    }
    for (block, out) in values.chunks_exact(reduced * inner).zip(out.chunks_exact_mut(inner)) {
        if inner == 1 {
            out[0] = of_run(block, start, pick);
            continue;
        }
        for row in block.chunks_exact(inner) {
            for (o, &v) in out.iter_mut().zip(row) {
                *o = pick(*o, v);
            }
        }
    }
}

stateless_op!(Extreme, "maas.Extreme");

impl Extreme {
    fn run(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = input.shape();
        ensure!(self.axes.end <= shape.len(), "reduced axes {:?} of {shape:?}", self.axes);
        let outer: usize = shape[..self.axes.start].iter().product();
        let reduced: usize = shape[self.axes.clone()].iter().product();
        let inner: usize = shape[self.axes.end..].iter().product();
        let start = if self.max { f32::NEG_INFINITY } else { f32::INFINITY };
        let mut out = vec![start; outer * inner];
        let values = input.try_as_plain_ram()?;
        let values = values.as_slice::<f32>()?;
        if self.max {
            reduce(values, (reduced, inner), start, f32::max, &mut out);
        } else {
            reduce(values, (reduced, inner), start, f32::min, &mut out);
        }
        let mut kept: TVec<usize> = shape.into();
        kept[self.axes.clone()].iter_mut().for_each(|d| *d = 1);
        Ok(tvec!(Tensor::from_shape(&kept, &out)?.into_tvalue()))
    }
}

impl TypedOp for Extreme {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.to_tvec();
        ensure!(self.axes.end <= shape.len(), "reduced axes {:?} of {shape:?}", self.axes);
        shape[self.axes.clone()].iter_mut().for_each(|d| *d = 1.to_dim());
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::testing::run_alone;

    fn reduced_both_ways(reducer: Reducer, axes: &[usize], input: &Tensor) {
        let reduce = Reduce::new(axes.into(), reducer);
        let op = Extreme::replacing(&reduce, &f32::fact(input.shape())).expect("replaceable");
        let expected = run_alone(Box::new(reduce), input);
        assert_eq!(run_alone(Box::new(op), input), expected, "{reducer:?} over {axes:?}");
    }

    #[test]
    fn extremes_over_any_consecutive_axes_are_tracts() {
        // 2 × 3 × 21 × 2: runs longer than the lanes, with a remainder, and inner blocks.
        let values: Vec<f32> = (0..252).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.25).collect();
        let input = Tensor::from_shape(&[2, 3, 21, 2], &values).unwrap();
        for reducer in [Reducer::Max, Reducer::Min] {
            for axes in [&[3][..], &[2, 3], &[2], &[1, 2], &[0], &[0, 1, 2, 3]] {
                reduced_both_ways(reducer, axes, &input);
            }
        }
        let run = Tensor::from_shape(&[1, 4, 508], &values.repeat(9)[..2032]).unwrap();
        reduced_both_ways(Reducer::Max, &[2], &run);
    }

    #[test]
    fn other_reductions_and_axes_with_gaps_stay_tracts() {
        let fact = f32::fact([2, 3, 4]);
        assert!(Extreme::replacing(&Reduce::new(tvec![0, 2], Reducer::Max), &fact).is_none());
        assert!(Extreme::replacing(&Reduce::new(tvec![1], Reducer::Sum), &fact).is_none());
        let ints = i32::fact([2, 3, 4]);
        assert!(Extreme::replacing(&Reduce::new(tvec![1], Reducer::Max), &ints).is_none());
    }
}
