//! Small convolutions as one matrix product per image. The zoo's small CNN convolves 3 and
//! 8 channels of 16 × 16 and 8 × 8 pixels into 8 and 16 (55 000 and 74 000 multiplications an
//! image): tract gathers the patches of such a convolution lazily, panel by panel, for its
//! packed kernels, and the gathering (`LazyIm2colInput::panel_bytes`) was the largest item of
//! the CNN's profile at batch 8, ahead of the products themselves. [`replace`] puts
//! [`SmallConv`] in place of such a convolution in the decluttered graph. At stride 1 it
//! multiplies the weights by the image itself, padded once into a buffer (or as it lies when
//! it needs no padding): the row of each kernel tap for a row of output pixels is a row of the
//! padded image, shifted. At other strides it gathers each image's patch matrix first. The
//! product runs in blocks of 8 output channels by 8 pixels held in registers from the bias on,
//! with fused multiply-adds on CPUs that have AVX2 and FMA (chosen at run time), each block
//! stored once; a ReLU that alone reads the convolution is applied before the store. The
//! weights are laid out at load so that a block's weights for one tap lie side by side
//! ([`Weights`]): with each weight read from its row of the kernel, and each block summed
//! into the output after a first pass wrote the bias, the small CNN's two convolutions took
//! 25 and 27 µs at batch 8 against 14 and 16.
//! (`matrixmultiply`, on gathered patches, packed the weights again for every image and
//! ran the CNN's convolutions at about half that speed.)

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PoolSpec};
use tract_onnx::tract_core::ops::math::Max;
use tract_onnx::tract_core::ops::nn::DataFormat;

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
    /// The weights (output channels × input channels × kernel height × kernel width) as the
    /// product reads them ([`Weights`]).
    weights: Arc<Weights>,
    /// One bias per output channel.
    bias: Arc<Vec<f32>>,
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
        let (weights, bias) = (Arc::new(Weights::new(&weights, &bias, taps)), Arc::new(bias));
        let (offsets, runs) = Self::layout(channels, height, width);
        let (offsets, runs) = (Arc::new(offsets), Arc::new(runs));
        let relu = false;
        Some(Self { weights, bias, channels, out_channels, height, width, offsets, runs, relu })
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
            let b = Operand { values: b, offsets: &self.offsets };
            multiply(&self.weights, b, &self.runs, y, pixels, self.relu)?;
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

/// A run of output pixels the product computes in one piece: where it starts in the right
/// operand (added to every row's offset) and in each row of the output, and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    b: usize,
    c: usize,
    len: usize,
}

/// The right operand of a product: its row `d` of a run starting at `at` lies at
/// `values[offsets[d] + at..]`.
#[derive(Debug, Clone, Copy)]
struct Operand<'a> {
    values: &'a [f32],
    offsets: &'a [usize],
}

/// Rows and columns of the output one block of the product keeps in registers.
const BLOCK_ROWS: usize = 8;
const BLOCK_COLUMNS: usize = 8;
const _: () = assert!(BLOCK_COLUMNS == 8, "block_fma holds a row in one AVX register");

/// One block of the product's output: `BLOCK_ROWS` rows of `BLOCK_COLUMNS`.
type Block = [[f32; BLOCK_COLUMNS]; BLOCK_ROWS];

/// Whether the CPU has AVX2 and FMA, the features the convolutions' `*_fma` functions are
/// compiled for.
#[cfg(target_arch = "x86_64")]
pub(super) fn has_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// The left operand of a product, its `m` rows of `k` (a convolution's weights), in blocks of
/// `BLOCK_ROWS` rows: block by block, the block's values for each column side by side (0 past
/// the last row), so that the values a block multiplies one row of the right operand by lie in
/// one run; and the bias each row's sums start from.
#[derive(Debug, Clone, PartialEq)]
struct Weights {
    blocks: Vec<f32>,
    bias: Vec<f32>,
    m: usize,
    k: usize,
}

impl Weights {
    /// `a` (`bias.len()` rows of `k`, row-major) in blocks.
    fn new(a: &[f32], bias: &[f32], k: usize) -> Self {
        let m = bias.len();
        let mut blocks = vec![0f32; m.div_ceil(BLOCK_ROWS) * k * BLOCK_ROWS];
        for (r, row) in a.chunks_exact(k).enumerate() {
            for (d, &value) in row.iter().enumerate() {
                blocks[(r / BLOCK_ROWS * k + d) * BLOCK_ROWS + r % BLOCK_ROWS] = value;
            }
        }
        let mut bias = bias.to_vec();
        bias.resize(m.div_ceil(BLOCK_ROWS) * BLOCK_ROWS, 0.0);
        Self { blocks, bias, m, k }
    }

