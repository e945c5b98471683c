//! What role an input plays beyond its shape and type, read from the ONNX graph: the axes
//! that carry the batch (which per-shape plans bucket and pad, and threads split), and the
//! scalar inputs whose value picks a branch of the graph (which per-shape plans are built for).

use std::collections::HashSet;

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

/// Whether an `If` of the graph decides on values computed from the batch's rows (its
/// condition reached from an input with a batch axis in `batch_axes`): the rows are then not
/// independent, and a batch cannot be split (the zoo's `If` on `sum(x) > 0` takes one branch
/// for the whole batch; split into rows, each row took its own). Conditions on constants, on
/// a selector input (Silero's sample rate) or on shapes alone (Silero's `Shape`, `Gather`,
/// `Equal`: a share's plan is built for its own shape, and outputs of another shape are not
/// joined) leave the rows independent.
pub(super) fn branches_on_rows(
    proto: &pb::ModelProto,
    signature: &Signature,
    batch_axes: &[Vec<usize>],
) -> bool {
    let Some(graph) = proto.graph.as_ref() else { return false };
    let batched = signature.inputs.iter().zip(batch_axes).filter(|(_, axes)| !axes.is_empty());
    let mut from_rows: HashSet<&str> = batched.map(|(spec, _)| spec.name.as_str()).collect();
    // ONNX lists a graph's nodes in topological order.
    for node in &graph.node {
        let shape_only = matches!(node.op_type.as_str(), "Shape" | "Size");
        if !shape_only && node.input.iter().any(|input| from_rows.contains(input.as_str())) {
            if node.op_type == "If" {
                return true;
            }
            from_rows.extend(node.output.iter().map(String::as_str));
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::TensorSpec;

    fn node(op_type: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
        pb::NodeProto {
            op_type: op_type.to_owned(),
            input: inputs.iter().map(|&i| i.to_owned()).collect(),
            output: vec![output.to_owned()],
            ..Default::default()
        }
    }

    fn model(nodes: Vec<pb::NodeProto>) -> pb::ModelProto {
        let graph = pb::GraphProto { node: nodes, ..Default::default() };
        pb::ModelProto { graph: Some(graph), ..Default::default() }
    }

    /// `x [batch, 3]`, and a scalar selector `sr`.
    fn signature() -> Signature {
        let spec = |name: &str, datatype, shape: Vec<i64>| TensorSpec {
            name: name.into(),
            datatype,
            shape,
        };
        Signature {
            inputs: vec![spec("x", DataType::F32, vec![-1, 3]), spec("sr", DataType::I64, vec![])],
            outputs: vec![spec("y", DataType::F32, vec![-1, 3])],
        }
    }

    #[test]
    fn an_if_on_values_of_the_rows_ties_them_together() {
        let axes = [vec![0], vec![]];
        let on_sum = model(vec![
            node("ReduceSum", &["x"], "sum"),
            node("Greater", &["sum", "zero"], "positive"),
            node("If", &["positive"], "y"),
        ]);
        assert!(branches_on_rows(&on_sum, &signature(), &axes));
        let on_shape = model(vec![
            node("Shape", &["x"], "shape"),
            node("Gather", &["shape", "zero"], "rows"),
            node("Equal", &["rows", "one"], "single"),
            node("If", &["single"], "y"),
        ]);
        assert!(!branches_on_rows(&on_shape, &signature(), &axes), "a shape alone");
        let on_selector = model(vec![
            node("Equal", &["sr", "rate"], "is_16k"),
            node("If", &["is_16k"], "branch"),
            node("Mul", &["x", "branch"], "y"),
        ]);
        assert!(!branches_on_rows(&on_selector, &signature(), &axes), "a selector");
        let no_if = model(vec![node("Relu", &["x"], "y")]);
        assert!(!branches_on_rows(&no_if, &signature(), &axes));
    }
}
