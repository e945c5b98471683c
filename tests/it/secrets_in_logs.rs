//! No presigned URL, credential or request body reaches the logs, even at `RUST_LOG=trace`:
//! the real binaries against the S3 server, model-upload as a local server through a
//! presigned upload, predict under the Lambda Runtime API emulator through an inference,
//! with credentials and a request body that carry markers the logs are then searched for.

use std::time::{Duration, Instant};

use maas_tests::{fresh_bucket, http_request, repo_root, s3_client, s3_endpoint};
use serde_json::{json, Value};

use crate::lambda_emulator::{
    api_gateway_response, clean_command, event, free_port, Emulator, Process,
};
use crate::upload::put_presigned;

const SECRET_KEY: &str = "maasSecretKeyThatMustNeverBeLogged0";
const SESSION_TOKEN: &str = "maasSessionTokenThatMustNeverBeLogged0";
const BODY_MARKER: &str = "maas-request-body-marker-5f3a9c";

/// The environment of both functions: the test S3 server, marked credentials, every log.
fn environment(store: &str, cache: &tempfile::TempDir) -> Vec<(&'static str, String)> {
    vec![
        ("MAAS_STORE", store.to_owned()),
        ("MAAS_CACHE_DIR", cache.path().to_str().unwrap().to_owned()),
        ("MAAS_S3_FORCE_PATH_STYLE", "true".to_owned()),
        ("AWS_ENDPOINT_URL", s3_endpoint()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
        ("AWS_SESSION_TOKEN", SESSION_TOKEN.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("RUST_LOG", "trace".to_owned()),
    ]
}

/// model-upload as a local server, its stdout and stderr in `dir`.
async fn upload_server(env: &[(&str, String)], dir: &tempfile::TempDir) -> (Process, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut command = clean_command("model-upload");
    command.args(["serve", "--addr", &addr]).envs(env.iter().map(|(k, v)| (k, v)));
    let mut server = Process::spawn("model-upload", command, dir.path().join("model-upload.log"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        server.assert_running();
        assert!(Instant::now() < deadline, "model-upload did not listen on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (server, addr)
}

/// Each secret found in `process`'s log, with the first line holding it; asserts that the log
/// is a trace-level one, so that finding nothing means something.
fn leaks(process: &Process, secrets: &[(&str, &str)]) -> Vec<String> {
    let log = process.log();
    let traces = log.lines().filter(|line| line.contains("TRACE")).count();
    assert!(traces > 0, "{} logged nothing at trace level; its log:\n{log}", process.name);
    secrets
        .iter()
        .filter_map(|(what, secret)| {
            let line = log.lines().find(|line| line.contains(secret))?;
            Some(format!("{}'s log has the {what}: {line}", process.name))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_presigned_url_credential_or_request_body_is_logged_at_trace() {
    let bucket = fresh_bucket(&s3_client().await).await;
    let store = format!("s3://{bucket}/maas");
    let (cache, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let env = environment(&store, &cache);

    // A presigned upload through model-upload's local server: the ticket, the PUT, the commit.
    let (upload, addr) = upload_server(&env, &logs).await;
    let (status, ticket) = http_request(&addr, "POST", "/models/iris/uploads", &[], b"").await;
    let ticket: Value = serde_json::from_slice(&ticket).unwrap();
    assert_eq!(status, 201, "{ticket}");
    let url = ticket["url"].as_str().unwrap();
    let signature = url.split("X-Amz-Signature=").nth(1).expect("a signed URL");
    let signature = &signature[..signature.find('&').unwrap_or(signature.len())];
    assert!(url.contains("X-Amz-Security-Token="), "the URL does not carry the token: {url}");
    let model = std::fs::read(repo_root().join("scripts/example-store/models/iris/1/model.onnx"));
    assert_eq!(put_presigned(url, &model.unwrap()).await, 200);
    let commit = format!("/models/iris/uploads/{}/commit", ticket["upload_id"].as_str().unwrap());
    let (status, manifest) = http_request(&addr, "POST", &commit, &[], b"").await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&manifest));

    // An inference through predict under the Runtime API, with a marker in the body.
    let mut emulator = Emulator::start().await;
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut predict = emulator.function("predict", &env);
    let mut infer = event("predict-infer.json");
    let mut body: Value = serde_json::from_str(infer["body"].as_str().unwrap()).unwrap();
    body["id"] = json!(BODY_MARKER);
    infer["body"] = Value::from(body.to_string());
    let (status, result) = emulator.invoke(&mut predict, &infer).await;
    assert_eq!(status, 200, "{result}");
    let (status, served) = api_gateway_response(&result);
    assert_eq!(status, 200, "{served}");
    assert_eq!(served["id"], BODY_MARKER, "{served}");

    let secrets = [
        ("presigned URL's signature", signature),
        ("AWS secret key", SECRET_KEY),
        ("AWS session token", SESSION_TOKEN),
        ("request body's marker", BODY_MARKER),
    ];
    let found = [leaks(&upload, &secrets), leaks(&predict, &secrets)].concat();
    assert!(found.is_empty(), "secrets in the logs:\n{}", found.join("\n"));
}
