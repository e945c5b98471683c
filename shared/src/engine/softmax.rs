//! Softmax over the trailing axes of an `f32` tensor, in three passes over the whole tensor.
//! tract computes each row with three vector-kernel calls set up for it (maximum,
//! exponential sum, scale), each copying a row whose length is not a multiple of its lanes
//! into a buffer of its own: the attention block's softmax over 192 rows of 6 took 25 µs,
//! more than its two products of 32 matrices (`scripts/benchmarks.md`, "Small products of
//! two activations"). [`Softmax`] subtracts each row's maximum, takes the exponential of
//! every value in one loop the compiler vectorises ([`exp`]), and scales each row by its
//! sum.

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::nn::{Softmax as TractSoftmax, SoftmaxKind};

use super::ops::stateless_op;

/// Softmax over the last `axes` axes of an `f32` tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Softmax {
    axes: usize,
}

impl Softmax {
    /// The op computing tract's `softmax` on `input`, when it is a float softmax (not its
    /// logarithm) of an `f32` tensor over trailing axes.
    pub(super) fn replacing(softmax: &TractSoftmax, input: &TypedFact) -> Option<Self> {
        let rank = input.rank();
        let mut axes = softmax.axes.to_vec();
        axes.sort_unstable();
        let count = axes.len();
        let trailing = count > 0 && axes.iter().enumerate().all(|(i, &a)| a + count == rank + i);
        let float = softmax.kind == SoftmaxKind::Softmax && softmax.quant_output_dt.is_none();
        (trailing && float && input.datum_type == f32::datum_type()).then_some(Self { axes: count })
    }
}

stateless_op!(Softmax, "maas.Softmax");

impl Softmax {
    fn run(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let mut output = args_1!(inputs).into_tensor();
        let shape = output.shape();
        ensure!(shape.len() >= self.axes, "a softmax over {} axes of {shape:?}", self.axes);
        let row: usize = shape[shape.len() - self.axes..].iter().product();
        let mut view = output.try_as_plain_ram_mut()?;
        let values = view.as_slice_mut::<f32>()?;
        if row > 0 {
            for row in values.chunks_exact_mut(row) {
                let max = row.iter().fold(f32::NEG_INFINITY, |max, &x| max.max(x));
                row.iter_mut().for_each(|x| *x -= max);
            }
            values.iter_mut().for_each(|x| *x = exp(*x));
            for row in values.chunks_exact_mut(row) {
                let scale = row.iter().sum::<f32>().recip();
                row.iter_mut().for_each(|x| *x *= scale);
            }
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for Softmax {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// `e^x` within 2 ulp of `f32::exp` for `x` from -87 to 88 (the exponential of a value of
/// at most 0 here), `e^-87` below: `x = n ln 2 + r` with `|r| <= ln 2 / 2`, `e^r` by Cephes'
/// polynomial, `2^n` put in the exponent bits. No branch, call or float-to-integer
/// conversion: a loop of it vectorises.
fn exp(x: f32) -> f32 {
    // Adding 1.5 × 2^23 rounds to the nearest integer, which the sum's low bits then hold.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 in two parts, the first exact in few bits, so that n × LN2_HIGH is exact.
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let rounded = x * std::f32::consts::LOG2_E + ROUND;
    let n = rounded - ROUND;
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    let mut p = 1.987_569_1e-4_f32;
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = p * r + c;
    }
    let e_r = p * r * r + r + 1.0;
    // 2^n: n + 127 in the exponent bits (n from -126 to 127 once clamped).
    let two_n = (rounded.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127)) << 23;
    e_r * f32::from_bits(two_n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::testing::run_alone;

    #[test]
    fn the_exponential_is_within_two_ulp_of_the_standard_one() {
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let (ours, expected) = (exp(x), x.exp());
            let ulp = (ours.to_bits() as i64 - expected.to_bits() as i64).abs();
            assert!(ulp <= 2, "e^{x}: {ours} vs {expected} ({ulp} ulp)");
        }
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
    }

    #[test]
    fn softmaxes_over_trailing_axes_are_tracts() {
        let values: Vec<f32> = (0..720).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37).collect();
        let cases: [(&[usize], &[usize]); 5] = [
            (&[8, 4, 6, 3], &[3]),
            (&[5, 6, 24], &[2]),
            (&[3, 240], &[1]),
            (&[6, 5, 4, 6], &[2, 3]),
            (&[720, 1], &[1]),
        ];
        for (shape, axes) in cases {
            let x = Tensor::from_shape(shape, &values[..shape.iter().product()]).unwrap();
            let tract = TractSoftmax::new(axes.into(), None, SoftmaxKind::Softmax);
            let ours = Softmax::replacing(&tract, &f32::fact(shape)).expect("replaceable");
            let expected = run_alone(Box::new(tract), &x);
            let ours = run_alone(Box::new(ours), &x);
            let (ours, expected) =
                (ours.try_as_plain_ram().unwrap(), expected.try_as_plain_ram().unwrap());
            let expected = expected.as_slice::<f32>().unwrap();
            for (a, b) in ours.as_slice::<f32>().unwrap().iter().zip(expected) {
                assert!(
                    (a - b).abs() <= 1e-6 + 1e-5 * b.abs(),
                    "{shape:?} over {axes:?}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn other_softmaxes_stay_tracts() {
        let fact = f32::fact([2, 3, 4]);
        let leading = TractSoftmax::new(tvec![1], None, SoftmaxKind::Softmax);
        let log = TractSoftmax::new(tvec![2], None, SoftmaxKind::LogSoftmax);
        assert_eq!(Softmax::replacing(&leading, &fact), None);
        assert_eq!(Softmax::replacing(&log, &fact), None);
        let last = TractSoftmax::new(tvec![2], None, SoftmaxKind::Softmax);
        assert_eq!(Softmax::replacing(&last, &f16::fact([2, 3, 4])), None);
    }
}
