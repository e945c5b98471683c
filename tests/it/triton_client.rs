//! The official Triton HTTP client (`tritonclient[http]`, from `scripts/requirements.txt`)
//! against the real `predict` binary as a local server: `tests/it/triton_client.py` checks
//! liveness, metadata, and inference with the client's defaults (binary inputs and outputs),
//! with JSON, and with output selection, against onnxruntime's answers.

use std::process::Command;
use std::sync::Arc;

use maas::store::LocalStore;
use maas_tests::{model_bytes, models_dir, predictor, publish, repo_root};

use crate::processes::start;

/// The models the client is tried on: FP32 in and out, a BYTES output, FP16 in and out, and
/// two inputs (one BYTES) with two outputs.
const MODELS: [&str; 4] = ["mlp", "species", "half", "text_io"];

#[tokio::test(flavor = "multi_thread")]
async fn tritonclient_gets_onnxruntimes_answers_in_binary_and_json() {
    let store = tempfile::tempdir().unwrap();
    let publish_cache = tempfile::tempdir().unwrap();
    let publisher = predictor(Arc::new(LocalStore::new(store.path())), &publish_cache);
    for model in MODELS {
        publish(&publisher, model, 1, model_bytes(model)).await;
    }
    let cache = tempfile::tempdir().unwrap();
    let server = start(&["--store", store.path().to_str().unwrap()], &[], &cache).await;
    let python = repo_root().join(".venv/bin/python");
    let output = Command::new(&python)
        .arg(repo_root().join("tests/it/triton_client.py"))
        .arg(&server.addr)
        .arg(models_dir().join("cases.json"))
        .args(MODELS)
        .output()
        .unwrap_or_else(|e| {
            panic!("run {}: {e} (scripts/test.sh makes the venv)", python.display())
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "triton_client.py failed:\n{stdout}\n{stderr}");
    // Every case was asked six ways (two of them compressed, gzip and deflate), and the
    // binary form was used where asked.
    let lines: Vec<serde_json::Value> =
        stdout.lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
    let count =
        |what: &dyn Fn(&serde_json::Value) -> bool| lines.iter().filter(|l| what(l)).count();
    let binary_answers =
        count(&|l| l["got"]["binary_outputs"].as_array().is_some_and(|b| !b.is_empty()));
    assert_eq!(lines.len(), 2 * 6 * MODELS.len() + 1, "{stdout}");
    assert_eq!(binary_answers, 2 * 4 * MODELS.len(), "{stdout}");
    assert_eq!(count(&|l| l["compression"].is_string()), 2 * 2 * MODELS.len(), "{stdout}");
}
