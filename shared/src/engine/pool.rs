//! A 2×2 max pool with stride 2 and no padding over NCHW `f32` tensors: the usual
//! down-sampling step of a CNN (PyTorch's `MaxPool2d(2)`). tract vectorises its 2×2 pool for
//! stride 1 only; with stride 2 it walks every tap with bounds checks, and on the small torch
//! CNN of the zoo that pool took 37 % of a batch of 8 (`scripts/benchmarks.md`, "Engine speed
//! II"). [`super::rewrite::optimise`] puts [`MaxPool2x2`] in place of tract's optimised max
//! pool where the pool is exactly this one, after tract's code generation (before it, an op
//! tract does not know would keep it from fusing the activation before the pool into the
//! convolution).

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::ops::stateless_op;

/// The pool, over inputs of `[batch, channels, height, width]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MaxPool2x2;

impl MaxPool2x2 {
    /// The op that computes tract's max pool of `spec` (with `index_outputs`) on `input`,
    /// when it is a 2×2 pool with stride 2, no dilation, no padding and no index output, over
    /// an NCHW `f32` input whose height and width are known.
    pub(super) fn replacing(
        spec: &PoolSpec,
        index_outputs: Option<DatumType>,
        input: &TypedFact,
    ) -> Option<Self> {
        let ones =
            |dims: &Option<TVec<usize>>| dims.as_ref().is_none_or(|d| d.iter().all(|&x| x == 1));
        let zeros = |dims: &[usize]| dims.iter().all(|&x| x == 0);
        let unpadded = match &spec.padding {
            PaddingSpec::Valid => true,
            PaddingSpec::Explicit(before, after) => zeros(before) && zeros(after),
            PaddingSpec::ExplicitOnnxPool(before, after, ceil) => {
                !ceil && zeros(before) && zeros(after)
            }
            PaddingSpec::SameUpper | PaddingSpec::SameLower => false,
        };
        let fits = index_outputs.is_none()
            && spec.data_format == DataFormat::NCHW
            && spec.kernel_shape[..] == [2, 2]
            && spec.strides.as_deref() == Some(&[2, 2])
            && ones(&spec.dilations)
            && unpadded
            && input.datum_type == f32::datum_type()
            && input.rank() == 4
            && input.shape[2..].iter().all(|d| d.to_usize().is_ok());
        fits.then_some(Self)
    }
}

/// Pools each `height`×`width` plane of `input` into `output`, plane after plane; an odd
/// last row or column is left out, as ONNX's floor rounding does.
fn pool(input: &[f32], (height, width): (usize, usize), output: &mut [f32]) {
    let (rows, columns) = (height / 2, width / 2);
    if output.is_empty() {
        return;
    }
    let planes = input.chunks_exact(height * width).zip(output.chunks_exact_mut(rows * columns));
    for (plane, out) in planes {
        for (y, out_row) in out.chunks_exact_mut(columns).enumerate() {
            let top = &plane[2 * y * width..][..2 * columns];
            let bottom = &plane[(2 * y + 1) * width..][..2 * columns];
            let pairs = top.chunks_exact(2).zip(bottom.chunks_exact(2));
            for (o, (t, b)) in out_row.iter_mut().zip(pairs) {
                *o = t[0].max(t[1]).max(b[0].max(b[1]));
            }
        }
    }
}

stateless_op!(MaxPool2x2, "maas.MaxPool2x2");

impl MaxPool2x2 {
    fn run(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let &[batch, channels, height, width] = input.shape() else {
            bail!("a 2×2 max pool needs [batch, channels, height, width], got {:?}", input.shape());
        };
        let shape = [batch, channels, height / 2, width / 2];
        let mut output = vec![0f32; shape.iter().product()];
        let values = input.try_as_plain_ram()?;
        pool(values.as_slice::<f32>()?, (height, width), &mut output);
        Ok(tvec!(Tensor::from_shape(&shape, &output)?.into_tvalue()))
    }
}

