//! TensorFlow Serving's REST API: the same model answers a row request (`instances`), a
//! columnar request (`inputs`) and an Open Inference Protocol request with the same numbers,
//! which agree with onnxruntime's (a two-input two-output model included); TensorFlow
//! Serving's documented `half_plus_two` exchange byte for byte; status and metadata in
//! TensorFlow Serving's shape; and every error status of the `/v1` routes.

use std::sync::Arc;

use maas::names::{ModelId, Version};
use maas::store::{MemoryStore, ObjectStore};
use maas_tests::{
    call, cases, model_bytes, predictor, publish, request, s3_store_via, writer, Case,
};
use serde_json::{json, Value};

use crate::reference::{assert_matches_reference, planned_for, serving_every_reference_model};

/// Flat row-major `data` as nested lists following `shape` (a scalar for `[]`).
pub fn nest(data: &[Value], shape: &[usize]) -> Value {
    match shape.split_first() {
        None => data[0].clone(),
        Some((&len, inner)) => {
            let stride = inner.iter().product::<usize>();
            Value::Array(
                (0..len).map(|i| nest(&data[i * stride..(i + 1) * stride], inner)).collect(),
            )
        }
    }
}

/// The shape of nested lists and their scalars, row-major.
fn unnest(value: &Value) -> (Vec<usize>, Vec<Value>) {
    fn walk(value: &Value, depth: usize, shape: &mut Vec<usize>, out: &mut Vec<Value>) {
        match value {
            Value::Array(items) => {
                if shape.len() == depth {
                    shape.push(items.len());
                }
                assert_eq!(shape[depth], items.len(), "ragged output {value}");
                items.iter().for_each(|item| walk(item, depth + 1, shape, out));
            }
            scalar => out.push(scalar.clone()),
        }
    }
    let (mut shape, mut out) = (Vec::new(), Vec::new());
    walk(value, 0, &mut shape, &mut out);
    (shape, out)
}

/// A case's inputs as (name, nested tensor).
fn nested_inputs(case: &Case) -> Vec<(String, Value)> {
    case.inputs
        .iter()
        .map(|input| {
            let shape: Vec<usize> = serde_json::from_value(input["shape"].clone()).unwrap();
            (
                input["name"].as_str().unwrap().to_owned(),
                nest(input["data"].as_array().unwrap(), &shape),
            )
        })
        .collect()
}

/// `{"instances": ...}`: bare rows for a one-input model, else one object per row.
pub fn row_request(case: &Case) -> Value {
    let inputs = nested_inputs(case);
    if let [(_, tensor)] = &inputs[..] {
        return json!({ "instances": tensor });
    }
    let rows = (0..case.batch)
        .map(|row| {
            inputs.iter().map(|(name, tensor)| (name.clone(), tensor[row].clone())).collect()
        })
        .collect::<Vec<serde_json::Map<String, Value>>>();
    json!({ "instances": rows })
}

/// `{"inputs": ...}`: the tensor for a one-input model, else an object of tensors.
fn column_request(case: &Case) -> Value {
    let inputs = nested_inputs(case);
    if let [(_, tensor)] = &inputs[..] {
        return json!({ "inputs": tensor });
    }
    json!({ "inputs": inputs.into_iter().collect::<serde_json::Map<String, Value>>() })
}

/// A TensorFlow Serving answer, given each output's nested value, in the Open Inference
/// Protocol's shape (the datatype, which TensorFlow Serving does not write, from the case).
fn as_oip(case: &Case, tensors: impl Fn(&str) -> Value) -> Value {
    let outputs: Vec<Value> = case
        .outputs
        .iter()
        .map(|expected| {
            let (shape, data) = unnest(&tensors(&expected.name));
            json!({"name": expected.name, "datatype": expected.datatype, "shape": shape, "data": data})
        })
        .collect();
    json!({ "outputs": outputs })
}

