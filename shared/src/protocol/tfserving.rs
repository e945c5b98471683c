//! TensorFlow Serving's REST API (the KServe V1 shape) as a codec over [`Predictor`]:
//! `:predict` in the row (`instances`) and columnar (`inputs`) forms, model status and model
//! metadata. Its paths are parsed here, since `{name}:predict` is no route pattern.
//!
//! Shapes come from the JSON nesting; the model's signature gives each input's datatype (and
//! checks its rank). BYTES elements are strings or `{"b64": "..."}` objects in requests;
//! in answers, outputs whose name ends in `_bytes` are written as `{"b64": "..."}` (as
//! TensorFlow Serving does), other BYTES outputs as strings. FP16 travels as numbers.

use lambda_http::http::Method;
use lambda_http::{Body, Response};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use super::json::{self, Nested};
use crate::error::Error;
use crate::http::json_response;
use crate::names::{AliasName, ModelName, Version};
use crate::predictor::{Inference, ModelDescription, Predictor};
use crate::signature::{names, InferenceRequest, Signature, TensorSpec};
use crate::tensor::{DataType, Tensor};

/// The one signature an ONNX model has, under TensorFlow's default name.
pub const SIGNATURE: &str = "serving_default";

/// The method of that signature, as TensorFlow names it.
const METHOD_NAME: &str = "tensorflow/serving/predict";

/// Where the API lives; routes hand [`handle`] the rest of the path.
pub const PREFIX: &str = "/v1/models/";

/// What a `/v1/models/...` path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call<'a> {
    pub name: &'a str,
    /// A version number or an alias (`/labels/{label}`), already validated.
    pub version: Option<&'a str>,
    pub verb: Verb,
}

/// The operation of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// `GET /v1/models/{name}[...]`
    Status,
    /// `GET .../metadata`
    Metadata,
    /// `POST ...:predict`
    Predict,
    /// `POST ...:classify`
    Classify,
    /// `POST ...:regress`
    Regress,
}

impl Verb {
    /// The one method the verb answers.
    fn method(self) -> &'static str {
        match self {
            Verb::Status | Verb::Metadata => "GET",
            Verb::Predict | Verb::Classify | Verb::Regress => "POST",
        }
    }
}

/// Parses the part of a path after [`PREFIX`]: `{name}`, then optionally `/versions/{v}` or
/// `/labels/{label}`, then `:predict`, `:classify`, `:regress`, `/metadata` or nothing
/// (status). An unknown shape is a 404 saying what is expected; an invalid model name, a
/// version that is not a number or a label that is not an alias name is a 400.
pub fn parse_path(rest: &str) -> Result<Call<'_>, Error> {
    let (path, verb) = match rest.split_once(':') {
        Some((path, "predict")) => (path, Verb::Predict),
        Some((path, "classify")) => (path, Verb::Classify),
        Some((path, "regress")) => (path, Verb::Regress),
        Some((_, other)) => {
            return Err(Error::NoRoute {
                message: format!(
                    "unknown method `:{other}` in {PREFIX}{rest}: TensorFlow Serving's are \
                     `:predict`, `:classify` and `:regress`"
                ),
            })
        }
        None => match rest.strip_suffix("/metadata") {
            Some(path) => (path, Verb::Metadata),
            None => (rest, Verb::Status),
        },
    };
    let segments: Vec<&str> = path.split('/').collect();
    let version = match segments[..] {
        [_] => None,
        [_, "versions", version] => {
            version.parse::<Version>()?;
            Some(version)
        }
        [_, "labels", label] => {
            label.parse::<AliasName>()?;
            Some(label)
        }
        _ => {
            return Err(Error::NoRoute {
                message: format!(
                    "no route for {PREFIX}{rest}: expected {PREFIX}{{name}}[/versions/{{v}}|\
                     /labels/{{label}}] followed by `:predict`, `/metadata` or nothing"
                ),
            })
        }
    };
    segments[0].parse::<ModelName>()?;
    Ok(Call { name: segments[0], version, verb })
}

