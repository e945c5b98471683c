//! Depthwise convolutions row by row. MobileNet-style networks (PaddleOCR's classifier: eleven 3×3
//! and 5×5 depthwise convolutions of 8 to 200 channels) filter each channel on its own; tract's
//! `DepthWiseConv` walks every output pixel's taps through a generic indexed loop, and was a
//! quarter of the classifier's run at batch 8 (`scripts/benchmarks.md`, "Vector registers between
//! nodes, and depthwise convolutions"). [`replace`] puts [`DepthwiseConv`] in place of such a
//! convolution in the decluttered graph: each channel is padded once into a buffer, its columns
//! split by phase of the stride, so that every tap of a row of output pixels reads a contiguous run
//! of it; the row's sums stay in AVX registers (8 pixels each) over all taps, with fused
//! multiply-adds where the CPU has AVX2 and FMA. A ReLU or a hard swish that alone reads the
//! convolution is applied to the sums before they are stored.

use std::ops::Range;

use tract_onnx::tract_core::internal::*;

#[cfg(target_arch = "x86_64")]
use super::blocks::has_fma;
use super::blocks::{activation_after, Activation};
use super::convs::{check_images, output_shape, Axis, Parts};
use super::ops::{one_op_patch, stateless_op};

/// Output pixels of one register.
const LANES: usize = 8;

/// A two-dimensional depthwise `f32` convolution (one group per channel, one output channel
/// per group) of an NCHW input with constant weights, then an activation.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct DepthwiseConv {
    /// Channels × kernel height × kernel width.
    weights: Arc<Vec<f32>>,
    /// One per channel.
    bias: Arc<Vec<f32>>,
    channels: usize,
    height: Axis,
    width: Axis,
    /// By kernel tap (row-major): where it reads a row of output pixels in the padded
    /// channel, counted from that row's first padded line.
    taps: Arc<Vec<usize>>,
    activation: Activation,
}

// Weights compare as numbers; a NaN weight makes an op unequal to itself, which only costs
// tract a merge of two identical nodes.
impl Eq for DepthwiseConv {}

stateless_op!(DepthwiseConv, "maas.DepthwiseConv");

impl DepthwiseConv {
    /// The op computing the convolution of `parts`, when it is depthwise (see [`replace`]).
    fn replacing(parts: Parts) -> Option<Self> {
        let Parts { conv, channels, height, width, weights, bias } = parts;
        let depthwise = conv.group == channels && conv.pool_spec.output_channels == channels;
        if !depthwise || weights.len() != channels * height.kernel * width.kernel {
            return None;
        }
        let mut op = Self {
            weights: Arc::new(weights),
            bias: Arc::new(bias),
            channels,
            height,
            width,
            taps: Arc::default(),
            activation: Activation::Identity,
        };
        op.taps = Arc::new(op.tap_offsets());
        Some(op)
    }

    /// Output pixels of a row rounded up to whole registers: the sums a row computes.
    fn row_sums(&self) -> usize {
        self.width.out.div_ceil(LANES) * LANES
    }

    /// Length of one phase of a padded line: padded column `c` lies in phase
    /// `c % stride` at `c / stride`. Room for every tap of every summed pixel, and for the
    /// image after its padding.
    fn phase_len(&self) -> usize {
        let w = self.width;
        let reach = self.row_sums() + (w.kernel - 1) * w.dilation / w.stride;
        reach.max((w.pad + w.size).div_ceil(w.stride))
    }

    /// One padded line: its phases one after the other.
    fn line_len(&self) -> usize {
        self.width.stride * self.phase_len()
    }

    /// Padded lines of a channel: room for every tap of every output row, and for the image
    /// after its padding.
    fn lines(&self) -> usize {
        let h = self.height;
        ((h.out - 1) * h.stride + (h.kernel - 1) * h.dilation + 1).max(h.pad + h.size)
    }

