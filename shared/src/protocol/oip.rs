//! The Open Inference Protocol (KServe v2) JSON codec: requests are decoded into named
//! tensors (each checked against the model's input as it is read, so errors name the input
//! and what was expected), and inference results are encoded back.

use lambda_http::http::HeaderMap;
use lambda_http::{Body, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::json;
use crate::error::Error;
use crate::http::json_response;
use crate::predictor::{Inference, ModelDescription, Predictor};
use crate::signature::{InferenceRequest, Signature, TensorSpec};
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

impl From<ModelDescription> for ModelMetadata {
    fn from(description: ModelDescription) -> Self {
        ModelMetadata {
            name: description.manifest.name,
            versions: description.versions.iter().map(ToString::to_string).collect(),
            platform: PLATFORM,
            inputs: description.manifest.signature.inputs,
            outputs: description.manifest.signature.outputs,
        }
    }
}

impl InferResponse {
    /// The answer to a request with this `id`: the selected outputs, in the order asked.
    pub fn new(inference: Inference, id: Option<String>) -> Self {
        InferResponse {
            model_name: inference.model.name.to_string(),
            model_version: inference.model.version.to_string(),
            id,
            outputs: inference.outputs.into_iter().map(ResponseOutput::from).collect(),
        }
    }
}

impl ServerMetadata {
    pub fn current() -> Self {
        ServerMetadata {
            name: "maas",
            version: env!("CARGO_PKG_VERSION"),
            extensions: vec!["statistics"],
        }
    }
}

/// `POST /v2/models/{name}[/versions/{v}]/infer`: decodes the body, runs it, and answers
/// with the outputs as JSON.
pub async fn infer(
    predictor: &Predictor,
    name: &str,
    version: Option<&str>,
    _headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<Body>, Error> {
    Ok(json_response(200, &infer_json(predictor, name, version, body).await?))
}

/// An inference request in the protocol's JSON form, answered in it.
pub async fn infer_json(
    predictor: &Predictor,
    name: &str,
    version: Option<&str>,
    body: &[u8],
) -> Result<InferResponse, Error> {
    predictor.check_request_size(body.len())?;
    let request = parse_request(body)?;
    let id = request.id.clone();
    let inference = predictor.infer(name, version, |signature| decode(request, signature)).await?;
    Ok(InferResponse::new(inference, id))
}

/// Parses a request body; any JSON or structure problem is a 400 naming it. Numbers may be
/// `NaN`, `Infinity` and `-Infinity`.
pub fn parse_request(body: &[u8]) -> Result<InferRequest, Error> {
    json::from_slice(body).map_err(|e| Error::invalid_request(format!("invalid request body: {e}")))
}

/// Converts a request's inputs to named tensors, each checked against the model's input of
/// that name as it is read; [`Signature::check`] checks the whole request.
pub fn decode(request: InferRequest, signature: &Signature) -> Result<InferenceRequest, Error> {
    let inputs = request
        .inputs
        .into_iter()
        .map(|input| {
            let spec = signature.input(&input.name)?;
            decode_input(input, spec)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = request.outputs.map(|outputs| outputs.into_iter().map(|o| o.name).collect());
    Ok(InferenceRequest { inputs, outputs })
}

fn decode_input(input: RequestInput, spec: &TensorSpec) -> Result<Tensor, Error> {
    let bad = |problem: String| Error::invalid_input(&input.name, problem);
    let datatype: DataType = input.datatype.parse().map_err(|e| bad(format!("{e}")))?;
    spec.check_datatype(datatype)?;
    let shape = input
        .shape
        .iter()
        .map(|&d| usize::try_from(d).ok().filter(|&d| d > 0))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| {
            bad(format!("shape {:?} has a dimension that is not a positive integer", input.shape))
        })?;
    spec.check_shape(&shape)?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} has too many elements")))?;
    let Value::Array(data) = &input.data else {
        return Err(bad("data must be a JSON array".to_owned()));
    };
    let mut leaves = Vec::with_capacity(count.min(data.len().max(1) * 64));
    json::flatten(data, &shape, &mut leaves).map_err(bad)?;
    if leaves.len() != count {
        return Err(bad(format!(
            "shape {shape:?} needs {count} elements but data has {}",
            leaves.len()
        )));
    }
    let data: TensorData = json::convert(datatype, &leaves).map_err(bad)?;
    Ok(Tensor { name: input.name, shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::CheckedRequest;
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

    fn decode_json(body: Value) -> Result<CheckedRequest, Error> {
        let signature = signature();
        signature.check(decode(parse_request(body.to_string().as_bytes())?, &signature)?)
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
        let decoded = decode_json(json!({"id": "r1", "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}], "outputs": [{"name": "label"}, {"name": "y"}]})).unwrap();
        assert_eq!(decoded.outputs, vec!["label", "y"]);
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
    fn malformed_json_is_a_bad_request() {
        let err = parse_request(b"{\"inputs\": [").unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(err.to_string().starts_with("invalid request body"), "{err}");
    }
}
