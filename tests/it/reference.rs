//! Predictions served by the handler agree with onnxruntime's on the reference models
//! (MLP, CNN, scikit-learn random forests with integer and string labels, FP16, two inputs
//! and two outputs with strings), at batch 1 and batch 8.

use std::collections::BTreeSet;
use std::sync::Arc;

use maas::manifest::Loader;
use maas_tests::{call, cases, fresh_s3_store, model_bytes, predictor, publish, Case};
use serde_json::{json, Value};

/// Largest allowed difference, relative to the reference value (absolute below 1).
pub const TOLERANCE: f64 = 1e-4;

/// `value_info` is what PyTorch's dynamo exporter writes, and `constant_if` has an `If` with a
/// constant condition and branches of different shapes: tract's plain load refuses both
/// (scripts/make_models.py checks that), so they are served through fallback loaders.
/// `two_io` has two inputs and two outputs, `half_plus_two` is TensorFlow Serving's example,
/// `species` has BYTES labels, `half` FP16 tensors and `text_io` a BYTES input.
pub const MODELS: [&str; 10] = [
    "mlp",
    "cnn",
    "forest",
    "value_info",
    "constant_if",
    "two_io",
    "half_plus_two",
    "species",
    "half",
    "text_io",
];

/// The loader validation must find for each model.
fn expected_loader(model: &str) -> Loader {
    match model {
        "value_info" => Loader::IgnoreValueInfo,
        "constant_if" => Loader::FoldConstantIf,
        _ => Loader::Plain,
    }
}

/// Checks one served output against onnxruntime's within [`TOLERANCE`].
pub fn assert_matches_reference(case: &Case, served: &Value) {
    assert_matches_within(case, served, TOLERANCE);
}

/// Checks one served output against onnxruntime's: floats within `tolerance` relative to the
/// reference value (absolute below 1), labels (integers) identical.
pub fn assert_matches_within(case: &Case, served: &Value, tolerance: f64) {
    let outputs = served["outputs"].as_array().unwrap_or_else(|| panic!("no outputs in {served}"));
    assert_eq!(
        outputs.len(),
        case.outputs.len(),
        "{} batch {}: output count",
        case.model,
        case.batch
    );
    for expected in &case.outputs {
        let context = format!("{} batch {} output {}", case.model, case.batch, expected.name);
        let got = outputs
            .iter()
            .find(|o| o["name"] == expected.name.as_str())
            .unwrap_or_else(|| panic!("{context}: missing"));
        assert_eq!(got["datatype"], expected.datatype.as_str(), "{context}: datatype");
        assert_eq!(got["shape"], json!(expected.shape), "{context}: shape");
        if expected.datatype == "BYTES" {
            assert_eq!(got["data"], json!(expected.data), "{context}");
            continue;
        }
        let data: Vec<f64> =
            got["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let want = expected.numbers();
        assert_eq!(data.len(), want.len(), "{context}: element count");
        let exact = expected.datatype.starts_with("INT") || expected.datatype.starts_with("UINT");
        for (i, (&g, &e)) in data.iter().zip(&want).enumerate() {
            let allowed = if exact { 0.0 } else { tolerance * e.abs().max(1.0) };
            assert!((g - e).abs() <= allowed, "{context}[{i}]: served {g}, onnxruntime {e}");
        }
    }
}

/// A predictor over a fresh S3 store with every reference model published as version 1.
/// Serves `case` once and waits until its model has built the plan of the case's batch
/// bucket, so that the requests after it run on that plan: a batch whose bucket has no plan
/// yet runs on another bucket's, whose answer can differ in the last bits.
pub async fn planned_for(predictor: &maas::Predictor, case: &Case) {
    let path = format!("/v2/models/{}/infer", case.model);
    let body = json!({ "inputs": case.inputs }).to_string().into_bytes();
    let (status, answer) = call(predictor, "POST", &path, Some(body)).await;
    assert_eq!(status, 200, "{} batch {}: {answer}", case.model, case.batch);
    let id = maas::names::ModelId::new(case.model.parse().unwrap(), maas::names::Version::MIN);
    predictor.registry().load(&id).await.unwrap().model.wait_for_plans();
}

pub async fn serving_every_reference_model(cache: &tempfile::TempDir) -> maas::Predictor {
    let predictor = predictor(Arc::new(fresh_s3_store().await), cache);
    for model in MODELS {
        publish(&predictor, model, 1, model_bytes(model)).await;
    }
    predictor
}

#[tokio::test(flavor = "multi_thread")]
async fn served_predictions_match_onnxruntime() {
    let store = Arc::new(fresh_s3_store().await);
    let cache = tempfile::tempdir().unwrap();
    let predictor = predictor(store, &cache);
    for model in MODELS {
        let manifest = publish(&predictor, model, 1, model_bytes(model)).await;
        assert_eq!(manifest.loader, expected_loader(model), "{model}");
    }
    let cases = cases();
    let covered: BTreeSet<(String, usize)> =
        cases.iter().map(|c| (c.model.clone(), c.batch)).collect();
    for model in MODELS {
        for batch in [1, 8] {
            assert!(
                covered.contains(&(model.to_owned(), batch)),
                "no reference case for {model} batch {batch}"
            );
        }
    }
    for case in &cases {
        let body = json!({ "id": format!("{}-{}", case.model, case.batch), "inputs": case.inputs });
        let path = format!("/v2/models/{}/versions/1/infer", case.model);
        let (status, served) =
            call(&predictor, "POST", &path, Some(body.to_string().into_bytes())).await;
        assert_eq!(status, 200, "{path}: {served}");
        assert_eq!(served["model_name"], case.model.as_str());
        assert_eq!(served["model_version"], "1");
        assert_eq!(served["id"], format!("{}-{}", case.model, case.batch));
        assert_matches_reference(case, &served);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn published_signature_shows_dynamic_batch_as_minus_one() {
    let store = Arc::new(maas::store::MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let predictor = predictor(store, &cache);
    let manifest = publish(&predictor, "cnn", 1, model_bytes("cnn")).await;
    let input = &manifest.signature.inputs[0];
    assert_eq!((input.name.as_str(), input.shape.as_slice()), ("image", &[-1, 1, 12, 12][..]));
    assert_eq!(manifest.signature.outputs[0].shape, [-1, 10]);
    assert_eq!(manifest.size, model_bytes("cnn").len() as u64);
}
