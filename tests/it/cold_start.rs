//! The cold-start cache against a real S3 server: the first request fetches, later ones touch
//! no store; the warm path outlives the S3 object; the disk cache is verified; concurrent
//! cold requests load once; the memory cache is bounded.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use maas::names::{ModelId, Version};
use maas::store::SharedStore;
use maas::{Predictor, Registry};
use maas_tests::{
    cache_settings, call, cases, fresh_s3_store, model_bytes, predictor, publish, s3_client,
    CountingStore,
};
use serde_json::{json, Value};

use crate::reference::assert_matches_reference;

fn mlp_request() -> (Vec<u8>, maas_tests::Case) {
    let case =
        cases().into_iter().find(|c| c.model == "mlp" && c.batch == 1).expect("mlp batch 1 case");
    (json!({ "inputs": case.inputs }).to_string().into_bytes(), case)
}

/// A bucket with mlp published as version 1, and the S3 store over it.
async fn published_mlp() -> maas::store::S3Store {
    let store = fresh_s3_store().await;
    let cache = tempfile::tempdir().unwrap();
    publish(&predictor(Arc::new(store.clone()), &cache), "mlp", 1, model_bytes("mlp")).await;
    store
}

async fn infer(predictor: &Predictor, version: &str, body: &[u8]) -> Value {
    let path = format!("/v2/models/mlp/versions/{version}/infer");
    let (status, served) = call(predictor, "POST", &path, Some(body.to_vec())).await;
    assert_eq!(status, 200, "{served}");
    served
}

#[tokio::test(flavor = "multi_thread")]
async fn first_request_fetches_from_s3_and_the_second_makes_no_store_call() {
    let counting = CountingStore::new(Arc::new(published_mlp().await));
    let cache = tempfile::tempdir().unwrap();
    let predictor = predictor(counting.clone(), &cache);
    let (body, case) = mlp_request();

    assert_eq!(counting.total(), 0);
    assert_matches_reference(&case, &infer(&predictor, "1", &body).await);
    assert_eq!(counting.gets_of("models/mlp/1/manifest.json"), 1);
    assert_eq!(counting.gets_of("models/mlp/1/model.onnx"), 1);

    let after_first = counting.total();
    assert_matches_reference(&case, &infer(&predictor, "1", &body).await);
    assert_eq!(counting.total(), after_first, "the warm path called the store");

    // "latest" is resolved once per TTL: one GET of its pointer (no listing), then no calls.
    infer_latest(&predictor, &body).await;
    let after_latest = counting.total();
    assert_eq!(counting.total(), after_first + 1);
    assert_eq!(counting.gets_of("models/mlp/latest"), 1);
    assert_eq!(counting.lists.load(Ordering::SeqCst), 0);
    infer_latest(&predictor, &body).await;
    assert_eq!(counting.total(), after_latest, "a warm `latest` request called the store");
}

