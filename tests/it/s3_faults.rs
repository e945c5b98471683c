//! S3 faults, injected by [`FaultProxy`] between the S3 client and the real S3 server: each
//! fault is either retried away or answered with a 503 and `Retry-After` within the
//! configured time; requests waiting on the same cold load are all released; the next request
//! after recovery succeeds in the same process; nothing unverified reaches the disk or memory
//! cache.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use maas::fetch::FetchSettings;
use maas::names::{ModelId, Version};
use maas::predictor::RequestLimits;
use maas::store::{ObjectStore, S3Settings, S3Store, StoreError, MULTIPART_PART_BYTES};
use maas::Predictor;
use maas_tests::fault_proxy::{Fault, FaultProxy, Injection};
use maas_tests::{
    cases, fresh_s3_store, model_bytes, predictor, publish, s3_endpoint, s3_store_via, Case,
};
use serde_json::{json, Value};

use crate::reference::assert_matches_reference;

/// Short limits, so that every fault is answered in seconds.
fn settings() -> S3Settings {
    S3Settings {
        force_path_style: true,
        connect_timeout: Duration::from_millis(500),
        attempt_timeout: Duration::from_secs(1),
        operation_timeout: Duration::from_secs(3),
        body_idle_timeout: Duration::from_millis(500),
        max_attempts: 3,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        ..S3Settings::default()
    }
}

/// The longest a request may take to be answered when the store stays broken: one call's
/// operation timeout, or every attempt at a stalling body, plus scheduling slack.
fn answer_within() -> Duration {
    let s = settings();
    s.operation_timeout.max(s.body_idle_timeout * s.max_attempts) + Duration::from_secs(1)
}

const MODEL_KEY: &str = "models/mlp/1/model.onnx";

/// `mlp` version 1 published straight to S3, and a proxy in front of that S3.
struct Rig {
    proxy: FaultProxy,
    bucket: String,
}

impl Rig {
    async fn new() -> Self {
        let store = fresh_s3_store().await;
        let cache = tempfile::tempdir().unwrap();
        publish(&predictor(Arc::new(store.clone()), &cache), "mlp", 1, model_bytes("mlp")).await;
        let proxy = FaultProxy::start(&s3_endpoint()).await;
        Self { proxy, bucket: store.bucket().to_owned() }
    }

    /// The store as production builds it, reaching S3 through the proxy.
    async fn store(&self) -> S3Store {
        s3_store_via(&self.proxy.endpoint(), &self.bucket, &settings()).await
    }

    /// A fresh execution environment: cold memory cache, empty disk cache.
    async fn environment(&self) -> (Predictor, tempfile::TempDir) {
        let cache = tempfile::tempdir().unwrap();
        (predictor(Arc::new(self.store().await), &cache), cache)
    }

    /// A fresh environment that fetches model files in parts of `part_bytes`.
    async fn environment_in_parts(&self, part_bytes: u64) -> (Predictor, tempfile::TempDir) {
        let cache = tempfile::tempdir().unwrap();
        let mut settings = maas_tests::cache_settings(cache.path());
        settings.fetch = FetchSettings { part_bytes, ..FetchSettings::default() };
        let registry = maas::Registry::new(Arc::new(self.store().await), &settings);
        (Predictor::new(Arc::new(registry), RequestLimits::default()), cache)
    }

    /// Model GETs that reached the proxy so far.
    fn model_gets(&self) -> usize {
        self.proxy.requests().iter().filter(|path| path.contains(MODEL_KEY)).count()
    }
}

fn mlp_case() -> (Vec<u8>, Case) {
    let case = cases().into_iter().find(|c| c.model == "mlp" && c.batch == 1).unwrap();
    (json!({ "inputs": case.inputs }).to_string().into_bytes(), case)
}

/// One answer of the predict handler: status, `Retry-After`, body and time taken.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
    took: Duration,
}

async fn infer(predictor: &Predictor, body: &[u8]) -> Answer {
    let started = Instant::now();
    let request = maas_tests::request("POST", "/v2/models/mlp/versions/1/infer", Some(body.into()));
    let response = predict::handler::handle(predictor, request).await;
    let took = started.elapsed();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = maas_tests::status_and_json(response);
    Answer { status, retry_after, body, took }
}

/// A 503 that says to retry later, within the configured time: 2 s after throttling, 1 s
/// when the store was unavailable (timeouts, resets, short bodies).
fn assert_unavailable(answer: &Answer, fault: Fault) {
    assert_eq!(answer.status, 503, "{fault:?}: {}", answer.body);
    assert_eq!(answer.body["error"], "model store unavailable, retry later");
    let expected = if fault == Fault::SlowDown { "2" } else { "1" };
    assert_eq!(answer.retry_after.as_deref(), Some(expected), "{fault:?}");
    assert!(answer.took <= answer_within(), "{fault:?}: 503 after {:?}", answer.took);
}

