//! Small convolutions as one matrix product per image. The zoo's small CNN convolves 3 and
//! 8 channels of 16 × 16 and 8 × 8 pixels into 8 and 16 (55 000 and 74 000 multiplications an
//! image): tract gathers the patches of such a convolution lazily, panel by panel, for its
//! packed kernels, and the gathering (`LazyIm2colInput::panel_bytes`) was the largest item of
//! the CNN's profile at batch 8, ahead of the products themselves. [`replace`] puts
//! [`SmallConv`] in place of such a convolution in the decluttered graph. At stride 1 it
//! multiplies the weights by the image itself, padded once into a buffer (or as it lies when
//! it needs no padding): the row of each kernel tap for a row of output pixels is a row of the
//! padded image, shifted. At other strides it gathers each image's patch matrix first. The
//! product ([`super::blocks`]) runs in blocks of 8 output channels by 8 pixels held in
//! registers from the bias on, and a ReLU that alone reads the convolution is applied before
//! each block is stored. (With each weight read from its row of the kernel, and each block
//! summed into the output after a first pass wrote the bias, the small CNN's two convolutions
//! took 25 and 27 µs at batch 8 against 14 and 16.)
//! (`matrixmultiply`, on gathered patches, packed the weights again for every image and
//! ran the CNN's convolutions at about half that speed.)

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PoolSpec};
use tract_onnx::tract_core::ops::math::Max;
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::blocks::{multiply, Activation, Operand, Run, Weights};
use super::ops::{binary, one_op_patch, only_successor, stateless_op};

/// The most multiplications one image's convolution may take (output channels × channels
/// and taps × output pixels) to be replaced: beyond, tract's packed kernels pay for their
/// packing.
const MAX_PRODUCT: usize = 1 << 18;

/// Where each output pixel reads its input: one spatial axis of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Axis {
    /// Input size.
    pub(super) size: usize,
    /// Output size.
    pub(super) out: usize,
    /// Kernel size.
    pub(super) kernel: usize,
    pub(super) stride: usize,
    pub(super) dilation: usize,
    /// Zeros before the first input pixel.
    pub(super) pad: usize,
}

impl Axis {
    /// The two spatial axes of a convolution of `spec` over images of `height` × `width`.
    pub(super) fn both(spec: &PoolSpec, height: usize, width: usize) -> [Axis; 2] {
        let padding = spec.computed_padding(&[height, width]);
        let (dilations, strides) = (spec.dilations(), spec.strides());
        [0, 1].map(|axis| Axis {
            size: [height, width][axis],
            out: padding[axis].convoluted,
            kernel: spec.kernel_shape[axis],
            stride: strides[axis],
            dilation: dilations[axis],
            pad: padding[axis].pad_before,
        })
    }

    /// The output pixels `from..to` whose input pixel for kernel tap `tap` lies inside the
    /// input (not in the padding).
    fn inside(&self, tap: usize) -> (usize, usize) {
        let offset = tap * self.dilation;
        // Output o reads input o * stride + offset - pad, inside when in 0..size.
        let from = self.pad.saturating_sub(offset).div_ceil(self.stride);
        let end = (self.size + self.pad).saturating_sub(offset).div_ceil(self.stride);
        (from.min(self.out), end.min(self.out).max(from.min(self.out)))
    }
}

/// A convolution the ops of maas compute: a two-dimensional `f32` convolution of NCHW images
/// (or one CHW image: tract drops a batch axis of 1) of known sizes with constant OIHW
/// weights and bias, unquantised, whose output has pixels.
#[derive(Debug)]
pub(super) struct Parts<'m> {
    pub(super) conv: &'m Conv,
    pub(super) channels: usize,
    pub(super) height: Axis,
    pub(super) width: Axis,
    /// As the kernel holds them (OIHW).
    pub(super) weights: Vec<f32>,
    /// One per output channel.
    pub(super) bias: Vec<f32>,
}

