//! The real `predict` binary as a local server: on the example store (the README's first
//! command), and against the S3 server as a fresh process whose first request pulls the
//! model from S3.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use maas_tests::{cases, fresh_s3_store, model_bytes, predictor, publish, repo_root, s3_endpoint};
use serde_json::{json, Value};

use crate::predict_api::{assert_iris_answer, assert_iris_rows, readme_request, readme_rows};
use crate::reference::assert_matches_reference;

/// A server process, killed when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The environment that points a predict process at the S3 server at `endpoint`.
pub(crate) fn s3_env(endpoint: &str) -> Vec<(&'static str, &str)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint),
        ("MAAS_S3_FORCE_PATH_STYLE", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ]
}

/// Starts `predict serve` with `args` and `env`, its disk cache in `cache`.
pub(crate) async fn start(
    args: &[&str],
    env: &[(&str, &str)],
    cache: &tempfile::TempDir,
) -> Server {
    start_binary(&maas_tests::built_binary("predict"), args, env, cache).await
}

/// Starts `binary serve` (a function binary's local server) with `args` and `env`.
pub(crate) async fn start_binary(
    binary: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    cache: &tempfile::TempDir,
) -> Server {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut command = Command::new(binary);
    command
        .current_dir(repo_root())
        .args(["serve", "--addr", &addr])
        .args(args)
        .env_remove("MAAS_STORE")
        .env("MAAS_CACHE_DIR", cache.path())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (name, value) in env {
        command.env(name, value);
    }
    let server = Server { child: command.spawn().expect("start the server"), addr };
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(&server.addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "{} did not listen on {}",
            binary.display(),
            server.addr
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server
}

async fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, body) = maas_tests::http_request(
        addr,
        method,
        path,
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .await;
    (
        status,
        serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&body))),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn local_server_serves_the_example_model_as_the_readme_shows() {
    let cache = tempfile::tempdir().unwrap();
    let server = start(&[], &[], &cache).await;
    let (status, served) =
        http(&server.addr, "POST", "/v2/models/iris/infer", &readme_request().to_string()).await;
    assert_eq!(status, 200, "{served}");
    assert_iris_answer(&served);
    // TensorFlow Serving's REST API on the same server.
    let (status, rows) =
        http(&server.addr, "POST", "/v1/models/iris:predict", &readme_rows().to_string()).await;
    assert_eq!(status, 200, "{rows}");
    assert_iris_rows(&rows);
    let (status, metadata) =
        http(&server.addr, "GET", "/v1/models/iris/versions/1/metadata", "").await;
    assert_eq!(status, 200, "{metadata}");
    let inputs =
        &metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"];
    assert_eq!(inputs["float_input"]["dtype"], "DT_FLOAT", "{metadata}");
    let (status, error) = http(&server.addr, "GET", "/v1/models/iris:predict", "").await;
    assert_eq!(status, 405, "{error}");
    let (status, error) = http(&server.addr, "POST", "/v2/models/iris/infer", "{").await;
    assert_eq!(status, 400);
    assert!(error["error"].as_str().unwrap().contains("invalid request body"));
    let oversized = " ".repeat((6 << 20) + 10);
    assert_eq!(http(&server.addr, "POST", "/v2/models/iris/infer", &oversized).await.0, 413);
}

#[tokio::test(flavor = "multi_thread")]
async fn fresh_process_pulls_its_first_model_from_s3() {
    let store = fresh_s3_store().await;
    let publish_cache = tempfile::tempdir().unwrap();
    publish(&predictor(Arc::new(store.clone()), &publish_cache), "mlp", 1, model_bytes("mlp"))
        .await;
    let cache = tempfile::tempdir().unwrap();
    let location = format!("s3://{}/maas", store.bucket());
    let endpoint = s3_endpoint();
    let env = s3_env(&endpoint);
    let server = start(&["--store", &location], &env, &cache).await;
    let case = cases().into_iter().find(|c| c.model == "mlp" && c.batch == 8).unwrap();
    let body = json!({ "inputs": case.inputs }).to_string();
    let (status, served) =
        http(&server.addr, "POST", "/v2/models/mlp/versions/1/infer", &body).await;
    assert_eq!(status, 200, "{served}");
    assert_matches_reference(&case, &served);
    // The process downloaded the model into its disk cache.
    assert!(cache.path().join("mlp/1").read_dir().unwrap().next().is_some());
}
