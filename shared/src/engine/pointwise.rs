//! Pointwise (1×1) convolutions as one product per image. tract declutters a 1×1 convolution
//! into a product (`EinSum`, `NIHW,OI->NOHW`) followed by the batch normalisation's scale and
//! shift per channel, and runs it with its packed kernels, the image packed anew on every
//! run: PaddleOCR's classifier has 23 such convolutions of 8 to 200 channels over 192 to 2304
//! pixels, two fifths of its run at batch 8 (`scripts/benchmarks.md`, "Pointwise
//! convolutions"). [`replace`] puts [`Pointwise`] in place of such a product, of the scales
//! and shifts per output channel that alone follow it (folded into its weights and bias) and
//! of the ReLU or hard swish after them: the weights times each image as it lies, in blocks
//! of 8 channels by 8 pixels held in registers ([`super::blocks`]).

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::einsum::EinSum;

use super::blocks::{activation_after, multiply, Activation, Operand, Run, Weights, BLOCK_COLUMNS};
use super::ops::{one_op_patch, stateless_op};
use super::rewrite::channel_affine_after;

/// The most weights (output × input channels) a replaced product may have: the product keeps
/// no part of a large left operand in cache across the blocks of an image, where tract's
/// kernels do. PaddleOCR's largest has 6 400.
const MAX_WEIGHTS: usize = 1 << 14;

/// A 1×1 `f32` convolution with constant weights: on an input whose axis `axis` holds
/// `channels` channels, the axes before it running over images and those after over the
/// `pixels` pixels of one, `out_channels` channels in its place, each a weighted sum of the
/// input's channels at the same pixel, plus a bias, then an activation.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Pointwise {
    /// Output channels × input channels, and the bias of each output channel.
    weights: Arc<Weights>,
    axis: usize,
    channels: usize,
    out_channels: usize,
    pixels: usize,
    /// Where each input channel starts in one image: its index × `pixels`.
    offsets: Arc<Vec<usize>>,
    activation: Activation,
}

// Weights compare as numbers; a NaN weight makes an op unequal to itself, which only costs
// tract a merge of two identical nodes.
impl Eq for Pointwise {}

stateless_op!(Pointwise, "maas.Pointwise");

/// What a product is when it is a 1×1 convolution (see [`Pointwise`]): its weights as output
/// channels × input channels, and the axis and pixels of its input.
struct Product {
    rows: Vec<f32>,
    axis: usize,
    channels: usize,
    out_channels: usize,
    pixels: usize,
}

impl Product {
    /// `einsum` on an input of fact `x` and weights of fact `w`, when it is an `f32` product
    /// of a computed input by constant weights of one input and one output channel axis, the
    /// output channels in the place of the input channels, every other axis in the same place
    /// in the input and the output, of known pixels, at least a block's width of them.
    fn of(einsum: &EinSum, x: &TypedFact, w: &TypedFact) -> Option<Self> {
        let f32s = [x.datum_type, einsum.operating_dt].iter().all(|&t| t == f32::datum_type());
        let axes = &einsum.axes;
        if !f32s || einsum.q_params.is_some() || x.konst.is_some() {
            return None;
        }
        if axes.input_count() != 2 || axes.output_count() != 1 {
            return None;
        }
        let kernel = w.konst.as_ref().filter(|k| k.datum_type() == f32::datum_type())?;
        let (mut input_channels, mut output_channels) = (None, None);
        for axis in axes.iter_all_axes() {
            let (slot, places) = match (&*axis.inputs[0], &*axis.inputs[1], &*axis.outputs[0]) {
                (&[x], &[w], &[]) => (&mut input_channels, (x, w)),
                (&[], &[w], &[c]) => (&mut output_channels, (c, w)),
                (&[x], &[], &[c]) if x == c => continue,
                _ => return None,
            };
            if slot.replace(places).is_some() {
                return None;
            }
        }
        let ((axis, in_w), (out_axis, out_w)) = (input_channels?, output_channels?);
        let dim = |d: &TDim| d.to_usize().ok();
        let channels = dim(x.shape.get(axis)?)?;
        let pixels = x.shape[axis + 1..].iter().map(dim).product::<Option<usize>>()?;
        let out_channels = *kernel.shape().get(out_w)?;
        let fits = axis == out_axis
            && kernel.rank() == 2
            && kernel.shape()[in_w] == channels
            && pixels >= BLOCK_COLUMNS
            && channels * out_channels <= MAX_WEIGHTS;
        if !fits {
            return None;
        }
        let values = kernel.try_as_plain_ram().ok()?;
        let values = values.as_slice::<f32>().ok()?;
        let rows = match out_w {
            0 => values.to_vec(),
            _ => (0..out_channels)
                .flat_map(|o| (0..channels).map(move |i| values[i * out_channels + o]))
                .collect(),
        };
        Some(Self { rows, axis, channels, out_channels, pixels })
    }

