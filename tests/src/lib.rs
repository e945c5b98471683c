//! Helpers for the integration tests: the S3-compatible server started by
//! `scripts/test.sh`, the reference models and cases made by `scripts/make_models.py`, and a
//! way to call the predict handler with hand-built requests, and a proxy that injects S3
//! faults ([`fault_proxy`]).

pub mod fault_proxy;

pub mod fuzz;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use maas::registry::{CacheSettings, PublishLimits, Writer};
pub use maas::store::CountingStore;
use maas::store::{S3Settings, S3Store, SharedStore};
use maas::{Predictor, Publisher, Registry};
use serde::Deserialize;
use serde_json::Value;

/// The S3 endpoint started by `scripts/test.sh`.
pub fn s3_endpoint() -> String {
    std::env::var("MAAS_TEST_S3_ENDPOINT")
        .expect("MAAS_TEST_S3_ENDPOINT is not set: run the tests with scripts/test.sh, which starts an S3 server")
}

/// A client for the test S3 server, built the way production builds one (path-style, since
/// local servers need it).
pub async fn s3_client() -> aws_sdk_s3::Client {
    s3_client_for(&s3_endpoint(), aws_config::retry::RetryConfig::standard()).await
}

/// A path-style client for any endpoint, with the given retry policy.
pub async fn s3_client_for(
    endpoint: &str,
    retry: aws_config::retry::RetryConfig,
) -> aws_sdk_s3::Client {
    let shared = sdk_config(endpoint, retry).await;
    let config = aws_sdk_s3::config::Builder::from(&shared).force_path_style(true).build();
    aws_sdk_s3::Client::from_conf(config)
}

/// The AWS configuration of the test S3 server's credentials and region, for `endpoint`.
async fn sdk_config(
    endpoint: &str,
    retry: aws_config::retry::RetryConfig,
) -> aws_config::SdkConfig {
    maas::store::aws_defaults()
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .retry_config(retry)
        .load()
        .await
}

/// A store on `bucket` (prefix `maas`) reached through `endpoint`, such as a
/// [`fault_proxy::FaultProxy`], with its client built as production builds it from
/// `settings` (timeouts, retries, path-style addressing).
pub async fn s3_store_via(endpoint: &str, bucket: &str, settings: &S3Settings) -> S3Store {
    let shared = sdk_config(endpoint, aws_config::retry::RetryConfig::standard()).await;
    S3Store::from_sdk_config(&shared, bucket, "maas", settings)
}

/// A new, empty bucket of its own for one test.
pub async fn fresh_bucket(client: &aws_sdk_s3::Client) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let bucket = format!(
        "maas-test-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    client.create_bucket().bucket(&bucket).send().await.expect("create a test bucket");
    bucket
}

/// An S3 store on a fresh bucket of the test server, under a prefix (to prove prefixes work).
pub async fn fresh_s3_store() -> S3Store {
    let client = s3_client().await;
    let bucket = fresh_bucket(&client).await;
    S3Store::new(client, bucket, "maas")
}

/// The folder of reference models and `cases.json`.
pub fn models_dir() -> PathBuf {
    std::env::var("MAAS_TEST_MODELS")
        .map(PathBuf::from)
        .expect("MAAS_TEST_MODELS is not set: run the tests with scripts/test.sh, which makes the reference models")
}

pub fn model_bytes(name: &str) -> Bytes {
    let path = models_dir().join(format!("{name}.onnx"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())).into()
}

