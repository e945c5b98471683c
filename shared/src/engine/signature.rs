//! Reading a model's signature (its declared inputs and outputs) from the ONNX file.

use tract_onnx::pb;
use tract_onnx::prelude::Framework;

use super::engine_problem;
use super::validate::invalid;
use crate::error::Error;
use crate::manifest::{Signature, TensorSpec};
use crate::tensor::DataType;

/// Reads the declared inputs (initializers excluded) and outputs of the graph.
pub(super) fn signature_of(proto: &pb::ModelProto) -> Result<Signature, Error> {
    let graph = proto.graph.as_ref().ok_or_else(|| engine_problem("the file has no graph"))?;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs = graph.input.iter().filter(|v| !initializers.contains(v.name.as_str()));
    let outputs =
        graph.output.iter().map(|v| zipmap_spec(graph, v).map_or_else(|| tensor_spec(v), Ok));
    Ok(Signature {
        inputs: inputs.map(tensor_spec).collect::<Result<_, _>>()?,
        outputs: outputs.collect::<Result<_, _>>()?,
    })
}

/// The signature of an ONNX file, read without translating the graph: the entry point of the
/// signature reader's fuzz target.
pub fn read_signature(bytes: &[u8]) -> Result<Signature, Error> {
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| invalid(format!("not an ONNX file: {e}")))?;
    signature_of(&proto)
}

/// A `ZipMap` output (a sequence of maps in ONNX) is served as the probabilities it maps:
/// FP32 `[batch, classes]`.
fn zipmap_spec(graph: &pb::GraphProto, value: &pb::ValueInfoProto) -> Option<TensorSpec> {
    let node =
        graph.node.iter().find(|n| n.op_type == "ZipMap" && n.output.contains(&value.name))?;
    let classes = node
        .attribute
        .iter()
        .find(|a| a.name.starts_with("classlabels"))
        .map(|a| a.ints.len().max(a.strings.len()))?;
    Some(TensorSpec {
        name: value.name.clone(),
        datatype: DataType::F32,
        shape: vec![-1, classes as i64],
    })
}

/// The `dim_param` name of each declared dimension of the graph input `input` (`None` for a
/// dimension without one); empty when the graph does not declare the input's shape.
pub(super) fn dim_params(proto: &pb::ModelProto, input: &str) -> Vec<Option<String>> {
    let declared = proto.graph.as_ref().and_then(|g| g.input.iter().find(|v| v.name == input));
    let shape = declared.and_then(|v| v.r#type.as_ref()).and_then(|t| match &t.value {
        Some(pb::type_proto::Value::TensorType(tensor)) => tensor.shape.as_ref(),
        None => None,
    });
    let dims = shape.map(|s| s.dim.as_slice()).unwrap_or_default();
    dims.iter()
        .map(|d| match &d.value {
            Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) if !p.is_empty() => {
                Some(p.clone())
            }
            _ => None,
        })
        .collect()
}

pub(super) fn tensor_spec(value: &pb::ValueInfoProto) -> Result<TensorSpec, Error> {
    let Some(pb::type_proto::Value::TensorType(tensor)) =
        value.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(engine_problem(format!(
            "`{}` is not a tensor: sequences and maps are not supported, except the \
             probabilities of a ZipMap",
            value.name
        )));
    };
    let datatype = datatype_of_onnx(tensor.elem_type).ok_or_else(|| {
        engine_problem(format!(
            "`{}` has unsupported ONNX element type {}",
            value.name, tensor.elem_type
        ))
    })?;
    let shape = tensor
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) if n > 0 => n,
                    _ => -1,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(TensorSpec { name: value.name.clone(), datatype, shape })
}

fn datatype_of_onnx(elem_type: i32) -> Option<DataType> {
    Some(match elem_type {
        1 => DataType::F32,
        2 => DataType::U8,
        3 => DataType::I8,
        4 => DataType::U16,
        5 => DataType::I16,
        6 => DataType::I32,
        7 => DataType::I64,
        8 => DataType::Bytes,
        9 => DataType::Bool,
        10 => DataType::F16,
        11 => DataType::F64,
        12 => DataType::U32,
        13 => DataType::U64,
        _ => return None,
    })
}
