//! Convolutions of a batch run image by image. tract gathers a convolution's patches lazily
//! (no patch matrix built) only for one image: its offset tables are built for a single
//! batch, so at a concrete batch above 1 it builds the whole patch matrix first (eager
//! `Im2col`), the largest node of the zoo's small CNN at batch 8 in the per-node profile.
//! [`split`] gives each image of such a batch a convolution of its own (a `Slice` of the
//! batch, padded once for all images, the convolution, and the operations with constants that
//! follow it, which tract then fuses into the product as at batch 1) and joins the images
//! back with a `Concat`. Measured end to end on that CNN at batch 8: 0.108-0.114 ms before,
//! 0.093-0.095 after (`scripts/benchmarks.md`, "Convolutions of a batch image by image").

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::array::{Pad, PadMode, Slice, TypedConcat};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::{Conv, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;

use super::ops::only_successor;

/// The smallest kernel (its volume) that tract gathers lazily for one image: its default
/// `TRACT_LAZY_IM2COL_MIN_KERNEL`. A smaller kernel would get an eager `Im2col` per image.
const LAZY_MIN_KERNEL: usize = 6;

/// The widest output row split: from 128 pixels up tract may choose its direct convolution.
const MAX_OUTPUT_WIDTH: usize = 127;

/// The largest batch split: beyond, the graph would grow by a convolution per image.
const MAX_IMAGES: usize = 64;

/// The most bytes of weights a split may copy: each image's convolution packs its own copy
/// of the kernel for the matrix product.
const MAX_COPIED_WEIGHTS: usize = 1 << 20;

/// A patch giving each image of the first convolution over a concrete batch of more than one
/// image (float, ungrouped, a kernel tract gathers lazily) a convolution of its own; `None`
/// when there is none left.
pub(super) fn split(model: &TypedModel) -> TractResult<Option<TypedModelPatch>> {
    for node in &model.nodes {
        let Some(conv) = node.op_as::<Conv>() else { continue };
        let Some(images) = images(model, node, conv)? else { continue };
        let chain = followers(model, node)?;
        let last = chain.last().map_or(node.id, |n| n.id);
        let mut patch = TypedModelPatch::new(format!("{} image by image", node.name));
        let mut taps = patch.taps(model, &node.inputs)?;
        let conv = padded_once(&mut patch, model, node, conv, &mut taps)?;
        let outputs = (0..images)
            .map(|image| wire_image(&mut patch, model, node, &conv, &chain, &taps, image))
            .collect::<TractResult<TVec<_>>>()?;
        let joined =
            patch.wire_node(format!("{}.images", node.name), TypedConcat { axis: 0 }, &outputs)?[0];
        patch.shunt_outside(model, OutletId::new(last, 0), joined)?;
        return Ok(Some(patch));
    }
    Ok(None)
}

/// The output of `image`'s convolution (`conv` on `taps`, the input sliced to the image) and
/// of its copy of the `chain` of operations after `node`.
fn wire_image(
    patch: &mut TypedModelPatch,
    model: &TypedModel,
    node: &TypedNode,
    conv: &Conv,
    chain: &[&TypedNode],
    taps: &[OutletId],
    image: usize,
) -> TractResult<OutletId> {
    let name = format!("{}.image{image}", node.name);
    let slice = Slice::new(0, image, image + 1);
    let mut inputs: TVec<OutletId> = taps.into();
    inputs[0] = patch.wire_node(format!("{name}.slice"), slice, &[taps[0]])?[0];
    let mut wire = patch.wire_node(&name, conv.clone(), &inputs)?[0];
    let mut previous = node.id;
    for follower in chain {
        let inputs = follower
            .inputs
            .iter()
            .map(|&input| match input.node == previous {
                true => Ok(wire),
                false => patch.tap_model(model, input),
            })
            .collect::<TractResult<TVec<_>>>()?;
        let name = format!("{}.image{image}", follower.name);
        wire = patch.wire_node(name, follower.op.clone(), &inputs)?[0];
        previous = follower.id;
    }
    Ok(wire)
}

/// `conv` without padding, its input in `taps` padded (zeros) for the whole batch at once:
/// tract pads the input of each image's convolution with a pass of its own, about 1 µs for
/// an image of the zoo's small CNN, where one pass over the batch takes little more.
fn padded_once(
    patch: &mut TypedModelPatch,
    model: &TypedModel,
    node: &TypedNode,
    conv: &Conv,
    taps: &mut [OutletId],
) -> TractResult<Conv> {
    let fact = model.outlet_fact(node.inputs[0])?;
    let shape = conv.pool_spec.data_format.shape(fact.shape.as_concrete().unwrap_or_default())?;
    let padding = conv.pool_spec.computed_padding(shape.hw_dims());
    if padding.iter().all(|axis| axis.pad_before == 0 && axis.pad_after == 0) {
        return Ok(conv.clone());
    }
    let mut pads = vec![(0, 0); fact.rank()];
    for (axis, pad) in padding.iter().enumerate() {
        pads[shape.h_axis() + axis] = (pad.pad_before, pad.pad_after);
    }
    let zero = Tensor::zero_scalar_dt(fact.datum_type)?.into_arc_tensor();
    let pad = Pad { pads, mode: PadMode::Constant(zero) };
    taps[0] = patch.wire_node(format!("{}.pad", node.name), pad, &[taps[0]])?[0];
    let pool_spec = PoolSpec { padding: PaddingSpec::Valid, ..conv.pool_spec.clone() };
    Ok(Conv { pool_spec, ..conv.clone() })
}

/// The images of `node`'s batch, when `conv` is a convolution worth running image by image:
/// float, ungrouped, its batch first (NCHW or NHWC) and concrete, of 2 to [`MAX_IMAGES`]
/// images, a kernel of at least [`LAZY_MIN_KERNEL`] taps whose copies stay within
/// [`MAX_COPIED_WEIGHTS`], and output rows narrower than 128 pixels.
fn images(model: &TypedModel, node: &TypedNode, conv: &Conv) -> TractResult<Option<usize>> {
    let input = model.outlet_fact(node.inputs[0])?;
    let output = model.outlet_fact(OutletId::new(node.id, 0))?;
    let (Some(shape), Some(out_shape)) = (input.shape.as_concrete(), output.shape.as_concrete())
    else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    let out = spec.data_format.shape(out_shape)?;
    let taps: usize = spec.kernel_shape.iter().product();
    let wide = out.hw_dims().last().is_some_and(|&w| w > MAX_OUTPUT_WIDTH);
    let suitable = conv.q_params.is_none()
        && node.inputs.len() == 3
        && conv.group == 1
        && input.datum_type == f32::datum_type()
        && spec.data_format.has_n()
        && taps >= LAZY_MIN_KERNEL
        && !wide;
    let images = shape.first().copied().unwrap_or(0);
    let kernel = model.outlet_fact(node.inputs[1])?.shape.as_concrete().map(|s| s.iter().product());
    let copied = kernel.map(|taps: usize| taps * size_of::<f32>() * images.saturating_sub(1));
    let small = copied.is_some_and(|bytes| bytes <= MAX_COPIED_WEIGHTS);
    Ok((suitable && small && (2..=MAX_IMAGES).contains(&images)).then_some(images))
}

/// The operations that follow `node` one after the other and compute each output element
/// from the same element of their input and constants that do not vary along the batch (a
/// ReLU, a bias): run per image, they stay where tract can fuse them into the product.
fn followers<'m>(model: &'m TypedModel, node: &TypedNode) -> TractResult<Vec<&'m TypedNode>> {
    let mut chain = Vec::new();
    let mut at = node;
    while let Some(next) = only_successor(model, at)? {
        if !per_element(model, at, next)? {
            break;
        }
        chain.push(next);
        at = next;
    }
    Ok(chain)
}

