//! Activations moved ahead of the reshape that ends tract's convolutions. tract plans a
//! convolution as a matrix product whose output (`[batch, group, channels, pixels]`) an
//! `IntoShape` turns back into `[batch, channels, height, width]`. It fuses an operation with
//! a scalar that follows a product (a ReLU: the maximum with 0) into the product's store, but
//! not across that reshape, so on the zoo's small CNN each ReLU ran as a pass of its own. An
//! operation with a scalar gives the same values whatever the shape, so [`fuse`] moves it
//! ahead of the reshape and lets the product absorb it.

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::{OptBinByScalar, TypedBinOp};
use tract_onnx::tract_core::ops::change_axes::IntoShape;
use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;

use super::ops::only_successor;

/// Every product → reshape → operation with a scalar of `model` (an optimised model) made
/// product → operation → reshape, and the operation fused into the product where tract can.
pub(super) fn fuse(model: &mut TypedModel) -> TractResult<()> {
    let mut changed = false;
    for id in model.eval_order()? {
        let Some(patch) = moved(model, id)? else { continue };
        patch.apply(model)?;
        let product = model.node(id);
        if let Some(fused) = product.op.fuse(model, product)? {
            fused.apply(model)?;
        }
        changed = true;
    }
    if changed {
        *model = std::mem::take(model).into_compact()?;
    }
    Ok(())
}

/// A patch putting the operation with a scalar that reads the reshape of the product `id`
/// ahead of that reshape; `None` when `id` is not such a product.
fn moved(model: &TypedModel, id: usize) -> TractResult<Option<TypedModelPatch>> {
    let product = model.node(id);
    if !product.op_is::<OptMatMul>() {
        return Ok(None);
    }
    let Some(reshape) = only_successor(model, product)? else { return Ok(None) };
    if !reshape.op_is::<IntoShape>() {
        return Ok(None);
    }
    let Some(activation) = only_successor(model, reshape)? else { return Ok(None) };
    let Some(by_scalar) = activation.op_as::<OptBinByScalar>() else { return Ok(None) };
    // Only what the product's store can apply (no comparison): moved, anything else would
    // run as a generic binary operation instead of tract's by-scalar one.
    let fusable = by_scalar.binop.as_linalg_binop().is_some();
    if !fusable || activation.inputs.first() != Some(&OutletId::new(reshape.id, 0)) {
        return Ok(None);
    }
    let Some(scalar) = model.outlet_fact(activation.inputs[1])?.konst.clone() else {
        return Ok(None);
    };
    if scalar.len() != 1 {
        return Ok(None);
    }
    let output = OutletId::new(product.id, 0);
    let ones = vec![1; model.outlet_fact(output)?.rank()];
    let mut patch = TypedModelPatch::new(format!("{} ahead of {}", activation.name, reshape.name));
    let input = patch.tap_model(model, output)?;
    let scalar = scalar.into_tensor().into_shape(&ones)?;
    let scalar = patch.add_const(format!("{}.scalar", activation.name), scalar)?;
    let op = TypedBinOp(by_scalar.binop.clone(), None);
    let wire = patch.wire_node(&activation.name, op, &[input, scalar])?[0];
    let wire = patch.wire_node(&reshape.name, reshape.op.clone(), &[wire])?[0];
    patch.shunt_outside(model, OutletId::new(activation.id, 0), wire)?;
    Ok(Some(patch))
}
