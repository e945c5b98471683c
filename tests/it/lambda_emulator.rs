//! The real function binaries under the Lambda Runtime API, as AWS runs them: cargo-lambda's
//! emulator (`cargo lambda watch --only-lambda-apis`, installed from PyPI by
//! `scripts/test.sh`) serves the Runtime API and nothing else (it builds and starts nothing),
//! each already-built binary polls it for events, and the tests invoke the functions with the
//! sample events of `tests/events/` through the emulator's invoke endpoint.
//!
//! How the pieces meet:
//! - the emulator runs from the repository root (it reads the workspace's `cargo metadata` to
//!   know which functions exist) as
//!   `cargo-lambda lambda watch --only-lambda-apis --ignore-changes -A 127.0.0.1 -P PORT`;
//! - a function binary gets `AWS_LAMBDA_RUNTIME_API=http://127.0.0.1:PORT/.rt/NAME` (the
//!   emulator keeps one event queue per function name, under `/.rt/NAME`), and the variables
//!   the Rust runtime requires: `AWS_LAMBDA_FUNCTION_NAME`, `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`,
//!   `AWS_LAMBDA_FUNCTION_VERSION`;
//! - an invocation is `POST /2015-03-31/functions/NAME/invocations` with the event as the
//!   body; NAME must be a binary of the workspace (else 404). The answer is the function's
//!   result with status 200, or, when the function reports an error, status 500 with the
//!   runtime's `{"errorType", "errorMessage"}` body. Invocations sent before the function
//!   polls wait in the emulator's queue.
//!
//! `scripts/runtime_api.py` serves the same URLs the way AWS's Runtime API writes events (in
//! one piece, TCP_NODELAY on); the event-size benchmark runs under it, and one test here.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use maas_tests::{built_binary as binary, repo_root};
use serde_json::Value;

use crate::predict_api::{assert_iris_answer, assert_iris_rows};

/// How long any one step may take before the test fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// The `cargo-lambda` executable (`scripts/test.sh` installs it in the venv and exports its
/// path).
fn cargo_lambda() -> PathBuf {
    let path = std::env::var("MAAS_TEST_CARGO_LAMBDA").map(PathBuf::from).expect(
        "MAAS_TEST_CARGO_LAMBDA is not set: run the tests with scripts/test.sh, which installs \
         cargo-lambda (scripts/requirements.txt) and exports its path",
    );
    assert!(
        path.is_file(),
        "MAAS_TEST_CARGO_LAMBDA={} does not exist: scripts/test.sh installs cargo-lambda from \
         scripts/requirements.txt",
        path.display()
    );
    path
}

