//! From a translated model to the optimised one the engine plans: maas's rewrites of the
//! decluttered graph, then tract's optimiser with one pass left out. Each change is here
//! because a per-node profile (`scripts/benchmarks.md`, "Engine speed II") showed where
//! tract's own choice was slow:
//!
//! - **No axis merging around 1×1 convolutions** ([`codegen`]): tract's
//!   `MergeConsecutiveSameRoleAxes` pass turns a 1×1 convolution over a batch of more than one
//!   into a transpose of its input (channels last), one matrix product over batch × pixels and
//!   a transpose back, and the transposed output keeps the following batch normalisation
//!   from fusing into the product. On the PaddleOCR classifier at batch 8 those transposes
//!   and unfused `Mul`/`Add` were a third of the run; without the pass each image is one
//!   product with the normalisation fused, as at batch 1.
//! - **Channel scales and shifts folded into grouped convolutions**
//!   ([`fold_channel_affine`]): tract folds a batch normalisation (a per-channel `Mul` and
//!   `Add` by constants) into the weights of an ungrouped convolution, not into a depthwise
//!   one, where it stays a separate pass over the tensor, and at batches above 1 two generic
//!   broadcasting passes. The weights and bias absorb it here, as onnxruntime's
//!   `ConvBNFusion` does.
//! - **Small convolutions as one product per image** ([`convs::replace`]): a 2-D convolution
//!   of a few hundred thousand multiplications an image, the small CNN's, multiplies its
//!   weights by the padded image read in place ([`convs`]), where tract gathers its patches
//!   panel by panel, which cost more than the products.
//! - **Depthwise convolutions row by row** ([`depthwise::replace`]): each channel padded once,
//!   each row of output pixels summed in vector registers over every tap, with the ReLU or
//!   hard swish after it, where tract's `DepthWiseConv` indexes every tap of every pixel.
//! - **Pointwise convolutions as one product per image** ([`pointwise::replace`]): a 1×1
//!   convolution, which tract declutters into a product with the batch normalisation after
//!   it, multiplies its weights (the normalisation folded in) by the image as it lies, the
//!   ReLU or hard swish after it applied before the store ([`pointwise`]), where tract packs
//!   the image anew on every run for its kernels.
//! - **Convolutions of a batch image by image** ([`images::split`]): tract gathers a
//!   convolution's patches lazily for one image only; at a concrete batch above 1 it builds
//!   the whole patch matrix first (the small CNN's batch of 8: 15 % faster without it).
//! - **Hard swish in one pass** ([`hardswish::fuse`]): `x * clip(x + 3, 0, 6) / 6` as
//!   exporters write it out runs as one op instead of two passes over the tensor.
//! - **Activations fused across a convolution's last reshape** ([`regroup::fuse`]): tract
//!   fuses a ReLU into the matrix product of a convolution only when no reshape stands
//!   between them, and its convolutions end with one.
//! - **2×2 max pools with stride 2** ([`replace_pools`]): computed by [`MaxPool2x2`], a
//!   vectorisable loop over pairs of rows, where tract walks each tap with bounds checks.
//! - **One-hot encodings multiplied by a table** ([`onehot::fuse`]): JAX's embeddings (magika)
//!   run as a lookup of the table's rows, not as a product with a tensor of zeros and ones.
//! - **Zero padding row by row** ([`ZeroPad2d`]): the padding before a convolution whose
//!   patches tract gathers lazily, where tract's `Pad` slices generic arrays.
//! - **Small products of two computed tensors** ([`products::replace`]): an attention block's
//!   query by key and weights by value, per batch row and head, in plain loops
//!   ([`SmallProducts`]), where tract packs both operands of each for its large-matrix
//!   kernels; the attention's scale folds into them.
//! - **Softmax in three passes over the tensor** ([`Softmax`]): where tract sets up three
//!   vector kernels for each row, copying short rows into buffers of their own.
//! - **`If` branches planned once** ([`PlannedIf`]): tract's `IfThenElse` clones the branch
//!   it takes and plans it on every run.
//! - **Maxima, minima and sums over consecutive axes** ([`Reduction`]): one pass over the
//!   tensor, where tract slices (and allocates) the input anew for every output; a global
//!   average pool's scale folds into its sum ([`fold_scales`]).

