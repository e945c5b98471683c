//! The product of a convolution's weights by its image: `c = a · b + bias`, then the
//! activation after the convolution if the op took it in ([`Activation`]), for a left operand
//! of constant weights laid out once at load ([`Weights`]) and a right operand read in place,
//! each of its rows at an offset of its own, over runs of output columns ([`Operand`]). The
//! output is computed in blocks of 8 rows by 8 columns held in AVX registers from the bias
//! on, with fused multiply-adds on CPUs that have AVX2 and FMA (chosen at run time; plain
//! loops elsewhere), and each block is stored once. [`super::convs::SmallConv`] multiplies
//! its weights by the (padded) image or its gathered patches this way, and
//! [`super::pointwise::Pointwise`] by the image as it lies.

use tract_onnx::tract_core::internal::*;

use super::convs::relu_after;
use super::hardswish::HardSwish;
use super::ops::only_successor;

/// What is applied to a product's or a convolution's sums before they are stored: the
/// activation that alone reads it, taken into the op.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Activation {
    Identity,
    Relu,
    HardSwish(HardSwish),
}

impl Activation {
    pub(super) fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::Relu => x.max(0.0),
            Activation::HardSwish(op) => op.apply(x),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx")]
    pub(super) fn apply_8(self, x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::{_mm256_max_ps, _mm256_setzero_ps};
        match self {
            Activation::Identity => x,
            Activation::Relu => _mm256_max_ps(x, _mm256_setzero_ps()),
            Activation::HardSwish(op) => op.apply_8(x),
        }
    }
}

/// A run of output pixels the product computes in one piece: where it starts in the right
/// operand (added to every row's offset) and in each row of the output, and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub(super) b: usize,
    pub(super) c: usize,
    pub(super) len: usize,
}

/// The right operand of a product and the columns it is read over: its row `d` of a run
/// starting at `at` lies at `values[offsets[d] + at..]`, and the product computes the columns
/// of its `runs`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Operand<'a> {
    pub(super) values: &'a [f32],
    pub(super) offsets: &'a [usize],
    pub(super) runs: &'a [Run],
}

/// Rows and columns of the output one block of the product keeps in registers.
const BLOCK_ROWS: usize = 8;
pub(super) const BLOCK_COLUMNS: usize = 8;
const _: () = assert!(BLOCK_COLUMNS == 8, "multiply_fma holds a row in one AVX register");

/// One block of the product's output: `BLOCK_ROWS` rows of `BLOCK_COLUMNS`.
type Block = [[f32; BLOCK_COLUMNS]; BLOCK_ROWS];

/// Whether the CPU has AVX2 and FMA, the features the convolutions' `*_fma` functions are
/// compiled for.
#[cfg(target_arch = "x86_64")]
pub(super) fn has_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// The ReLU or hard swish that alone reads `node`'s output and the node computing it; `node`
/// itself and [`Activation::Identity`] when there is no such activation.
pub(super) fn activation_after(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<(usize, Activation)> {
    if let Some(relu) = relu_after(model, node)? {
        return Ok((relu.id, Activation::Relu));
    }
    let next = only_successor(model, node)?;
    Ok(match next.and_then(|next| Some((next.id, *next.op_as::<HardSwish>()?))) {
        Some((id, op)) => (id, Activation::HardSwish(op)),
        None => (node.id, Activation::Identity),
    })
}

/// The left operand of a product, its `m` rows of `k` (a convolution's weights), in blocks of
/// `BLOCK_ROWS` rows: block by block, the block's values for each column side by side (0 past
/// the last row), so that the values a block multiplies one row of the right operand by lie in
/// one run; and the bias each row's sums start from.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Weights {
    blocks: Vec<f32>,
    bias: Vec<f32>,
    m: usize,
    k: usize,
}