/// Answers one request to `/v1/models/{rest}`: parses the path, checks the method, and runs
/// the call.
pub async fn handle(
    predictor: &Predictor,
    method: &Method,
    rest: &str,
    body: &[u8],
) -> Result<Response<Body>, Error> {
    let call = parse_path(rest)?;
    let allowed = call.verb.method();
    if method.as_str() != allowed {
        return Err(Error::MethodNotAllowed {
            method: method.to_string(),
            path: format!("{PREFIX}{rest}"),
            allowed,
        });
    }
    let (name, version) = (call.name, call.version);
    match call.verb {
        Verb::Status => {
            let description = predictor.metadata(name, version).await?;
            Ok(json_response(200, &ModelStatus::from(&description)))
        }
        Verb::Metadata => {
            let description = predictor.metadata(name, version).await?;
            Ok(json_response(200, &ModelMetadata::from(&description)))
        }
        Verb::Predict => Ok(json_response(200, &predict(predictor, name, version, body).await?)),
        Verb::Classify | Verb::Regress => {
            let verb = if call.verb == Verb::Classify { "classify" } else { "regress" };
            Err(Error::Unsupported {
                message: format!(
                    "`:{verb}` needs a tf.Example signature, which ONNX models do not have: \
                     use `:predict`"
                ),
            })
        }
    }
}

/// `POST ...:predict` body.
#[derive(Debug, Clone, Deserialize)]
pub struct PredictRequest {
    #[serde(default)]
    pub signature_name: Option<String>,
    /// The row form: one element per instance.
    #[serde(default)]
    pub instances: Option<Value>,
    /// The columnar form: one tensor, or an object of tensors by input name.
    #[serde(default)]
    pub inputs: Option<Value>,
}

/// The two forms of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Form {
    Rows(Vec<Value>),
    Columns(Value),
}

impl PredictRequest {
    /// The request's form, after checking the signature asked for: ONNX models have only
    /// [`SIGNATURE`] (an empty name means it too).
    pub fn into_form(self) -> Result<Form, Error> {
        if let Some(signature) = self.signature_name.filter(|s| !s.is_empty() && s != SIGNATURE) {
            return Err(Error::invalid_request(format!(
                "signature_name `{signature}` does not exist: ONNX models have one signature, \
                 `{SIGNATURE}`"
            )));
        }
        match (self.instances, self.inputs) {
            (Some(_), Some(_)) => Err(Error::invalid_request(
                "a request has either `instances` (row form) or `inputs` (columnar form), not both",
            )),
            (Some(Value::Array(rows)), None) => Ok(Form::Rows(rows)),
            (Some(_), None) => {
                Err(Error::invalid_request("`instances` must be a list, one element per instance"))
            }
            (None, Some(columns)) => Ok(Form::Columns(columns)),
            (None, None) => Err(Error::invalid_request(
                "missing `instances` (row form) or `inputs` (columnar form)",
            )),
        }
    }
}

/// Parses a request body; any JSON or structure problem is a 400 naming it. Numbers may be
/// `NaN`, `Infinity` and `-Infinity`, as TensorFlow Serving accepts.
pub fn parse_request(body: &[u8]) -> Result<PredictRequest, Error> {
    json::from_slice(body).map_err(|e| Error::invalid_request(format!("invalid request body: {e}")))
}

/// `POST /v1/models/{name}[/versions/{v}|/labels/{label}]:predict`, answered in the form
/// asked.
pub async fn predict(
    predictor: &Predictor,
    name: &str,
    version: Option<&str>,
    body: &[u8],
) -> Result<PredictResponse, Error> {
    predictor.check_request_size(body.len())?;
    let form = parse_request(body)?.into_form()?;
    let rows = match &form {
        Form::Rows(rows) => Some(rows.len()),
        Form::Columns(_) => None,
    };
    let inference = predictor.infer(name, version, |signature| decode(form, signature)).await?;
    PredictResponse::new(inference, rows)
}