use tract_onnx::prelude::{
    tract_ndarray, Datum, OutletId, SpecialOps, Tensor, TractResult, TypedModel, TypedModelPatch,
    TypedNode, TypedOp,
};
use tract_onnx::tract_core::ops::array::Pad;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::{Conv, MaxPool, OptMaxPool};
use tract_onnx::tract_core::ops::logic::IfThenElse;
use tract_onnx::tract_core::ops::math::{Add, Mul};
use tract_onnx::tract_core::ops::nn::{Reduce, Softmax as TractSoftmax};
use tract_onnx::tract_core::optim::Optimizer;

use super::branches::PlannedIf;
use super::ops::{fold_scales, only_successor};
use super::pad::ZeroPad2d;
use super::pool::MaxPool2x2;
use super::products::SmallProducts;
use super::reduce::Reduction;
use super::softmax::Softmax;
use super::{convs, depthwise, hardswish, images, onehot, pointwise, products, regroup};

/// The optimised form of a translated, decluttered model ([`super::translate`] declutters).
pub(super) fn optimise(mut typed: TypedModel) -> TractResult<TypedModel> {
    // Each gives one patch at a time, until it finds nothing more.
    let rewrites: [Rewrite; 8] = [
        fold_channel_affine,
        hardswish::fuse,
        onehot::fuse,
        convs::replace,
        depthwise::replace,
        pointwise::replace,
        images::split,
        products::replace,
    ];
    for rewrite in rewrites {
        while let Some(patch) = rewrite(&typed)? {
            patch.apply(&mut typed)?;
        }
    }
    typed = typed.into_compact()?;
    typed.optimize_with_session(&mut codegen().session())?;
    regroup::fuse(&mut typed)?;
    replace_pools(&mut typed)?;
    replace_pads(&mut typed)?;
    replace_reductions(&mut typed)?;
    replace_softmaxes(&mut typed)?;
    replace_ifs(&mut typed)?;
    fold_scales::<Reduction>(&mut typed)?;
    fold_scales::<SmallProducts>(&mut typed)?;
    Ok(typed)
}

/// A rewrite of the decluttered graph: its next patch, or `None` when it finds nothing more.
type Rewrite = fn(&TypedModel) -> TractResult<Option<TypedModelPatch>>;

/// tract's max pools that [`MaxPool2x2`] computes, replaced by it: optimised ones, and those
/// tract leaves unoptimised because their input's shape is symbolic (a symbolic batch: the
/// small CNN's pool took 37 µs of a symbolic plan's 100 at batch 8, 3.5 µs as `MaxPool2x2`).
fn replace_pools(model: &mut TypedModel) -> TractResult<()> {
    replace_ops(model, |model, node| {
        let (spec, index_outputs) = match (node.op_as::<OptMaxPool>(), node.op_as::<MaxPool>()) {
            (Some(pool), _) => (&pool.pool_spec, pool.with_index_outputs),
            (_, Some(pool)) => (&pool.pool_spec, pool.with_index_outputs),
            (None, None) => return Ok(None),
        };
        let input = model.outlet_fact(node.inputs[0])?;
        Ok(MaxPool2x2::replacing(spec, index_outputs, input))
    })
}

/// tract's zero paddings that [`ZeroPad2d`] computes, replaced by it.
fn replace_pads(model: &mut TypedModel) -> TractResult<()> {
    replace_ops(model, |model, node| {
        let Some(pad) = node.op_as::<Pad>() else { return Ok(None) };
        Ok(ZeroPad2d::replacing(pad, model.outlet_fact(node.inputs[0])?))
    })
}

/// tract's maxima, minima and sums that [`Reduction`] computes, replaced by it.
fn replace_reductions(model: &mut TypedModel) -> TractResult<()> {
    replace_ops(model, |model, node| {
        let Some(reduce) = node.op_as::<Reduce>() else { return Ok(None) };
        Ok(Reduction::replacing(reduce, model.outlet_fact(node.inputs[0])?))
    })
}

