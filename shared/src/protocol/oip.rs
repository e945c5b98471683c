//! The Open Inference Protocol (KServe v2) codec: requests are decoded into named tensors
//! (each checked against the model's input as it is read, so errors name the input and what
//! was expected), and inference results are encoded back, in JSON or, where the request asks,
//! with the [`binary`] tensor extension.

use std::collections::HashMap;

use lambda_http::http::{header, HeaderMap};
use lambda_http::{Body, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{binary, json};
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
    /// Absent when the elements are binary (`parameters.binary_data_size`).
    #[serde(default)]
    pub data: Option<Value>,
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
    /// `binary_data_size` for an output sent in binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<OutputParameters>,
    /// Absent for an output sent in binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<TensorData>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputParameters {
    pub binary_data_size: usize,
}

impl From<Tensor> for ResponseOutput {
    fn from(tensor: Tensor) -> Self {
        ResponseOutput {
            datatype: tensor.datatype(),
            name: tensor.name,
            shape: tensor.shape,
            parameters: None,
            data: Some(tensor.data),
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
            extensions: vec![binary::EXTENSION, "statistics"],
        }
    }
}

/// `POST /v2/models/{name}[/versions/{v}]/infer`: decodes the body (a JSON request, or a JSON
/// header and binary tensor data when `Inference-Header-Content-Length` says so), runs it,
/// and answers with the outputs, those asked for in binary after a JSON header.
pub async fn infer(
    predictor: &Predictor,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<Body>, Error> {
    predictor.check_request_size(body.len())?;
    let (header, data) = binary::split(headers, body)?;
    let request = parse_request(header)?;
    let id = request.id.clone();
    let forms = OutputForms::of(&request)?;
    let inference = predictor
        .infer(name, version, |signature| decode_with_binary(request, data, signature))
        .await?;
    encode_response(InferResponse::new(inference, id), &forms)
}

/// Which outputs go in binary: each output's `parameters.binary_data` when given, else the
/// request's `parameters.binary_data_output` (false by default).
#[derive(Debug, Default)]
struct OutputForms {
    default: bool,
    per_output: HashMap<String, bool>,
}

impl OutputForms {
    fn of(request: &InferRequest) -> Result<Self, Error> {
        let flag = |parameters: Option<&Map<String, Value>>, key: &str| match parameters
            .and_then(|p| p.get(key))
        {
            None => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(other) => Err(Error::invalid_request(format!(
                "parameter `{key}` must be true or false, not {other}"
            ))),
        };
        let default = flag(request.parameters.as_ref(), "binary_data_output")?.unwrap_or(false);
        let mut per_output = HashMap::new();
        for output in request.outputs.iter().flatten() {
            if let Some(binary) = flag(output.parameters.as_ref(), "binary_data")? {
                per_output.insert(output.name.clone(), binary);
            }
        }
        Ok(Self { default, per_output })
    }

    fn binary(&self, output: &str) -> bool {
        self.per_output.get(output).copied().unwrap_or(self.default)
    }
}

/// The answer: JSON when every output is in JSON; else the JSON header (binary outputs
/// carrying `binary_data_size` instead of `data`) followed by their elements, as
/// `application/octet-stream` with `Inference-Header-Content-Length`.
fn encode_response(
    mut response: InferResponse,
    forms: &OutputForms,
) -> Result<Response<Body>, Error> {
    let mut data = Vec::new();
    for output in &mut response.outputs {
        if !forms.binary(&output.name) {
            continue;
        }
        if let Some(elements) = output.data.take() {
            output.parameters =
                Some(OutputParameters { binary_data_size: binary::encoded_len(&elements) });
            binary::encode(&elements, &mut data);
        }
    }
    if response.outputs.iter().all(|output| output.parameters.is_none()) {
        return Ok(json_response(200, &response));
    }
    let mut body =
        json::to_vec(&response).map_err(|e| Error::internal("encoding a response", e))?;
    let header_length = body.len();
    body.extend_from_slice(&data);
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(binary::HEADER_LENGTH, header_length)
        .body(Body::Binary(body))
        .map_err(|e| Error::internal("building a response", e))
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

/// Converts a JSON request's inputs to named tensors, each checked against the model's input
/// of that name as it is read; [`Signature::check`] checks the whole request.
pub fn decode(request: InferRequest, signature: &Signature) -> Result<InferenceRequest, Error> {
    decode_with_binary(request, &[], signature)
}

/// [`decode`], with `data` the binary tensor data that followed the JSON header: inputs with
/// `parameters.binary_data_size` take their elements from it in request order, and all of it
/// must be taken.
pub fn decode_with_binary(
    request: InferRequest,
    data: &[u8],
    signature: &Signature,
) -> Result<InferenceRequest, Error> {
    let mut chunks = binary::Chunks::new(data);
    let inputs = request
        .inputs
        .into_iter()
        .map(|input| {
            let spec = signature.input(&input.name)?;
            decode_input(input, spec, &mut chunks)
        })
        .collect::<Result<Vec<_>, _>>()?;
    chunks.finish()?;
    let outputs = request.outputs.map(|outputs| outputs.into_iter().map(|o| o.name).collect());
    Ok(InferenceRequest { inputs, outputs })
}

/// The input's `parameters.binary_data_size`, if it has one.
fn binary_data_size(input: &RequestInput) -> Result<Option<usize>, Error> {
    let Some(size) = input.parameters.as_ref().and_then(|p| p.get("binary_data_size")) else {
        return Ok(None);
    };
    let size = size.as_u64().and_then(|s| usize::try_from(s).ok());
    size.map(Some).ok_or_else(|| {
        Error::invalid_input(&input.name, "binary_data_size must be a non-negative integer")
    })
}

fn decode_input(
    input: RequestInput,
    spec: &TensorSpec,
    chunks: &mut binary::Chunks<'_>,
) -> Result<Tensor, Error> {
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
    let data = match (binary_data_size(&input)?, &input.data) {
        (Some(_), Some(_)) => {
            return Err(bad("has both data and binary_data_size; give one".to_owned()))
        }
        (Some(size), None) => {
            let data = binary::decode(datatype, count, chunks.take(&input.name, size)?);
            return Ok(Tensor { data: data.map_err(bad)?, name: input.name, shape });
        }
        (None, None) => {
            return Err(bad("has neither data (a JSON array) nor binary_data_size".to_owned()))
        }
        (None, Some(data)) => data,
    };
    let Value::Array(data) = data else {
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
                "datatype is FP16 but the model expects FP32",
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

    /// A request of a JSON header and binary data, as tritonclient sends it.
    fn binary_request(header: Value, data: &[u8]) -> (HeaderMap, Vec<u8>) {
        let mut body = header.to_string().into_bytes();
        let mut headers = HeaderMap::new();
        headers.insert(binary::HEADER_LENGTH, body.len().into());
        body.extend_from_slice(data);
        (headers, body)
    }

    fn decode_binary(header: Value, data: &[u8]) -> Result<CheckedRequest, Error> {
        let (headers, body) = binary_request(header, data);
        let (header, data) = binary::split(&headers, &body)?;
        let signature = signature();
        signature.check(decode_with_binary(parse_request(header)?, data, &signature)?)
    }

    #[test]
    fn binary_inputs_decode_to_the_same_tensor_as_json() {
        let floats: Vec<u8> =
            [1.0f32, 2.5, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let binary = decode_binary(
            json!({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}),
            &floats,
        )
        .unwrap();
        let json = decode_json(json!({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2.5, 3, 4]}]})).unwrap();
        assert_eq!(binary, json);
    }

    #[test]
    fn binary_mistakes_are_named() {
        let x = |parameters: Value| json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": parameters}]});
        let cases = [
            (x(json!({"binary_data_size": 8})), &[0u8; 12][..], "4 bytes of binary data follow"),
            (
                x(json!({"binary_data_size": 12})),
                &[0u8; 8][..],
                "binary_data_size is 12 but only 8",
            ),
            (
                x(json!({"binary_data_size": 4})),
                &[0u8; 4][..],
                "4 bytes of binary data are not 2 FP32",
            ),
            (x(json!({"binary_data_size": -4})), &[][..], "must be a non-negative integer"),
            (x(json!({})), &[][..], "has neither data (a JSON array) nor binary_data_size"),
            (
                json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2], "parameters": {"binary_data_size": 8}}]}),
                &[0u8; 8][..],
                "has both data and binary_data_size",
            ),
        ];
        for (header, data, expected) in cases {
            let err = decode_binary(header.clone(), data).unwrap_err();
            assert_eq!(err.status(), 400, "{err}");
            assert!(
                err.to_string().contains(expected),
                "{header}: got {err}, expected {expected:?}"
            );
        }
    }

    fn response() -> InferResponse {
        let outputs = vec![
            Tensor { name: "y".into(), shape: vec![2, 1], data: TensorData::F32(vec![0.5, -1.0]) },
            Tensor { name: "label".into(), shape: vec![2], data: TensorData::I64(vec![3, 4]) },
        ];
        InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: None,
            outputs: outputs.into_iter().map(ResponseOutput::from).collect(),
        }
    }

    fn forms(request: Value) -> OutputForms {
        OutputForms::of(&parse_request(request.to_string().as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn outputs_asked_for_in_binary_follow_the_json_header() {
        let inputs = json!([{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]);
        let forms = forms(
            json!({"inputs": inputs, "outputs": [{"name": "y", "parameters": {"binary_data": true}}, {"name": "label"}]}),
        );
        let response = encode_response(response(), &forms).unwrap();
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/octet-stream");
        let length: usize =
            response.headers()[binary::HEADER_LENGTH].to_str().unwrap().parse().unwrap();
        let body = response.body().as_ref();
        let head: Value = serde_json::from_slice(&body[..length]).unwrap();
        assert_eq!(
            head["outputs"],
            json!([
                {"name": "y", "datatype": "FP32", "shape": [2, 1], "parameters": {"binary_data_size": 8}},
                {"name": "label", "datatype": "INT64", "shape": [2], "data": [3, 4]},
            ])
        );
        assert_eq!(body[length..], [0, 0, 0, 0x3f, 0, 0, 0x80, 0xbf]);
    }

    #[test]
    fn binary_data_output_applies_to_outputs_without_their_own_choice() {
        let inputs = json!([{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]);
        let all = forms(json!({"inputs": inputs, "parameters": {"binary_data_output": true}}));
        assert!(all.binary("y") && all.binary("label"));
        let but_label = forms(
            json!({"inputs": inputs, "parameters": {"binary_data_output": true}, "outputs": [{"name": "label", "parameters": {"binary_data": false}}]}),
        );
        assert!(but_label.binary("y") && !but_label.binary("label"));
        let none = encode_response(response(), &forms(json!({"inputs": inputs}))).unwrap();
        assert_eq!(none.headers()[header::CONTENT_TYPE], "application/json");
        assert!(none.headers().get(binary::HEADER_LENGTH).is_none());
        let request = parse_request(
            json!({"inputs": inputs, "parameters": {"binary_data_output": 1}})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        let err = OutputForms::of(&request).unwrap_err();
        assert!(err.to_string().contains("`binary_data_output` must be true or false"), "{err}");
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        let err = parse_request(b"{\"inputs\": [").unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(err.to_string().starts_with("invalid request body"), "{err}");
    }
}
