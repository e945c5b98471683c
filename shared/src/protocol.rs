//! The Open Inference Protocol (KServe v2) JSON codec: requests are decoded and checked
//! against a model's signature, outputs are encoded back. Every error names the input and
//! what was expected.

use std::collections::HashSet;

use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::Error;
use crate::manifest::{Signature, TensorSpec};
use crate::tensor::{DataType, Tensor, TensorData};

/// The platform reported for every model.
pub const PLATFORM: &str = "onnx_onnxv1";

/// `POST .../infer` body.
#[derive(Debug, Clone, Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    pub inputs: Vec<RequestInput>,
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RequestInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    pub data: Value,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RequestOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
}

/// `POST .../infer` answer.
#[derive(Debug, Clone, Serialize)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<ResponseOutput>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResponseOutput {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl From<Tensor> for ResponseOutput {
    fn from(tensor: Tensor) -> Self {
        ResponseOutput {
            datatype: tensor.datatype(),
            name: tensor.name,
            shape: tensor.shape,
            data: tensor.data,
        }
    }
}

/// `GET /v2/models/{name}[/versions/{v}]` answer.
#[derive(Debug, Clone, Serialize)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// `GET /v2` answer.
#[derive(Debug, Clone, Serialize)]
pub struct ServerMetadata {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: Vec<&'static str>,
}

impl ServerMetadata {
    pub fn current() -> Self {
        ServerMetadata { name: "maas", version: env!("CARGO_PKG_VERSION"), extensions: Vec::new() }
    }
}

/// A request decoded against a model: inputs in the model's order, and the outputs to
/// return (all of them when the request names none).
#[derive(Debug)]
pub struct DecodedRequest {
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<String>,
}

/// Parses a request body; any JSON or structure problem is a 400 naming it.
pub fn parse_request(body: &[u8]) -> Result<InferRequest, Error> {
    serde_json::from_slice(body)
        .map_err(|e| Error::invalid_request(format!("invalid request body: {e}")))
}