async fn infer_latest(predictor: &Predictor, body: &[u8]) {
    let (status, served) =
        call(predictor, "POST", "/v2/models/mlp/infer", Some(body.to_vec())).await;
    assert_eq!(status, 200, "{served}");
    assert_eq!(served["model_version"], "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_path_survives_deleting_the_model_from_s3() {
    let store = published_mlp().await;
    let cache = tempfile::tempdir().unwrap();
    let predictor = predictor(Arc::new(store.clone()), &cache);
    let (body, case) = mlp_request();
    infer(&predictor, "1", &body).await;

    let client = s3_client().await;
    for key in ["maas/models/mlp/1/model.onnx", "maas/models/mlp/1/manifest.json"] {
        client.delete_object().bucket(store.bucket()).key(key).send().await.unwrap();
    }
    assert_matches_reference(&case, &infer(&predictor, "1", &body).await);

    // A fresh environment, by contrast, finds nothing.
    let fresh_cache = tempfile::tempdir().unwrap();
    let cold = maas_tests::predictor(Arc::new(store), &fresh_cache);
    let (status, _) = call(&cold, "POST", "/v2/models/mlp/versions/1/infer", Some(body)).await;
    assert_eq!(status, 404);
}

fn cached_model_file(cache: &tempfile::TempDir) -> std::path::PathBuf {
    let dir = cache.path().join("mlp").join("1");
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_or_truncated_disk_cache_files_are_fetched_again() {
    let counting = CountingStore::new(Arc::new(published_mlp().await));
    let cache = tempfile::tempdir().unwrap();
    let (body, case) = mlp_request();
    let original = model_bytes("mlp");
    // Each predictor is a fresh execution environment sharing the disk cache.
    let fresh = || predictor(counting.clone() as SharedStore, &cache);

    infer(&fresh(), "1", &body).await;
    assert_eq!(counting.gets_of("models/mlp/1/model.onnx"), 1);
    let file = cached_model_file(&cache);

    // An intact cached file is used without downloading.
    infer(&fresh(), "1", &body).await;
    assert_eq!(counting.gets_of("models/mlp/1/model.onnx"), 1);

    // A flipped byte is detected; the file is fetched again and repaired.
    let mut corrupt = original.to_vec();
    corrupt[original.len() / 2] ^= 0xff;
    std::fs::write(&file, &corrupt).unwrap();
    assert_matches_reference(&case, &infer(&fresh(), "1", &body).await);
    assert_eq!(counting.gets_of("models/mlp/1/model.onnx"), 2);
    assert_eq!(std::fs::read(&file).unwrap(), original);

    // So is a truncated one.
    std::fs::write(&file, &original[..original.len() / 3]).unwrap();
    assert_matches_reference(&case, &infer(&fresh(), "1", &body).await);
    assert_eq!(counting.gets_of("models/mlp/1/model.onnx"), 3);
    assert_eq!(std::fs::read(&file).unwrap(), original);
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_in_s3_that_do_not_match_the_manifest_are_refused() {
    let store = published_mlp().await;
    let client = s3_client().await;
    let mut tampered = model_bytes("mlp").to_vec();
    tampered[100] ^= 0x01;
    client
        .put_object()
        .bucket(store.bucket())
        .key("maas/models/mlp/1/model.onnx")
        .body(tampered.into())
        .send()
        .await
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let predictor = predictor(Arc::new(store), &cache);
    let (body, _) = mlp_request();
    let (status, served) =
        call(&predictor, "POST", "/v2/models/mlp/versions/1/infer", Some(body)).await;
    assert_eq!(status, 500);
    assert!(
        served["error"].as_str().unwrap().starts_with("model `mlp` version 1 cannot be served"),
        "{served}"
    );
    // Nothing unverified was left in the cache for the next request to trust.
    let leftovers: Vec<_> =
        std::fs::read_dir(cache.path().join("mlp/1")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_cold_requests_load_the_model_once() {
    let counting = CountingStore::new(Arc::new(published_mlp().await));
    let cache = tempfile::tempdir().unwrap();
    let predictor = predictor(counting.clone(), &cache);
    let (body, case) = mlp_request();
    let requests = (0..8).map(|_| {
        let predictor = predictor.clone();
        let body = body.clone();
        tokio::spawn(async move { infer(&predictor, "1", &body).await })
    });
    for served in futures::future::join_all(requests).await {
        assert_matches_reference(&case, &served.unwrap());
    }
    assert_eq!(counting.gets_of("models/mlp/1/model.onnx"), 1);
    assert_eq!(counting.gets_of("models/mlp/1/manifest.json"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_cache_evicts_the_least_recently_used_model_beyond_its_budget() {
    let store: SharedStore = Arc::new(maas::store::MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let loader = predictor(store.clone(), &cache);
    for (name, model) in [("a", "mlp"), ("b", "mlp"), ("c", "mlp")] {
        publish(&loader, name, 1, model_bytes(model)).await;
    }
    let id = |name: &str| ModelId::new(name.parse().unwrap(), Version::new(1).unwrap());
    // Room for two loaded copies of the MLP, not three: models weigh what they hold loaded.
    let weight = loader.registry().load(&id("a")).await.unwrap().weight();
    let mut settings = cache_settings(cache.path());
    settings.memory_bytes = 2 * weight + weight / 2;
    let registry = Registry::new(store, &settings);

    // The cache records accesses asynchronously; `memory_usage` settles them after each step.
    for name in ["a", "b", "a", "c"] {
        registry.load(&id(name)).await.unwrap(); // the second `a` makes b the least recent
        registry.memory_usage().await;
    }
    let (entries, bytes) = registry.memory_usage().await;
    assert_eq!(entries, 2);
    assert_eq!(bytes, 2 * weight);
    assert!(registry.is_loaded(&id("a")).await, "the recently used model was evicted");
    assert!(!registry.is_loaded(&id("b")).await, "the least recently used model stayed");
    assert!(registry.is_loaded(&id("c")).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn preloaded_models_are_ready_before_the_first_request() {
    let counting = CountingStore::new(Arc::new(published_mlp().await));
    let cache = tempfile::tempdir().unwrap();
    let predictor = predictor(counting.clone(), &cache);
    let config = maas::Config::from_lookup(|name| {
        (name == "MAAS_STORE" || name == "MAAS_PRELOAD").then(|| {
            if name == "MAAS_STORE" {
                "memory://".to_owned()
            } else {
                "mlp:1, missing".to_owned()
            }
        })
    })
    .unwrap();
    predictor.preload(&config.preload, &config.preload_batches).await;
    let id = ModelId::new("mlp".parse().unwrap(), Version::new(1).unwrap());
    assert!(predictor.registry().is_loaded(&id).await);
    let before = counting.total();
    let (body, _) = mlp_request();
    infer(&predictor, "1", &body).await;
    assert_eq!(counting.total(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_cache_keeps_within_its_budget_by_dropping_the_oldest_file() {
    let store: SharedStore = Arc::new(maas::store::MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let loader = predictor(store.clone(), &cache);
    let size = model_bytes("mlp").len() as u64;
    for name in ["a", "b"] {
        publish(&loader, name, 1, model_bytes("mlp")).await;
    }
    let mut settings = cache_settings(cache.path());
    settings.disk_bytes = size + size / 2; // room for one file
    let registry = Registry::new(store, &settings);
    let id = |name: &str| ModelId::new(name.parse().unwrap(), Version::new(1).unwrap());
    registry.load(&id("a")).await.unwrap();
    registry.load(&id("b")).await.unwrap();
    let files =
        |name: &str| std::fs::read_dir(cache.path().join(name).join("1")).map_or(0, |d| d.count());
    assert_eq!(files("a"), 0, "the older file stayed");
    assert_eq!(files("b"), 1, "the newest file was evicted");
}