/// tract's softmaxes that [`Softmax`] computes, replaced by it.
fn replace_softmaxes(model: &mut TypedModel) -> TractResult<()> {
    replace_ops(model, |model, node| {
        let Some(softmax) = node.op_as::<TractSoftmax>() else { return Ok(None) };
        Ok(Softmax::replacing(softmax, model.outlet_fact(node.inputs[0])?))
    })
}

/// tract's `If`s on a condition known only at run time, with their branches planned once.
fn replace_ifs(model: &mut TypedModel) -> TractResult<()> {
    replace_ops(model, |_, node| node.op_as::<IfThenElse>().map(PlannedIf::replacing).transpose())
}

/// Every node for which `replacement` gives an op, that op in its place on the same inputs.
fn replace_ops<O: TypedOp>(
    model: &mut TypedModel,
    replacement: impl Fn(&TypedModel, &TypedNode) -> TractResult<Option<O>>,
) -> TractResult<()> {
    for id in 0..model.nodes.len() {
        let patch = {
            let node = model.node(id);
            let Some(op) = replacement(model, node)? else { continue };
            TypedModelPatch::replace_single_op(model, node, &node.inputs, op)?
        };
        patch.apply(model)?;
    }
    Ok(())
}

/// tract's code generation passes without `MergeConsecutiveSameRoleAxes`.
fn codegen() -> Optimizer {
    let mut optimizer = Optimizer::codegen();
    optimizer
        .passes
        .retain(|pass| !format!("{pass:?}").starts_with("MergeConsecutiveSameRoleAxes"));
    optimizer
}

/// A patch folding the first per-channel `Mul` or `Add` by a constant that follows a grouped
/// float convolution with constant weights into those weights and bias; `None` when there is
/// none left.
fn fold_channel_affine(model: &TypedModel) -> TractResult<Option<TypedModelPatch>> {
    for node in &model.nodes {
        let Some(conv) = node.op_as::<Conv>() else { continue };
        // Ungrouped convolutions: tract folds these itself (`declutter_channel_arithmetic_succ`).
        if conv.group == 1 || conv.q_params.is_some() || node.inputs.len() != 3 {
            continue;
        }
        let out_fact = model.outlet_fact(OutletId::new(node.id, 0))?;
        let c_axis = conv.pool_spec.data_format.shape(out_fact.shape.to_tvec())?.c_axis();
        let channels = conv.pool_spec.output_channels;
        let Some((next, values, is_mul)) = channel_affine_after(model, node, c_axis, channels)?
        else {
            continue;
        };
        let consts = (
            model.outlet_fact(node.inputs[1])?.konst.as_ref(),
            model.outlet_fact(node.inputs[2])?.konst.as_ref(),
        );
        let (Some(kernel), Some(bias)) = consts else { continue };
        let Some((kernel, bias)) = folded(conv, kernel, bias, &values, is_mul)? else { continue };
        let mut patch = TypedModelPatch::new(format!("fold {} into {}", next.name, node.name));
        let input = patch.tap_model(model, node.inputs[0])?;
        let kernel = patch.add_const(format!("{}.{}.kernel", node.name, next.name), kernel)?;
        let bias = patch.add_const(format!("{}.{}.bias", node.name, next.name), bias)?;
        let wire = patch.wire_node(&node.name, conv.clone(), &[input, kernel, bias])?[0];
        patch.shunt_outside(model, OutletId::new(next.id, 0), wire)?;
        return Ok(Some(patch));
    }
    Ok(None)
}