impl<'m> Parts<'m> {
    /// The parts of `node` when it is such a convolution.
    pub(super) fn of(model: &TypedModel, node: &'m TypedNode) -> TractResult<Option<Self>> {
        let Some(conv) = node.op_as::<Conv>() else { return Ok(None) };
        let [input, kernel, bias] = node.inputs.as_slice() else { return Ok(None) };
        let [input, kernel, bias] = [input, kernel, bias].map(|&o| model.outlet_fact(o));
        let Some([channels, height, width]) = images(conv, input?) else { return Ok(None) };
        let (Some(kernel), Some(bias)) = (&kernel?.konst, &bias?.konst) else { return Ok(None) };
        let bias = floats(bias)?;
        let out_channels = conv.pool_spec.output_channels;
        let bias = match bias.len() {
            1 => vec![bias[0]; out_channels],
            n if n == out_channels => bias,
            _ => return Ok(None),
        };
        let [height, width] = Axis::both(&conv.pool_spec, height, width);
        if height.out == 0 || width.out == 0 {
            return Ok(None);
        }
        let weights = floats(kernel)?;
        Ok(Some(Self { conv, channels, height, width, weights, bias }))
    }
}

/// Channels, height and width of the images `conv` convolves, when it is a two-dimensional
/// `f32` convolution of NCHW or CHW images of those (known) sizes with OIHW weights,
/// unquantised.
fn images(conv: &Conv, input: &TypedFact) -> Option<[usize; 3]> {
    let spec = &conv.pool_spec;
    let format = spec.data_format;
    let fits = conv.q_params.is_none()
        && conv.kernel_fmt == KernelFormat::OIHW
        && matches!(format, DataFormat::NCHW | DataFormat::CHW)
        && spec.kernel_shape.len() == 2
        && input.datum_type == f32::datum_type()
        && input.rank() == 3 + format.has_n() as usize;
    let dims = input.shape.iter().skip(format.has_n() as usize).map(|d| d.to_usize().ok());
    let [channels, height, width] = dims.collect::<Option<Vec<_>>>()?.try_into().ok()?;
    (fits && channels == spec.input_channels).then_some([channels, height, width])
}

/// The shape of a convolution's output for an input of shape `input` (NCHW or CHW, see
/// [`Parts`]): the batch axis as it is, then `channels` of `h.out` × `w.out` pixels.
pub(super) fn output_shape<D: Clone + From<usize>>(
    input: &[D],
    channels: usize,
    h: Axis,
    w: Axis,
) -> TVec<D> {
    let batch = &input[..input.len().saturating_sub(3)];
    batch.iter().cloned().chain([channels.into(), h.out.into(), w.out.into()]).collect()
}

/// Whether an input of shape `shape` holds images of `channels` × `h.size` × `w.size` (NCHW
/// or CHW).
pub(super) fn check_images(shape: &[usize], channels: usize, h: Axis, w: Axis) -> TractResult<()> {
    let fits = shape.len() >= 3 && shape[shape.len() - 3..] == [channels, h.size, w.size];
    ensure!(fits, "a convolution's input of shape {shape:?}");
    Ok(())
}

/// A constant's values as `f32`s.
fn floats(t: &Tensor) -> TractResult<Vec<f32>> {
    Ok(t.cast_to::<f32>()?.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
}

/// What the product of one image reads (see [`SmallConv::source`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Image,
    Padded,
    Patches,
}

/// A two-dimensional `f32` convolution of an NCHW input with constant OIHW weights, one
/// group, computed image by image as `weights × patches + bias`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SmallConv {
    /// The weights (output channels × input channels × kernel height × kernel width) and
    /// the bias of each output channel, as the product reads them ([`Weights`]).
    weights: Arc<Weights>,
    channels: usize,
    out_channels: usize,
    height: Axis,
    width: Axis,
    /// Where row `d` (channel, tap row, tap column) of the patch matrix starts in the image
    /// the product reads: the padded image at stride 1, else the gathered patch matrix.
    offsets: Arc<Vec<usize>>,
    /// The runs of output pixels the product reads and writes in one piece.
    runs: Arc<Vec<Run>>,
    /// Whether negative outputs become 0 (a ReLU after the convolution).
    relu: bool,
}

// Weights compare as numbers; a NaN weight makes an op unequal to itself, which only costs
// tract a merge of two identical nodes.
impl Eq for SmallConv {}