/// The Python of the test venv (`scripts/test.sh` creates it and exports its path).
fn venv_python() -> PathBuf {
    let path = std::env::var("MAAS_TEST_PYTHON").map(PathBuf::from).expect(
        "MAAS_TEST_PYTHON is not set: run the tests with scripts/test.sh, which creates the venv \
         and exports its Python",
    );
    assert!(path.is_file(), "MAAS_TEST_PYTHON={} does not exist", path.display());
    path
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A child process whose stdout and stderr go to one log file; killed when dropped, also
/// when a test panics.
pub(crate) struct Process {
    pub(crate) name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    pub(crate) fn spawn(name: &str, mut command: Command, log: PathBuf) -> Self {
        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = command.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        Self { name: name.to_owned(), child, log }
    }

    pub(crate) fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Kills the process, as Lambda does at a timeout or an out-of-memory.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Panics, with the process's log, if it has exited.
    pub(crate) fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{} exited ({status}); its log:\n{}", self.name, self.log());
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A function binary to run from the repository root, without the `MAAS_*` and `AWS_*`
/// variables of the test's environment.
pub(crate) fn clean_command(name: &str) -> Command {
    let mut command = Command::new(binary(name));
    command.current_dir(repo_root());
    for (variable, _) in std::env::vars() {
        if variable.starts_with("MAAS_") || variable.starts_with("AWS_") {
            command.env_remove(variable);
        }
    }
    command
}

/// A Lambda Runtime API server on a port of its own, with its log in `dir`: cargo-lambda's
/// emulator ([`Emulator::start`]) or `scripts/runtime_api.py` ([`Emulator::start_nodelay`]).
/// Both serve the same URLs.
pub(crate) struct Emulator {
    process: Process,
    port: u16,
    dir: tempfile::TempDir,
}

impl Emulator {
    /// cargo-lambda's emulator.
    pub(crate) async fn start() -> Self {
        let program = cargo_lambda();
        Self::start_with("the cargo-lambda emulator", |port| {
            let mut command = Command::new(&program);
            command.current_dir(repo_root()).args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "--ignore-changes",
                "--invoke-address",
                "127.0.0.1",
                "--invoke-port",
                &port.to_string(),
            ]);
            command
        })
        .await
    }

    /// `scripts/runtime_api.py`: a Runtime API that writes each event in one piece on
    /// TCP_NODELAY connections, as AWS's does (the one the event-size benchmark uses).
    pub(crate) async fn start_nodelay() -> Self {
        let python = venv_python();
        Self::start_with("scripts/runtime_api.py", |port| {
            let mut command = Command::new(&python);
            command
                .arg(repo_root().join("scripts/runtime_api.py"))
                .args(["--addr", &format!("127.0.0.1:{port}")]);
            command
        })
        .await
    }

    async fn start_with(what: &str, command: impl Fn(u16) -> Command) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // A port found free may be taken before the server binds it: then it exits, and
        // another port is tried.
        for attempt in 0..3 {
            let port = free_port();
            let log = dir.path().join(format!("runtime-api-{attempt}.log"));
            let mut process = Process::spawn(what, command(port), log);
            let deadline = Instant::now() + STEP_TIMEOUT;
            loop {
                if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    return Self { process, port, dir };
                }
                if process.child.try_wait().unwrap().is_some() {
                    if attempt == 2 {
                        process.assert_running();
                    }
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what} did not listen on 127.0.0.1:{port}; its log:\n{}",
                    process.log()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        unreachable!()
    }

    /// Starts a function binary as a Lambda execution environment served by this emulator,
    /// with `env` on top of a clean environment (no inherited `MAAS_*` or `AWS_*` variable).
    pub(crate) fn function(&self, name: &str, env: &[(&str, &str)]) -> Process {
        let mut command = clean_command(name);
        command
            .env("RUST_LOG", "info")
            .env("AWS_LAMBDA_RUNTIME_API", format!("http://127.0.0.1:{}/.rt/{name}", self.port))
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .envs(env.iter().copied());
        Process::spawn(name, command, self.dir.path().join(format!("{name}.log")))
    }

    /// The address invocations go to (`POST /2015-03-31/functions/NAME/invocations`).
    pub(crate) fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Invokes `function` with `event` through the emulator; returns the invoke status and
    /// the JSON result. Fails at once, with the logs, if the function or the emulator exits.
    pub(crate) async fn invoke(&mut self, function: &mut Process, event: &Value) -> (u16, Value) {
        let addr = format!("127.0.0.1:{}", self.port);
        let path = format!("/2015-03-31/functions/{}/invocations", function.name);
        let body = event.to_string();
        let request = maas_tests::http_request(
            &addr,
            "POST",
            &path,
            &[("content-type", "application/json")],
            body.as_bytes(),
        );
        // Ends, with the log of the process, as soon as the function or the emulator exits.
        let watchdog = async {
            loop {
                for process in [&mut *function, &mut self.process] {
                    if let Some(status) = process.child.try_wait().unwrap() {
                        return format!("{} exited ({status})", process.name);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let outcome = tokio::select! {
            answer = request => Ok(answer),
            failure = watchdog => Err(failure),
            _ = tokio::time::sleep(STEP_TIMEOUT) => Err(format!("no answer within {STEP_TIMEOUT:?}")),
        };
        let (status, answer) = outcome.unwrap_or_else(|failure| {
            panic!(
                "invoking {}: {failure}; its log:\n{}\nthe emulator's log:\n{}",
                function.name,
                function.log(),
                self.process.log()
            )
        });
        let json = serde_json::from_slice(&answer).unwrap_or_else(|e| {
            panic!("invoke answer is not JSON ({e}): {:?}", String::from_utf8_lossy(&answer))
        });
        (status, json)
    }
}

/// A sample event of `tests/events/`.
pub(crate) fn event(name: &str) -> Value {
    let path = repo_root().join("tests/events").join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The status and JSON body of an API Gateway HTTP API (payload 2.0) response object.
pub(crate) fn api_gateway_response(result: &Value) -> (u16, Value) {
    let status = result["statusCode"].as_u64().unwrap_or_else(|| panic!("no statusCode: {result}"));
    let body = result["body"].as_str().unwrap_or_else(|| panic!("no text body: {result}"));
    let body = if result["isBase64Encoded"] == true {
        base64::engine::general_purpose::STANDARD.decode(body).unwrap()
    } else {
        body.as_bytes().to_vec()
    };
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&body)));
    (u16::try_from(status).unwrap(), json)
}

/// The JSON log lines (complete lines only) a process has written so far.
fn log_lines(process: &Process) -> Vec<Value> {
    let log = process.log();
    let complete = &log[..log.rfind('\n').map_or(0, |end| end + 1)];
    complete.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

/// `predict` serving the example store with iris preloaded, its disk cache in `cache`.
fn example_predict(emulator: &Emulator, cache: &Path) -> Process {
    let store = repo_root().join("scripts/example-store");
    emulator.function(
        "predict",
        &[
            ("MAAS_STORE", store.to_str().unwrap()),
            ("MAAS_CACHE_DIR", cache.to_str().unwrap()),
            ("MAAS_PRELOAD", "iris"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn predict_binary_answers_api_gateway_events_under_the_runtime_api() {
    let mut emulator = Emulator::start().await;
    let cache = tempfile::tempdir().unwrap();
    let mut predict = example_predict(&emulator, cache.path());

    // MAAS_PRELOAD loads the model during init, before any event is sent.
    let deadline = Instant::now() + STEP_TIMEOUT;
    let preloaded = loop {
        let lines = log_lines(&predict);
        if let Some(line) = lines.into_iter().find(|l| l["fields"]["message"] == "preloaded") {
            break line;
        }
        predict.assert_running();
        assert!(Instant::now() < deadline, "no `preloaded` log line; the log:\n{}", predict.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(preloaded["fields"]["model"], "iris@1", "{preloaded}");
    assert!(preloaded.get("span").is_none(), "preloaded inside an invocation: {preloaded}");

    let (status, result) = emulator.invoke(&mut predict, &event("predict-infer.json")).await;
    assert_eq!(status, 200, "{result}");
    let (status, served) = api_gateway_response(&result);
    assert_eq!(status, 200, "{served}");
    assert_eq!(result["headers"]["content-type"], "application/json", "{result}");
    assert_ne!(result["isBase64Encoded"], true, "JSON goes to API Gateway as text: {result}");
    assert_iris_answer(&served);
    assert_eq!(served["model_name"], "iris");
    assert_eq!(served["model_version"], "1");

    // TensorFlow Serving's REST API, routed by API Gateway's `/v1/{proxy+}`.
    let (status, result) = emulator.invoke(&mut predict, &event("predict-tf-predict.json")).await;
    assert_eq!(status, 200, "{result}");
    let (status, rows) = api_gateway_response(&result);
    assert_eq!(status, 200, "{rows}");
    assert_iris_rows(&rows);

    let mut malformed = event("predict-infer.json");
    malformed["body"] = Value::from("{\"inputs\": [");
    let (status, result) = emulator.invoke(&mut predict, &malformed).await;
    assert_eq!(status, 200, "{result}");
    let (status, error) = api_gateway_response(&result);
    assert_eq!(status, 400, "{error}");
    assert!(error["error"].as_str().is_some_and(|e| e.contains("invalid request body")), "{error}");

    // A body marked base64 that is not: lambda_http's own conversion panics on it (a release
    // build aborts); the function answers 400 and goes on to the next event.
    let mut garbage = event("predict-infer.json");
    garbage["body"] = Value::from("!!! not base64 !!!");
    garbage["isBase64Encoded"] = Value::from(true);
    let (status, result) = emulator.invoke(&mut predict, &garbage).await;
    assert_eq!(status, 200, "{result}");
    let (status, error) = api_gateway_response(&result);
    assert_eq!(status, 400, "{error}");
    assert!(error["error"].as_str().is_some_and(|e| e.contains("not valid base64")), "{error}");

    // The binary tensor extension: API Gateway hands the function a binary body in base64,
    // and the binary answer goes back in base64 with isBase64Encoded.
    let rows: Vec<u8> =
        [5.1f32, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = serde_json::json!({
        "inputs": [{"name": "float_input", "shape": [2, 4], "datatype": "FP32",
                    "parameters": {"binary_data_size": rows.len()}}],
        "outputs": [{"name": "label", "parameters": {"binary_data": true}}, {"name": "probabilities"}],
    })
    .to_string();
    let mut binary = event("predict-infer.json");
    let engine = &base64::engine::general_purpose::STANDARD;
    binary["body"] = Value::from(engine.encode([header.as_bytes(), &rows].concat()));
    binary["isBase64Encoded"] = Value::from(true);
    binary["headers"]["content-type"] = Value::from("application/octet-stream");
    binary["headers"]["inference-header-content-length"] = Value::from(header.len().to_string());
    let (status, result) = emulator.invoke(&mut predict, &binary).await;
    assert_eq!((status, result["statusCode"].as_u64()), (200, Some(200)), "{result}");
    assert_eq!(result["isBase64Encoded"], true, "{result}");
    assert_eq!(result["headers"]["content-type"], "application/octet-stream", "{result}");
    let body = engine.decode(result["body"].as_str().unwrap()).unwrap();
    let length: usize = result["headers"]["inference-header-content-length"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Inference-Header-Content-Length: {result}"));
    let answer: Value = serde_json::from_slice(&body[..length]).unwrap();
    assert_eq!(answer["outputs"][0]["parameters"]["binary_data_size"], 16, "{answer}");
    assert_eq!(answer["outputs"][1]["shape"], serde_json::json!([2, 3]), "{answer}");
    let labels: Vec<i64> =
        body[length..].chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(labels, [0, 2], "setosa and virginica");

    let (status, result) = emulator.invoke(&mut predict, &event("predict-metadata.json")).await;
    assert_eq!(status, 200, "{result}");
    let (status, metadata) = api_gateway_response(&result);
    assert_eq!(status, 200, "{metadata}");
    assert_eq!(metadata["name"], "iris");
    assert_eq!(metadata["platform"], "onnx_onnxv1");

    // The model was loaded once, at init: the invocations did not load it again.
    let lines = log_lines(&predict);
    let loads = lines.iter().filter(|l| l["fields"]["message"] == "model loaded").count();
    assert_eq!(loads, 1, "{}", predict.log());
    assert_reports_each_invocation(&lines, &[200, 200, 400, 400, 200, 200]);
    let protocols: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "request")
        .map(|l| &l["fields"]["protocol"])
        .collect();
    assert_eq!(protocols[..2], ["oip-json", "tfserving"], "{}", predict.log());
}

/// One summary line and one Embedded Metric Format record per invocation, in order: the first
/// a cold start that inferred with iris 1, every one with its status and request id.
fn assert_reports_each_invocation(lines: &[Value], statuses: &[u64]) {
    let summaries: Vec<&Value> =
        lines.iter().filter(|l| l["fields"]["message"] == "request").collect();
    let records: Vec<&Value> = lines.iter().filter(|l| l.get("_aws").is_some()).collect();
    assert_eq!(summaries.len(), statuses.len(), "summary lines: {summaries:?}");
    assert_eq!(records.len(), statuses.len(), "metrics records: {records:?}");
    for ((summary, record), &status) in summaries.iter().zip(&records).zip(statuses) {
        assert_eq!(summary["fields"]["status"], status, "{summary}");
        assert_eq!(record["status"], status, "{record}");
        let id = summary["fields"]["request_id"].as_str().unwrap();
        assert!(id != "-" && record["request_id"] == id, "{summary} {record}");
        let directive = &record["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "maas");
        for metric in directive["Metrics"].as_array().unwrap() {
            let name = metric["Name"].as_str().unwrap();
            assert!(record[name].is_number(), "metric {name} has no value: {record}");
        }
        assert_eq!(record["status_4xx"], if status / 100 == 4 { 1.0 } else { 0.0 });
    }
    let first = records[0];
    assert_eq!(
        (first["function"].as_str(), first["model"].as_str()),
        (Some("predict"), Some("iris"))
    );
    assert_eq!(first["version"], "1");
    assert_eq!(first["cold_start"], 1.0);
    assert!(first["inference_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{first}");
    assert!(records[1..].iter().all(|r| r["cold_start"] == 0.0));
    assert_eq!(
        first["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        serde_json::json!([["function", "model", "version"]])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn model_upload_binary_publishes_under_the_runtime_api() {
    let mut emulator = Emulator::start().await;
    let store = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut upload = emulator.function(
        "model-upload",
        &[
            ("MAAS_STORE", store.path().to_str().unwrap()),
            ("MAAS_CACHE_DIR", cache.path().to_str().unwrap()),
        ],
    );
    let put = event("upload-put-version.json");
    // The event carries the example model.
    let example = repo_root().join("scripts/example-store/models/iris/1");
    let sent =
        base64::engine::general_purpose::STANDARD.decode(put["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent, std::fs::read(example.join("model.onnx")).unwrap());
    let example_manifest: Value =
        serde_json::from_slice(&std::fs::read(example.join("manifest.json")).unwrap()).unwrap();

    let (status, result) = emulator.invoke(&mut upload, &put).await;
    assert_eq!(status, 200, "{result}");
    let (status, manifest) = api_gateway_response(&result);
    assert_eq!(status, 201, "{manifest}");
    assert_eq!(manifest["name"], "iris");
    assert_eq!(manifest["version"], 2);
    assert_eq!(manifest["sha256"], example_manifest["sha256"], "{manifest}");
    assert_eq!(manifest["size"], sent.len());
    // Published in the store the function was given.
    let published = store.path().join("models/iris/2");
    assert_eq!(std::fs::read(published.join("model.onnx")).unwrap(), sent);
    let stored: Value =
        serde_json::from_slice(&std::fs::read(published.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(stored, manifest);

    // Published versions are immutable.
    let (status, result) = emulator.invoke(&mut upload, &put).await;
    assert_eq!(status, 200, "{result}");
    let (status, error) = api_gateway_response(&result);
    assert_eq!(status, 409, "{error}");
    assert!(error["error"].is_string(), "{error}");
}

/// `event` with an extra top-level field (which lambda_http ignores) that brings its JSON to
/// `size` bytes.
fn padded(mut event: Value, size: usize) -> Value {
    event["padding"] = Value::from("");
    let bare = event.to_string().len();
    assert!(size >= bare, "{size} bytes is below the event's {bare}");
    event["padding"] = Value::from("x".repeat(size - bare));
    assert_eq!(event.to_string().len(), size);
    event
}

// Under cargo-lambda's emulator, events of about 16-64 KiB cost ~45 ms each: it forwards an
// event in pieces on connections without TCP_NODELAY, and Nagle's algorithm holds each piece
// until the function's delayed ACK of the one before (scripts/benchmarks.md, "Event size
// sweep"). The benchmark therefore serves events with scripts/runtime_api.py; this checks, from
// the socket option and not from timings, that it keeps Nagle off on every connection, and
// that the function answers events of every size under it.
#[tokio::test(flavor = "multi_thread")]
async fn predict_binary_answers_events_of_every_size_over_nodelay_runtime_api_connections() {
    let mut api = Emulator::start_nodelay().await;
    let cache = tempfile::tempdir().unwrap();
    let mut predict = example_predict(&api, cache.path());
    for size in [2 << 10, 24 << 10, 1 << 20] {
        let (status, result) =
            api.invoke(&mut predict, &padded(event("predict-infer.json"), size)).await;
        assert_eq!(status, 200, "{size} bytes: {result}");
        let (status, served) = api_gateway_response(&result);
        assert_eq!(status, 200, "{size} bytes: {served}");
        assert_iris_answer(&served);
    }

    // The server reads TCP_NODELAY back from each socket it accepts: the function's
    // connections to the Runtime API and the invoker's.
    let log = api.process.log();
    let connections: Vec<&str> = log.lines().filter(|l| l.starts_with("connection from")).collect();
    assert!(connections.len() >= 4, "expected the function's and 3 invokes' connections:\n{log}");
    assert!(connections.iter().all(|c| c.ends_with(" TCP_NODELAY=1")), "{log}");
}