/// The multiplication or addition by a constant per output channel (`axis` holding
/// `channels`) that alone reads `node`'s output and keeps its shape: the node, its values and
/// whether it multiplies.
pub(super) fn channel_affine_after<'m>(
    model: &'m TypedModel,
    node: &TypedNode,
    axis: usize,
    channels: usize,
) -> TractResult<Option<(&'m TypedNode, Vec<f32>, bool)>> {
    let Some(next) = only_successor(model, node)? else { return Ok(None) };
    let Some(bin) = next.op_as::<TypedBinOp>() else { return Ok(None) };
    let is_mul = bin.0.is::<Mul>();
    let output = OutletId::new(node.id, 0);
    let Some(slot) = next.inputs.iter().position(|&i| i == output) else { return Ok(None) };
    if !(is_mul || bin.0.is::<Add>()) || next.inputs.len() != 2 {
        return Ok(None);
    }
    let next_fact = model.outlet_fact(OutletId::new(next.id, 0))?;
    let same = next_fact.shape == model.outlet_fact(output)?.shape
        && next_fact.datum_type == f32::datum_type();
    let operand = model.outlet_fact(next.inputs[1 - slot])?.konst.as_ref();
    let values = operand.filter(|_| same).and_then(|o| per_channel(o, axis, channels));
    Ok(values.map(|values| (next, values, is_mul)))
}

/// The operand's value for each of `channels` output channels, when it is an f32 constant
/// that varies along `c_axis` only (or is one value for all).
fn per_channel(operand: &Tensor, c_axis: usize, channels: usize) -> Option<Vec<f32>> {
    if operand.datum_type() != f32::datum_type() {
        return None;
    }
    let shape = operand.shape();
    let varies = |axis: usize| shape[axis] != 1;
    if (0..shape.len()).any(|axis| axis != c_axis && varies(axis)) {
        return None;
    }
    let values = operand.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?;
    match values.len() {
        1 => Some(vec![values[0]; channels]),
        n if n == channels && shape.get(c_axis) == Some(&channels) => Some(values.to_vec()),
        _ => None,
    }
}