    /// See [`Self::taps`]: output pixel `x` of tap (`i`, `j`) reads padded column
    /// `x * stride + j * dilation`, in phase `j * dilation % stride` at `x + j * dilation /
    /// stride`.
    fn tap_offsets(&self) -> Vec<usize> {
        let (h, w) = (self.height, self.width);
        let mut taps = Vec::with_capacity(h.kernel * w.kernel);
        for i in 0..h.kernel {
            for j in 0..w.kernel {
                let column = j * w.dilation;
                let phase = column % w.stride * self.phase_len() + column / w.stride;
                taps.push(i * h.dilation * self.line_len() + phase);
            }
        }
        taps
    }

    fn run(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let (h, w, channels) = (self.height, self.width, self.channels);
        check_images(input.shape(), channels, h, w)?;
        let mut output = Tensor::zero::<f32>(&output_shape(input.shape(), channels, h, w))?;
        let input = input.try_as_plain_ram()?;
        let input = input.as_slice::<f32>()?;
        let mut padded = vec![0f32; self.lines() * self.line_len()];
        let mut sums = vec![0f32; self.row_sums()];
        let mut out = output.try_as_plain_ram_mut()?;
        let out = out.as_slice_mut::<f32>()?;
        let planes = input.chunks_exact(h.size * w.size).zip(out.chunks_exact_mut(h.out * w.out));
        let taps = h.kernel * w.kernel;
        #[cfg(target_arch = "x86_64")]
        let fma = has_fma();
        #[cfg(not(target_arch = "x86_64"))]
        let fma = false;
        for (channel, (x, y)) in planes.enumerate() {
            let channel = channel % channels;
            self.pad(x, &mut padded);
            let weights = &self.weights[channel * taps..][..taps];
            for (row, y_row) in y.chunks_exact_mut(w.out).enumerate() {
                let lines = &padded[row * h.stride * self.line_len()..];
                let kept = self.image_taps(row);
                let (taps, weights) = (&self.taps[kept.clone()], &weights[kept]);
                self.row(fma, lines, taps, weights, self.bias[channel], &mut sums);
                y_row.copy_from_slice(&sums[..w.out]);
            }
        }
        Ok(tvec!(output.into_tvalue()))
    }

    /// The taps (by index, row-major) that read the image rather than its padding for output
    /// row `row`: whole kernel rows. Kernel row `i` reads padded line `row * stride + i *
    /// dilation`, and the image's lines are `pad..pad + size`. PaddleOCR's last 5×5
    /// convolutions run over images 2 or 3 lines high, where 2 or 3 of the kernel's 5 rows read
    /// the image and the others only zeros.
    fn image_taps(&self, row: usize) -> Range<usize> {
        let h = self.height;
        let top = row * h.stride;
        let first = h.pad.saturating_sub(top).div_ceil(h.dilation).min(h.kernel);
        let end = (h.pad + h.size).saturating_sub(top).div_ceil(h.dilation).min(h.kernel);
        first * self.width.kernel..end.max(first) * self.width.kernel
    }

    /// One channel `x` into the middle of `padded`, its columns by phase (the border, never
    /// written, stays 0).
    fn pad(&self, x: &[f32], padded: &mut [f32]) {
        let (h, w) = (self.height, self.width);
        let (line_len, phase_len) = (self.line_len(), self.phase_len());
        for (y, source) in x.chunks_exact(w.size).enumerate() {
            let line = &mut padded[(y + h.pad) * line_len..][..line_len];
            if w.stride == 1 {
                line[w.pad..][..w.size].copy_from_slice(source);
                continue;
            }
            for (column, &value) in source.iter().enumerate() {
                let column = column + w.pad;
                line[column % w.stride * phase_len + column / w.stride] = value;
            }
        }
    }

    /// One row of output pixels into `sums`, from the padded lines starting at its first, over
    /// `taps` (offsets as in [`Self::taps`]) with their `weights`; in AVX registers when `fma`
    /// (the CPU has AVX2 and FMA, [`has_fma`]).
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn row(
        &self,
        fma: bool,
        lines: &[f32],
        taps: &[usize],
        weights: &[f32],
        bias: f32,
        sums: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if fma {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { self.row_fma(lines, taps, weights, bias, sums) };
        }
        self.row_plain(lines, taps, weights, bias, sums);
    }

