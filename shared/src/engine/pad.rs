//! Zeros around the last two axes of an `f32` tensor: the padding tract puts before each
//! convolution whose patches it gathers lazily. tract's `Pad` builds its output through
//! generic array slicing, about 1.1 µs for one 3 × 16 × 16 image of the zoo's small CNN, 15 %
//! of its one-image run (`scripts/benchmarks.md`, "Zero padding row by row").
//! [`ZeroPad2d`] takes its place after tract's code generation: a tensor of zeros and one
//! copy per input row, written in place.

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::array::{Pad, PadMode};

use super::ops::stateless_op;

/// Zeros before and after the last two axes (`[top, bottom]`, `[left, right]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ZeroPad2d {
    rows: (usize, usize),
    columns: (usize, usize),
}

impl ZeroPad2d {
    /// The op computing tract's `pad` on `input`, when it pads an `f32` tensor of rank 2 or
    /// more with zeros along its last two axes only.
    pub(super) fn replacing(pad: &Pad, input: &TypedFact) -> Option<Self> {
        let PadMode::Constant(value) = &pad.mode else { return None };
        let zero = value.len() == 1 && value.cast_to_scalar::<f32>().ok()? == 0.0;
        let rank = input.rank();
        let fits = zero
            && input.datum_type == f32::datum_type()
            && value.datum_type() == f32::datum_type()
            && rank >= 2
            && pad.pads.len() == rank
            && pad.pads[..rank - 2].iter().all(|&p| p == (0, 0));
        fits.then(|| Self { rows: pad.pads[rank - 2], columns: pad.pads[rank - 1] })
    }

    /// The padded size of the last two axes of `shape`.
    fn padded(&self, height: usize, width: usize) -> (usize, usize) {
        (height + self.rows.0 + self.rows.1, width + self.columns.0 + self.columns.1)
    }
}

stateless_op!(ZeroPad2d, "maas.ZeroPad2d");

impl ZeroPad2d {
    fn run(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = input.shape();
        ensure!(shape.len() >= 2, "zero padding needs two axes, got {shape:?}");
        let (height, width) = (shape[shape.len() - 2], shape[shape.len() - 1]);
        let (rows, columns) = self.padded(height, width);
        let mut out_shape: TVec<usize> = shape.into();
        let rank = out_shape.len();
        out_shape[rank - 2] = rows;
        out_shape[rank - 1] = columns;
        let mut padded = Tensor::zero::<f32>(&out_shape)?;
        let mut view = padded.try_as_plain_ram_mut()?;
        let output = view.as_slice_mut::<f32>()?;
        let values = input.try_as_plain_ram()?;
        let values = values.as_slice::<f32>()?;
        if height > 0 && width > 0 {
            let planes =
                values.chunks_exact(height * width).zip(output.chunks_exact_mut(rows * columns));
            let first = self.rows.0 * columns + self.columns.0;
            for (plane, out) in planes {
                for (row, out_row) in
                    plane.chunks_exact(width).zip(out[first..].chunks_mut(columns))
                {
                    out_row[..width].copy_from_slice(row);
                }
            }
        }
        Ok(tvec!(padded.into_tvalue()))
    }
}

impl TypedOp for ZeroPad2d {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.to_tvec();
        let rank = shape.len();
        ensure!(rank >= 2, "zero padding needs two axes, got {shape:?}");
        shape[rank - 2] = shape[rank - 2].clone() + self.rows.0 + self.rows.1;
        shape[rank - 1] = shape[rank - 1].clone() + self.columns.0 + self.columns.1;
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::testing::run_alone;

    fn zeros(pads: Vec<(usize, usize)>) -> Pad {
        Pad { pads, mode: PadMode::Constant(rctensor0(0f32)) }
    }

    #[test]
    fn pads_as_tract_does() {
        let values: Vec<f32> = (0..120).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let cases = [
            (vec![2, 3, 4, 5], vec![(0, 0), (0, 0), (1, 1), (1, 1)]),
            (vec![2, 3, 4, 5], vec![(0, 0), (0, 0), (0, 2), (3, 0)]),
            (vec![6, 20], vec![(2, 1), (0, 1)]),
            (vec![1, 2, 3, 0], vec![(0, 0), (0, 0), (1, 1), (1, 1)]),
        ];
        for (shape, pads) in cases {
            let count = shape.iter().product::<usize>();
            let x = Tensor::from_shape(&shape, &values[..count]).unwrap();
            let pad = zeros(pads.clone());
            let ours = ZeroPad2d::replacing(&pad, &f32::fact(&shape)).expect("zero padding");
            let expected = run_alone(Box::new(pad), &x);
            assert_eq!(run_alone(Box::new(ours), &x), expected, "{shape:?} by {pads:?}");
        }
    }

    #[test]
    fn other_paddings_stay_tracts() {
        let fact = f32::fact([1, 3, 4, 4]);
        let around = vec![(0, 0), (0, 0), (1, 1), (1, 1)];
        let channels = zeros(vec![(0, 0), (1, 0), (1, 1), (1, 1)]);
        let ones = Pad { pads: around.clone(), mode: PadMode::Constant(rctensor0(1f32)) };
        let edge = Pad { pads: around.clone(), mode: PadMode::Edge };
        for other in [channels, ones, edge] {
            assert_eq!(ZeroPad2d::replacing(&other, &fact), None, "{other:?}");
        }
        assert_eq!(ZeroPad2d::replacing(&zeros(around), &i32::fact([1, 3, 4, 4])), None);
    }
}
