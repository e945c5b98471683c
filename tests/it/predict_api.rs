//! The predict HTTP API on the example store: server and model metadata, health, readiness,
//! and a prediction from the example model shipped in the repository.

use std::sync::Arc;

use maas::store::LocalStore;
use maas_tests::{call, predictor, repo_root};
use serde_json::{json, Value};

fn example(cache: &tempfile::TempDir) -> maas::Predictor {
    predictor(Arc::new(LocalStore::new(repo_root().join("scripts/example-store"))), cache)
}

/// The two rows of the README example: a setosa and a virginica from the iris data set.
pub fn readme_request() -> Value {
    json!({"inputs": [{"name": "float_input", "shape": [2, 4], "datatype": "FP32", "data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}]})
}

/// The example iris classifier must give the true species (0 setosa, 2 virginica) and
/// probabilities that sum to one and agree with the label.
pub fn assert_iris_answer(served: &Value) {
    let outputs = served["outputs"].as_array().unwrap();
    let label = outputs.iter().find(|o| o["name"] == "label").expect("label output");
    assert_eq!(label["datatype"], "INT64");
    assert_eq!(label["shape"], json!([2]));
    assert_eq!(label["data"], json!([0, 2]));
    let probabilities =
        outputs.iter().find(|o| o["name"] == "probabilities").expect("probabilities output");
    assert_eq!(probabilities["shape"], json!([2, 3]));
    let p: Vec<f64> =
        probabilities["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for (row, label) in p.chunks(3).zip([0usize, 2]) {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{row:?}");
        let argmax = (0..3).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        assert_eq!(argmax, label, "{row:?}");
    }
}

/// The README's two rows in TensorFlow Serving's row form.
pub fn readme_rows() -> Value {
    json!({"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]})
}

/// The example classifier's answer to [`readme_rows`]: one object per row with both
/// outputs, the same numbers as the Open Inference Protocol answer.
pub fn assert_iris_rows(served: &Value) {
    let rows = served["predictions"].as_array().unwrap_or_else(|| panic!("{served}"));
    assert_eq!(rows.len(), 2, "{served}");
    let outputs = ["label", "probabilities"].map(|name| {
        let data: Vec<Value> = rows
            .iter()
            .flat_map(|row| match &row[name] {
                Value::Array(items) => items.clone(),
                scalar => vec![scalar.clone()],
            })
            .collect();
        let shape = if name == "label" { json!([2]) } else { json!([2, 3]) };
        let datatype = if name == "label" { "INT64" } else { "FP32" };
        json!({"name": name, "datatype": datatype, "shape": shape, "data": data})
    });
    assert_iris_answer(&json!({ "outputs": outputs }));
}

#[tokio::test(flavor = "multi_thread")]
async fn example_model_predicts_the_true_species() {
    let cache = tempfile::tempdir().unwrap();
    let predictor = example(&cache);
    let (status, served) = call(
        &predictor,
        "POST",
        "/v2/models/iris/infer",
        Some(readme_request().to_string().into_bytes()),
    )
    .await;
    assert_eq!(status, 200, "{served}");
    assert_eq!(served["model_name"], "iris");
    assert_eq!(served["model_version"], "1");
    assert_iris_answer(&served);
    // Asking for one output returns only that one.
    let mut request = readme_request();
    request["outputs"] = json!([{"name": "label"}]);
    let (status, served) = call(
        &predictor,
        "POST",
        "/v2/models/iris/versions/1/infer",
        Some(request.to_string().into_bytes()),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(served["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(served["outputs"][0]["data"], json!([0, 2]));
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_describes_the_model_with_dynamic_dimensions_as_minus_one() {
    let cache = tempfile::tempdir().unwrap();
    let predictor = example(&cache);
    for path in ["/v2/models/iris", "/v2/models/iris/versions/1", "/v2/models/iris/"] {
        let (status, metadata) = call(&predictor, "GET", path, None).await;
        assert_eq!(status, 200, "{path}: {metadata}");
        assert_eq!(metadata["name"], "iris");
        assert_eq!(metadata["versions"], json!(["1"]));
        assert_eq!(metadata["platform"], "onnx_onnxv1");
        assert_eq!(
            metadata["inputs"],
            json!([{"name": "float_input", "datatype": "FP32", "shape": [-1, 4]}])
        );
        assert_eq!(
            metadata["outputs"],
            json!([{"name": "label", "datatype": "INT64", "shape": [-1]}, {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}])
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness() {
    let cache = tempfile::tempdir().unwrap();
    let predictor = example(&cache);
    assert_eq!(
        call(&predictor, "GET", "/v2/health/live", None).await,
        (200, json!({"live": true}))
    );
    assert_eq!(
        call(&predictor, "GET", "/v2/health/ready", None).await,
        (200, json!({"ready": true}))
    );
    let (status, server) = call(&predictor, "GET", "/v2", None).await;
    assert_eq!(status, 200);
    assert_eq!(server["name"], "maas");
    let id =
        maas::names::ModelId::new("iris".parse().unwrap(), maas::names::Version::new(1).unwrap());
    assert!(!predictor.registry().is_loaded(&id).await);
    let (status, ready) = call(&predictor, "GET", "/v2/models/iris/ready", None).await;
    assert_eq!((status, ready), (200, json!({"name": "iris", "version": "1", "ready": true})));
    assert!(predictor.registry().is_loaded(&id).await, "readiness did not load the model");
    assert_eq!(call(&predictor, "GET", "/v2/models/iris/versions/1/ready", None).await.0, 200);
    assert_eq!(call(&predictor, "GET", "/v2/models/rose/ready", None).await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn example_manifest_matches_what_the_registry_computes() {
    // The committed manifest was written by the Python script; the registry computes its
    // own from the same file. Two implementations must agree.
    let dir = repo_root().join("scripts/example-store/models/iris/1");
    let committed: maas::manifest::Manifest =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let store = Arc::new(maas::store::MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(dir.join("model.onnx")).unwrap();
    let computed = maas_tests::publish(&predictor(store, &cache), "iris", 1, bytes.into()).await;
    assert_eq!(computed.sha256, committed.sha256);
    assert_eq!(computed.size, committed.size);
    assert_eq!(computed.signature, committed.signature);
}

fn sample_event(name: &str) -> Value {
    let path = repo_root().join("tests/events").join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs an API Gateway HTTP API (payload 2.0) event through lambda_http's own decoding, as
/// the Lambda runtime does, then through the handler.
async fn call_with_event(predictor: &maas::Predictor, event: &Value) -> (u16, Value) {
    let request =
        lambda_http::request::from_str(&event.to_string()).expect("a valid API Gateway event");
    let response = predict::handler::handle(predictor, request).await;
    (response.status().as_u16(), serde_json::from_slice(response.body().as_ref()).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn sample_api_gateway_events_are_served() {
    use base64::Engine as _;
    let cache = tempfile::tempdir().unwrap();
    let predictor = example(&cache);
    let (status, served) = call_with_event(&predictor, &sample_event("predict-infer.json")).await;
    assert_eq!(status, 200, "{served}");
    assert_iris_answer(&served);

    // API Gateway base64-encodes bodies it considers binary; the answer is the same.
    let mut encoded = sample_event("predict-infer.json");
    let body = encoded["body"].as_str().unwrap().to_owned();
    encoded["body"] = json!(base64::engine::general_purpose::STANDARD.encode(body));
    encoded["isBase64Encoded"] = json!(true);
    let (status, served) = call_with_event(&predictor, &encoded).await;
    assert_eq!(status, 200, "{served}");
    assert_iris_answer(&served);

    let (status, metadata) =
        call_with_event(&predictor, &sample_event("predict-metadata.json")).await;
    assert_eq!((status, metadata["name"].clone()), (200, json!("iris")));
    let (status, rows) =
        call_with_event(&predictor, &sample_event("predict-tf-predict.json")).await;
    assert_eq!(status, 200, "{rows}");
    assert_iris_rows(&rows);
    let (status, health) = call_with_event(&predictor, &sample_event("predict-health.json")).await;
    assert_eq!((status, health), (200, json!({"ready": true})));
}