    /// [`Self::row`] in plain loops.
    fn row_plain(
        &self,
        lines: &[f32],
        taps: &[usize],
        weights: &[f32],
        bias: f32,
        sums: &mut [f32],
    ) {
        sums.fill(bias);
        for (&tap, &weight) in taps.iter().zip(weights) {
            let line = &lines[tap..][..sums.len()];
            for (sum, &value) in sums.iter_mut().zip(line) {
                *sum += weight * value;
            }
        }
        sums.iter_mut().for_each(|sum| *sum = self.activation.apply(*sum));
    }

    /// [`Self::row`] with the sums of 8 pixels in each AVX register, four registers at a
    /// time while the row lasts, and fused multiply-adds (each rounded once).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn row_fma(&self, lines: &[f32], taps: &[usize], weights: &[f32], bias: f32, sums: &mut [f32]) {
        let mut done = 0;
        while sums.len() - done >= 4 * LANES {
            let block = &mut sums[done..][..4 * LANES];
            self.pixels_fma::<4>(lines, taps, weights, bias, done, block);
            done += 4 * LANES;
        }
        while done < sums.len() {
            let block = &mut sums[done..][..LANES];
            self.pixels_fma::<1>(lines, taps, weights, bias, done, block);
            done += LANES;
        }
    }

    /// The sums of `R` registers of output pixels from `first` into `sums`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn pixels_fma<const R: usize>(
        &self,
        lines: &[f32],
        taps: &[usize],
        weights: &[f32],
        bias: f32,
        first: usize,
        sums: &mut [f32],
    ) {
        use std::arch::x86_64::_mm256_storeu_ps;
        use std::arch::x86_64::{_mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps};
        let mut registers = [_mm256_set1_ps(bias); R];
        for (&tap, &weight) in taps.iter().zip(weights) {
            let line = &lines[tap + first..][..R * LANES];
            let weight = _mm256_set1_ps(weight);
            for (register, values) in registers.iter_mut().zip(line.chunks_exact(LANES)) {
                // SAFETY: `values` holds the 8 values read.
                let values = unsafe { _mm256_loadu_ps(values.as_ptr()) };
                *register = _mm256_fmadd_ps(weight, values, *register);
            }
        }
        for (register, sums) in registers.into_iter().zip(sums.chunks_exact_mut(LANES)) {
            // SAFETY: `sums` holds the 8 values written.
            unsafe { _mm256_storeu_ps(sums.as_mut_ptr(), self.activation.apply_8(register)) };
        }
    }
}