/// Converts a request to named tensors, each checked against the model's input of that name
/// as it is read; [`Signature::check`] checks the whole request. Refuses models with outputs
/// this codec cannot write, before running them.
pub fn decode(form: Form, signature: &Signature) -> Result<InferenceRequest, Error> {
    let inputs = match form {
        Form::Rows(rows) => decode_rows(rows, signature)?,
        Form::Columns(columns) => decode_columns(columns, signature)?,
    };
    Ok(InferenceRequest { inputs, outputs: None })
}

/// A `{"b64": "..."}` value: how TensorFlow Serving writes the elements of BYTES tensors,
/// told apart here from an object of named inputs.
pub fn is_b64(value: &Value) -> bool {
    json::b64_text(value).is_some()
}

fn is_b64_map(map: &Map<String, Value>) -> bool {
    map.len() == 1 && map.contains_key("b64")
}

fn is_named(value: &Value) -> bool {
    value.is_object() && !is_b64(value)
}

/// The model's only input, for the forms that do not name inputs.
fn only_input<'s>(signature: &'s Signature, how: &str) -> Result<&'s TensorSpec, Error> {
    match &signature.inputs[..] {
        [spec] => Ok(spec),
        specs => Err(Error::invalid_request(format!(
            "the model has {} inputs ({}): {how}",
            specs.len(),
            names(specs)
        ))),
    }
}

/// The row form: bare values for a one-input model, else objects keyed by input name, each
/// input's values stacked along a new dimension 0 (the instances).
fn decode_rows(rows: Vec<Value>, signature: &Signature) -> Result<Vec<Tensor>, Error> {
    let Some(first) = rows.first() else {
        return Err(Error::invalid_request("`instances` is empty: send at least one instance"));
    };
    if !is_named(first) {
        if let Some(index) = rows.iter().position(is_named) {
            return Err(Error::invalid_request(format!(
                "instance {index} is an object but instance 0 is not: either every instance is \
                 an object keyed by input name, or none is"
            )));
        }
        let spec = only_input(signature, "each instance must be an object keyed by input name")?;
        return Ok(vec![stacked(spec, &rows)?]);
    }
    let first: Vec<String> =
        first.as_object().map(|row| row.keys().cloned().collect()).unwrap_or_default();
    let mut columns: Vec<Vec<Value>> =
        first.iter().map(|_| Vec::with_capacity(rows.len())).collect();
    for (index, row) in rows.into_iter().enumerate() {
        let differs = || {
            Error::invalid_request(format!(
                "instance {index} does not name the same inputs as instance 0 ({}): every \
                 instance gives every input",
                first.iter().map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", ")
            ))
        };
        let Value::Object(mut row) = row else { return Err(differs()) };
        if row.len() != first.len() {
            return Err(differs());
        }
        for (name, column) in first.iter().zip(&mut columns) {
            column.push(row.remove(name).ok_or_else(differs)?);
        }
    }
    first
        .iter()
        .zip(columns)
        .map(|(name, column)| stacked(signature.input(name)?, &column))
        .collect()
}

/// The columnar form: one tensor for a one-input model, else an object of tensors by input
/// name.
fn decode_columns(columns: Value, signature: &Signature) -> Result<Vec<Tensor>, Error> {
    match columns {
        Value::Object(map) if !is_b64_map(&map) => {
            map.into_iter().map(|(name, value)| whole(signature.input(&name)?, value)).collect()
        }
        value => {
            let spec = only_input(signature, "`inputs` must be an object keyed by input name")?;
            Ok(vec![whole(spec, value)?])
        }
    }
}

/// The shape of nested lists, read along their first elements (each level is checked to be
/// regular when its scalars are collected).
fn nested_shape(value: &Value) -> Vec<usize> {
    let mut shape = Vec::new();
    let mut current = value;
    while let Value::Array(items) = current {
        shape.push(items.len());
        match items.first() {
            Some(first) => current = first,
            None => break,
        }
    }
    shape
}

/// One input given as the values of each instance: shape `[instances, ...]`.
fn stacked(spec: &TensorSpec, rows: &[Value]) -> Result<Tensor, Error> {
    let mut shape = vec![rows.len()];
    shape.extend(rows.first().map(nested_shape).unwrap_or_default());
    tensor(spec, rows, shape)
}

