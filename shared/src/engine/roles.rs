//! What role an input plays beyond its shape and type, read from the ONNX graph: the axes
//! that carry the batch (which per-shape plans bucket and pad, and threads split), and the
//! scalar inputs whose value picks a branch of the graph (which per-shape plans are built for).

use tract_onnx::pb;
use tract_onnx::prelude::Tensor as TractTensor;

use super::engine_error;
use super::signature::dim_params;
use crate::error::Error;
use crate::manifest::Signature;
use crate::tensor::DataType;

/// For each input, whether it selects a branch: a scalar (rank 0) integer or boolean input of a
/// graph with `If` nodes.
pub(super) fn selectors(proto: &pb::ModelProto, signature: &Signature) -> Vec<bool> {
    let graph = proto.graph.as_ref();
    let branches = graph.is_some_and(|g| g.node.iter().any(|n| n.op_type == "If"));
    signature
        .inputs
        .iter()
        .map(|spec| {
            let declared = graph.and_then(|g| g.input.iter().find(|v| v.name == spec.name));
            let rank = declared.and_then(|v| v.r#type.as_ref()).and_then(|t| match &t.value {
                Some(pb::type_proto::Value::TensorType(tensor)) => {
                    tensor.shape.as_ref().map(|s| s.dim.len())
                }
                None => None,
            });
            let integer = matches!(
                spec.datatype,
                DataType::I8
                    | DataType::I16
                    | DataType::I32
                    | DataType::I64
                    | DataType::U8
                    | DataType::U16
                    | DataType::U32
                    | DataType::U64
                    | DataType::Bool
            );
            branches && integer && rank == Some(0)
        })
        .collect()
}

/// A scalar input's value as an `i64`.
pub(super) fn scalar_i64(input: &TractTensor) -> Result<i64, Error> {
    let value = input.cast_to::<i64>().map_err(|e| engine_error("cannot read a selector", e))?;
    match value.try_as_plain_ram().and_then(|v| v.as_slice::<i64>()) {
        Ok(&[value]) => Ok(value),
        _ => {
            Err(Error::InferenceRejected { problem: "a selector input is not a scalar".to_owned() })
        }
    }
}

/// The axes of each input that carry the batch: those declared with the same dimension
/// name as the first input's first axis, or, when that is unnamed, every dynamic first axis
/// and the only dynamic axis of an input whose first axis is fixed (a recurrent state of
/// `[layers, batch, units]`). `None` when the first input has no dynamic first axis.
pub(super) fn batch_axes(proto: &pb::ModelProto, signature: &Signature) -> Option<Vec<Vec<usize>>> {
    let first = signature.inputs.first()?;
    if first.shape.first() != Some(&-1) {
        return None;
    }
    let batch_name = dim_params(proto, &first.name).into_iter().next().flatten();
    let axes = signature.inputs.iter().map(|spec| {
        let declared = dim_params(proto, &spec.name);
        let dynamic = spec.shape.iter().enumerate().filter(|(_, &d)| d < 0).map(|(axis, _)| axis);
        match &batch_name {
            Some(name) => {
                dynamic.filter(|&a| declared.get(a) == Some(&Some(name.clone()))).collect()
            }
            None => {
                let dynamic: Vec<usize> = dynamic.collect();
                match dynamic.as_slice() {
                    [0, ..] => vec![0],
                    &[only] => vec![only],
                    _ => Vec::new(),
                }
            }
        }
    });
    Some(axes.collect())
}