impl TypedOp for DepthwiseConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = output_shape(&inputs[0].shape, self.channels, self.height, self.width);
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// A patch putting [`DepthwiseConv`] in place of the first depthwise convolution it can
/// compute (`f32`, NCHW, two spatial axes of known sizes, a group per channel, constant
/// weights and bias) and of the ReLU or hard swish after it, if one alone reads it; `None`
/// when there is none left.
pub(super) fn replace(model: &TypedModel) -> TractResult<Option<TypedModelPatch>> {
    for node in &model.nodes {
        let Some(parts) = Parts::of(model, node)? else { continue };
        let Some(op) = DepthwiseConv::replacing(parts) else { continue };
        let (last, activation) = activation_after(model, node)?;
        let op = DepthwiseConv { activation, ..op };
        return one_op_patch(model, &node.name, &node.inputs[..1], last, op).map(Some);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::convs::tests::{model, values, Case, SMALL_CNN};
    use crate::engine::hardswish;
    use crate::engine::ops::testing::{fused_once, run};
    use tract_onnx::tract_core::ops::cnn::Conv;
    use tract_onnx::tract_core::ops::math::{add, max, min, mul};

    /// PaddleOCR's 5×5 depthwise convolution of 3 × 96 pixels, at a batch of 2.
    const PADDLE: Case = Case {
        input: [2, 40, 3, 96],
        chw: false,
        out_channels: 40,
        kernel: [5, 5],
        strides: [1, 1],
        dilations: [1, 1],
        pads: ([2, 2], [2, 2]),
        group: 40,
    };

    /// `model` with the depthwise convolution (and what it takes in) replaced, checked to
    /// hold [`DepthwiseConv`] and no `Conv` nor `names_gone`, run on `case`'s input.
    fn ours(model: TypedModel, case: &Case, names_gone: &[&str]) -> Vec<f32> {
        let (ours, names) = fused_once(model, replace);
        assert!(names.contains(&"maas.DepthwiseConv".to_string()), "{names:?}");
        for gone in names_gone.iter().chain(&["Conv"]) {
            assert!(!names.contains(&gone.to_string()), "{gone} in {names:?}");
        }
        run(ours, &case.input())
    }

    /// Whether `ours` is `expected` within 1e-5.
    fn close(ours: &[f32], expected: &[f32]) {
        assert_eq!(ours.len(), expected.len());
        for (i, (a, b)) in ours.iter().zip(expected).enumerate() {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "at {i}: {a} against {b}");
        }
    }

    /// Whether `model`, a depthwise convolution of `case` and what follows it, computed by
    /// [`DepthwiseConv`] matches tract's within 1e-5; our outputs.
    fn matches_tracts(model: TypedModel, case: &Case, names_gone: &[&str]) -> Vec<f32> {
        let expected = run(model.clone(), &case.input());
        let ours = ours(model, case, names_gone);
        close(&ours, &expected);
        ours
    }

    /// The op computing `case`'s convolution.
    fn op_of(case: &Case) -> DepthwiseConv {
        let conv = model(case, case.out_channels);
        let node = conv.nodes.iter().find(|n| n.op_is::<Conv>()).unwrap();
        DepthwiseConv::replacing(Parts::of(&conv, node).unwrap().unwrap()).unwrap()
    }

    fn matches_tract(case: &Case) {
        matches_tracts(model(case, case.out_channels), case, &[]);
    }

    /// `model` with `activation` wired after its output.
    fn followed_by(
        mut model: TypedModel,
        activation: impl FnOnce(&mut TypedModel, OutletId) -> OutletId,
    ) -> TypedModel {
        let conv = model.output_outlets().unwrap()[0];
        let out = activation(&mut model, conv);
        model.select_output_outlets(&[out]).unwrap();
        model
    }

    fn scalar(model: &mut TypedModel, name: &str, value: f32) -> OutletId {
        model.add_const(name, Tensor::from_shape(&[1, 1, 1, 1], &[value]).unwrap()).unwrap()
    }

    #[test]
    fn paddleocrs_depthwise_convolution_matches_tracts() {
        matches_tract(&PADDLE);
        // Its stem's: 3×3, stride 2 down the image only.
        let stem = Case {
            input: [1, 8, 24, 96],
            out_channels: 8,
            kernel: [3, 3],
            strides: [2, 1],
            pads: ([1, 1], [1, 1]),
            group: 8,
            ..PADDLE
        };
        matches_tract(&stem);
        // At a batch of one, as tract leaves it.
        matches_tract(&Case { input: [1, 40, 3, 96], chw: true, ..PADDLE });
    }

    #[test]
    fn strides_dilations_and_uneven_padding_match_tracts() {
        let taller = Case { input: [2, 6, 11, 45], out_channels: 6, group: 6, ..PADDLE };
        // Strides across the image: the columns read by phase.
        let strided = Case { strides: [2, 3], pads: ([1, 0], [0, 2]), ..taller };
        matches_tract(&strided);
        let dilated = Case { kernel: [3, 2], dilations: [2, 3], pads: ([2, 1], [1, 3]), ..taller };
        matches_tract(&dilated);
        let both = Case { strides: [2, 2], dilations: [1, 3], ..taller };
        matches_tract(&both);
        // Padding wider than the kernel reaches; rows shorter than a register; rows of more
        // registers than one block and a ragged end.
        let padded = Case { input: [1, 3, 3, 2], kernel: [2, 2], pads: ([3, 3], [3, 3]), ..PADDLE };
        let padded = Case { out_channels: 3, group: 3, ..padded };
        matches_tract(&padded);
        let ragged = Case { input: [2, 5, 7, 45], out_channels: 5, group: 5, ..PADDLE };
        matches_tract(&ragged);
    }

    #[test]
    fn kernel_rows_over_the_padding_alone_are_skipped() {
        // PaddleOCR's last convolutions: 5×5 over images 2 lines high, padded by 2.
        let low = Case { input: [2, 8, 2, 96], out_channels: 8, group: 8, ..PADDLE };
        matches_tract(&low);
        let op = op_of(&low);
        // Output row 0 reads the image with kernel rows 2 and 3, row 1 with rows 1 and 2.
        assert_eq!([op.image_taps(0), op.image_taps(1)], [10..20, 5..15]);
        // Strided and dilated, 3 lines padded by 4: kernel row i of output row r reads line
        // 2r + 2i of the padded image, whose lines 4..7 are the image.
        let spread = Case {
            input: [2, 8, 3, 96],
            strides: [2, 1],
            dilations: [2, 1],
            pads: ([4, 2], [4, 2]),
            ..low
        };
        matches_tract(&spread);
        let op = op_of(&spread);
        assert_eq!([op.image_taps(0), op.image_taps(1)], [10..20, 5..15]);
        // Output rows past the image: no tap (the bias alone).
        assert!(op.image_taps(4).is_empty());
    }

    #[test]
    fn a_relu_after_the_convolution_is_applied_in_it() {
        let relu = followed_by(model(&PADDLE, 40), |model, conv| {
            let zero = scalar(model, "zero", 0.0);
            model.wire_node("relu", max(), &[conv, zero]).unwrap()[0]
        });
        let ours = matches_tracts(relu, &PADDLE, &["Max"]);
        assert!(ours.iter().all(|&v| v >= 0.0) && ours.contains(&0.0));
    }

    #[test]
    fn a_hard_swish_after_the_convolution_is_applied_in_it() {
        let chain = followed_by(model(&PADDLE, 40), |model, conv| {
            let constants = [("three", 3.0), ("zero", 0.0), ("six", 6.0), ("sixth", 1.0 / 6.0)];
            let [three, zero, six, sixth] = constants.map(|(name, v)| scalar(model, name, v));
            let mut wire = |name: &str, op, a, b| model.wire_node(name, op, &[a, b]).unwrap()[0];
            let shifted = wire("add", add(), conv, three);
            let low = wire("max", max(), shifted, zero);
            let clipped = wire("min", min(), low, six);
            let times_x = wire("mul", mul(), clipped, conv);
            wire("div", mul(), times_x, sixth)
        });
        let expected = run(chain.clone(), &PADDLE.input());
        let (swish, _) = fused_once(chain, hardswish::fuse);
        let ours = ours(swish, &PADDLE, &["maas.HardSwish"]);
        close(&ours, &expected);
        // The curve below 0 as well as above.
        assert!(ours.iter().any(|&v| v < 0.0) && ours.iter().any(|&v| v > 0.0));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_plain_loops_give_the_vector_registers_sums() {
        if !has_fma() {
            return;
        }
        let case = Case { input: [1, 2, 3, 45], out_channels: 2, group: 2, ..PADDLE };
        let op = op_of(&case);
        let op = DepthwiseConv { activation: Activation::Relu, ..op };
        let lines = values(&[op.lines() * op.line_len()], 5).into_plain_array::<f32>().unwrap();
        let lines = lines.as_slice().unwrap();
        let (mut plain, mut fma) = (vec![0f32; op.row_sums()], vec![0f32; op.row_sums()]);
        let (taps, weights) = (&op.taps[..], &op.weights[25..]);
        op.row_plain(lines, taps, weights, 0.5, &mut plain);
        // SAFETY: the CPU has the features, checked above.
        unsafe { op.row_fma(lines, taps, weights, 0.5, &mut fma) };
        close(&fma, &plain);
        assert!(plain.iter().any(|&v| v > 0.0) && plain.contains(&0.0));
    }

    #[test]
    fn ungrouped_and_channel_multiplying_convolutions_stay_tracts() {
        let multiplier = Case { input: [1, 4, 8, 8], out_channels: 8, group: 4, ..SMALL_CNN };
        for case in [SMALL_CNN, multiplier] {
            assert!(replace(&model(&case, case.out_channels)).unwrap().is_none());
        }
    }
}
