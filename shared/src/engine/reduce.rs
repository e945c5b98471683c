//! The maximum, minimum or sum of `f32` tensors over consecutive axes, as global max pools,
//! `ReduceMax` and global average pools (a sum, then a scale) compute them. tract reduces max
//! and min one output at a time, with a slice of the input built anew (and allocated) for
//! each; magika's maximum over 508 positions of each of 512 channels took 7 % of its run at
//! batch 8 (`scripts/benchmarks.md`, "Engine speed II"), and the small CNN's global average
//! pool 6 % of a one-image run. [`Reduction`] views the input as `[outer, reduced, inner]` and
//! reduces it in one pass. It takes the maximum (or minimum) of the same values as tract;
//! NaNs are passed over, as `f32::max` does. Sums add in eight lanes, so they may differ
//! from tract's in the last bits.

use std::ops::Range;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};

use super::ops::{stateless_op, Scales};

/// Lanes of the running extreme over a contiguous run of values.
const LANES: usize = 8;

/// The maximum, minimum or sum over the axes `axes` of an `f32` input, kept as axes of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reduction {
    axes: Range<usize>,
    kind: Kind,
    /// The bits of the `f32` a sum is multiplied by (1 but for a folded scale).
    scale_bits: u32,
}

/// What [`Reduction`] takes of the values it reduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Max,
    Min,
    Sum,
}

impl Reduction {
    /// The op computing tract's `reduce` on `input`, when it is a maximum, minimum or sum
    /// over consecutive axes of an `f32` tensor.
    pub(super) fn replacing(reduce: &Reduce, input: &TypedFact) -> Option<Self> {
        let kind = match reduce.reducer {
            Reducer::Max => Kind::Max,
            Reducer::Min => Kind::Min,
            Reducer::Sum => Kind::Sum,
            _ => return None,
        };
        let (&first, &last) = (reduce.axes.first()?, reduce.axes.last()?);
        let consecutive = reduce.axes.iter().enumerate().all(|(at, &axis)| axis == first + at);
        let fits = consecutive && last < input.rank() && input.datum_type == f32::datum_type();
        fits.then_some(Self { axes: first..last + 1, kind, scale_bits: 1f32.to_bits() })
    }
}

/// The reduction of a contiguous run by `pick`, in lanes the compiler vectorises.
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

impl Scales for Reduction {
    /// A sum that is not scaled yet, with its sums multiplied by `scale` (a global average
    /// pool's).
    fn scaled(&self, scale: f32) -> Option<Self> {
        let unscaled = self.kind == Kind::Sum && self.scale_bits == 1f32.to_bits();
        unscaled.then(|| Self { scale_bits: scale.to_bits(), ..self.clone() })
    }
}

stateless_op!(Reduction, "maas.Reduce");

impl Reduction {
    fn run(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = input.shape();
        ensure!(self.axes.end <= shape.len(), "reduced axes {:?} of {shape:?}", self.axes);
        let outer: usize = shape[..self.axes.start].iter().product();
        let reduced: usize = shape[self.axes.clone()].iter().product();
        let inner: usize = shape[self.axes.end..].iter().product();
        let start = match self.kind {
            Kind::Max => f32::NEG_INFINITY,
            Kind::Min => f32::INFINITY,
            Kind::Sum => 0.0,
        };
        let mut out = vec![start; outer * inner];
        let values = input.try_as_plain_ram()?;
        let values = values.as_slice::<f32>()?;
        let sizes = (reduced, inner);
        match self.kind {
            Kind::Max => reduce(values, sizes, start, f32::max, &mut out),
            Kind::Min => reduce(values, sizes, start, f32::min, &mut out),
            Kind::Sum => reduce(values, sizes, start, |a, b| a + b, &mut out),
        }
        let scale = f32::from_bits(self.scale_bits);
        if scale != 1.0 {
            out.iter_mut().for_each(|v| *v *= scale);
        }
        let mut kept: TVec<usize> = shape.into();
        kept[self.axes.clone()].iter_mut().for_each(|d| *d = 1);
        Ok(tvec!(Tensor::from_shape(&kept, &out)?.into_tvalue()))
    }
}