stateless_op!(SmallConv, "maas.SmallConv");

impl SmallConv {
    /// The op computing the convolution of `parts`, when it fits (see [`replace`]).
    fn replacing(parts: Parts) -> Option<Self> {
        let Parts { conv, channels, height, width, weights, bias } = parts;
        let out_channels = conv.pool_spec.output_channels;
        let taps = channels * height.kernel * width.kernel;
        let multiplications = out_channels * taps * height.out * width.out;
        if conv.group != 1 || weights.len() != out_channels * taps || multiplications > MAX_PRODUCT
        {
            return None;
        }
        let weights = Arc::new(Weights::new(&weights, &bias, taps));
        let (offsets, runs) = Self::layout(channels, height, width);
        let (offsets, runs) = (Arc::new(offsets), Arc::new(runs));
        let relu = false;
        Some(Self { weights, channels, out_channels, height, width, offsets, runs, relu })
    }

    /// Whether the product reads the (padded) image itself: stride 1 on both axes.
    fn direct(height: Axis, width: Axis) -> bool {
        height.stride == 1 && width.stride == 1
    }

    /// The padded image's height and width at stride 1: room for every tap of every output
    /// pixel, and for the image after its padding.
    fn padded(axis: Axis) -> usize {
        (axis.out + (axis.kernel - 1) * axis.dilation).max(axis.pad + axis.size)
    }

    /// The offsets and runs of the product: at stride 1, each output row reads a row of the
    /// padded image per tap; else the patch matrix is gathered, one run of every pixel.
    fn layout(channels: usize, h: Axis, w: Axis) -> (Vec<usize>, Vec<Run>) {
        let pixels = h.out * w.out;
        let taps = channels * h.kernel * w.kernel;
        if !Self::direct(h, w) {
            return (
                (0..taps).map(|d| d * pixels).collect(),
                vec![Run { b: 0, c: 0, len: pixels }],
            );
        }
        let (height, width) = (Self::padded(h), Self::padded(w));
        let mut offsets = Vec::with_capacity(taps);
        for channel in 0..channels {
            for i in 0..h.kernel {
                for j in 0..w.kernel {
                    offsets.push((channel * height + i * h.dilation) * width + j * w.dilation);
                }
            }
        }
        let runs = (0..h.out).map(|y| Run { b: y * width, c: y * w.out, len: w.out }).collect();
        (offsets, runs)
    }

    /// Rows of the patch matrix: input channels × kernel taps.
    fn taps(&self) -> usize {
        self.channels * self.height.kernel * self.width.kernel
    }

    /// What the product of one image reads: at stride 1 the image as it lies when it needs
    /// no padding, else the image padded; at other strides its gathered patches.
    fn source(&self) -> Source {
        let (h, w) = (self.height, self.width);
        let unpadded = [h, w].iter().all(|a| Self::padded(*a) == a.size && a.pad == 0);
        match (Self::direct(h, w), unpadded) {
            (true, true) => Source::Image,
            (true, false) => Source::Padded,
            (false, _) => Source::Patches,
        }
    }

    fn run(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let (h, w) = (self.height, self.width);
        check_images(input.shape(), self.channels, h, w)?;
        let shape = output_shape(input.shape(), self.out_channels, h, w);
        let mut output = Tensor::zero::<f32>(&shape)?;
        let input = input.try_as_plain_ram()?;
        self.convolve(input.as_slice::<f32>()?, output.try_as_plain_ram_mut()?.as_slice_mut()?)?;
        Ok(tvec!(output.into_tvalue()))
    }