/// The disk cache holds no file of the model but a verified one: nothing partial, nothing
/// whose bytes differ from the published model.
fn assert_disk_cache_clean(cache: &Path) {
    let dir = cache.join("mlp/1");
    let published = maas::disk_cache::sha256_hex(&model_bytes("mlp"));
    for entry in std::fs::read_dir(&dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            maas::disk_cache::sha256_hex(&bytes),
            published,
            "{} is corrupt",
            path.display()
        );
        assert_eq!(path.file_name().unwrap().to_string_lossy(), format!("{published}.onnx"));
    }
}

fn is_cached_on_disk(cache: &Path) -> bool {
    std::fs::read_dir(cache.join("mlp/1")).is_ok_and(|mut d| d.next().is_some())
}

fn mlp_id() -> ModelId {
    ModelId::new("mlp".parse().unwrap(), Version::new(1).unwrap())
}

/// One fault, met once (retried away) and then for good (503 within the time, nothing
/// cached), and the recovery after it, in the same environment.
async fn survives(fault: Fault) {
    let rig = Rig::new().await;
    let (body, case) = mlp_case();

    // Once: a retry (or a resumed body) gets past it.
    let (predictor, cache) = rig.environment().await;
    rig.proxy.inject(Injection::next(1, fault).on_paths_containing(MODEL_KEY));
    let once = infer(&predictor, &body).await;
    assert_eq!(once.status, 200, "{fault:?} once: {}", once.body);
    assert!(once.took <= answer_within(), "{fault:?} once: 200 after {:?}", once.took);
    assert_matches_reference(&case, &once.body);
    assert_eq!(rig.proxy.faulted().len(), 1);
    assert_disk_cache_clean(cache.path());

    // For good, in a fresh environment: a 503 in time, after every attempt (retries of the
    // call, or resumptions of the body) met the fault; and nothing cached.
    let (predictor, cache) = rig.environment().await;
    rig.proxy.inject(Injection::always(fault).on_paths_containing(MODEL_KEY));
    let down = infer(&predictor, &body).await;
    assert_unavailable(&down, fault);
    assert_eq!(rig.proxy.faulted().len(), 1 + settings().max_attempts as usize, "{fault:?}");
    assert!(
        !predictor.registry().is_loaded(&mlp_id()).await,
        "{fault:?}: a failed load was cached"
    );
    assert!(!is_cached_on_disk(cache.path()), "{fault:?}: a failed download reached the disk");

    // Recovery: the same environment serves the next request.
    rig.proxy.pass_through();
    let after = infer(&predictor, &body).await;
    assert_eq!(after.status, 200, "{fault:?} after recovery: {}", after.body);
    assert_matches_reference(&case, &after.body);
    assert!(is_cached_on_disk(cache.path()));
    assert_disk_cache_clean(cache.path());
    eprintln!(
        "S3 fault {fault:?}: once -> {} in {} ms; for good -> {} in {} ms (Retry-After {}); \
         after recovery -> {} in {} ms",
        once.status,
        once.took.as_millis(),
        down.status,
        down.took.as_millis(),
        down.retry_after.as_deref().unwrap_or("-"),
        after.status,
        after.took.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_down_bursts_are_retried_then_503_with_retry_after() {
    survives(Fault::SlowDown).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_resets_mid_body_are_resumed_then_503() {
    survives(Fault::ResetMidBody).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stall_before_the_first_byte_is_cut_by_the_attempt_timeout() {
    survives(Fault::Stall(Duration::from_secs(5))).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stall_mid_body_is_cut_by_the_idle_timeout() {
    survives(Fault::StallMidBody(Duration::from_secs(5))).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_bodies_never_reach_the_cache() {
    survives(Fault::TruncatedBody).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_during_a_cold_load_is_503_and_is_not_cached() {
    survives(Fault::Outage).await;
}

/// A model fetched in four ranged parts, one of which fails: retried by the S3 client once
/// (200), for good a 503 in time, the other parts' bytes kept nowhere; then recovery.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_part_is_retried_then_503_and_the_other_parts_are_not_kept() {
    let rig = Rig::new().await;
    let (body, case) = mlp_case();
    let size = model_bytes("mlp").len() as u64;
    let part = size / 4 + 1; // four parts, the last reaching one byte past the end
    let third = Injection::next(1, Fault::Outage).on_paths_containing(MODEL_KEY);

    let (predictor, cache) = rig.environment_in_parts(part).await;
    rig.proxy.inject(third.on_ranges_from(2 * part));
    let before = rig.model_gets();
    let once = infer(&predictor, &body).await;
    assert_eq!(once.status, 200, "{}", once.body);
    assert_matches_reference(&case, &once.body);
    // The four parts, and the failed one again.
    assert_eq!(rig.model_gets() - before, 5, "{:?}", rig.proxy.requests());
    assert_eq!(rig.proxy.faulted().len(), 1);
    assert_disk_cache_clean(cache.path());

    let (predictor, cache) = rig.environment_in_parts(part).await;
    let always = Injection::always(Fault::Outage).on_paths_containing(MODEL_KEY);
    rig.proxy.inject(always.on_ranges_from(2 * part));
    let down = infer(&predictor, &body).await;
    assert_unavailable(&down, Fault::Outage);
    assert_eq!(rig.proxy.faulted().len(), 1 + settings().max_attempts as usize);
    assert!(!predictor.registry().is_loaded(&mlp_id()).await, "a failed load was cached");
    assert!(!is_cached_on_disk(cache.path()), "parts of a failed fetch reached the disk cache");
    let leftovers: Vec<_> = walk(cache.path());
    assert!(leftovers.is_empty(), "a failed fetch left {leftovers:?}");

    rig.proxy.pass_through();
    let after = infer(&predictor, &body).await;
    assert_eq!(after.status, 200, "{}", after.body);
    assert_matches_reference(&case, &after.body);
    assert_disk_cache_clean(cache.path());
}

/// Writes `parts` full parts of distinct bytes (and a short tail) through a streaming write
/// and completes it; the first error, of a write or of the completion, is the result.
async fn write_parts(store: &S3Store, key: &str, parts: u8) -> Result<Vec<u8>, StoreError> {
    let mut written = Vec::new();
    let mut writer = store.put_streaming(key).await?;
    for part in 0..parts {
        let bytes = vec![b'a' + part; MULTIPART_PART_BYTES];
        written.extend_from_slice(&bytes);
        if let Err(err) = writer.write(Bytes::from(bytes)).await {
            let _ = writer.abort().await;
            return Err(err);
        }
    }
    writer.write(Bytes::from_static(b"tail")).await?;
    written.extend_from_slice(b"tail");
    writer.complete().await?;
    Ok(written)
}

/// Output parts go out while the next ones gather: a part that fails once is retried and
/// the object completes whole; a part that fails for good fails the write after it (or the
/// completion), the upload is aborted and no object is visible.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_output_part_is_retried_then_the_write_fails_and_nothing_is_visible() {
    let rig = Rig::new().await;
    let store = rig.store().await;
    let client = maas_tests::s3_client().await;
    let open_uploads = || async {
        let open = client.list_multipart_uploads().bucket(&rig.bucket).send().await.unwrap();
        open.uploads().len()
    };

    let second = Injection::next(1, Fault::Outage).on_paths_containing("partNumber=2");
    rig.proxy.inject(second);
    let written =
        write_parts(&store, "out/retried.jsonl", 4).await.expect("one failure is retried");
    assert_eq!(rig.proxy.faulted().len(), 1, "{:?}", rig.proxy.requests());
    assert_eq!(read_all(&store, "out/retried.jsonl").await, written);

    rig.proxy.inject(Injection::always(Fault::Outage).on_paths_containing("partNumber=2"));
    let failed = write_parts(&store, "out/failed.jsonl", 4).await;
    assert!(matches!(failed, Err(StoreError::Unavailable { .. })), "{failed:?}");
    assert_eq!(rig.proxy.faulted().len(), 1 + settings().max_attempts as usize);
    assert!(matches!(store.head("out/failed.jsonl").await, Err(StoreError::NotFound { .. })));
    assert_eq!(open_uploads().await, 0, "the failed upload was not aborted");
}

async fn read_all(store: &S3Store, key: &str) -> Vec<u8> {
    store.get(key).await.unwrap().bytes().await.unwrap().to_vec()
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_waiting_on_a_failing_cold_load_are_all_released() {
    let rig = Rig::new().await;
    let (body, case) = mlp_case();
    let (predictor, cache) = rig.environment().await;
    let concurrent = |predictor: &Predictor| {
        futures::future::join_all((0..8).map(|_| {
            let predictor = predictor.clone();
            let body = body.clone();
            tokio::spawn(async move { infer(&predictor, &body).await })
        }))
    };

    let stall = Fault::Stall(Duration::from_secs(5));
    rig.proxy.inject(Injection::always(stall).on_paths_containing(MODEL_KEY));
    for answer in concurrent(&predictor).await {
        assert_unavailable(&answer.unwrap(), stall);
    }
    // One load served them all: its attempts reached S3, not one load per request.
    let attempts = rig.model_gets();
    assert!(
        (1..=settings().max_attempts as usize).contains(&attempts),
        "{attempts} model GETs for 8 requests"
    );
    assert!(!predictor.registry().is_loaded(&mlp_id()).await);
    assert!(!is_cached_on_disk(cache.path()));

    rig.proxy.pass_through();
    for answer in concurrent(&predictor).await {
        let answer = answer.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_matches_reference(&case, &answer.body);
    }
    assert_eq!(rig.model_gets(), attempts + 1, "the recovered load was not shared");
    assert_disk_cache_clean(cache.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn model_upload_answers_503_with_retry_after_while_the_store_is_down() {
    let rig = Rig::new().await;
    let cache = tempfile::tempdir().unwrap();
    let registry = Arc::new(maas::Registry::new(
        Arc::new(rig.store().await),
        &maas_tests::cache_settings(cache.path()),
    ));
    let publisher =
        maas::Publisher::new(registry, maas_tests::publish_limits(), Duration::from_secs(900));
    let upload = || async {
        let started = Instant::now();
        let request =
            maas_tests::request("PUT", "/models/mlp/versions/2", Some(model_bytes("mlp").to_vec()));
        let response = model_upload::handler::handle(&publisher, request).await;
        let took = started.elapsed();
        let retry_after =
            response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        let (status, body) = maas_tests::status_and_json(response);
        Answer { status, retry_after, body, took }
    };

    rig.proxy.inject(Injection::always(Fault::Outage));
    let down = upload().await;
    assert_unavailable(&down, Fault::Outage);

    // Throttled writes are retried: the model's PUT meets two SlowDowns and still lands.
    let faulted = rig.proxy.faulted().len();
    rig.proxy
        .inject(Injection::next(2, Fault::SlowDown).on_paths_containing("models/mlp/2/model.onnx"));
    let published = upload().await;
    assert_eq!(published.status, 201, "{}", published.body);
    assert_eq!(rig.proxy.faulted().len(), faulted + 2);
    let stored = fresh_store_of(&rig.bucket).await;
    let bytes = maas::store::ObjectStore::get(&stored, "models/mlp/2/model.onnx")
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes, model_bytes("mlp"));
    eprintln!(
        "S3 fault Outage at upload -> {} in {} ms (Retry-After {}); SlowDown x2 -> {} in {} ms",
        down.status,
        down.took.as_millis(),
        down.retry_after.as_deref().unwrap_or("-"),
        published.status,
        published.took.as_millis()
    );
}

/// The bucket read directly, without the proxy.
async fn fresh_store_of(bucket: &str) -> S3Store {
    S3Store::new(maas_tests::s3_client().await, bucket, "maas")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_predict_binary_answers_503_in_its_configured_time_and_recovers() {
    let rig = Rig::new().await;
    let cache = tempfile::tempdir().unwrap();
    let endpoint = rig.proxy.endpoint();
    let location = format!("s3://{}/maas", rig.bucket);
    let mut env = crate::processes::s3_env(&endpoint);
    env.extend([
        ("MAAS_S3_CONNECT_TIMEOUT_MS", "500"),
        ("MAAS_S3_ATTEMPT_TIMEOUT_MS", "700"),
        ("MAAS_S3_OPERATION_TIMEOUT_MS", "2000"),
        ("MAAS_S3_BODY_IDLE_TIMEOUT_MS", "500"),
        ("MAAS_S3_MAX_ATTEMPTS", "3"),
        ("MAAS_S3_RETRY_MODE", "adaptive"),
        ("MAAS_S3_INITIAL_BACKOFF_MS", "50"),
        ("MAAS_S3_MAX_BACKOFF_MS", "200"),
    ]);
    let server = crate::processes::start(&["--store", &location], &env, &cache).await;
    let (body, case) = mlp_case();
    let infer = || async {
        let started = Instant::now();
        let (status, headers, served) = maas_tests::http_exchange(
            &server.addr,
            "POST",
            "/v2/models/mlp/versions/1/infer",
            &[("content-type", "application/json")],
            &body,
        )
        .await;
        let retry_after = headers.into_iter().find(|(name, _)| name == "retry-after");
        (
            status,
            retry_after.map(|(_, v)| v),
            serde_json::from_slice::<Value>(&served).unwrap(),
            started.elapsed(),
        )
    };

    // S3 accepts and never answers: cut at the configured 2 s, not the SDK's default.
    rig.proxy.inject(Injection::always(Fault::Stall(Duration::from_secs(5))));
    let (status, retry_after, served, took) = infer().await;
    assert_eq!(status, 503, "{served}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(took < Duration::from_secs(3), "503 after {took:?}");

    rig.proxy.pass_through();
    let (status, _, served, recovered) = infer().await;
    assert_eq!(status, 200, "{served}");
    assert_matches_reference(&case, &served);
    eprintln!(
        "S3 fault Stall(5s) on the predict binary -> 503 in {} ms; after recovery -> 200 in {} ms",
        took.as_millis(),
        recovered.as_millis()
    );
}