/// One input given whole: a nested list, or a scalar (shape `[]`).
fn whole(spec: &TensorSpec, value: Value) -> Result<Tensor, Error> {
    match value {
        Value::Array(items) => {
            let mut shape = vec![items.len()];
            shape.extend(items.first().map(nested_shape).unwrap_or_default());
            tensor(spec, &items, shape)
        }
        Value::Object(_) if !is_b64(&value) => Err(Error::invalid_input(
            &spec.name,
            "is an object; a tensor is a number or nested lists of numbers",
        )),
        scalar => tensor(spec, std::slice::from_ref(&scalar), Vec::new()),
    }
}

/// The values of `data` (nested lists whose shape is `shape`, the outermost list given as a
/// slice) read as the model's datatype for this input.
fn tensor(spec: &TensorSpec, data: &[Value], shape: Vec<usize>) -> Result<Tensor, Error> {
    let bad = |problem: String| Error::invalid_input(&spec.name, problem);
    spec.check_datatype(spec.datatype)?;
    if shape.contains(&0) {
        return Err(bad(format!("shape {shape:?} has an empty dimension")));
    }
    spec.check_shape(&shape)?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} has too many elements")))?;
    let mut leaves = Vec::with_capacity(count.min(1 << 20));
    json::flatten(data, &shape, &mut leaves).map_err(bad)?;
    if leaves.len() != count {
        return Err(bad(format!(
            "shape {shape:?} needs {count} elements but data has {}",
            leaves.len()
        )));
    }
    let values = json::convert(spec.datatype, &leaves).map_err(bad)?;
    Ok(Tensor { name: spec.name.clone(), shape, data: values })
}

/// A `:predict` answer: `{"predictions": ...}` for the row form, `{"outputs": ...}` for the
/// columnar form. With one output its name is left out, as TensorFlow Serving does.
#[derive(Debug)]
pub struct PredictResponse {
    /// The number of instances of a row-form request; `None` for the columnar form.
    rows: Option<usize>,
    outputs: Vec<Tensor>,
}

impl PredictResponse {
    /// The answer to a request of `rows` instances (`None`: columnar). In the row form every
    /// output must have one row per instance.
    pub fn new(inference: Inference, rows: Option<usize>) -> Result<Self, Error> {
        if let Some(rows) = rows {
            if let Some(output) = inference.outputs.iter().find(|o| o.shape.first() != Some(&rows))
            {
                return Err(Error::invalid_request(format!(
                    "output `{}` has shape {:?}, not one row per instance ({rows}): ask in the \
                     columnar form (`inputs`)",
                    output.name, output.shape
                )));
            }
        }
        Ok(PredictResponse { rows, outputs: inference.outputs })
    }
}

impl Serialize for PredictResponse {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        match self.rows {
            Some(count) => {
                map.serialize_entry("predictions", &Rows { outputs: &self.outputs, count })?
            }
            None => map.serialize_entry("outputs", &Columns(&self.outputs))?,
        }
        map.end()
    }
}

/// A tensor as TensorFlow Serving writes it: BYTES outputs named `*_bytes` in base64.
fn nested(tensor: &Tensor) -> Nested<'_> {
    Nested::new(&tensor.data, &tensor.shape, tensor.name.ends_with("_bytes"))
}

/// `predictions`: the one output's rows, or one object per row with every output's row.
struct Rows<'a> {
    outputs: &'a [Tensor],
    count: usize,
}

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if let [only] = self.outputs {
            return nested(only).serialize(serializer);
        }
        let mut seq = serializer.serialize_seq(Some(self.count))?;
        for index in 0..self.count {
            seq.serialize_element(&Row { outputs: self.outputs, index })?;
        }
        seq.end()
    }
}

struct Row<'a> {
    outputs: &'a [Tensor],
    index: usize,
}

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.outputs.len()))?;
        for output in self.outputs {
            map.serialize_entry(&output.name, &nested(output).row(self.index))?;
        }
        map.end()
    }
}

/// `outputs`: the one output, or an object of outputs by name.
struct Columns<'a>(&'a [Tensor]);