/// The kernel and bias of `conv` followed by a multiplication (`is_mul`) or an addition of
/// `values` per output channel; `None` when they are not f32 or the bias is not per channel.
fn folded(
    conv: &Conv,
    kernel: &Tensor,
    bias: &Tensor,
    values: &[f32],
    is_mul: bool,
) -> TractResult<Option<(Tensor, Tensor)>> {
    let f32_type = f32::datum_type();
    if kernel.datum_type() != f32_type || bias.datum_type() != f32_type {
        return Ok(None);
    }
    let bias = bias.try_as_plain_ram()?.as_slice::<f32>()?;
    let bias: Vec<f32> = match bias.len() {
        1 => vec![bias[0]; values.len()],
        n if n == values.len() => bias.to_vec(),
        _ => return Ok(None),
    };
    let o_axis = conv.kernel_fmt.o_axis(kernel.shape());
    if kernel.shape().get(o_axis) != Some(&values.len()) {
        return Ok(None);
    }
    let mut kernel_array = kernel.to_plain_array_view::<f32>()?.to_owned();
    let bias: Vec<f32> = if is_mul {
        for (channel, mut lane) in
            kernel_array.axis_iter_mut(tract_ndarray::Axis(o_axis)).enumerate()
        {
            lane.mapv_inplace(|w| w * values[channel]);
        }
        bias.iter().zip(values).map(|(b, v)| b * v).collect()
    } else {
        bias.iter().zip(values).map(|(b, v)| b + v).collect()
    };
    let bias = Tensor::from_shape(&[bias.len()], &bias)?;
    Ok(Some((kernel_array.into(), bias)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::{tvec, IntoArcTensor, IntoTValue, TypedFact};
    use tract_onnx::tract_core::ops::binary::OptBinByScalar;
    use tract_onnx::tract_core::ops::cnn::{KernelFormat, PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::math::{add, max, mul};
    use tract_onnx::tract_core::ops::nn::DataFormat;
    use tract_onnx::tract_core::plan::SimplePlan;

    fn floats(count: usize, seed: f32) -> Vec<f32> {
        (0..count).map(|i| ((i as f32 + seed) * 0.731).sin()).collect()
    }

    fn conv(channels_in: usize, channels_out: usize, kernel: usize, group: usize) -> Conv {
        Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![kernel, kernel],
                padding: PaddingSpec::Valid,
                dilations: None,
                strides: None,
                input_channels: channels_in,
                output_channels: channels_out,
            },
            kernel_fmt: KernelFormat::OIHW,
            group,
            q_params: None,
        }
    }

    /// `x [batch, 4, 6, 6]` → convolution (`group`, `kernel`², 4 → 4 channels) → `· scale + shift`
    /// per channel (`scale` of shape `[1, 4, 1, 1]`, or one value when `scalar_scale`).
    fn conv_affine(batch: usize, kernel: usize, group: usize, scalar_scale: bool) -> TypedModel {
        let mut model = TypedModel::default();
        let fact = TypedFact::dt_shape(f32::datum_type(), [batch, 4, 6, 6]);
        let x = model.add_source("x", fact).unwrap();
        let weights = Tensor::from_shape(
            &[4, 4 / group, kernel, kernel],
            &floats(16 / group * kernel * kernel, 1.0),
        );
        let w = model.add_const("w", weights.unwrap()).unwrap();
        let b = model.add_const("b", Tensor::from_shape(&[4], &floats(4, 2.0)).unwrap()).unwrap();
        let y = model.wire_node("conv", conv(4, 4, kernel, group), &[x, w, b]).unwrap();
        let scale = match scalar_scale {
            true => Tensor::from_shape(&[1, 1, 1, 1], &[1.5f32]).unwrap(),
            false => Tensor::from_shape(&[1, 4, 1, 1], &floats(4, 3.0)).unwrap(),
        };
        let scale = model.add_const("scale_value", scale).unwrap();
        let y = model.wire_node("scale", mul(), &[y[0], scale]).unwrap();
        let shift = Tensor::from_shape(&[1, 4, 1, 1], &floats(4, 4.0)).unwrap();
        let shift = model.add_const("shift_value", shift).unwrap();
        let y = model.wire_node("shift", add(), &[shift, y[0]]).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    fn run(model: TypedModel, batch: usize) -> Vec<f32> {
        run_on(model, &[batch, 4, 6, 6])
    }

    fn run_on(model: TypedModel, shape: &[usize]) -> Vec<f32> {
        let x = Tensor::from_shape(shape, &floats(shape.iter().product(), 0.0)).unwrap();
        let outputs = SimplePlan::new(model).unwrap().run(tvec![x.into_tvalue()]).unwrap();
        outputs[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
    }

    fn assert_close(got: &[f32], expected: &[f32]) {
        assert_eq!(got.len(), expected.len());
        let worst = got.iter().zip(expected).map(|(g, e)| (g - e).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-5, "worst difference {worst}");
    }

    fn bin_ops(model: &TypedModel) -> usize {
        model.nodes.iter().filter(|n| n.op_is::<TypedBinOp>()).count()
    }

    #[test]
    fn a_depthwise_convolution_absorbs_the_scale_and_shift_after_it() {
        let model = conv_affine(2, 3, 4, false);
        let mut folded = model.clone();
        while let Some(patch) = fold_channel_affine(&folded).unwrap() {
            patch.apply(&mut folded).unwrap();
        }
        let folded = folded.into_compact().unwrap();
        assert_eq!(bin_ops(&model), 2);
        assert_eq!(bin_ops(&folded), 0, "{folded}");
        assert_close(&run(folded, 2), &run(model.clone(), 2));
        assert_close(&run(optimise(model.clone()).unwrap(), 2), &run(model, 2));
    }

    #[test]
    fn a_relu_after_a_convolution_fuses_into_its_product() {
        let mut model = TypedModel::default();
        // Large enough that the convolution is not a small one for `SmallConv`.
        let fact = TypedFact::dt_shape(f32::datum_type(), [1, 4, 100, 100]);
        let x = model.add_source("x", fact).unwrap();
        let weights = Tensor::from_shape(&[4, 4, 3, 3], &floats(144, 1.0)).unwrap();
        let w = model.add_const("w", weights).unwrap();
        let b = model.add_const("b", Tensor::from_shape(&[4], &floats(4, 2.0)).unwrap()).unwrap();
        let y = model.wire_node("conv", conv(4, 4, 3, 1), &[x, w, b]).unwrap();
        let zero = model.add_const("zero", Tensor::from_shape(&[1, 1, 1, 1], &[0f32]).unwrap());
        let y = model.wire_node("relu", max(), &[y[0], zero.unwrap()]).unwrap();
        model.select_output_outlets(&y).unwrap();
        let by_scalar =
            |m: &TypedModel| m.nodes.iter().filter(|n| n.op_is::<OptBinByScalar>()).count();
        let mut tracts = model.clone();
        tracts.optimize_with_session(&mut codegen().session()).unwrap();
        assert_eq!(by_scalar(&tracts), 1, "tract alone leaves the ReLU a pass of its own");
        let optimised = optimise(model.clone()).unwrap();
        assert_eq!(by_scalar(&optimised), 0, "{optimised}");
        assert_close(&run_on(optimised, &[1, 4, 100, 100]), &run_on(model, &[1, 4, 100, 100]));
    }

    #[test]
    fn a_pool_over_a_symbolic_batch_is_replaced_too() {
        let mut model = TypedModel::default();
        let batch = model.symbols.sym("N");
        let shape: tract_onnx::prelude::TVec<tract_onnx::prelude::TDim> =
            tvec![batch.into(), 4.into(), 6.into(), 6.into()];
        let x = model.add_source("x", TypedFact::dt_shape(f32::datum_type(), shape)).unwrap();
        let pool_spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec![2, 2],
            padding: PaddingSpec::Valid,
            dilations: None,
            strides: Some(tvec![2, 2]),
            input_channels: 4,
            output_channels: 4,
        };
        let pool = MaxPool { pool_spec, with_index_outputs: None };
        let y = model.wire_node("pool", pool, &[x]).unwrap();
        model.select_output_outlets(&y).unwrap();
        let mut tracts = model.clone();
        tracts.optimize_with_session(&mut codegen().session()).unwrap();
        assert!(tracts.nodes.iter().any(|n| n.op_is::<MaxPool>()), "tract keeps its generic pool");
        let optimised = optimise(model.clone()).unwrap();
        assert!(optimised.nodes.iter().any(|n| n.op_is::<MaxPool2x2>()), "{optimised}");
        assert!(!optimised.nodes.iter().any(|n| n.op_is::<MaxPool>()));
        assert_close(&run(optimised, 3), &run(model, 3));
    }

    #[test]
    fn one_scale_for_every_channel_is_folded_too() {
        let model = conv_affine(1, 3, 2, true);
        let folded = fold_channel_affine(&model).unwrap();
        assert!(folded.is_some(), "a grouped convolution takes a scalar scale");
        assert_close(&run(optimise(model.clone()).unwrap(), 1), &run(model, 1));
    }

    #[test]
    fn a_scale_that_varies_along_another_axis_is_left_alone() {
        let mut model = conv_affine(1, 3, 4, false);
        let scale = model.node_by_name("scale").unwrap().inputs[1].node;
        let along_width = Tensor::from_shape(&[1, 1, 1, 4], &floats(4, 5.0)).unwrap();
        let along_width = along_width.into_arc_tensor();
        let konst = tract_onnx::tract_core::ops::konst::Const::new(along_width.clone()).unwrap();
        *model.node_mut(scale).op_as_mut().unwrap() = konst;
        model.node_mut(scale).outputs[0].fact = TypedFact::try_from(along_width).unwrap();
        assert!(fold_channel_affine(&model).unwrap().is_none());
    }

    #[test]
    fn ungrouped_convolutions_are_left_to_tract() {
        let model = conv_affine(1, 3, 1, false);
        assert!(fold_channel_affine(&model).unwrap().is_none());
        assert_close(&run(optimise(model.clone()).unwrap(), 1), &run(model, 1));
    }

    #[test]
    fn a_batched_pointwise_convolution_is_not_transposed() {
        let model = conv_affine(8, 1, 1, false);
        let optimised = optimise(model.clone()).unwrap();
        let moves = optimised
            .nodes
            .iter()
            .filter(|n| {
                n.op_as::<tract_onnx::tract_core::ops::change_axes::AxisOp>().is_some_and(|op| {
                    matches!(op, tract_onnx::tract_core::ops::change_axes::AxisOp::Move(..))
                })
            })
            .count();
        assert_eq!(moves, 0, "{optimised}");
        assert_close(&run(optimised, 8), &run(model, 8));
    }
}