impl TypedOp for Reduction {
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
    use crate::engine::ops::fold_scales;
    use crate::engine::ops::testing::{run, run_alone};

    fn reduced_both_ways(reducer: Reducer, axes: &[usize], input: &Tensor) {
        let reduce = Reduce::new(axes.into(), reducer);
        let op = Reduction::replacing(&reduce, &f32::fact(input.shape())).expect("replaceable");
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
    fn sums_over_any_consecutive_axes_are_tracts_within_float_rounding() {
        // 2 × 3 × 21 × 2 as above, and a global average pool's sum over 8 × 8 pixels.
        let values: Vec<f32> = (0..252).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.25).collect();
        let pixels =
            Tensor::from_shape(&[2, 2, 8, 8], &values[..256 - 4].repeat(2)[..256]).unwrap();
        let input = Tensor::from_shape(&[2, 3, 21, 2], &values).unwrap();
        let cases = [(&input, &[3][..]), (&input, &[1, 2]), (&input, &[0, 1, 2, 3])];
        for (input, axes) in cases.into_iter().chain([(&pixels, &[2, 3][..])]) {
            let reduce = Reduce::new(axes.into(), Reducer::Sum);
            let op = Reduction::replacing(&reduce, &f32::fact(input.shape())).expect("a sum");
            let expected = run_alone(Box::new(reduce), input);
            let got = run_alone(Box::new(op), input);
            assert_eq!(got.shape(), expected.shape(), "sum over {axes:?}");
            let floats =
                |t: &Tensor| t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
            for (g, e) in floats(&got).into_iter().zip(floats(&expected)) {
                assert!((g - e).abs() <= 1e-5 * e.abs().max(1.0), "sum over {axes:?}: {g} vs {e}");
            }
        }
    }

    /// A global average pool as tract writes it, a sum over the pixels then a multiplication
    /// by their inverse count, its sum replaced as `optimise` replaces it.
    fn average_pool() -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, 3, 4, 4])).unwrap();
        let sum = Reduce::new(tvec![2, 3], Reducer::Sum);
        let op = Reduction::replacing(&sum, &f32::fact([2, 3, 4, 4])).unwrap();
        let wire = model.wire_node("sum", op, &[x]).unwrap();
        let scale = Tensor::from_shape(&[1, 1, 1, 1], &[1f32 / 16.0]).unwrap();
        let scale = model.add_const("scale", scale).unwrap();
        let out =
            model.wire_node("norm", tract_onnx::tract_core::ops::math::mul(), &[wire[0], scale]);
        model.select_output_outlets(&out.unwrap()).unwrap();
        model
    }

    #[test]
    fn an_average_pools_scale_is_folded_into_its_sum() {
        let values: Vec<f32> = (0..96).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.25).collect();
        let input = Tensor::from_shape(&[2, 3, 4, 4], &values).unwrap();
        let mut model = average_pool();
        let expected = run(model.clone(), &input);
        fold_scales::<Reduction>(&mut model).unwrap();
        let names: Vec<_> = model.nodes.iter().map(|n| n.op.name().to_string()).collect();
        assert_eq!(names, ["Source", "maas.Reduce"], "the scale folded");
        let got = run(model, &input);
        assert_eq!(got.len(), 6);
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() <= 1e-6 * e.abs().max(1.0), "{g} vs {e}");
        }
        let means = values.chunks(16).map(|c| c.iter().sum::<f32>() / 16.0);
        for (g, mean) in got.iter().zip(means) {
            assert!((g - mean).abs() <= 1e-5, "{g} vs the mean {mean}");
        }
    }

    #[test]
    fn other_reductions_and_axes_with_gaps_stay_tracts() {
        let fact = f32::fact([2, 3, 4]);
        assert!(Reduction::replacing(&Reduce::new(tvec![0, 2], Reducer::Max), &fact).is_none());
        assert!(Reduction::replacing(&Reduce::new(tvec![1], Reducer::Prod), &fact).is_none());
        let ints = i32::fact([2, 3, 4]);
        assert!(Reduction::replacing(&Reduce::new(tvec![1], Reducer::Max), &ints).is_none());
    }
}