/// The outputs of a row answer, each as one nested tensor.
fn from_rows(case: &Case, answer: &Value) -> Value {
    let predictions = answer["predictions"].as_array().unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(predictions.len(), case.batch, "{answer}");
    as_oip(case, |name| {
        if case.outputs.len() == 1 {
            return Value::Array(predictions.clone());
        }
        Value::Array(predictions.iter().map(|row| row[name].clone()).collect())
    })
}

/// The outputs of a columnar answer.
fn from_columns(case: &Case, answer: &Value) -> Value {
    let outputs = &answer["outputs"];
    as_oip(
        case,
        |name| if case.outputs.len() == 1 { outputs.clone() } else { outputs[name].clone() },
    )
}

/// Every output's data and shape, by name, from an answer in the OIP shape.
fn numbers(answer: &Value) -> Vec<(String, Value, Value)> {
    let mut outputs: Vec<_> = answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["name"].as_str().unwrap().to_owned(), o["shape"].clone(), o["data"].clone()))
        .collect();
    outputs.sort_by(|a, b| a.0.cmp(&b.0));
    outputs
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_columns_and_the_open_inference_protocol_give_the_same_numbers() {
    let cache = tempfile::tempdir().unwrap();
    let predictor = serving_every_reference_model(&cache).await;
    let cases = cases();
    assert!(cases
        .iter()
        .any(|c| c.model == "two_io" && c.inputs.len() == 2 && c.outputs.len() == 2));
    for case in &cases {
        let context = format!("{} batch {}", case.model, case.batch);
        let oip_path = format!("/v2/models/{}/infer", case.model);
        let body = json!({ "inputs": case.inputs }).to_string().into_bytes();
        planned_for(&predictor, case).await;
        let (status, oip) = call(&predictor, "POST", &oip_path, Some(body)).await;
        assert_eq!(status, 200, "{context}: {oip}");
        assert_matches_reference(case, &oip);

        type Reader = fn(&Case, &Value) -> Value;
        let forms: [(&str, String, Value, Reader); 2] = [
            (
                "rows",
                format!("/v1/models/{}/versions/1:predict", case.model),
                row_request(case),
                from_rows,
            ),
            (
                "columns",
                format!("/v1/models/{}:predict", case.model),
                column_request(case),
                from_columns,
            ),
        ];
        for (form, path, body, read) in forms {
            let (status, answer) =
                call(&predictor, "POST", &path, Some(body.to_string().into_bytes())).await;
            assert_eq!(status, 200, "{context} {form}: {answer}");
            let served = read(case, &answer);
            assert_matches_reference(case, &served);
            assert_eq!(numbers(&served), numbers(&oip), "{context}: {form} differ from OIP");
        }
    }
}