impl Serialize for Columns<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if let [only] = self.0 {
            return nested(only).serialize(serializer);
        }
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for output in self.0 {
            map.serialize_entry(&output.name, &nested(output))?;
        }
        map.end()
    }
}

/// `GET /v1/models/{name}[/versions/{v}|/labels/{label}]` answer: every version the request
/// covers is `AVAILABLE` (maas loads a version on its first request).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelStatus {
    pub model_version_status: Vec<VersionStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionStatus {
    /// A string, as protobuf's JSON writes 64-bit integers.
    pub version: String,
    pub state: &'static str,
    pub status: StatusCode,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusCode {
    pub error_code: &'static str,
    pub error_message: &'static str,
}

impl From<&ModelDescription> for ModelStatus {
    fn from(description: &ModelDescription) -> Self {
        let model_version_status = description
            .versions
            .iter()
            .map(|version| VersionStatus {
                version: version.to_string(),
                state: "AVAILABLE",
                status: StatusCode { error_code: "OK", error_message: "" },
            })
            .collect();
        ModelStatus { model_version_status }
    }
}

/// `GET .../metadata` answer: TensorFlow Serving's `GetModelMetadataResponse` with the one
/// signature, [`SIGNATURE`].
#[derive(Debug, Clone, Serialize)]
pub struct ModelMetadata {
    pub model_spec: ModelSpec,
    pub metadata: SignatureDefs,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelSpec {
    pub name: String,
    pub signature_name: &'static str,
    pub version: String,
}

/// `{"signature_def": {"signature_def": {"serving_default": ...}}}`.
#[derive(Debug, Clone, Serialize)]
pub struct SignatureDefs {
    signature_def: SignatureDefMap,
}

#[derive(Debug, Clone, Serialize)]
struct SignatureDefMap {
    signature_def: ServingDefault,
}

#[derive(Debug, Clone, Serialize)]
struct ServingDefault {
    serving_default: SignatureDef,
}

#[derive(Debug, Clone, Serialize)]
struct SignatureDef {
    inputs: TensorInfos,
    outputs: TensorInfos,
    method_name: &'static str,
}

/// Tensors by name, in the model's order.
#[derive(Debug, Clone)]
struct TensorInfos(Vec<TensorSpec>);

impl Serialize for TensorInfos {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for spec in &self.0 {
            map.serialize_entry(&spec.name, &TensorInfo(spec))?;
        }
        map.end()
    }
}

/// `{"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1", "name": ""}],
/// "unknown_rank": false}, "name": ...}`, as TensorFlow Serving writes a `TensorInfo`.
struct TensorInfo<'a>(&'a TensorSpec);

impl Serialize for TensorInfo<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Dim {
            size: String,
            name: &'static str,
        }
        #[derive(Serialize)]
        struct Shape {
            dim: Vec<Dim>,
            unknown_rank: bool,
        }
        let dim = self.0.shape.iter().map(|size| Dim { size: size.to_string(), name: "" });
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("dtype", tf_dtype(self.0.datatype))?;
        map.serialize_entry("tensor_shape", &Shape { dim: dim.collect(), unknown_rank: false })?;
        map.serialize_entry("name", &self.0.name)?;
        map.end()
    }
}

impl From<&ModelDescription> for ModelMetadata {
    fn from(description: &ModelDescription) -> Self {
        let manifest = &description.manifest;
        let signature = SignatureDef {
            inputs: TensorInfos(manifest.signature.inputs.clone()),
            outputs: TensorInfos(manifest.signature.outputs.clone()),
            method_name: METHOD_NAME,
        };
        ModelMetadata {
            model_spec: ModelSpec {
                name: manifest.name.clone(),
                signature_name: "",
                version: manifest.version.to_string(),
            },
            metadata: SignatureDefs {
                signature_def: SignatureDefMap {
                    signature_def: ServingDefault { serving_default: signature },
                },
            },
        }
    }
}