    /// Block `index`: its values and its rows' biases.
    fn block(&self, index: usize) -> (&[f32], &[f32]) {
        let values = &self.blocks[index * self.k * BLOCK_ROWS..][..self.k * BLOCK_ROWS];
        (values, &self.bias[index * BLOCK_ROWS..][..BLOCK_ROWS])
    }
}

/// `c = a · b + bias` over the `runs` of columns (then a ReLU when `relu`), for `c` of `a.m`
/// rows of `n`. An error when a run would read past `b`'s values.
fn multiply(
    a: &Weights,
    b: Operand,
    runs: &[Run],
    c: &mut [f32],
    n: usize,
    relu: bool,
) -> TractResult<()> {
    let reach = b.offsets.iter().max().copied().unwrap_or(0);
    for run in runs {
        let fits = reach + run.b + run.len <= b.values.len() && run.c + run.len <= n;
        ensure!(fits && a.k == b.offsets.len() && c.len() >= a.m * n, "a product's operands");
    }
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: the CPU has the features the function is compiled for, and every run of
        // `b` read and of `c` written was checked above.
        unsafe { multiply_fma(a, b, runs, c, n, relu) };
        return Ok(());
    }
    multiply_plain(a, b, runs, c, n, relu);
    Ok(())
}

/// [`multiply`] in plain loops.
fn multiply_plain(a: &Weights, b: Operand, runs: &[Run], c: &mut [f32], n: usize, relu: bool) {
    for (index, row) in (0..a.m).step_by(BLOCK_ROWS).enumerate() {
        for run in runs {
            let whole = run.len / BLOCK_COLUMNS * BLOCK_COLUMNS;
            for column in (0..whole).step_by(BLOCK_COLUMNS) {
                let sums = block(a.block(index), b, run.b + column);
                for r in 0..BLOCK_ROWS.min(a.m - row) {
                    let c_row = &mut c[(row + r) * n + run.c + column..][..BLOCK_COLUMNS];
                    for (c, &sum) in c_row.iter_mut().zip(&sums[r]) {
                        *c = if relu { sum.max(0.0) } else { sum };
                    }
                }
            }
            ragged_end(a, index, b, *run, c, n, relu);
        }
    }
}

/// The last columns of `run`, fewer than `BLOCK_COLUMNS`, in rows block `index` of `a`: one
/// output at a time.
fn ragged_end(
    a: &Weights,
    index: usize,
    b: Operand,
    run: Run,
    c: &mut [f32],
    n: usize,
    relu: bool,
) {
    let (values, bias) = a.block(index);
    let row = index * BLOCK_ROWS;
    for column in run.len / BLOCK_COLUMNS * BLOCK_COLUMNS..run.len {
        for r in 0..BLOCK_ROWS.min(a.m - row) {
            let column_of_a = values.iter().skip(r).step_by(BLOCK_ROWS);
            let products = b.offsets.iter().zip(column_of_a);
            let sum =
                bias[r] + products.map(|(o, w)| w * b.values[o + run.b + column]).sum::<f32>();
            c[(row + r) * n + run.c + column] = if relu { sum.max(0.0) } else { sum };
        }
    }
}

/// The sums of rows block `block` of `a` (its values and biases) times the columns of `b` from
/// `at`, in plain loops.
fn block((values, bias): (&[f32], &[f32]), b: Operand, at: usize) -> Block {
    let mut sums = [[0f32; BLOCK_COLUMNS]; BLOCK_ROWS];
    for (sums, &bias) in sums.iter_mut().zip(bias) {
        sums.fill(bias);
    }
    for (&offset, column_of_a) in b.offsets.iter().zip(values.chunks_exact(BLOCK_ROWS)) {
        let b_row = &b.values[offset + at..][..BLOCK_COLUMNS];
        for (sums, &x) in sums.iter_mut().zip(column_of_a) {
            for (sum, &y) in sums.iter_mut().zip(b_row) {
                *sum += x * y;
            }
        }
    }
    sums
}

