//! From a translated model to the optimised one the engine plans: the hook where maas's
//! rewrites of the decluttered graph and its choice of tract's optimiser passes go.

use tract_onnx::prelude::{TractResult, TypedModel};

/// The optimised form of a translated, decluttered model.
pub(super) fn optimise(typed: TypedModel) -> TractResult<TypedModel> {
    typed.into_optimized()
}