/// A function binary built next to the running test binary (`scripts/test.sh` builds them
/// all with `cargo build --workspace --bins`).
pub fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(|deps| deps.parent()).unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A function binary built with the release profile's settings, where hostile inputs are
/// tried on what is deployed. Tests built without debug assertions (`scripts/test.sh` uses
/// the `ci` profile, which inherits `release`) use the binaries beside them; debug test
/// builds use `target/release/` (`cargo build --release -p {name}`).
pub fn release_binary(name: &str) -> PathBuf {
    if !cfg!(debug_assertions) {
        return built_binary(name);
    }
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().and_then(|deps| deps.parent()).and_then(|p| p.parent()).unwrap();
    let path = target.join("release").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --release -p {name}` first",
        path.display()
    );
    path
}

/// The hostile models made by `scripts/make_hostile.py`, with `hostile.json`.
pub fn hostile_dir() -> PathBuf {
    std::env::var("MAAS_TEST_HOSTILE").map(PathBuf::from).expect(
        "MAAS_TEST_HOSTILE is not set: run the tests with scripts/test.sh, which makes the models",
    )
}

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// One reference case: inputs and the outputs onnxruntime computed for them.
#[derive(Debug, Deserialize)]
pub struct Case {
    pub model: String,
    pub batch: usize,
    pub inputs: Vec<Value>,
    pub outputs: Vec<ReferenceOutput>,
}

#[derive(Debug, Deserialize)]
pub struct ReferenceOutput {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<usize>,
    /// Numbers, or strings for `BYTES`.
    pub data: Vec<Value>,
}

impl ReferenceOutput {
    /// The elements as numbers; panics on strings.
    pub fn numbers(&self) -> Vec<f64> {
        let number =
            |v: &Value| v.as_f64().unwrap_or_else(|| panic!("{}: {v} is no number", self.name));
        self.data.iter().map(number).collect()
    }
}

/// The reference cases of the test models.
pub fn cases() -> Vec<Case> {
    cases_in(&models_dir())
}

/// The model zoo made by `scripts/make_zoo.py`: models, `zoo.json` and `cases.json`.
pub fn zoo_dir() -> PathBuf {
    std::env::var("MAAS_TEST_ZOO").map(PathBuf::from).expect(
        "MAAS_TEST_ZOO is not set: run the tests with scripts/test.sh, which builds the model zoo",
    )
}

/// The `cases.json` of a folder of models.
pub fn cases_in(dir: &std::path::Path) -> Vec<Case> {
    let path = dir.join("cases.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("cases.json parses")
}

/// Cache settings for one test: a temporary disk cache and generous limits.
pub fn cache_settings(dir: &std::path::Path) -> CacheSettings {
    CacheSettings {
        memory_bytes: 1 << 30,
        disk_dir: dir.to_owned(),
        disk_bytes: 1 << 30,
        resolve_ttl: Duration::from_secs(30),
        fetch: maas::fetch::FetchSettings::default(),
        engine: maas::engine::Settings::default(),
    }
}

/// A predictor over `store` with its own temporary disk cache.
pub fn predictor(store: SharedStore, cache: &tempfile::TempDir) -> Predictor {
    predictor_with(store, cache, maas::engine::Settings::default())
}

/// A predictor over `store` with its own temporary disk cache and these engine settings.
pub fn predictor_with(
    store: SharedStore,
    cache: &tempfile::TempDir,
    engine: maas::engine::Settings,
) -> Predictor {
    let settings = CacheSettings { engine, ..cache_settings(cache.path()) };
    Predictor::new(
        Arc::new(Registry::new(store, &settings)),
        maas::predictor::RequestLimits::default(),
    )
}

/// The default publishing limits of `Config`.
pub fn publish_limits() -> PublishLimits {
    maas::Config::from_lookup(|name| (name == "MAAS_STORE").then(|| "memory://".to_owned()))
        .unwrap()
        .publish
}

/// A publisher over `store` with the default limits and its own temporary disk cache.
pub fn publisher(store: SharedStore, cache: &tempfile::TempDir) -> Publisher {
    let registry = Arc::new(Registry::new(store, &cache_settings(cache.path())));
    Publisher::new(registry, publish_limits(), Duration::from_secs(900))
}

/// The registry's write path over a predictor's registry, so what it publishes is served.
pub fn writer(predictor: &Predictor) -> Writer {
    Writer::new(predictor.registry().clone())
}

/// Publishes a reference model as `name` version `version`.
pub async fn publish(
    predictor: &Predictor,
    name: &str,
    version: u64,
    bytes: Bytes,
) -> maas::manifest::Manifest {
    let id = maas::names::ModelId::new(
        name.parse().unwrap(),
        maas::names::Version::new(version).unwrap(),
    );
    writer(predictor).publish(&id, bytes, &publish_limits()).await.expect("publish")
}

/// A request as API Gateway hands it to a function.
pub fn request(method: &str, path: &str, body: Option<Vec<u8>>) -> lambda_http::Request {
    let body = body.map_or(lambda_http::Body::Empty, lambda_http::Body::Binary);
    lambda_http::http::Request::builder().method(method).uri(path).body(body).unwrap()
}

/// The status and JSON body of a response.
pub fn status_and_json(response: lambda_http::Response<lambda_http::Body>) -> (u16, Value) {
    let status = response.status().as_u16();
    let json = serde_json::from_slice(response.body().as_ref())
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", response.body()));
    (status, json)
}

/// Calls the predict handler with a hand-built request and returns the status and the JSON
/// body.
pub async fn call(
    predictor: &Predictor,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    status_and_json(predict::handler::handle(predictor, request(method, path, body)).await)
}

/// Calls the model-upload handler likewise.
pub async fn call_upload(
    publisher: &Publisher,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    status_and_json(model_upload::handler::handle(publisher, request(method, path, body)).await)
}

/// One HTTP/1.1 request over a new connection to `addr` (`host:port`), written with one
/// write; returns the status and the body.
pub async fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let (status, _, body) = http_exchange(addr, method, path, headers, body).await;
    (status, body)
}

/// Like [`http_request`], also returning the response's headers (names lowercase).
pub async fn http_exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    // Head and body in one write: written apart, a server that forwards the body as it reads
    // it (cargo-lambda's emulator does, to the function) sends it in pieces, and pieces meet
    // Nagle's algorithm and delayed ACKs (scripts/benchmarks.md, "Event size sweep").
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    socket.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    socket.read_to_end(&mut response).await.unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP head");
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status");
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    (status, headers, response[split + 4..].to_vec())
}