/// [`multiply`] on a CPU with AVX2 and FMA: each block of the output in AVX registers (a row of
/// `BLOCK_COLUMNS`, 8, in each), with fused multiply-adds (each rounded once), stored once.
/// Written with intrinsics: the same loops with `mul_add`, left to the compiler, ran 6x slower
/// in the release build (thin LTO, one codegen unit) than in the `ci` build, without a call to
/// `fmaf`; intrinsics leave nothing to chance.
///
/// # Safety
/// The CPU has AVX2 and FMA, `a.k` is `b.offsets.len()`, `c` holds `a.m` rows of `n`, and
/// every run reads within `b.values` from each offset and writes within its rows of `c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn multiply_fma(a: &Weights, b: Operand, runs: &[Run], c: &mut [f32], n: usize, relu: bool) {
    use std::arch::x86_64::{_mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_loadu_ps};
    use std::arch::x86_64::{_mm256_max_ps, _mm256_setzero_ps, _mm256_storeu_ps};
    let b_values = b.values.as_ptr();
    for (index, row) in (0..a.m).step_by(BLOCK_ROWS).enumerate() {
        let (values, bias) = a.block(index);
        let rows = BLOCK_ROWS.min(a.m - row);
        for run in runs {
            for column in (0..run.len / BLOCK_COLUMNS * BLOCK_COLUMNS).step_by(BLOCK_COLUMNS) {
                let at = run.b + column;
                let mut sums: [_; BLOCK_ROWS] =
                    std::array::from_fn(|r| _mm256_broadcast_ss(&bias[r]));
                for (&offset, column_of_a) in b.offsets.iter().zip(values.chunks_exact(BLOCK_ROWS))
                {
                    // SAFETY: within `b.values`, as the caller checked.
                    let y = unsafe { _mm256_loadu_ps(b_values.add(offset + at)) };
                    for (sum, x) in sums.iter_mut().zip(column_of_a) {
                        *sum = _mm256_fmadd_ps(_mm256_broadcast_ss(x), y, *sum);
                    }
                }
                for (r, &sum) in sums[..rows].iter().enumerate() {
                    let sum = if relu { _mm256_max_ps(sum, _mm256_setzero_ps()) } else { sum };
                    // SAFETY: within row `row + r` of `c`, as the caller checked.
                    unsafe {
                        _mm256_storeu_ps(c.as_mut_ptr().add((row + r) * n + run.c + column), sum)
                    };
                }
            }
            ragged_end(a, index, b, *run, c, n, relu);
        }
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

    /// `c = a · b + bias` (then a ReLU) for `a` of `m` rows of `k` and `b` of `k` rows of `n`,
    /// row-major, one output at a time.
    fn reference(a: &[f32], bias: &[f32], b: &[f32], n: usize, relu: bool) -> Vec<f32> {
        let k = b.len() / n;
        let c = a.chunks_exact(k).zip(bias).flat_map(|(row, &bias)| {
            (0..n).map(move |j| {
                let sum = bias + row.iter().enumerate().map(|(d, x)| x * b[d * n + j]).sum::<f32>();
                if relu {
                    sum.max(0.0)
                } else {
                    sum
                }
            })
        });
        c.collect()
    }

    #[test]
    fn the_products_blocks_and_ragged_ends_match_a_plain_product() {
        // 13 rows (a block and 5), 11 deep, 2 runs of 19 columns (two blocks and 3).
        let (m, k, n) = (13, 11, 38);
        let a = values(&[m, k], 4).into_plain_array::<f32>().unwrap().into_raw_vec_and_offset().0;
        let b = values(&[k, n], 5).into_plain_array::<f32>().unwrap().into_raw_vec_and_offset().0;
        let bias: Vec<f32> = (0..m).map(|r| r as f32 / 4.0 - 1.5).collect();
        let weights = Weights::new(&a, &bias, k);
        let offsets: Vec<usize> = (0..k).map(|d| d * n).collect();
        let operand = Operand { values: &b, offsets: &offsets };
        let runs = [Run { b: 0, c: 0, len: 19 }, Run { b: 19, c: 19, len: 19 }];
        for relu in [false, true] {
            let expected = reference(&a, &bias, &b, n, relu);
            let mut c = vec![f32::NAN; m * n];
            multiply(&weights, operand, &runs, &mut c, n, relu).unwrap();
            let mut plain = vec![f32::NAN; m * n];
            multiply_plain(&weights, operand, &runs, &mut plain, n, relu);
            for (i, ((&ours, &plain), &expected)) in c.iter().zip(&plain).zip(&expected).enumerate()
            {
                assert!((ours - expected).abs() <= 1e-5 * (1.0 + expected.abs()), "at {i}");
                assert!((plain - expected).abs() <= 1e-5 * (1.0 + expected.abs()), "at {i}");
            }
        }
        // A run reaching past the right operand is an error, not a read out of bounds.
        let long = [Run { b: 20, c: 0, len: 19 }];
        assert!(multiply(&weights, operand, &long, &mut vec![0.0; m * n], n, false).is_err());
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
