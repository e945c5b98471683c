//! predict's and model-upload's local servers against `functions/openapi.yaml`: every
//! documented status reached by the requests the document lists, every answer conforming,
//! and schemathesis's generated requests answered as documented, never with a 5xx.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use maas::manifest::Manifest;
use maas::store::LocalStore;
use maas_tests::{built_binary, fresh_bucket, hostile_dir, publisher, repo_root, s3_client};

use crate::processes::{s3_env, start_binary, Server};

/// Iris's ONNX file; its size is far under `MAX_MODEL_BYTES`.
const IRIS: &str = "scripts/example-store/models/iris/1/model.onnx";
const MAX_MODEL_BYTES: &str = "100000";
/// An S3 endpoint nothing listens on.
const NOWHERE: &str = "http://127.0.0.1:9";

/// The example store, plus the hostile `range` model (published: its danger is in the
/// request) and `broken`, placed by hand: a file that matches its manifest but is no ONNX;
/// each with the alias `prod`.
async fn predict_store(dir: &Path, cache: &tempfile::TempDir) {
    let copy = Command::new("cp")
        .arg("-r")
        .arg(repo_root().join("scripts/example-store/models"))
        .arg(dir)
        .status()
        .unwrap();
    assert!(copy.success());
    let publisher = publisher(Arc::new(LocalStore::new(dir)), cache);
    let range = std::fs::read(hostile_dir().join("range.onnx")).unwrap();
    publisher.put_version("range", "1", &range).await.unwrap();
    let garbage = b"this file is not an ONNX model".repeat(4);
    let iris = std::fs::read(dir.join("models/iris/1/manifest.json")).unwrap();
    let mut manifest: Manifest = serde_json::from_slice(&iris).unwrap();
    manifest.name = "broken".into();
    manifest.sha256 = maas::disk_cache::sha256_hex(&garbage);
    manifest.size = garbage.len() as u64;
    let broken = dir.join("models/broken/1");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("model.onnx"), &garbage).unwrap();
    std::fs::write(broken.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    for name in ["iris", "range", "broken"] {
        publisher.set_alias(name, "prod", br#"{"version": 1}"#).await.unwrap();
    }
}

fn url(server: &Server) -> String {
    format!("http://{}", server.addr)
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_answer_as_the_openapi_document_says() {
    let (store, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    predict_store(store.path(), &cache).await;
    let bucket = fresh_bucket(&s3_client().await).await;
    let endpoint = maas_tests::s3_endpoint();
    let down = [
        ("AWS_ENDPOINT_URL", NOWHERE),
        ("MAAS_S3_FORCE_PATH_STYLE", "true"),
        ("MAAS_S3_MAX_ATTEMPTS", "1"),
        ("MAAS_S3_CONNECT_TIMEOUT_MS", "200"),
    ];
    let (predict, upload) = (built_binary("predict"), built_binary("model-upload"));
    let caches: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let local = ["--store", store.path().to_str().unwrap()];
    let limits = [("MAAS_MAX_BATCH", "200"), ("MAAS_MAX_RESPONSE_BYTES", "1500")];
    let servers = [
        ("predict", start_binary(&predict, &local, &limits, &caches[0]).await),
        (
            "predict-down",
            start_binary(&predict, &["--store", "s3://down"], &down, &caches[1]).await,
        ),
        (
            "upload",
            start_binary(
                &upload,
                &["--store", &format!("s3://{bucket}")],
                &[s3_env(&endpoint), vec![("MAAS_MAX_MODEL_BYTES", MAX_MODEL_BYTES)]].concat(),
                &caches[2],
            )
            .await,
        ),
        ("upload-down", start_binary(&upload, &["--store", "s3://down"], &down, &caches[3]).await),
    ];
    let python = repo_root().join(".venv/bin/python");
    let mut command = Command::new(python);
    command.current_dir(repo_root()).args([
        "scripts/check_openapi.py",
        "--spec",
        "functions/openapi.yaml",
        "--model",
        IRIS,
        "--max-model-bytes",
        MAX_MODEL_BYTES,
        "--examples",
        "15",
    ]);
    for (name, server) in &servers {
        command.args(["--server", &format!("{name}={}", url(server))]);
    }
    let status = command.status().expect("run scripts/check_openapi.py");
    assert!(status.success(), "the servers do not answer as functions/openapi.yaml says (above)");
}
