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

use tract_onnx::prelude::{TractResult, TypedModel};
use tract_onnx::tract_core::optim::Optimizer;

/// The optimised form of a translated, decluttered model.
pub(super) fn optimise(mut typed: TypedModel) -> TractResult<TypedModel> {
    typed.declutter()?;
    typed.optimize_with_session(&mut codegen().session())?;
    Ok(typed)
}

/// tract's code generation passes without `MergeConsecutiveSameRoleAxes`.
fn codegen() -> Optimizer {
    let mut optimizer = Optimizer::codegen();
    optimizer
        .passes
        .retain(|pass| !format!("{pass:?}").starts_with("MergeConsecutiveSameRoleAxes"));
    optimizer
}
