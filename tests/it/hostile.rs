//! Hostile models and requests (`scripts/make_hostile.py`): sizes driven by input values,
//! constants that fold into huge tensors, protobuf bombs, overflowing dimensions, external
//! data paths, cycles, truncated files. In-process through the core, then against the
//! release binaries as deployed: every case a 4xx, the process alive after.

use std::sync::Arc;

use maas::manifest::Manifest;
use maas::protocol::oip::infer_json;
use maas::store::{LocalStore, SharedStore};
use maas_tests::{hostile_dir, predictor, publisher, release_binary, repo_root};
use serde::Deserialize;
use serde_json::Value;

use crate::processes::{start_binary, Server};

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    file: String,
    expect: String,
    why: String,
    #[serde(default)]
    request: Value,
}

fn hostile_cases() -> Vec<Case> {
    let text = std::fs::read_to_string(hostile_dir().join("hostile.json")).unwrap();
    let cases: Vec<Case> = serde_json::from_str(&text).unwrap();
    assert!(
        cases.len() >= 18 && cases.iter().any(|c| c.expect == "served"),
        "the hostile corpus shrank to {}",
        cases.len()
    );
    cases
}

/// The example iris model: the neighbour that must keep serving.
fn example_model() -> Vec<u8> {
    std::fs::read(repo_root().join("scripts/example-store/models/iris/1/model.onnx")).unwrap()
}

fn bytes_of(case: &Case) -> Vec<u8> {
    std::fs::read(hostile_dir().join(&case.file)).unwrap()
}

fn served(cases: &[Case]) -> impl Iterator<Item = &Case> {
    cases.iter().filter(|c| c.expect == "served")
}

fn refused(cases: &[Case]) -> impl Iterator<Item = &Case> {
    cases.iter().filter(|c| c.expect == "refused")
}

/// Writes `bytes` as version 1 of `name` straight into the store, with a manifest copied
/// from a published iris model's and made to match: what a bucket writer could do without
/// model-upload.
async fn place_by_hand(store: &SharedStore, template: &Manifest, name: &str, bytes: &[u8]) {
    let mut manifest = template.clone();
    manifest.name = name.to_owned();
    manifest.version = 1;
    manifest.sha256 = maas::disk_cache::sha256_hex(bytes);
    manifest.size = bytes.len() as u64;
    let prefix = format!("models/{name}/1");
    store.put(&format!("{prefix}/model.onnx"), bytes.to_vec().into()).await.unwrap();
    let manifest = serde_json::to_vec(&manifest).unwrap();
    store.put(&format!("{prefix}/manifest.json"), manifest.into()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn value_driven_sizes_publish_but_hostile_requests_are_422_naming_the_node() {
    let store: SharedStore = Arc::new(maas::store::MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let publisher = publisher(store.clone(), &cache);
    let predictor = predictor(store, &cache);
    for case in served(&hostile_cases()) {
        let published = publisher.put_version(&case.name, "1", &bytes_of(case)).await;
        assert!(published.is_ok(), "{}: {published:?}", case.name);
        let body = serde_json::to_vec(&case.request).unwrap();
        let err = infer_json(&predictor, &case.name, None, &body).await.unwrap_err();
        assert_eq!(err.status(), 422, "{} ({}): {err}", case.name, case.why);
        assert_eq!(err.kind(), "OverBudget", "{}: {err}", case.name);
        assert!(err.to_string().contains("node `"), "{}: {err}", case.name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malicious_uploads_are_refused_with_422() {
    let store: SharedStore = Arc::new(maas::store::MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let publisher = publisher(store, &cache);
    for case in refused(&hostile_cases()) {
        let err = publisher.put_version(&case.name, "1", &bytes_of(case)).await.unwrap_err();
        assert_eq!(err.status(), 422, "{} ({}): {err}", case.name, case.why);
        assert!(err.to_string().starts_with("invalid model: "), "{}: {err}", case.name);
        eprintln!("{} ({}): {err}", case.name, case.why);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn models_written_to_the_bucket_by_hand_fail_alone() {
    let store: SharedStore = Arc::new(maas::store::MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let template =
        publisher(store.clone(), &cache).put_version("iris", "1", &example_model()).await;
    let template = template.unwrap();
    let cases = hostile_cases();
    for case in refused(&cases) {
        place_by_hand(&store, &template, &case.name, &bytes_of(case)).await;
    }
    let predictor = predictor(store, &cache);
    let iris = crate::predict_api::readme_request().to_string();
    for case in refused(&cases) {
        let err = infer_json(&predictor, &case.name, None, iris.as_bytes()).await.unwrap_err();
        assert!(err.status() >= 400, "{}: {err}", case.name);
        // The others keep serving.
        let answer = infer_json(&predictor, "iris", None, iris.as_bytes()).await;
        assert!(answer.is_ok(), "after {}: {answer:?}", case.name);
    }
}

/// An HTTP exchange with a local server; the status and the JSON body.
async fn exchange(server: &Server, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let headers = [("content-type", "application/octet-stream")];
    let (status, body) = maas_tests::http_request(&server.addr, method, path, &headers, body).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn assert_alive(server: &mut Server, after: &str) {
    let exited = server.child.try_wait().unwrap();
    assert!(exited.is_none(), "the process died after {after}: {exited:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn release_binaries_answer_every_hostile_case_with_4xx_and_stay_up() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let store_dir = dir.path().to_str().unwrap();
    let cases = hostile_cases();

    let mut upload =
        start_binary(&release_binary("model-upload"), &["--store", store_dir], &[], &cache).await;
    for case in &cases {
        let path = format!("/models/{}/versions/1", case.name);
        let (status, body) = exchange(&upload, "PUT", &path, &bytes_of(case)).await;
        assert_alive(&mut upload, &case.name);
        match case.expect.as_str() {
            "served" => assert_eq!(status, 201, "{}: {body}", case.name),
            _ => {
                assert_eq!(status, 422, "{} ({}): {body}", case.name, case.why);
                assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
            }
        }
    }
    let (status, _) = exchange(&upload, "PUT", "/models/iris/versions/1", &example_model()).await;
    assert_eq!(status, 201);
    drop(upload);

    // A bucket writer places the refused models by hand.
    let store: SharedStore = Arc::new(LocalStore::new(dir.path()));
    let manifest = store.get("models/iris/1/manifest.json").await.unwrap().bytes().await.unwrap();
    let template: Manifest = serde_json::from_slice(&manifest).unwrap();
    for case in refused(&cases) {
        place_by_hand(&store, &template, &case.name, &bytes_of(case)).await;
    }

    let mut predict =
        start_binary(&release_binary("predict"), &["--store", store_dir], &[], &cache).await;
    let iris = crate::predict_api::readme_request().to_string();
    for case in &cases {
        let path = format!("/v2/models/{}/infer", case.name);
        let body = match case.expect.as_str() {
            "served" => serde_json::to_vec(&case.request).unwrap(),
            _ => iris.clone().into_bytes(),
        };
        let (status, answer) = exchange(&predict, "POST", &path, &body).await;
        assert_alive(&mut predict, &case.name);
        if case.expect == "served" {
            assert_eq!(status, 422, "{} ({}): {answer}", case.name, case.why);
        } else {
            assert!(status >= 400, "{}: {answer}", case.name);
        }
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{answer}");
        let (status, _) =
            exchange(&predict, "POST", "/v2/models/iris/infer", iris.as_bytes()).await;
        assert_eq!(status, 200, "iris after {}", case.name);
    }
}
