//! The committed bad-request corpus (`tests/bad_requests/cases.jsonl`, written by
//! `scripts/make_bad_requests.py`) against the predict and model-upload handlers over the real
//! S3 server with models published: every case goes through the same API Gateway event
//! conversion as under the Lambda runtime and must get its 4xx and a `{"error": ...}` naming
//! the problem; none may panic.

use std::sync::Arc;

use base64::Engine as _;
use lambda_http::request::LambdaRequest;
use maas::store::SharedStore;
use maas_tests::{fresh_s3_store, model_bytes, publish, repo_root, status_and_json};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize)]
struct Case {
    id: String,
    function: String,
    method: String,
    path: String,
    #[serde(default)]
    headers: serde_json::Map<String, Value>,
    body: Option<String>,
    body_base64: Option<String>,
    body_fill: Option<Fill>,
    status: u16,
    error: String,
}

/// A body too large to commit: `count` copies of `byte`, sent base64-encoded or not.
#[derive(Debug, Deserialize)]
struct Fill {
    byte: char,
    count: usize,
    base64: bool,
}

fn corpus() -> Vec<Case> {
    let path = repo_root().join("tests/bad_requests/cases.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// The API Gateway HTTP API (payload 2.0) event that carries the case.
fn event(case: &Case) -> Value {
    let (body, encoded) = match (&case.body, &case.body_base64, &case.body_fill) {
        (Some(text), None, None) => (Some(text.clone()), false),
        (None, Some(encoded), None) => (Some(encoded.clone()), true),
        (None, None, Some(fill)) => {
            let text = fill.byte.to_string().repeat(fill.count);
            if fill.base64 {
                (Some(base64::engine::general_purpose::STANDARD.encode(text)), true)
            } else {
                (Some(text), false)
            }
        }
        (None, None, None) => (None, false),
        _ => panic!("{}: more than one body", case.id),
    };
    let mut headers = case.headers.clone();
    headers.insert("host".into(), json!("api.example.com"));
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": case.path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api",
            "domainName": "api.example.com",
            "domainPrefix": "api",
            "http": {
                "method": case.method,
                "path": case.path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "bad-requests"
            },
            "requestId": case.id,
            "routeKey": "$default",
            "stage": "$default",
            "time": "01/Dec/2026:08:00:00 +0000",
            "timeEpoch": 1_795_939_200_000u64
        },
        "body": body,
        "isBase64Encoded": encoded
    })
}

/// Runs one case; the problem, if it does not get what it must.
async fn run(case: Case, predictor: maas::Predictor, publisher: maas::Publisher) -> Option<String> {
    let event: LambdaRequest = match serde_json::from_value(event(&case)) {
        Ok(event) => event,
        Err(err) => return Some(format!("{}: not an API Gateway event: {err}", case.id)),
    };
    let request = maas::http::event_request(event);
    let response = match case.function.as_str() {
        "predict" => predict::handler::handle(&predictor, request).await,
        "model-upload" => model_upload::handler::handle(&publisher, request).await,
        other => return Some(format!("{}: unknown function {other}", case.id)),
    };
    let (status, body) = status_and_json(response);
    let error = body["error"].as_str().unwrap_or_default();
    if status != case.status || !(400..500).contains(&status) || !error.contains(&case.error) {
        return Some(format!(
            "{} ({} {}): got {status} {body}, expected {} with {:?}",
            case.id, case.method, case.path, case.status, case.error
        ));
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_request_gets_its_4xx_and_a_message_naming_the_problem() {
    let cases = corpus();
    assert!(cases.len() >= 200, "only {} cases", cases.len());
    let store: SharedStore = Arc::new(fresh_s3_store().await);
    let cache = tempfile::tempdir().unwrap();
    let predictor = maas_tests::predictor(store.clone(), &cache);
    let iris = repo_root().join("scripts/example-store/models/iris/1/model.onnx");
    publish(&predictor, "iris", 1, std::fs::read(iris).unwrap().into()).await;
    for model in ["mlp", "cnn"] {
        publish(&predictor, model, 1, model_bytes(model)).await;
    }
    let mut limits = maas_tests::publish_limits();
    limits.max_model_bytes = 1 << 20;
    let publisher = maas::Publisher::new(
        predictor.registry().clone(),
        limits,
        std::time::Duration::from_secs(60),
    );

    let total = cases.len();
    let mut failures = Vec::new();
    for case in cases {
        let id = case.id.clone();
        // A task of its own, so that a panic is reported as this case's failure.
        let outcome = tokio::spawn(run(case, predictor.clone(), publisher.clone())).await;
        match outcome {
            Ok(None) => {}
            Ok(Some(problem)) => failures.push(problem),
            Err(panic) => failures.push(format!("{id}: panicked: {panic}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
