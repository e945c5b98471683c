//! What one request may ask for and what the environment reports: batch and element limits,
//! responses too large for Lambda, and the statistics extension's counters.

use std::sync::Arc;

use maas::predictor::RequestLimits;
use maas::store::LocalStore;
use maas::{Predictor, Registry};
use maas_tests::{cache_settings, call, repo_root};
use serde_json::{json, Value};

use crate::processes;

fn example_store() -> Arc<LocalStore> {
    Arc::new(LocalStore::new(repo_root().join("scripts/example-store")))
}

fn iris_rows(rows: usize) -> Vec<u8> {
    let data: Vec<[f32; 4]> =
        (0..rows).map(|i| [5.1, 3.5, 1.4, 0.2 + (i % 7) as f32 * 0.1]).collect();
    json!({"inputs": [{"name": "float_input", "shape": [rows, 4], "datatype": "FP32", "data": data}]})
        .to_string()
        .into_bytes()
}

fn error_of(status: u16, body: &Value, expected_status: u16, needle: &str) {
    assert_eq!(status, expected_status, "{body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{message:?} should contain {needle:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_and_element_counts_over_their_limits_are_413_naming_the_variable() {
    let cache = tempfile::tempdir().unwrap();
    let registry = Arc::new(Registry::new(example_store(), &cache_settings(cache.path())));
    let limits = RequestLimits { max_request_bytes: 1 << 20, max_batch: 3, max_elements: 12 };
    let predictor = Predictor::new(registry, limits);
    let path = "/v2/models/iris/infer";
    let (status, body) = call(&predictor, "POST", path, Some(iris_rows(3))).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(&predictor, "POST", path, Some(iris_rows(4))).await;
    error_of(
        status,
        &body,
        413,
        "the batch size (rows) is 4, over the limit of 3 (MAAS_MAX_BATCH)",
    );
    let limits = RequestLimits { max_batch: 100, ..limits };
    let registry = Arc::new(Registry::new(example_store(), &cache_settings(cache.path())));
    let predictor = Predictor::new(registry, limits);
    let (status, body) = call(&predictor, "POST", path, Some(iris_rows(4))).await;
    error_of(status, &body, 413, "input elements is 16, over the limit of 12 (MAAS_MAX_ELEMENTS)");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_too_large_for_lambda_is_413_pointing_to_batch_predict() {
    let cache = tempfile::tempdir().unwrap();
    let store = repo_root().join("scripts/example-store");
    // Room for a few rows of iris's answer, not for 200.
    let server = processes::start(
        &["--store", store.to_str().unwrap()],
        &[("MAAS_MAX_RESPONSE_BYTES", "2000")],
        &cache,
    )
    .await;
    let path = "/v2/models/iris/infer";
    let (status, body) =
        maas_tests::http_request(&server.addr, "POST", path, &[], &iris_rows(2)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, body) =
        maas_tests::http_request(&server.addr, "POST", path, &[], &iris_rows(200)).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    error_of(status, &body, 413, "over the limit of 2000 bytes of a synchronous invocation");
    assert!(body["error"].as_str().unwrap().contains("batch-predict"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn statistics_count_successes_failures_and_batch_sizes_per_version() {
    let cache = tempfile::tempdir().unwrap();
    let predictor = maas_tests::predictor(example_store(), &cache);
    let (_, server) = call(&predictor, "GET", "/v2", None).await;
    assert!(server["extensions"].as_array().unwrap().contains(&json!("statistics")), "{server}");
    let (status, before) = call(&predictor, "GET", "/v2/models/iris/stats", None).await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(before["model_stats"][0]["inference_count"], 0, "{before}");

    let path = "/v2/models/iris/infer";
    for rows in [2, 1, 2] {
        let (status, body) = call(&predictor, "POST", path, Some(iris_rows(rows))).await;
        assert_eq!(status, 200, "{body}");
    }
    let wrong = json!({"inputs": [{"name": "float_input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]});
    let (status, _) = call(&predictor, "POST", path, Some(wrong.to_string().into_bytes())).await;
    assert_eq!(status, 400);

    let (status, stats) = call(&predictor, "GET", "/v2/models/iris/versions/1/stats", None).await;
    assert_eq!(status, 200, "{stats}");
    let iris = &stats["model_stats"][0];
    assert_eq!((iris["name"].as_str(), iris["version"].as_str()), (Some("iris"), Some("1")));
    assert_eq!(iris["inference_count"], 5, "{iris}");
    assert_eq!(iris["execution_count"], 3, "{iris}");
    let inference = &iris["inference_stats"];
    assert_eq!(inference["success"]["count"], 3, "{iris}");
    assert_eq!(inference["fail"]["count"], 1, "{iris}");
    for step in ["success", "compute_infer"] {
        assert!(inference[step]["ns"].as_u64().unwrap() > 0, "{step}: {iris}");
    }
    let sizes: Vec<(u64, u64)> = iris["batch_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["batch_size"].as_u64().unwrap(), b["compute_infer"]["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(sizes, [(1, 1), (2, 2)]);
    assert!(iris["last_inference"].as_u64().unwrap() > 1_700_000_000_000);

    let (status, all) = call(&predictor, "GET", "/v2/models/stats", None).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["model_stats"].as_array().unwrap().len(), 1, "{all}");
    let (status, body) = call(&predictor, "GET", "/v2/models/nope/stats", None).await;
    error_of(status, &body, 404, "nope");
}