    /// The convolution of the images in `input` into `output`, both NCHW.
    fn convolve(&self, input: &[f32], output: &mut [f32]) -> TractResult<()> {
        let (h, w) = (self.height, self.width);
        let pixels = h.out * w.out;
        let source = self.source();
        let scratch_len = match source {
            Source::Image => 0,
            Source::Padded => self.channels * Self::padded(h) * Self::padded(w),
            Source::Patches => self.taps() * pixels,
        };
        let mut scratch = vec![0f32; scratch_len];
        let image_len = self.channels * h.size * w.size;
        let images = input.chunks_exact(image_len);
        for (x, y) in images.zip(output.chunks_exact_mut(self.out_channels * pixels)) {
            let b = match source {
                Source::Image => x,
                Source::Padded => {
                    self.pad(x, &mut scratch);
                    &scratch[..]
                }
                Source::Patches => {
                    self.gather(x, &mut scratch);
                    &scratch[..]
                }
            };
            let b = Operand { values: b, offsets: &self.offsets, runs: &self.runs };
            let activation = if self.relu { Activation::Relu } else { Activation::Identity };
            multiply(&self.weights, b, y, pixels, activation)?;
        }
        Ok(())
    }

    /// Image `x` into the middle of `padded` (whose border stays 0).
    fn pad(&self, x: &[f32], padded: &mut [f32]) {
        let (h, w) = (self.height, self.width);
        let (height, width) = (Self::padded(h), Self::padded(w));
        let channels = padded.chunks_exact_mut(height * width).zip(x.chunks_exact(h.size * w.size));
        for (target, source) in channels {
            for (y, line) in source.chunks_exact(w.size).enumerate() {
                copy(&mut target[(y + h.pad) * width + w.pad..][..w.size], line);
            }
        }
    }