/// Checks a request against a signature and converts its inputs to tensors.
pub fn decode(request: InferRequest, signature: &Signature) -> Result<DecodedRequest, Error> {
    let mut seen = HashSet::new();
    for input in &request.inputs {
        if !seen.insert(input.name.as_str()) {
            return Err(Error::invalid_input(&input.name, "given more than once"));
        }
        if !signature.inputs.iter().any(|spec| spec.name == input.name) {
            return Err(Error::invalid_input(
                &input.name,
                format!("the model has no such input; its inputs are {}", names(&signature.inputs)),
            ));
        }
    }
    let mut by_name: std::collections::HashMap<String, RequestInput> =
        request.inputs.into_iter().map(|input| (input.name.clone(), input)).collect();
    let inputs = signature
        .inputs
        .iter()
        .map(|spec| match by_name.remove(&spec.name) {
            Some(input) => decode_input(input, spec),
            None => Err(Error::invalid_input(&spec.name, "missing: the model requires this input")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_batch_sizes_agree(&inputs, signature)?;
    let outputs = match request.outputs {
        None => signature.outputs.iter().map(|spec| spec.name.clone()).collect(),
        Some(requested) => requested
            .into_iter()
            .map(|output| {
                if signature.outputs.iter().any(|spec| spec.name == output.name) {
                    Ok(output.name)
                } else {
                    Err(Error::invalid_request(format!(
                        "requested output `{}` does not exist; the model's outputs are {}",
                        output.name,
                        names(&signature.outputs)
                    )))
                }
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(DecodedRequest { id: request.id, inputs, outputs })
}

fn names(specs: &[TensorSpec]) -> String {
    specs.iter().map(|spec| format!("`{}`", spec.name)).collect::<Vec<_>>().join(", ")
}

fn decode_input(input: RequestInput, spec: &TensorSpec) -> Result<Tensor, Error> {
    let bad = |problem: String| Error::invalid_input(&input.name, problem);
    let datatype: DataType = input.datatype.parse().map_err(|e| bad(format!("{e}")))?;
    if !datatype.is_supported() {
        return Err(bad(format!("datatype {datatype} is not supported")));
    }
    if datatype != spec.datatype {
        return Err(bad(format!("datatype is {datatype} but the model expects {}", spec.datatype)));
    }
    let shape = input
        .shape
        .iter()
        .map(|&d| usize::try_from(d).ok().filter(|&d| d > 0))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| {
            bad(format!("shape {:?} has a dimension that is not a positive integer", input.shape))
        })?;
    if !spec.accepts_shape(&shape) {
        return Err(bad(format!(
            "shape {:?} does not match the model's shape {:?} (-1 is any size)",
            shape, spec.shape
        )));
    }
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} has too many elements")))?;
    let Value::Array(data) = &input.data else {
        return Err(bad("data must be a JSON array".to_owned()));
    };
    let mut leaves = Vec::with_capacity(count.min(data.len().max(1) * 64));
    flatten(data, &shape, &mut leaves).map_err(bad)?;
    if leaves.len() != count {
        return Err(bad(format!(
            "shape {shape:?} needs {count} elements but data has {}",
            leaves.len()
        )));
    }
    let data = convert(datatype, &leaves).map_err(bad)?;
    Ok(Tensor { name: input.name, shape, data })
}

/// Collects the scalars of flat or nested `data`. Nested data must follow the shape exactly;
/// flat data is counted by the caller.
fn flatten<'a>(data: &'a [Value], shape: &[usize], out: &mut Vec<&'a Value>) -> Result<(), String> {
    let nested = data.first().is_some_and(Value::is_array);
    if !nested {
        if let Some(position) = data.iter().position(|v| v.is_array() || v.is_object()) {
            return Err(format!("data mixes nested arrays and scalars (element {position})"));
        }
        out.extend(data);
        return Ok(());
    }
    fn walk<'a>(
        value: &'a Value,
        shape: &[usize],
        depth: usize,
        out: &mut Vec<&'a Value>,
    ) -> Result<(), String> {
        match (value, shape.get(depth)) {
            (Value::Array(items), Some(&len)) => {
                if items.len() != len {
                    return Err(format!(
                        "nested data has {} elements at depth {depth} where the shape says {len}",
                        items.len()
                    ));
                }
                items.iter().try_for_each(|item| walk(item, shape, depth + 1, out))
            }
            (Value::Array(_), None) => {
                Err(format!("nested data is deeper than the shape's {} dimensions", shape.len()))
            }
            (scalar, None) => {
                out.push(scalar);
                Ok(())
            }
            (_, Some(_)) => {
                Err(format!("nested data is shallower than the shape's {} dimensions", shape.len()))
            }
        }
    }
    match shape.first() {
        Some(&len) if len == data.len() => {
            data.iter().try_for_each(|item| walk(item, shape, 1, out))
        }
        Some(&len) => Err(format!(
            "nested data has {} elements at depth 0 where the shape says {len}",
            data.len()
        )),
        None => Err("nested data is deeper than the shape's 0 dimensions".to_owned()),
    }
}

/// Converts one JSON scalar into a Rust value of the input's datatype.
trait FromJson: Sized {
    fn from_json(value: &Value) -> Option<Self>;
}

impl FromJson for bool {
    fn from_json(value: &Value) -> Option<Self> {
        value.as_bool()
    }
}

macro_rules! from_json_int {
    ($($ty:ty),*) => {$(
        impl FromJson for $ty {
            fn from_json(value: &Value) -> Option<Self> {
                match value.as_i64() {
                    Some(n) => <$ty>::try_from(n).ok(),
                    None => value.as_u64().and_then(|n| <$ty>::try_from(n).ok()),
                }
            }
        }
    )*};
}
from_json_int!(u8, u16, u32, u64, i8, i16, i32, i64);

impl FromJson for f32 {
    fn from_json(value: &Value) -> Option<Self> {
        value.as_f64().map(|n| n as f32).filter(|n| n.is_finite())
    }
}

impl FromJson for f64 {
    fn from_json(value: &Value) -> Option<Self> {
        value.as_f64()
    }
}

fn convert_all<T: FromJson>(leaves: &[&Value], datatype: DataType) -> Result<Vec<T>, String> {
    leaves
        .iter()
        .enumerate()
        .map(|(i, v)| {
            T::from_json(v)
                .ok_or_else(|| format!("element {i} ({v}) is not a valid {datatype} value"))
        })
        .collect()
}

macro_rules! data_conversions {
    ($(($variant:ident, $ty:ty, $name:literal)),* $(,)?) => {
        fn convert(datatype: DataType, leaves: &[&Value]) -> Result<TensorData, String> {
            match datatype {
                $(DataType::$variant => convert_all::<$ty>(leaves, datatype).map(TensorData::$variant),)*
                DataType::F16 | DataType::Bytes => Err(format!("datatype {datatype} is not supported")),
            }
        }

        impl Serialize for TensorData {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self {
                    $(TensorData::$variant(values) => {
                        let mut seq = serializer.serialize_seq(Some(values.len()))?;
                        for value in values {
                            seq.serialize_element(value)?;
                        }
                        seq.end()
                    })*
                }
            }
        }
    };
}
crate::for_each_numeric_type!(data_conversions);

/// Inputs whose first dimension is dynamic form the batch: they must agree on its size.
fn check_batch_sizes_agree(inputs: &[Tensor], signature: &Signature) -> Result<(), Error> {
    let mut batch: Option<(&str, usize)> = None;
    for (tensor, spec) in inputs.iter().zip(&signature.inputs) {
        if spec.shape.first() != Some(&-1) {
            continue;
        }
        match batch {
            None => batch = Some((&tensor.name, tensor.shape[0])),
            Some((first, size)) if size != tensor.shape[0] => {
                return Err(Error::invalid_input(
                    &tensor.name,
                    format!("batch size {} differs from input `{first}`'s {size}", tensor.shape[0]),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn signature() -> Signature {
        Signature {
            inputs: vec![TensorSpec {
                name: "x".into(),
                datatype: DataType::F32,
                shape: vec![-1, 2],
            }],
            outputs: vec![
                TensorSpec { name: "y".into(), datatype: DataType::F32, shape: vec![-1, 1] },
                TensorSpec { name: "label".into(), datatype: DataType::I64, shape: vec![-1] },
            ],
        }
    }

    fn decode_json(body: Value) -> Result<DecodedRequest, Error> {
        decode(parse_request(body.to_string().as_bytes())?, &signature())
    }

    fn input_error(body: Value) -> String {
        let err = decode_json(body).unwrap_err();
        assert_eq!(err.status(), 400, "{err}");
        err.to_string()
    }

    #[test]
    fn flat_and_nested_data_decode_to_the_same_tensor() {
        let flat = decode_json(json!({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2.5, 3, 4]}]})).unwrap();
        let nested = decode_json(json!({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2.5], [3, 4]]}]})).unwrap();
        assert_eq!(flat.inputs, nested.inputs);
        assert_eq!(flat.inputs[0].data, TensorData::F32(vec![1.0, 2.5, 3.0, 4.0]));
        assert_eq!(flat.outputs, vec!["y", "label"]);
    }

    #[test]
    fn requested_outputs_are_kept_in_request_order() {
        let decoded = decode_json(json!({"id": "r1", "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}], "outputs": [{"name": "label"}]})).unwrap();
        assert_eq!(decoded.outputs, vec!["label"]);
        assert_eq!(decoded.id.as_deref(), Some("r1"));
    }

    #[test]
    fn each_mistake_is_named() {
        let cases = [
            (
                json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}),
                "datatype is FP64 but the model expects FP32",
            ),
            (
                json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP16", "data": [1, 2]}]}),
                "FP16 is not supported",
            ),
            (
                json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FLOAT", "data": [1, 2]}]}),
                "unknown datatype \"FLOAT\"",
            ),
            (
                json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}),
                "does not match the model's shape [-1, 2]",
            ),
            (
                json!({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]}),
                "needs 4 elements but data has 3",
            ),
            (
                json!({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]}]}),
                "nested data has 1 elements at depth 1",
            ),
            (
                json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, "a"]}]}),
                "element 1 (\"a\") is not a valid FP32 value",
            ),
            (
                json!({"inputs": [{"name": "x", "shape": [0, 2], "datatype": "FP32", "data": []}]}),
                "not a positive integer",
            ),
            (
                json!({"inputs": [{"name": "x", "shape": [-1, 2], "datatype": "FP32", "data": [1, 2]}]}),
                "not a positive integer",
            ),
            (
                json!({"inputs": [{"name": "z", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}),
                "input `z`: the model has no such input; its inputs are `x`",
            ),
            (json!({"inputs": []}), "input `x`: missing"),
            (
                json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}, {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}),
                "given more than once",
            ),
            (
                json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}], "outputs": [{"name": "nope"}]}),
                "requested output `nope` does not exist",
            ),
            (
                json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": 3}]}),
                "data must be a JSON array",
            ),
            (json!({"inputs": "x"}), "invalid request body"),
            (json!({}), "missing field `inputs`"),
        ];
        for (body, expected) in cases {
            let message = input_error(body.clone());
            assert!(
                message.contains(expected),
                "{body}: got {message:?}, expected it to contain {expected:?}"
            );
        }
    }

    #[test]
    fn integers_are_range_checked_per_datatype() {
        let value = json!(300);
        assert_eq!(
            convert(DataType::U8, &[&value]),
            Err("element 0 (300) is not a valid UINT8 value".into())
        );
        assert_eq!(convert(DataType::I16, &[&value]), Ok(TensorData::I16(vec![300])));
        let float = json!(1.5);
        assert!(convert(DataType::I64, &[&float]).is_err());
        let big = json!(1e300);
        assert!(convert(DataType::F32, &[&big]).is_err());
        assert_eq!(convert(DataType::F64, &[&big]), Ok(TensorData::F64(vec![1e300])));
        let truth = json!(true);
        assert_eq!(convert(DataType::Bool, &[&truth]), Ok(TensorData::Bool(vec![true])));
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        let err = parse_request(b"{\"inputs\": [").unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(err.to_string().starts_with("invalid request body"), "{err}");
    }
}