/// Whether `next`, which reads `previous`, is a unary operation on each element or a binary
/// one with a constant that is the same for every image, keeping `previous`'s shape.
fn per_element(model: &TypedModel, previous: &TypedNode, next: &TypedNode) -> TractResult<bool> {
    let shape = &model.outlet_fact(OutletId::new(previous.id, 0))?.shape;
    if next.outputs.len() != 1 || &model.outlet_fact(OutletId::new(next.id, 0))?.shape != shape {
        return Ok(false);
    }
    if next.op_is::<ElementWiseOp>() {
        return Ok(true);
    }
    if !next.op_is::<TypedBinOp>() || next.inputs.len() != 2 {
        return Ok(false);
    }
    let Some(other) = next.inputs.iter().find(|i| i.node != previous.id) else { return Ok(false) };
    let fact = model.outlet_fact(*other)?;
    let rank = shape.rank();
    // Broadcast from the right: a constant of lower rank leaves the batch axis alone.
    let batch_free = fact.rank() < rank || fact.shape.first() == Some(&1.to_dim());
    Ok(fact.konst.is_some() && batch_free)
}

#[cfg(test)]
mod tests {
    use tract_onnx::tract_core::ops::cnn::KernelFormat;
    use tract_onnx::tract_core::ops::math::max;
    use tract_onnx::tract_core::ops::nn::DataFormat;

    use super::*;
    use crate::engine::ops::testing::{fused_once, run};

    const CHANNELS: usize = 2;
    const OUTPUTS: usize = 4;
    const BIAS: [f32; OUTPUTS] = [0.5, -0.25, 0.0, 0.125];
    /// Large enough that the convolution is not a small one for `SmallConv`.
    const SIDE: usize = 100;