/// TensorFlow's name for a datatype (`DT_FLOAT` for `FP32`).
pub fn tf_dtype(datatype: DataType) -> &'static str {
    match datatype {
        DataType::Bool => "DT_BOOL",
        DataType::U8 => "DT_UINT8",
        DataType::U16 => "DT_UINT16",
        DataType::U32 => "DT_UINT32",
        DataType::U64 => "DT_UINT64",
        DataType::I8 => "DT_INT8",
        DataType::I16 => "DT_INT16",
        DataType::I32 => "DT_INT32",
        DataType::I64 => "DT_INT64",
        DataType::F16 => "DT_HALF",
        DataType::F32 => "DT_FLOAT",
        DataType::F64 => "DT_DOUBLE",
        DataType::Bytes => "DT_STRING",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::CheckedRequest;
    use crate::tensor::TensorData;
    use serde_json::json;

    fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec { name: name.into(), datatype, shape: shape.to_vec() }
    }

    fn one_input() -> Signature {
        Signature {
            inputs: vec![spec("x", DataType::F32, &[-1, 2])],
            outputs: vec![spec("y", DataType::F32, &[-1])],
        }
    }

    fn two_inputs() -> Signature {
        Signature {
            inputs: vec![spec("a", DataType::F32, &[-1, 2]), spec("b", DataType::I64, &[-1])],
            outputs: vec![spec("y", DataType::F32, &[-1, 2]), spec("label", DataType::I64, &[-1])],
        }
    }

    fn decoded(signature: &Signature, body: Value) -> Result<CheckedRequest, Error> {
        let form = parse_request(body.to_string().as_bytes())?.into_form()?;
        signature.check(decode(form, signature)?)
    }

    fn refusal(signature: &Signature, body: Value) -> String {
        let err = decoded(signature, body).unwrap_err();
        assert_eq!(err.status(), 400, "{err}");
        err.to_string()
    }

    #[test]
    fn paths_name_the_model_its_version_or_label_and_the_verb() {
        let cases = [
            ("iris", "iris", None, Verb::Status),
            ("iris/metadata", "iris", None, Verb::Metadata),
            ("iris:predict", "iris", None, Verb::Predict),
            ("iris/versions/3:predict", "iris", Some("3"), Verb::Predict),
            ("iris/labels/prod:classify", "iris", Some("prod"), Verb::Classify),
            ("iris/labels/prod/metadata", "iris", Some("prod"), Verb::Metadata),
            ("iris/versions/12", "iris", Some("12"), Verb::Status),
            ("metadata", "metadata", None, Verb::Status),
            ("iris:regress", "iris", None, Verb::Regress),
        ];
        for (rest, name, version, verb) in cases {
            assert_eq!(parse_path(rest).unwrap(), Call { name, version, verb }, "{rest}");
        }
    }

    #[test]
    fn unknown_paths_are_404_and_bad_names_versions_or_labels_400() {
        let cases = [
            ("iris:explain", 404),
            ("iris/stats", 404),
            ("iris/versions", 404),
            ("iris/versions/1/labels/a", 404),
            ("iris/metadata/x", 404),
            ("iris/versions/prod:predict", 400),
            ("iris/versions/01", 400),
            ("iris/labels/1", 400),
            ("iris/labels/latest", 400),
            (":predict", 400),
        ];
        for (rest, status) in cases {
            let err = parse_path(rest).unwrap_err();
            assert_eq!(err.status(), status, "{rest}: {err}");
        }
    }

    #[test]
    fn bare_instances_stack_along_a_new_first_dimension() {
        let rows = decoded(&one_input(), json!({"instances": [[1, 2], [3, 4.5], [5, 6]]})).unwrap();
        assert_eq!(rows.inputs[0].shape, [3, 2]);
        assert_eq!(rows.inputs[0].data, TensorData::F32(vec![1.0, 2.0, 3.0, 4.5, 5.0, 6.0]));
        let columns = decoded(&one_input(), json!({"inputs": [[1, 2], [3, 4.5], [5, 6]]})).unwrap();
        assert_eq!(rows.inputs, columns.inputs);
        let named = decoded(
            &one_input(),
            json!({"signature_name": "serving_default", "inputs": {"x": [[1, 2]]}}),
        )
        .unwrap();
        assert_eq!(named.inputs[0].shape, [1, 2]);
    }

    #[test]
    fn named_instances_give_each_input_one_row_per_instance() {
        let body = json!({"instances": [{"b": 7, "a": [1, 2]}, {"a": [3, 4], "b": 8}]});
        let checked = decoded(&two_inputs(), body).unwrap();
        assert_eq!(checked.inputs[0].shape, [2, 2]);
        assert_eq!(checked.inputs[1].data, TensorData::I64(vec![7, 8]));
        assert_eq!(checked.outputs, ["y", "label"]);
        let columns =
            decoded(&two_inputs(), json!({"inputs": {"a": [[1, 2], [3, 4]], "b": [7, 8]}}))
                .unwrap();
        assert_eq!(checked.inputs, columns.inputs);
    }

    #[test]
    fn each_mistake_is_named() {
        let one = one_input();
        let two = two_inputs();
        let cases = [
            (&one, json!({"instances": [[1, 2]], "inputs": [[1, 2]]}), "not both"),
            (
                &one,
                json!({"signature_name": "predict_images", "instances": [[1, 2]]}),
                "signature_name `predict_images` does not exist",
            ),
            (&one, json!({}), "missing `instances` (row form) or `inputs` (columnar form)"),
            (&one, json!({"instances": []}), "`instances` is empty"),
            (&one, json!({"instances": {"x": [1, 2]}}), "`instances` must be a list"),
            (&one, json!({"instances": [[1, 2], [3]]}), "nested data has 1 elements at depth 1"),
            (
                &one,
                json!({"instances": [1, 2]}),
                "shape [2] does not match the model's shape [-1, 2]",
            ),
            (&one, json!({"instances": [[1, 2, 3]]}), "shape [1, 3] does not match"),
            (&one, json!({"instances": [[1, "a"]]}), "element 1 (\"a\") is not a valid FP32 value"),
            (&one, json!({"instances": [[]]}), "has an empty dimension"),
            (
                &one,
                json!({"instances": [[1, 2], {"x": [1, 2]}]}),
                "instance 1 is an object but instance 0 is not",
            ),
            (&one, json!({"instances": [{"z": [1, 2]}]}), "input `z`: the model has no such input"),
            (&one, json!({"inputs": {"x": {"y": 1}}}), "input `x`: is an object"),
            (
                &two,
                json!({"instances": [[1, 2]]}),
                "the model has 2 inputs (`a`, `b`): each instance must be an object",
            ),
            (&two, json!({"inputs": [[1, 2]]}), "`inputs` must be an object keyed by input name"),
            (
                &two,
                json!({"instances": [{"a": [1, 2], "b": 1}, {"a": [1, 2]}]}),
                "instance 1 does not name the same inputs",
            ),
            (
                &two,
                json!({"instances": [{"a": [1, 2], "b": 1}, [1, 2]]}),
                "instance 1 does not name the same inputs",
            ),
            (&two, json!({"instances": [{"a": [1, 2]}]}), "input `b`: missing"),
            (
                &two,
                json!({"instances": [{"a": [1, 2], "b": 1.5}]}),
                "element 0 (1.5) is not a valid INT64 value",
            ),
            (&two, json!({"inputs": {"a": [[1, 2]], "b": [1, 2]}}), "batch size 2 differs"),
        ];
        for (signature, body, expected) in cases {
            let message = refusal(signature, body.clone());
            assert!(message.contains(expected), "{body}: got {message:?}, expected {expected:?}");
        }
    }

    #[test]
    fn a_shape_read_from_first_elements_cannot_overflow() {
        // 300^8 elements overflow usize: only the first element of each level is deep.
        let signature = Signature {
            inputs: vec![spec("x", DataType::F32, &[-1; 8])],
            outputs: vec![spec("y", DataType::F32, &[-1])],
        };
        let mut value = json!(vec![0; 300]);
        for _ in 1..8 {
            let mut level = vec![json!(0); 300];
            level[0] = value;
            value = Value::Array(level);
        }
        let message = refusal(&signature, json!({ "inputs": value }));
        assert!(message.contains("has too many elements"), "{message}");
    }

    #[test]
    fn bytes_read_strings_and_b64_and_write_b64_for_bytes_named_outputs() {
        let mut strings = one_input();
        strings.inputs[0].datatype = DataType::Bytes;
        strings.inputs[0].shape = vec![-1];
        let request = decoded(&strings, json!({"instances": [{"b64": "aGk="}, "yo"]})).unwrap();
        assert_eq!(request.inputs[0].data, TensorData::Bytes(vec![b"hi".to_vec(), b"yo".to_vec()]));
        let message = refusal(&strings, json!({"instances": [{"b64": "!!"}]}));
        assert!(message.contains("not valid base64"), "{message}");
        let data = TensorData::Bytes(vec![vec![0xff, 0x00], b"ok".to_vec()]);
        let encoded = Tensor { name: "image_bytes".into(), shape: vec![2], data: data.clone() };
        let text = Tensor { name: "label".into(), shape: vec![2], data };
        let written = json::to_vec(&Columns(&[encoded, text])).unwrap();
        let written = String::from_utf8(written).unwrap();
        let expected = "{\"image_bytes\":[{\"b64\":\"/wA=\"},{\"b64\":\"b2s=\"}],\"label\":[\"\u{fffd}\\u0000\",\"ok\"]}";
        assert_eq!(written, expected);
    }

    fn tensor(name: &str, shape: &[usize], data: TensorData) -> Tensor {
        Tensor { name: name.into(), shape: shape.to_vec(), data }
    }

    fn answer(outputs: Vec<Tensor>, rows: Option<usize>) -> Result<String, Error> {
        let inference = Inference {
            model: crate::names::ModelId::new("m".parse().unwrap(), Version::MIN),
            outputs,
            timings: Default::default(),
        };
        let response = PredictResponse::new(inference, rows)?;
        Ok(String::from_utf8(json::to_vec(&response).unwrap()).unwrap())
    }

    #[test]
    fn one_output_leaves_its_name_out_and_several_are_named() {
        let y = || tensor("y", &[2, 2], TensorData::F32(vec![0.5, 1.0, f32::NAN, 2.0]));
        let label = || tensor("label", &[2], TensorData::I64(vec![1, 0]));
        assert_eq!(answer(vec![y()], Some(2)).unwrap(), r#"{"predictions":[[0.5,1.0],[NaN,2.0]]}"#);
        assert_eq!(answer(vec![y()], None).unwrap(), r#"{"outputs":[[0.5,1.0],[NaN,2.0]]}"#);
        assert_eq!(
            answer(vec![y(), label()], Some(2)).unwrap(),
            r#"{"predictions":[{"y":[0.5,1.0],"label":1},{"y":[NaN,2.0],"label":0}]}"#
        );
        assert_eq!(
            answer(vec![y(), label()], None).unwrap(),
            r#"{"outputs":{"y":[[0.5,1.0],[NaN,2.0]],"label":[1,0]}}"#
        );
        let scalar = tensor("total", &[], TensorData::F64(vec![3.5]));
        assert_eq!(answer(vec![scalar.clone()], None).unwrap(), r#"{"outputs":3.5}"#);
        let err = answer(vec![scalar], Some(2)).unwrap_err();
        assert!(err.to_string().contains("not one row per instance (2)"), "{err}");
    }

    #[test]
    fn metadata_uses_tensorflow_dtypes_and_dimension_sizes_as_strings() {
        let info = json::to_vec(&TensorInfos(vec![spec("x", DataType::F64, &[-1, 4])])).unwrap();
        let expected = json!({"x": {"dtype": "DT_DOUBLE", "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "4", "name": ""}], "unknown_rank": false}, "name": "x"}});
        assert_eq!(serde_json::from_slice::<Value>(&info).unwrap(), expected);
        assert_eq!(tf_dtype(DataType::I64), "DT_INT64");
        assert_eq!(tf_dtype(DataType::Bytes), "DT_STRING");
    }
}