    /// The patch matrix of one image `x` (channels × height × width) into `patches`: row
    /// (channel, tap row, tap column), column (output row, output column); padding reads 0.
    fn gather(&self, x: &[f32], patches: &mut [f32]) {
        let (h, w) = (self.height, self.width);
        let pixels = h.out * w.out;
        let mut rows = patches.chunks_exact_mut(pixels);
        for channel in x.chunks_exact(h.size * w.size) {
            for i in 0..h.kernel {
                let (y_from, y_to) = h.inside(i);
                for j in 0..w.kernel {
                    let Some(row) = rows.next() else { return };
                    let (x_from, x_to) = w.inside(j);
                    row.fill(0.0);
                    if x_from == x_to {
                        continue;
                    }
                    for oy in y_from..y_to {
                        let iy = oy * h.stride + i * h.dilation - h.pad;
                        let line = &channel[iy * w.size..][..w.size];
                        let target = &mut row[oy * w.out..][..w.out];
                        let first = x_from * w.stride + j * w.dilation - w.pad;
                        match w.stride {
                            1 => copy(&mut target[x_from..x_to], &line[first..]),
                            stride => {
                                for (ox, t) in target[x_from..x_to].iter_mut().enumerate() {
                                    *t = line[first + ox * stride];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `source`'s first values into `target`, eight at a time: the copies of a patch are a few
/// pixels each, too short to pay for a call to `memcpy`.
#[inline(always)]
fn copy(target: &mut [f32], source: &[f32]) {
    let done = target.len() / 8 * 8;
    let (chunks, rest) = target.split_at_mut(done);
    for (target, source) in chunks.chunks_exact_mut(8).zip(source.chunks_exact(8)) {
        if let (Ok(target), Ok(source)) =
            (<&mut [f32; 8]>::try_from(target), <&[f32; 8]>::try_from(source))
        {
            *target = *source;
        }
    }
    for (target, &source) in rest.iter_mut().zip(&source[done..]) {
        *target = source;
    }
}

impl TypedOp for SmallConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = output_shape(&inputs[0].shape, self.out_channels, self.height, self.width);
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// A patch putting [`SmallConv`] in place of the first convolution it can compute (`f32`,
/// NCHW, two spatial axes of known sizes, one group, constant weights and bias, at most
/// [`MAX_PRODUCT`] multiplications an image) and of the ReLU after it, if one alone reads
/// it; `None` when there is none left.
pub(super) fn replace(model: &TypedModel) -> TractResult<Option<TypedModelPatch>> {
    for node in &model.nodes {
        let Some(parts) = Parts::of(model, node)? else { continue };
        let Some(op) = SmallConv::replacing(parts) else { continue };
        let (last, relu) = match relu_after(model, node)? {
            Some(relu) => (relu.id, true),
            None => (node.id, false),
        };
        let op = SmallConv { relu, ..op };
        return one_op_patch(model, &node.name, &node.inputs[..1], last, op).map(Some);
    }
    Ok(None)
}

/// The ReLU (the maximum with a constant 0) that alone reads `node`'s output.
pub(super) fn relu_after<'m>(
    model: &'m TypedModel,
    node: &TypedNode,
) -> TractResult<Option<&'m TypedNode>> {
    let Some(next) = only_successor(model, node)? else { return Ok(None) };
    if !binary::<Max>(next) {
        return Ok(None);
    }
    let output = OutletId::new(node.id, 0);
    let Some(&other) = next.inputs.iter().find(|&&input| input != output) else {
        return Ok(None);
    };
    let zero = model
        .outlet_fact(other)?
        .konst
        .as_ref()
        .is_some_and(|k| k.len() == 1 && k.cast_to_scalar::<f32>().is_ok_and(|v| v == 0.0));
    let shape = model.outlet_fact(OutletId::new(next.id, 0))?.shape.clone();
    Ok((zero && shape == model.outlet_fact(output)?.shape).then_some(next))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::engine::ops::testing::{fused_once, run};
    use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};

    /// One convolution geometry: input shape (NCHW), output channels, kernel, strides,
    /// dilations, padding before and after, group; and whether the input comes without its
    /// batch axis (CHW; `input[0]` must be 1), as tract leaves a batch of one.
    pub(in crate::engine) struct Case {
        pub(in crate::engine) input: [usize; 4],
        pub(in crate::engine) chw: bool,
        pub(in crate::engine) out_channels: usize,
        pub(in crate::engine) kernel: [usize; 2],
        pub(in crate::engine) strides: [usize; 2],
        pub(in crate::engine) dilations: [usize; 2],
        pub(in crate::engine) pads: ([usize; 2], [usize; 2]),
        pub(in crate::engine) group: usize,
    }

    pub(in crate::engine) const SMALL_CNN: Case = Case {
        input: [3, 3, 16, 16],
        chw: false,
        out_channels: 8,
        kernel: [3, 3],
        strides: [1, 1],
        dilations: [1, 1],
        pads: ([1, 1], [1, 1]),
        group: 1,
    };

    impl Case {
        /// The shape of the input the convolution takes.
        pub(in crate::engine) fn shape(&self) -> &[usize] {
            &self.input[self.chw as usize..]
        }

        /// Values of that shape.
        pub(in crate::engine) fn input(&self) -> Tensor {
            values(self.shape(), 3)
        }
    }

    /// Values spread over both signs.
    pub(in crate::engine) fn values(shape: &[usize], seed: usize) -> Tensor {
        let count = shape.iter().product::<usize>();
        let values: Vec<f32> =
            (0..count).map(|i| ((i * 7919 + seed * 104729) % 1013) as f32 / 506.5 - 1.0).collect();
        Tensor::from_shape(shape, &values).unwrap()
    }

    /// tract's convolution of `case` as a model, with a bias of `bias_len` values (1: a scalar).
    pub(in crate::engine) fn model(case: &Case, bias_len: usize) -> TypedModel {
        let [_, channels, ..] = case.input;
        let pool_spec = PoolSpec {
            data_format: if case.chw { DataFormat::CHW } else { DataFormat::NCHW },
            kernel_shape: TVec::from_slice(&case.kernel),
            padding: PaddingSpec::Explicit(
                TVec::from_slice(&case.pads.0),
                TVec::from_slice(&case.pads.1),
            ),
            dilations: Some(TVec::from_slice(&case.dilations)),
            strides: Some(TVec::from_slice(&case.strides)),
            input_channels: channels,
            output_channels: case.out_channels,
        };
        let conv =
            Conv { pool_spec, kernel_fmt: KernelFormat::OIHW, group: case.group, q_params: None };
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(case.shape())).unwrap();
        let kernel_shape =
            [case.out_channels, channels / case.group, case.kernel[0], case.kernel[1]];
        let kernel = model.add_const("kernel", values(&kernel_shape, 1)).unwrap();
        let bias_shape: &[usize] = if bias_len == 1 { &[] } else { &[bias_len] };
        let bias = model.add_const("bias", values(bias_shape, 2)).unwrap();
        let out = model.wire_node("conv", conv, &[x, kernel, bias]).unwrap();
        model.select_output_outlets(&out).unwrap();
        model
    }

    /// Whether `case` (with a bias of `bias_len`) computed by [`SmallConv`] matches tract's
    /// convolution within 1e-5.
    fn matches_tract(case: &Case, bias_len: usize) {
        matches_tracts(model(case, bias_len), case);
    }

    /// Whether `model`, a convolution of `case` and what follows it, computed by
    /// [`SmallConv`] matches tract's within 1e-5.
    fn matches_tracts(model: TypedModel, case: &Case) {
        let x = case.input();
        let expected = run(model.clone(), &x);
        let (ours, names) = fused_once(model, replace);
        assert!(names.contains(&"maas.SmallConv".to_string()), "{names:?}");
        assert!(!names.contains(&"Conv".to_string()), "{names:?}");
        let ours = run(ours, &x);
        assert_eq!(ours.len(), expected.len());
        for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "at {i}: {a} against {b}");
        }
    }

    #[test]
    fn the_small_cnns_convolution_matches_tracts() {
        matches_tract(&SMALL_CNN, 8);
    }

    #[test]
    fn a_relu_after_the_convolution_is_taken_into_it() {
        let mut relu = model(&SMALL_CNN, 8);
        let conv = relu.output_outlets().unwrap()[0];
        let zero = relu.add_const("zero", Tensor::from_shape(&[1, 1, 1, 1], &[0f32]).unwrap());
        let max = tract_onnx::tract_core::ops::math::max();
        let out = relu.wire_node("relu", max, &[conv, zero.unwrap()]).unwrap();
        relu.select_output_outlets(&out).unwrap();
        let before: Vec<String> = relu.nodes.iter().map(|n| n.op.name().to_string()).collect();
        assert!(before.contains(&"Max".to_string()), "{before:?}");
        let (fused, names) = fused_once(relu.clone(), replace);
        assert_eq!(names.iter().filter(|n| *n == "Max").count(), 0, "{names:?}");
        let x = SMALL_CNN.input();
        assert!(run(fused, &x).iter().all(|&v| v >= 0.0));
        matches_tracts(relu, &SMALL_CNN);
    }

    #[test]
    fn strides_dilations_and_uneven_padding_match_tracts() {
        let strided = Case { strides: [2, 3], pads: ([1, 0], [0, 2]), ..SMALL_CNN };
        matches_tract(&strided, 8);
        let dilated =
            Case { kernel: [3, 2], dilations: [2, 3], pads: ([2, 1], [1, 3]), ..SMALL_CNN };
        matches_tract(&dilated, 8);
        // Padding wider than the kernel reaches: whole rows and columns of zeros.
        let padded =
            Case { input: [1, 2, 3, 2], kernel: [2, 2], pads: ([3, 3], [3, 3]), ..SMALL_CNN };
        matches_tract(&padded, 8);
        // Output channels and rows of pixels that do not fill the product's blocks.
        let ragged = Case { input: [2, 3, 7, 11], out_channels: 5, ..SMALL_CNN };
        matches_tract(&ragged, 5);
    }

    #[test]
    fn a_batch_of_one_without_its_axis_matches_tracts() {
        matches_tract(&Case { input: [1, 3, 16, 16], chw: true, ..SMALL_CNN }, 8);
    }

    #[test]
    fn a_pointwise_convolution_with_one_bias_for_all_matches_tracts() {
        let pointwise = Case { kernel: [1, 1], pads: ([0, 0], [0, 0]), ..SMALL_CNN };
        matches_tract(&pointwise, 1);
    }

    #[test]
    fn grouped_and_large_convolutions_stay_tracts() {
        let grouped = Case { input: [2, 4, 8, 8], out_channels: 4, group: 2, ..SMALL_CNN };
        let large = Case { input: [1, 32, 32, 32], out_channels: 32, ..SMALL_CNN };
        for case in [grouped, large] {
            assert!(replace(&model(&case, case.out_channels)).unwrap().is_none());
        }
    }
}