/// The raw status and body of a call.
async fn raw(predictor: &maas::Predictor, method: &str, path: &str, body: &str) -> (u16, String) {
    let body = (!body.is_empty()).then(|| body.as_bytes().to_vec());
    let response = predict::handler::handle(predictor, request(method, path, body)).await;
    let status = response.status().as_u16();
    (status, String::from_utf8(response.body().to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn half_plus_two_answers_as_tensorflow_serving_documents() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let predictor = predictor(store, &cache);
    publish(&predictor, "half_plus_two", 1, model_bytes("half_plus_two")).await;
    let path = "/v1/models/half_plus_two:predict";
    assert_eq!(
        raw(&predictor, "POST", path, r#"{"instances": [1.0, 2.0, 5.0]}"#).await,
        (200, r#"{"predictions":[2.5,3.0,4.5]}"#.to_owned())
    );
    assert_eq!(
        raw(
            &predictor,
            "POST",
            path,
            r#"{"signature_name": "serving_default", "inputs": [1.0, 2.0, 5.0]}"#
        )
        .await,
        (200, r#"{"outputs":[2.5,3.0,4.5]}"#.to_owned())
    );
    // NaN and the infinities go in and come out as the bare tokens TensorFlow Serving uses.
    assert_eq!(
        raw(&predictor, "POST", path, r#"{"instances": [NaN, Infinity, -Infinity]}"#).await,
        (200, r#"{"predictions":[NaN,Infinity,-Infinity]}"#.to_owned())
    );
    assert_eq!(
        raw(&predictor, "GET", "/v1/models/half_plus_two", "").await,
        (
            200,
            r#"{"model_version_status":[{"version":"1","state":"AVAILABLE","status":{"error_code":"OK","error_message":""}}]}"#
                .to_owned()
        )
    );
    let (status, metadata) =
        call(&predictor, "GET", "/v1/models/half_plus_two/metadata", None).await;
    assert_eq!(status, 200, "{metadata}");
    let tensor = |name: &str| json!({name: {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1", "name": ""}], "unknown_rank": false}, "name": name}});
    assert_eq!(
        metadata,
        json!({
            "model_spec": {"name": "half_plus_two", "signature_name": "", "version": "1"},
            "metadata": {"signature_def": {"signature_def": {"serving_default": {
                "inputs": tensor("x"),
                "outputs": tensor("y"),
                "method_name": "tensorflow/serving/predict"
            }}}}
        })
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_metadata_cover_versions_and_labels() {
    let store = Arc::new(MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let predictor = predictor(store, &cache);
    publish(&predictor, "two_io", 1, model_bytes("two_io")).await;
    publish(&predictor, "two_io", 2, model_bytes("two_io")).await;
    let name = "two_io".parse().unwrap();
    writer(&predictor).set_alias(&name, &"prod".parse().unwrap(), Version::MIN).await.unwrap();
    let versions = |status: &Value| -> Vec<Value> {
        status["model_version_status"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].clone())
            .collect()
    };
    let (status, all) = call(&predictor, "GET", "/v1/models/two_io", None).await;
    assert_eq!((status, versions(&all)), (200, vec![json!("1"), json!("2")]), "{all}");
    let (_, one) = call(&predictor, "GET", "/v1/models/two_io/versions/2", None).await;
    assert_eq!(versions(&one), [json!("2")]);
    let (_, label) = call(&predictor, "GET", "/v1/models/two_io/labels/prod/", None).await;
    assert_eq!(versions(&label), [json!("1")]);

    let (status, metadata) =
        call(&predictor, "GET", "/v1/models/two_io/labels/prod/metadata", None).await;
    assert_eq!(status, 200, "{metadata}");
    assert_eq!(metadata["model_spec"]["version"], "1");
    let signature = &metadata["metadata"]["signature_def"]["signature_def"]["serving_default"];
    assert_eq!(
        signature["inputs"]["b"]["tensor_shape"]["dim"],
        json!([{"size": "-1", "name": ""}, {"size": "2", "name": ""}])
    );
    assert_eq!(signature["outputs"]["label"]["dtype"], "DT_INT64");
    assert_eq!(signature["outputs"]["y"]["dtype"], "DT_FLOAT");
    let (_, latest) = call(&predictor, "GET", "/v1/models/two_io/metadata", None).await;
    assert_eq!(latest["model_spec"]["version"], "2");

    // A label serves the version it points to.
    let case = cases().into_iter().find(|c| c.model == "two_io" && c.batch == 8).unwrap();
    let body = row_request(&case).to_string().into_bytes();
    let (status, answer) =
        call(&predictor, "POST", "/v1/models/two_io/labels/prod:predict", Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_matches_reference(&case, &from_rows(&case, &answer));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_error_status_of_the_tensorflow_serving_routes() {
    let store = Arc::new(MemoryStore::new());
    let broken = ModelId::new("broken".parse().unwrap(), Version::MIN);
    store.put(&broken.manifest_key(), "{\"name\":".into()).await.unwrap();
    let cache = tempfile::tempdir().unwrap();
    let predictor = predictor(store, &cache);
    publish(&predictor, "two_io", 1, model_bytes("two_io")).await;
    let predict = "/v1/models/two_io:predict";
    let oversized = format!("{{\"instances\": [{}]}}", " ".repeat(6 << 20));
    publish(&predictor, "half_plus_two", 1, model_bytes("half_plus_two")).await;
    let over_batch = format!("{{\"instances\": [{}1]}}", "1, ".repeat(4096));
    let cases: Vec<(&str, &str, &str, u16, &str)> = vec![
        ("POST", predict, "{", 400, "invalid request body"),
        ("POST", predict, r#"{"instances": [], "inputs": []}"#, 400, "not both"),
        (
            "POST",
            predict,
            r#"{"signature_name": "classify", "instances": [1]}"#,
            400,
            "signature_name `classify` does not exist",
        ),
        (
            "POST",
            predict,
            r#"{"instances": [[1, 2, 3]]}"#,
            400,
            "each instance must be an object keyed by input name",
        ),
        (
            "POST",
            predict,
            r#"{"instances": [{"a": [1, 2, 3], "b": [1]}]}"#,
            400,
            "input `b`: shape [1, 1] does not match the model's shape [-1, 2]",
        ),
        ("POST", predict, r#"{"inputs": {"a": [[1, 2, 3]]}}"#, 400, "input `b`: missing"),
        ("POST", "/v1/models/two_io/versions/x:predict", "{}", 400, "invalid model version \"x\""),
        ("POST", "/v1/models/Bad!:predict", "{}", 400, "invalid model name"),
        ("POST", "/v1/models/rose:predict", r#"{"instances": [1]}"#, 404, "model `rose` not found"),
        (
            "POST",
            "/v1/models/two_io/versions/7:predict",
            r#"{"instances": [1]}"#,
            404,
            "has no version 7",
        ),
        (
            "POST",
            "/v1/models/two_io/labels/prod:predict",
            r#"{"instances": [1]}"#,
            404,
            "has no alias `prod`",
        ),
        ("GET", "/v1/models/rose", "", 404, "model `rose` not found"),
        ("GET", "/v1/models/two_io/stats", "", 404, "no route for /v1/models/two_io/stats"),
        ("POST", "/v1/models/two_io:explain", "{}", 404, "unknown method `:explain`"),
        ("GET", "/v1/models", "", 404, "no route"),
        ("GET", predict, "", 405, "GET is not allowed on /v1/models/two_io:predict; use POST"),
        ("POST", "/v1/models/two_io/metadata", "{}", 405, "use GET"),
        ("POST", predict, &oversized, 413, "over the limit"),
        ("POST", "/v1/models/half_plus_two:predict", &over_batch, 413, "MAAS_MAX_BATCH"),
        (
            "GET",
            "/v1/models/broken/versions/1/metadata",
            "",
            500,
            "model `broken` version 1 cannot be served",
        ),
        (
            "POST",
            "/v1/models/two_io:classify",
            "{}",
            501,
            "`:classify` needs a tf.Example signature",
        ),
        ("POST", "/v1/models/two_io:regress", "{}", 501, "ONNX models do not have"),
    ];
    for (method, path, body, status, message) in cases {
        let (got, answer) = raw(&predictor, method, path, body).await;
        let answer: Value = serde_json::from_str(&answer).unwrap();
        let error = answer["error"].as_str().unwrap_or_else(|| panic!("{path}: {answer}"));
        assert_eq!(got, status, "{method} {path}: {error}");
        assert!(error.contains(message), "{method} {path}: {error:?} lacks {message:?}");
    }
    let response = predict::handler::handle(&predictor, request("GET", predict, None)).await;
    assert_eq!(response.headers()["allow"], "POST");

    // A store that cannot be reached: 503 with Retry-After.
    let settings = maas::store::S3Settings {
        force_path_style: true,
        max_attempts: 2,
        initial_backoff: std::time::Duration::from_millis(10),
        ..maas::store::S3Settings::default()
    };
    let closed = format!("http://127.0.0.1:{}", crate::lambda_emulator::free_port());
    let unreachable = s3_store_via(&closed, "nowhere", &settings).await;
    let cache = tempfile::tempdir().unwrap();
    let offline = maas_tests::predictor(Arc::new(unreachable), &cache);
    let response =
        predict::handler::handle(&offline, request("GET", "/v1/models/two_io/metadata", None))
            .await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
}
