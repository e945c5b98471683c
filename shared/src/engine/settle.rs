//! Every node of a plan runs through [`eval_node`]: tract's `eval`, then the CPU's vector
//! registers left as code built for the baseline instruction set expects them.
//!
//! tract's matrix product kernels on x86_64 (`avx512_mmm_*`, `fma_mmm_*`) are hand-written assembly
//! that uses the 256- and 512-bit registers and returns without `vzeroupper`. Until something
//! clears the upper halves, every SSE instruction that follows (the Rust code of the other
//! operators, ours included, is built for baseline x86_64 and so uses SSE) pays a transition or a
//! false dependency on them. Measured on this project's 2-vCPU AMD EPYC machine: an elementwise
//! pass over 38 400 floats right after a 1×1 convolution took 41 µs, the same pass after a
//! `vzeroupper` 11 µs (`scripts/benchmarks.md`, "Vector registers between nodes"). Intel documents
//! the same penalty for its AVX parts. One `vzeroupper` after each node costs a cycle and gives the
//! next node clean registers.

use tract_onnx::prelude::{TValue, TVec, TractResult, TypedNode};
use tract_onnx::tract_core::ops::OpState;
use tract_onnx::tract_core::plan::{eval, EvalContext};

/// Runs `node` on `inputs` as tract's plan would, then clears the vector registers' upper
/// halves.
pub(super) fn eval_node(
    ctx: &EvalContext,
    state: Option<&mut (dyn OpState + 'static)>,
    node: &TypedNode,
    inputs: TVec<TValue>,
) -> TractResult<TVec<TValue>> {
    let outputs = eval(ctx, state, node, inputs);
    clear_upper_halves();
    outputs
}

/// `vzeroupper` where the CPU has AVX; nothing elsewhere.
fn clear_upper_halves() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX, checked just above.
        unsafe { zero_upper() }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn zero_upper() {
    std::arch::x86_64::_mm256_zeroupper();
}