    /// A convolution of `batch` images of `CHANNELS` × `SIDE` × `SIDE` pixels by a square
    /// kernel of `size` taps a side (padded to keep the size, `groups` groups) to `OUTPUTS`
    /// channels, then a ReLU (the maximum with 0); its kernel and input from `values`.
    fn conv_relu(batch: usize, size: usize, groups: usize) -> (TypedModel, Tensor) {
        let mut model = TypedModel::default();
        let shape = [batch, CHANNELS, SIDE, SIDE];
        let source = model.add_source("x", f32::fact(shape)).unwrap();
        let kernel_shape = [OUTPUTS, CHANNELS / groups, size, size];
        let kernel = model.add_const("kernel", values(&kernel_shape, 0.3)).unwrap();
        let bias = model.add_const("bias", tensor1(&BIAS)).unwrap();
        let pad = size / 2;
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![size, size],
                padding: PaddingSpec::Explicit(tvec![pad, pad], tvec![pad, pad]),
                dilations: None,
                strides: None,
                input_channels: CHANNELS,
                output_channels: OUTPUTS,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: groups,
            q_params: None,
        };
        let wire = model.wire_node("conv", conv, &[source, kernel, bias]).unwrap();
        let zero = Tensor::from_shape(&[1, 1, 1, 1], &[0f32]).unwrap();
        let zero = model.add_const("zero", zero).unwrap();
        let relu = model.wire_node("relu", max(), &[wire[0], zero]).unwrap();
        model.select_output_outlets(&relu).unwrap();
        (model, values(&shape, 1.0))
    }

    /// A tensor of `shape` whose values wave between -`scale` and `scale`.
    fn values(shape: &[usize], scale: f32) -> Tensor {
        let count = shape.iter().product::<usize>();
        let data: Vec<f32> =
            (0..count).map(|i| scale * ((i * 7 % 13) as f32 / 6.0 - 1.0)).collect();
        Tensor::from_shape(shape, &data).unwrap()
    }

    /// [`conv_relu`] (one group) computed tap by tap.
    fn direct(x: &Tensor, size: usize) -> Vec<f32> {
        let batch = x.shape()[0];
        let x = x.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
        let kernel = values(&[OUTPUTS, CHANNELS, size, size], 0.3);
        let kernel = kernel.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
        let pad = size / 2;
        let tap = |n: usize, c: usize, row: usize, col: usize| -> Option<f32> {
            let (row, col) = (row.checked_sub(pad)?, col.checked_sub(pad)?);
            (row < SIDE && col < SIDE).then(|| x[((n * CHANNELS + c) * SIDE + row) * SIDE + col])
        };
        let mut out = Vec::new();
        for n in 0..batch {
            for o in 0..OUTPUTS {
                for y in 0..SIDE * SIDE {
                    let (row, col) = (y / SIDE, y % SIDE);
                    let mut sum = BIAS[o];
                    for k in 0..CHANNELS * size * size {
                        let (c, ky, kx) = (k / (size * size), k / size % size, k % size);
                        let weight = kernel[o * CHANNELS * size * size + k];
                        sum += tap(n, c, row + ky, col + kx).unwrap_or(0.0) * weight;
                    }
                    out.push(sum.max(0.0));
                }
            }
        }
        out
    }

    #[test]
    fn each_image_gets_its_convolution_and_relu_and_the_batch_is_joined() {
        let (model, x) = conv_relu(3, 3, 1);
        let (split_model, names) = fused_once(model.clone(), split);
        let count = |name: &str| names.iter().filter(|n| *n == name).count();
        assert_eq!((count("Conv"), count("Slice"), count("Max")), (3, 3, 3), "{names:?}");
        assert_eq!(count("Concat"), 1, "{names:?}");
        let expected = direct(&x, 3);
        let got = run(split_model, &x);
        assert_eq!(got.len(), expected.len());
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!((g - e).abs() <= 1e-5, "[{i}]: {g} vs {e}");
        }
        // What it is for: in the engine's optimisation tract gathers each image's patches
        // lazily and builds no patch matrix; the batch is padded once.
        let optimised = crate::engine::rewrite::optimise(model).unwrap();
        let ops: Vec<String> = optimised.nodes.iter().map(|n| n.op.name().to_string()).collect();
        let lazy = ops.iter().filter(|n| *n == "LazyIm2col").count();
        let pads = ops.iter().filter(|n| *n == "maas.ZeroPad2d").count();
        assert!(lazy == 3 && pads == 1 && !ops.iter().any(|n| n == "Im2col"), "{ops:?}");
        let got = run(optimised, &x);
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!((g - e).abs() <= 1e-5, "optimised [{i}]: {g} vs {e}");
        }
    }

    #[test]
    fn one_image_small_kernels_and_grouped_convolutions_are_left_whole() {
        for (batch, size, groups) in [(1, 3, 1), (4, 1, 1), (4, 3, 2)] {
            let (model, _) = conv_relu(batch, size, groups);
            let patch = split(&model).unwrap();
            assert!(patch.is_none(), "batch {batch}, kernel {size}, groups {groups}");
        }
    }
}