    /// The product followed by a multiplication (`is_mul`) or an addition of `values` per
    /// output channel, onto `bias`.
    fn fold(&mut self, bias: &mut [f32], values: &[f32], is_mul: bool) {
        if !is_mul {
            bias.iter_mut().zip(values).for_each(|(b, v)| *b += v);
            return;
        }
        let rows = self.rows.chunks_exact_mut(self.channels).zip(bias.iter_mut());
        for ((row, b), &v) in rows.zip(values) {
            row.iter_mut().for_each(|w| *w *= v);
            *b *= v;
        }
    }
}

impl Pointwise {
    fn new(product: Product, bias: &[f32], activation: Activation) -> Self {
        let Product { rows, axis, channels, out_channels, pixels } = product;
        Self {
            weights: Arc::new(Weights::new(&rows, bias, channels)),
            axis,
            channels,
            out_channels,
            pixels,
            offsets: Arc::new((0..channels).map(|i| i * pixels).collect()),
            activation,
        }
    }

    fn run(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = input.shape();
        let fits = shape.len() > self.axis
            && shape[self.axis] == self.channels
            && shape[self.axis + 1..].iter().product::<usize>() == self.pixels;
        ensure!(fits, "a pointwise convolution's input of shape {shape:?}");
        let mut output_shape: TVec<usize> = shape.into();
        output_shape[self.axis] = self.out_channels;
        let mut output = Tensor::zero::<f32>(&output_shape)?;
        let input = input.try_as_plain_ram()?;
        let mut out = output.try_as_plain_ram_mut()?;
        let (x, y) = (input.as_slice::<f32>()?, out.as_slice_mut::<f32>()?);
        let runs = [Run { b: 0, c: 0, len: self.pixels }];
        let (image, out_image) = (self.channels * self.pixels, self.out_channels * self.pixels);
        for (x, y) in x.chunks_exact(image).zip(y.chunks_exact_mut(out_image)) {
            let b = Operand { values: x, offsets: &self.offsets, runs: &runs };
            multiply(&self.weights, b, y, self.pixels, self.activation)?;
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for Pointwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.to_tvec();
        shape[self.axis] = self.out_channels.into();
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// A patch putting [`Pointwise`] in place of the first 1×1 convolution's product it computes
/// (see [`Product::of`]), of the scales and shifts per output channel after it and of the
/// ReLU or hard swish after them, each of which alone reads what comes before; `None` when
/// there is none left.
pub(super) fn replace(model: &TypedModel) -> TractResult<Option<TypedModelPatch>> {
    for node in &model.nodes {
        let Some(einsum) = node.op_as::<EinSum>() else { continue };
        let [x, w] = node.inputs.as_slice() else { continue };
        let (x, w) = (model.outlet_fact(*x)?, model.outlet_fact(*w)?);
        let Some(mut product) = Product::of(einsum, x, w) else { continue };
        let mut bias = vec![0f32; product.out_channels];
        let mut last = node;
        while let Some((next, values, is_mul)) =
            channel_affine_after(model, last, product.axis, product.out_channels)?
        {
            product.fold(&mut bias, &values, is_mul);
            last = next;
        }
        let (last, activation) = activation_after(model, last)?;
        let op = Pointwise::new(product, &bias, activation);
        return one_op_patch(model, &node.name, &node.inputs[..1], last, op).map(Some);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::convs::tests::values;
    use crate::engine::hardswish::HardSwish;
    use crate::engine::ops::testing::{fused_once, run};
    use tract_onnx::tract_core::ops::binary::TypedBinOp;
    use tract_onnx::tract_core::ops::math::{add, max, mul};

    /// A model of `expression` on an input of `shape` and constant weights of `weights`.
    fn product(expression: &str, shape: &[usize], weights: &[usize]) -> (TypedModel, OutletId) {
        product_of(TypedModel::default(), expression, f32::fact(shape), weights)
    }

    /// [`product`] in `model`, on an input of fact `x`.
    fn product_of(
        mut model: TypedModel,
        expression: &str,
        x: TypedFact,
        weights: &[usize],
    ) -> (TypedModel, OutletId) {
        let x = model.add_source("x", x).unwrap();
        let w = model.add_const("w", values(weights, 1)).unwrap();
        let einsum = EinSum::new(expression.parse().unwrap(), f32::datum_type());
        let out = model.wire_node("product", einsum, &[x, w]).unwrap()[0];
        (model, out)
    }

    /// `wire` followed by `op` with a constant of `shape` (values from `seed`).
    fn then(model: &mut TypedModel, wire: OutletId, op: TypedBinOp, shape: &[usize]) -> OutletId {
        let name = format!("{}-{}", op.name(), model.nodes.len());
        let operand = model.add_const(format!("{name}.operand"), values(shape, 3)).unwrap();
        model.wire_node(name, op, &[wire, operand]).unwrap()[0]
    }

    /// Whether `model` (outputs `outputs`) with its products replaced matches it, within 1e-5
    /// on an input of `shape`, with one [`Pointwise`] left and none of `gone`.
    fn matches(mut model: TypedModel, outputs: &[OutletId], shape: &[usize], gone: &[&str]) {
        model.select_output_outlets(outputs).unwrap();
        let x = values(shape, 2);
        let expected = run(model.clone(), &x);
        let (ours, names) = fused_once(model, replace);
        assert_eq!(names.iter().filter(|n| *n == "maas.Pointwise").count(), 1, "{names:?}");
        for gone in gone.iter().chain(&["EinSum"]) {
            assert!(!names.contains(&gone.to_string()), "{gone} in {names:?}");
        }
        let ours = run(ours, &x);
        assert_eq!(ours.len(), expected.len());
        for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "at {i}: {a} against {b}");
        }
    }

    #[test]
    fn a_pointwise_convolution_with_its_batch_normalisation_and_relu_matches_tracts() {
        // PaddleOCR's at a batch of 2, fewer pixels: 16 channels into 12 (a block and 4), 3 × 20
        // pixels (7 blocks and 4).
        let (mut model, out) = product("NIHW,OI->NOHW", &[2, 16, 3, 20], &[12, 16]);
        let scaled = then(&mut model, out, mul(), &[1, 12, 1, 1]);
        let shifted = then(&mut model, scaled, add(), &[1, 12, 1, 1]);
        let zero = model.add_const("zero", tensor4(&[[[[0f32]]]])).unwrap();
        let relu = model.wire_node("relu", max(), &[shifted, zero]).unwrap()[0];
        matches(model, &[relu], &[2, 16, 3, 20], &["Mul", "Add", "Max"]);
    }

    #[test]
    fn a_hard_swish_after_a_batch_of_one_without_its_axis_matches_tracts() {
        let (mut model, out) = product("IHW,OI->OHW", &[8, 4, 24], &[24, 8]);
        let shifted = then(&mut model, out, add(), &[24, 1, 1]);
        let swish = HardSwish::STANDARD;
        let swished = model.wire_node("swish", swish, &[shifted]).unwrap()[0];
        matches(model, &[swished], &[8, 4, 24], &["Add", "maas.HardSwish"]);
    }

    #[test]
    fn a_symbolic_batch_runs_at_every_size() {
        let model = TypedModel::default();
        let batch = model.symbols.sym("N");
        let shape: TVec<TDim> = tvec![batch.into(), 6.into(), 2.into(), 12.into()];
        let x = TypedFact::dt_shape(f32::datum_type(), shape);
        let (model, out) = product_of(model, "NIHW,OI->NOHW", x, &[10, 6]);
        for batch in [1, 3] {
            matches(model.clone(), &[out], &[batch, 6, 2, 12], &[]);
        }
    }

    #[test]
    fn weights_held_input_channels_first_match_tracts() {
        let (model, out) = product("NIHW,IO->NOHW", &[1, 5, 2, 9], &[5, 11]);
        matches(model, &[out], &[1, 5, 2, 9], &[]);
    }

    #[test]
    fn what_is_not_per_channel_or_not_alone_stays() {
        // A residual addition of a computed tensor, and a shift that is also a model output.
        let (mut model, out) = product("NIHW,OI->NOHW", &[2, 8, 2, 8], &[8, 8]);
        let x = model.input_outlets().unwrap()[0];
        let residual = model.wire_node("residual", add(), &[out, x]).unwrap()[0];
        matches(model, &[residual], &[2, 8, 2, 8], &[]);
        let (mut model, out) = product("NIHW,OI->NOHW", &[2, 8, 2, 8], &[8, 8]);
        let shifted = then(&mut model, out, add(), &[1, 8, 1, 1]);
        let scaled = then(&mut model, shifted, mul(), &[1, 8, 1, 1]);
        matches(model, &[shifted, scaled], &[2, 8, 2, 8], &[]);
    }

    #[test]
    fn products_that_are_not_pointwise_convolutions_stay_tracts() {
        let cases: [(&str, &[usize], &[usize]); 3] = [
            // Fewer pixels than a block (a squeeze-and-excitation's 1×1 over pooled channels).
            ("NIHW,OI->NOHW", &[2, 8, 1, 1], &[8, 8]),
            // The output channels elsewhere than the input's.
            ("NIHW,OI->NHWO", &[2, 8, 2, 8], &[4, 8]),
            // Too many weights.
            ("NIHW,OI->NOHW", &[1, 256, 1, 8], &[256, 256]),
        ];
        for (expression, shape, weights) in cases {
            let (mut model, out) = product(expression, shape, weights);
            model.select_output_outlets(&[out]).unwrap();
            assert!(replace(&model).unwrap().is_none(), "{expression}");
        }
    }
}