impl Weights {
    /// `a` (`bias.len()` rows of `k`, row-major) in blocks.
    pub(super) fn new(a: &[f32], bias: &[f32], k: usize) -> Self {
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

/// `c = a · b + bias` over `b`'s runs of columns, then `activation`, for `c` of `a.m` rows
/// of `n`. An error when a run would read past `b`'s values.
pub(super) fn multiply(
    a: &Weights,
    b: Operand,
    c: &mut [f32],
    n: usize,
    activation: Activation,
) -> TractResult<()> {
    let reach = b.offsets.iter().max().copied().unwrap_or(0);
    for run in b.runs {
        let fits = reach + run.b + run.len <= b.values.len() && run.c + run.len <= n;
        ensure!(fits && a.k == b.offsets.len() && c.len() >= a.m * n, "a product's operands");
    }
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: the CPU has the features the function is compiled for, and every run of
        // `b` read and of `c` written was checked above.
        unsafe { multiply_fma(a, b, c, n, activation) };
        return Ok(());
    }
    multiply_plain(a, b, c, n, activation);
    Ok(())
}

/// [`multiply`] in plain loops.
fn multiply_plain(a: &Weights, b: Operand, c: &mut [f32], n: usize, activation: Activation) {
    for (index, row) in (0..a.m).step_by(BLOCK_ROWS).enumerate() {
        for run in b.runs {
            let whole = run.len / BLOCK_COLUMNS * BLOCK_COLUMNS;
            for column in (0..whole).step_by(BLOCK_COLUMNS) {
                let sums = block(a.block(index), b, run.b + column);
                for r in 0..BLOCK_ROWS.min(a.m - row) {
                    let c_row = &mut c[(row + r) * n + run.c + column..][..BLOCK_COLUMNS];
                    for (c, &sum) in c_row.iter_mut().zip(&sums[r]) {
                        *c = activation.apply(sum);
                    }
                }
            }
            ragged_end(a, index, b, *run, c, n, activation);
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
    activation: Activation,
) {
    let (values, bias) = a.block(index);
    let row = index * BLOCK_ROWS;
    for column in run.len / BLOCK_COLUMNS * BLOCK_COLUMNS..run.len {
        for r in 0..BLOCK_ROWS.min(a.m - row) {
            let column_of_a = values.iter().skip(r).step_by(BLOCK_ROWS);
            let products = b.offsets.iter().zip(column_of_a);
            let sum =
                bias[r] + products.map(|(o, w)| w * b.values[o + run.b + column]).sum::<f32>();
            c[(row + r) * n + run.c + column] = activation.apply(sum);
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
unsafe fn multiply_fma(a: &Weights, b: Operand, c: &mut [f32], n: usize, activation: Activation) {
    use std::arch::x86_64::_mm256_storeu_ps;
    use std::arch::x86_64::{_mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_loadu_ps};
    let b_values = b.values.as_ptr();
    for (index, row) in (0..a.m).step_by(BLOCK_ROWS).enumerate() {
        let (values, bias) = a.block(index);
        let rows = BLOCK_ROWS.min(a.m - row);
        for run in b.runs {
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
                    let sum = activation.apply_8(sum);
                    // SAFETY: within row `row + r` of `c`, as the caller checked.
                    unsafe {
                        _mm256_storeu_ps(c.as_mut_ptr().add((row + r) * n + run.c + column), sum)
                    };
                }
            }
            ragged_end(a, index, b, *run, c, n, activation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::convs::tests::values;

    /// An activation written out.
    type Activate = fn(f32) -> f32;

    /// `activate(a · b + bias)` for `a` of `m` rows of `k` and `b` of `k` rows of `n`,
    /// row-major, one output at a time.
    fn reference(
        a: &[f32],
        bias: &[f32],
        b: &[f32],
        n: usize,
        activate: fn(f32) -> f32,
    ) -> Vec<f32> {
        let k = b.len() / n;
        let c = a.chunks_exact(k).zip(bias).flat_map(|(row, &bias)| {
            (0..n).map(move |j| {
                activate(bias + row.iter().enumerate().map(|(d, x)| x * b[d * n + j]).sum::<f32>())
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
        let runs = [Run { b: 0, c: 0, len: 19 }, Run { b: 19, c: 19, len: 19 }];
        let operand = Operand { values: &b, offsets: &offsets, runs: &runs };
        let activations: [(Activation, Activate); 3] = [
            (Activation::Identity, |x| x),
            (Activation::Relu, |x| x.max(0.0)),
            (Activation::HardSwish(HardSwish::STANDARD), |x| x * (x + 3.0).clamp(0.0, 6.0) / 6.0),
        ];
        for (activation, activate) in activations {
            let expected = reference(&a, &bias, &b, n, activate);
            let mut c = vec![f32::NAN; m * n];
            multiply(&weights, operand, &mut c, n, activation).unwrap();
            let mut plain = vec![f32::NAN; m * n];
            multiply_plain(&weights, operand, &mut plain, n, activation);
            for (i, ((&ours, &plain), &expected)) in c.iter().zip(&plain).zip(&expected).enumerate()
            {
                assert!((ours - expected).abs() <= 1e-5 * (1.0 + expected.abs()), "at {i}");
                assert!((plain - expected).abs() <= 1e-5 * (1.0 + expected.abs()), "at {i}");
            }
        }
        // A run reaching past the right operand is an error, not a read out of bounds.
        let long = Operand { runs: &[Run { b: 20, c: 0, len: 19 }], ..operand };
        assert!(multiply(&weights, long, &mut [0.0; 13 * 38], n, Activation::Identity).is_err());
    }
}