impl TypedOp for MaxPool2x2 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        ensure!(shape.rank() == 4, "a 2×2 max pool needs [batch, channels, height, width]");
        let half = |axis: usize| shape[axis].to_usize().map(|d| (d / 2).to_dim());
        Ok(tvec!(f32::fact([shape[0].clone(), shape[1].clone(), half(2)?, half(3)?])))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::testing::run_alone as run;
    use tract_onnx::tract_core::ops::cnn::MaxPool;

    fn max_pool(kernel: [usize; 2], strides: [usize; 2], padding: PaddingSpec) -> MaxPool {
        let pool_spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: kernel[..].into(),
            padding,
            dilations: None,
            strides: Some(strides[..].into()),
            input_channels: 3,
            output_channels: 3,
        };
        MaxPool { pool_spec, with_index_outputs: None }
    }

    fn replacing(pool: &MaxPool, input: &TypedFact) -> Option<MaxPool2x2> {
        MaxPool2x2::replacing(&pool.pool_spec, pool.with_index_outputs, input)
    }

    /// Values of every sign, distinct, in a pattern no window repeats.
    fn input(shape: &[usize]) -> Tensor {
        let count = shape.iter().product::<usize>();
        let values: Vec<f32> = (0..count).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        Tensor::from_shape(shape, &values).unwrap()
    }

    #[test]
    fn pools_as_tract_does_including_odd_planes() {
        let pool = max_pool([2, 2], [2, 2], PaddingSpec::Valid);
        for shape in [[2, 3, 8, 8], [1, 3, 7, 9], [3, 3, 2, 5], [1, 3, 3, 2]] {
            let x = input(&shape);
            let fact = f32::fact(shape);
            let ours = replacing(&pool, &fact).expect("a 2×2 stride-2 pool");
            let expected = run(Box::new(pool.clone()), &x);
            assert_eq!(run(Box::new(ours), &x), expected, "shape {shape:?}");
        }
    }

    /// A plane of one row pools to nothing (tract's own pool divides by zero there).
    #[test]
    fn a_plane_of_one_row_pools_to_an_empty_tensor() {
        let pool = max_pool([2, 2], [2, 2], PaddingSpec::Valid);
        let ours = replacing(&pool, &f32::fact([1, 3, 1, 4])).unwrap();
        assert_eq!(run(Box::new(ours), &input(&[1, 3, 1, 4])).shape(), [1, 3, 0, 2]);
    }

    #[test]
    fn takes_the_largest_of_each_window() {
        let x = Tensor::from_shape(&[1, 1, 2, 4], &[1f32, -3.0, 0.5, 9.0, 2.0, -1.0, -7.0, 4.0])
            .unwrap();
        let pool =
            replacing(&max_pool([2, 2], [2, 2], PaddingSpec::Valid), &f32::fact([1, 1, 2, 4]));
        let out = run(Box::new(pool.unwrap()), &x);
        assert_eq!(out.shape(), [1, 1, 1, 2]);
        assert_eq!(out.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap(), [2.0, 9.0]);
    }

    #[test]
    fn leaves_other_pools_to_tract() {
        let fact = f32::fact([1, 3, 8, 8]);
        let padded = PaddingSpec::Explicit(tvec![1, 1], tvec![0, 0]);
        for other in [
            max_pool([2, 2], [1, 1], PaddingSpec::Valid),
            max_pool([3, 3], [2, 2], PaddingSpec::Valid),
            max_pool([2, 2], [2, 2], padded),
            max_pool([2, 2], [2, 2], PaddingSpec::ExplicitOnnxPool(tvec![0, 0], tvec![0, 0], true)),
            max_pool([2, 2], [2, 2], PaddingSpec::SameUpper),
            MaxPool {
                with_index_outputs: Some(i64::datum_type()),
                ..max_pool([2, 2], [2, 2], PaddingSpec::Valid)
            },
        ] {
            assert_eq!(replacing(&other, &fact), None, "{other:?}");
        }
        let pool = max_pool([2, 2], [2, 2], PaddingSpec::Valid);
        assert_eq!(replacing(&pool, &i32::fact([1, 3, 8, 8])), None, "integers");
    }
}
