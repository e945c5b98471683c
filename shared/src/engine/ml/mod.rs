//! ONNX-ML operators maas registers in tract's ONNX operator registry, where tract 0.23 has
//! none or a slow one: tree ensembles ([`trees`]), `ZipMap` ([`zipmap`]) and `Scaler`
//! ([`scaler`]). Each follows the ONNX-ML specification as onnxruntime implements it; the
//! model zoo test compares them with onnxruntime on scikit-learn's exports.

mod scaler;
mod trees;
mod zipmap;

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::{NodeProto, TensorProto};
use tract_onnx::tract_hir::internal::*;

pub(super) fn register(ops: &mut OnnxOpRegister) {
    ops.insert("TreeEnsembleClassifier", trees::classifier);
    ops.insert("TreeEnsembleRegressor", trees::regressor);
    ops.insert("ZipMap", zipmap::zipmap);
    ops.insert("Scaler", scaler::scaler);
}

/// What an operator builder returns: the operator, and names of extra outputs (none here).
type Built = TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// The builder tract registers for `op`, for the cases maas leaves to tract.
fn tract_builder(op: &str) -> TractResult<fn(&ParsingContext, &NodeProto) -> Built> {
    tract_onnx::onnx()
        .op_register
        .0
        .get(op)
        .copied()
        .with_context(|| format!("tract has no builder for {op}"))
}

/// The attributes of one ONNX-ML node, as lists of floats whether written as `name` or as
/// `name_as_tensor` (which ML opset 3 added for double precision).
fn floats(ctx: &ParsingContext, node: &NodeProto, name: &str) -> TractResult<Option<Vec<f32>>> {
    if let Some(values) = node.get_attr_opt_slice::<f32>(name)? {
        return Ok(Some(values.to_vec()));
    }
    let Some(tensor) = node.get_attr_opt::<&TensorProto>(&format!("{name}_as_tensor"))? else {
        return Ok(None);
    };
    let tensor = ctx.load_tensor(tensor)?;
    let values = tensor.cast_to::<f32>()?;
    Ok(Some(values.try_as_plain_ram()?.as_slice::<f32>()?.to_vec()))
}
