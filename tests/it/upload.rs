//! model-upload against the real S3 server: direct and presigned uploads, immutability under
//! races, aliases, deletion, and a corpus of files that must be refused.

use std::sync::Arc;
use std::time::Duration;

use maas::store::{ObjectStore, S3Store, SharedStore};
use maas::{Predictor, Registry};
use maas_tests::{
    cache_settings, call, call_upload, cases, fresh_s3_store, http_request, model_bytes,
    models_dir, publisher, s3_client,
};
use serde_json::{json, Value};

use crate::reference::assert_matches_reference;

/// A predictor whose `latest` and alias resolutions last `ttl`.
fn predictor_with_ttl(store: SharedStore, cache: &tempfile::TempDir, ttl: Duration) -> Predictor {
    let mut settings = cache_settings(cache.path());
    settings.resolve_ttl = ttl;
    Predictor::new(
        Arc::new(Registry::new(store, &settings)),
        maas::predictor::RequestLimits::default(),
    )
}

fn mlp_case() -> (Vec<u8>, maas_tests::Case) {
    let case = cases().into_iter().find(|c| c.model == "mlp" && c.batch == 8).unwrap();
    (json!({ "inputs": case.inputs }).to_string().into_bytes(), case)
}

async fn objects_under(store: &S3Store, prefix: &str) -> Vec<String> {
    store.list(prefix).await.unwrap().into_iter().map(|o| o.key).collect()
}

/// PUTs `bytes` to a presigned URL, as a client does, and returns the S3 server's status.
pub(crate) async fn put_presigned(url: &str, bytes: &[u8]) -> u16 {
    let rest = url.strip_prefix("http://").expect("a local http URL");
    let (addr, path) = rest.split_at(rest.find('/').expect("a path"));
    let headers = [("content-type", "application/octet-stream")];
    http_request(addr, "PUT", path, &headers, bytes).await.0
}

/// Starts a presigned upload of model `name`, PUTs `bytes` to it, and returns the path that
/// commits it.
async fn stage(publisher: &maas::Publisher, name: &str, bytes: &[u8]) -> String {
    let (status, ticket) =
        call_upload(publisher, "POST", &format!("/models/{name}/uploads"), None).await;
    assert_eq!(status, 201, "{ticket}");
    assert_eq!(put_presigned(ticket["url"].as_str().unwrap(), bytes).await, 200);
    format!("/models/{name}/uploads/{}/commit", ticket["upload_id"].as_str().unwrap())
}

async fn served_version(predictor: &Predictor, version: &str) -> (u16, Value) {
    let (body, _) = mlp_case();
    call(predictor, "POST", &format!("/v2/models/mlp/versions/{version}/infer"), Some(body)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn uploaded_versions_and_aliases_are_served_by_predict() {
    let store = fresh_s3_store().await;
    let shared: SharedStore = Arc::new(store.clone());
    let cache = tempfile::tempdir().unwrap();
    let publisher = publisher(shared.clone(), &cache);
    let predict_cache = tempfile::tempdir().unwrap();
    let predictor = predictor_with_ttl(shared, &predict_cache, Duration::from_millis(300));

    let (status, manifest) =
        call_upload(&publisher, "PUT", "/models/mlp/versions/1", Some(model_bytes("mlp").to_vec()))
            .await;
    assert_eq!(status, 201, "{manifest}");
    assert_eq!(manifest["version"], 1);
    assert_eq!(manifest["size"], model_bytes("mlp").len());
    assert_eq!(manifest["signature"]["inputs"][0]["shape"], json!([-1, 16]));
    assert_eq!(manifest["opset"], 17);
    assert!(manifest["validation"]["trial_ms"].as_f64().unwrap() >= 0.0, "{manifest}");
    assert!(manifest["created"].as_str().unwrap().ends_with('Z'), "{manifest}");

    let (body, case) = mlp_case();
    let (status, served) =
        call(&predictor, "POST", "/v2/models/mlp/infer", Some(body.clone())).await;
    assert_eq!(status, 200, "{served}");
    assert_eq!(served["model_version"], "1");
    assert_matches_reference(&case, &served);

    // POST takes the next free version; `latest` follows once its resolution expires.
    let (status, manifest) =
        call_upload(&publisher, "POST", "/models/mlp/versions", Some(model_bytes("mlp").to_vec()))
            .await;
    assert_eq!((status, manifest["version"].clone()), (201, json!(2)));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, served) = call(&predictor, "POST", "/v2/models/mlp/infer", Some(body.clone())).await;
    assert_eq!(served["model_version"], "2");

    // Aliases point at published versions only, and predict follows them after the TTL.
    let (status, alias) = call_upload(
        &publisher,
        "PUT",
        "/models/mlp/aliases/prod",
        Some(br#"{"version": 1}"#.to_vec()),
    )
    .await;
    assert_eq!((status, alias), (200, json!({"name": "mlp", "alias": "prod", "version": 1})));
    assert_eq!(served_version(&predictor, "prod").await.1["model_version"], "1");
    call_upload(&publisher, "PUT", "/models/mlp/aliases/prod", Some(br#"{"version": 2}"#.to_vec()))
        .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(served_version(&predictor, "prod").await.1["model_version"], "2");
    let (status, error) = call_upload(
        &publisher,
        "PUT",
        "/models/mlp/aliases/prod",
        Some(br#"{"version": 7}"#.to_vec()),
    )
    .await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["error"], "model `mlp` has no version 7");
    for bad in [&b"{}"[..], b"{\"version\": 0}", b"{\"version\": \"2\"}", b"nope"] {
        let (status, error) =
            call_upload(&publisher, "PUT", "/models/mlp/aliases/prod", Some(bad.to_vec())).await;
        assert_eq!(status, 400, "{error}");
    }

    // Listing and detail.
    assert_eq!(
        call_upload(&publisher, "GET", "/models", None).await,
        (200, json!({"models": ["mlp"]}))
    );
    let (status, detail) = call_upload(&publisher, "GET", "/models/mlp", None).await;
    assert_eq!(status, 200);
    assert_eq!(detail["aliases"], json!({"prod": 2}));
    assert_eq!(
        detail["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["version"].clone())
            .collect::<Vec<_>>(),
        [json!(1), json!(2)]
    );

    // A version behind an alias cannot be deleted; once the alias is gone it can.
    let (status, error) = call_upload(&publisher, "DELETE", "/models/mlp/versions/2", None).await;
    assert_eq!(status, 409);
    assert!(error["error"].as_str().unwrap().contains("alias(es) prod"), "{error}");
    assert_eq!(call_upload(&publisher, "DELETE", "/models/mlp/aliases/prod", None).await.0, 200);
    assert_eq!(call_upload(&publisher, "DELETE", "/models/mlp/aliases/prod", None).await.0, 404);
    assert_eq!(call_upload(&publisher, "DELETE", "/models/mlp/versions/2", None).await.0, 200);
    assert_eq!(call_upload(&publisher, "DELETE", "/models/mlp/versions/2", None).await.0, 404);
    assert_eq!(objects_under(&store, "models/mlp/2/").await, Vec::<String>::new());
    let fresh_cache = tempfile::tempdir().unwrap();
    let fresh = predictor_with_ttl(Arc::new(store.clone()), &fresh_cache, Duration::from_secs(30));
    assert_eq!(served_version(&fresh, "2").await.0, 404);
    assert_eq!(served_version(&fresh, "latest").await.1["model_version"], "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn published_versions_are_immutable_even_under_racing_uploads() {
    let store = fresh_s3_store().await;
    let cache = tempfile::tempdir().unwrap();
    let publisher = publisher(Arc::new(store.clone()), &cache);
    let client = s3_client().await;
    for version in 1..=4 {
        let path = format!("/models/m/versions/{version}");
        let contenders = ["mlp", "cnn"].map(|model| {
            let (publisher, path) = (publisher.clone(), path.clone());
            tokio::spawn(async move {
                call_upload(&publisher, "PUT", &path, Some(model_bytes(model).to_vec())).await
            })
        });
        let mut results: Vec<(u16, Value)> =
            futures::future::join_all(contenders).await.into_iter().map(Result::unwrap).collect();
        results.sort_by_key(|(status, _)| *status);
        assert_eq!((results[0].0, results[1].0), (201, 409), "version {version}: {results:?}");
        let winner = &results[0].1;
        let stored = client
            .get_object()
            .bucket(store.bucket())
            .key(format!("maas/models/m/{version}/model.onnx"))
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        assert_eq!(maas::disk_cache::sha256_hex(&stored), winner["sha256"].as_str().unwrap());
    }
    // A later upload of a published version changes nothing either.
    let before = objects_under(&store, "models/m/1/").await;
    let (status, error) = call_upload(
        &publisher,
        "PUT",
        "/models/m/versions/1",
        Some(model_bytes("forest").to_vec()),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(
        error["error"],
        "version 1 of model `m` is already published; versions are immutable"
    );
    assert_eq!(objects_under(&store, "models/m/1/").await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn presigned_upload_is_committed_and_served() {
    let store = fresh_s3_store().await;
    let shared: SharedStore = Arc::new(store.clone());
    let cache = tempfile::tempdir().unwrap();
    let publisher = publisher(shared.clone(), &cache);

    let (status, ticket) = call_upload(&publisher, "POST", "/models/big/uploads", None).await;
    assert_eq!(status, 201, "{ticket}");
    assert_eq!(ticket["method"], "PUT");
    assert_eq!(ticket["expires_in_seconds"], 900);
    let url = ticket["url"].as_str().unwrap();
    assert!(url.contains("X-Amz-Expires=900"), "{url}");
    let upload_id = ticket["upload_id"].as_str().unwrap();
    assert!(
        url.contains(&format!("/maas/staging/big/{upload_id}?")),
        "the URL is not for the one staging key: {url}"
    );

    // The client PUTs the file straight to S3 with the URL.
    assert_eq!(put_presigned(url, &model_bytes("mlp")).await, 200);

    let commit = format!("/models/big/uploads/{upload_id}/commit");
    let (status, manifest) = call_upload(&publisher, "POST", &commit, None).await;
    assert_eq!(status, 201, "{manifest}");
    assert_eq!(manifest["version"], 1);
    assert_eq!(manifest["sha256"], maas::disk_cache::sha256_hex(&model_bytes("mlp")));
    assert_eq!(
        objects_under(&store, "staging/").await,
        Vec::<String>::new(),
        "the staged file stayed"
    );
    let (status, error) = call_upload(&publisher, "POST", &commit, None).await;
    assert_eq!(status, 404, "{error}");
    assert!(error["error"].as_str().unwrap().contains("not found"), "{error}");

    let predict_cache = tempfile::tempdir().unwrap();
    let predictor = maas_tests::predictor(shared, &predict_cache);
    let (body, case) = mlp_case();
    let (status, served) = call(&predictor, "POST", "/v2/models/big/infer", Some(body)).await;
    assert_eq!(status, 200, "{served}");
    assert_matches_reference(&case, &served);

    // A commit may name its version; a bad upload id is refused before any I/O.
    let commit = stage(&publisher, "big", &model_bytes("mlp")).await;
    let (status, manifest) =
        call_upload(&publisher, "POST", &commit, Some(br#"{"version": 5}"#.to_vec())).await;
    assert_eq!((status, manifest["version"].clone()), (201, json!(5)));
    assert_eq!(
        call_upload(&publisher, "POST", "/models/big/uploads/..%2F..%2Fmodels/commit", None)
            .await
            .0,
        400
    );
}

#[tokio::test]
async fn presigned_uploads_need_an_s3_store() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let publisher = publisher(Arc::new(maas::store::LocalStore::new(dir.path())), &cache);
    let (status, error) = call_upload(&publisher, "POST", "/models/big/uploads", None).await;
    assert_eq!(status, 501);
    assert!(error["error"].as_str().unwrap().contains("presigned uploads"), "{error}");
}

/// Files that must never be published, and a piece of the message each must get.
fn refusal_corpus() -> Vec<(String, Vec<u8>, u16, &'static str)> {
    let refuse = models_dir().join("refuse");
    let file =
        |name: &str| std::fs::read(refuse.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mlp = model_bytes("mlp");
    vec![
        ("text".into(), file("text.onnx"), 422, "not an ONNX"),
        ("random bytes".into(), file("random.onnx"), 422, "not an ONNX"),
        ("truncated ONNX".into(), mlp[..mlp.len() / 2].to_vec(), 422, "invalid model"),
        ("external data".into(), file("external_data.onnx"), 422, "references external data"),
        (
            "huge declared shape".into(),
            file("huge_shape.onnx"),
            422,
            "over the limit of 268435456 bytes per tensor",
        ),
        ("unknown operator".into(), file("unknown_op.onnx"), 422, "FancyOp"),
        ("broken graph".into(), file("bad_graph.onnx"), 422, "missing"),
        ("tree with a cycle".into(), file("cyclic_tree.onnx"), 422, "tree 0 has a cycle"),
        ("sequence output".into(), file("sequence.onnx"), 422, "`y` is not a tensor"),
        (
            "string operator tract lacks".into(),
            file("label_encoder.onnx"),
            422,
            "node `encode` (LabelEncoder) works on string tensors with operators tract cannot run",
        ),
        (
            "string labels tract cannot type".into(),
            file("string_linear.onnx"),
            422,
            "LinearClassifier",
        ),
        ("empty body".into(), Vec::new(), 400, "the request body is empty"),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_files_get_their_4xx_and_leave_nothing_under_models() {
    let store = fresh_s3_store().await;
    let cache = tempfile::tempdir().unwrap();
    let publisher = publisher(Arc::new(store.clone()), &cache);
    for (what, bytes, status, message) in refusal_corpus() {
        let (got, error) =
            call_upload(&publisher, "PUT", "/models/bad/versions/1", Some(bytes)).await;
        let text = error["error"].as_str().unwrap_or_default();
        assert_eq!(got, status, "{what}: {text}");
        assert!(text.contains(message), "{what}: {text:?} does not contain {message:?}");
    }
    // Over the size limit: 413 before anything is parsed.
    let mut limits = maas_tests::publish_limits();
    limits.max_model_bytes = 1000;
    let small = maas::Publisher::new(publisher.registry().clone(), limits, Duration::from_secs(60));
    let (status, error) =
        call_upload(&small, "PUT", "/models/bad/versions/1", Some(model_bytes("mlp").to_vec()))
            .await;
    assert_eq!(status, 413, "{error}");
    assert_eq!(
        error["error"],
        format!("model is {} bytes, over the limit of 1000 bytes", model_bytes("mlp").len())
    );

    // The same through a presigned upload: refused at commit, and the staged file is gone.
    let commit = stage(&publisher, "bad", b"definitely not onnx").await;
    assert_eq!(call_upload(&publisher, "POST", &commit, None).await.0, 422);

    assert_eq!(objects_under(&store, "models/").await, Vec::<String>::new());
    assert_eq!(objects_under(&store, "staging/").await, Vec::<String>::new());
    assert_eq!(call_upload(&publisher, "GET", "/models/bad", None).await.0, 404);
}

#[tokio::test]
async fn bad_upload_requests_are_4xx() {
    let cache = tempfile::tempdir().unwrap();
    let publisher = publisher(Arc::new(maas::store::MemoryStore::new()), &cache);
    let cases: [(&str, &str, u16, &str); 7] = [
        ("PUT", "/models/.x/versions/1", 400, "invalid model name"),
        ("PUT", "/models/x/versions/0", 400, "invalid model version"),
        ("PUT", "/models/x/versions/latest", 400, "invalid model version"),
        ("PUT", "/models/x/aliases/latest", 400, "invalid alias"),
        ("GET", "/models/x/versions/1", 405, "use PUT, DELETE"),
        ("POST", "/models/x/uploads/abc/commit", 400, "invalid upload id"),
        ("GET", "/nothing", 404, "no route"),
    ];
    for (method, path, status, message) in cases {
        let (got, error) =
            call_upload(&publisher, method, path, Some(b"{\"version\": 1}".to_vec())).await;
        let text = error["error"].as_str().unwrap_or_default();
        assert_eq!(got, status, "{method} {path}: {text}");
        assert!(text.contains(message), "{method} {path}: {text:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sample_upload_event_publishes_the_base64_body() {
    let path = maas_tests::repo_root().join("tests/events/upload-put-version.json");
    let request = lambda_http::request::from_str(&std::fs::read_to_string(path).unwrap())
        .expect("a valid event");
    let cache = tempfile::tempdir().unwrap();
    let store = Arc::new(maas::store::MemoryStore::new());
    let publisher = publisher(store, &cache);
    let (status, manifest) =
        maas_tests::status_and_json(model_upload::handler::handle(&publisher, request).await);
    assert_eq!(status, 201, "{manifest}");
    let example = std::fs::read(
        maas_tests::repo_root().join("scripts/example-store/models/iris/1/model.onnx"),
    )
    .unwrap();
    assert_eq!(manifest["sha256"], maas::disk_cache::sha256_hex(&example));
    assert_eq!((manifest["name"].clone(), manifest["version"].clone()), (json!("iris"), json!(2)));
}

/// model-upload points `models/<name>/latest` at the highest version: a fresh environment
/// resolves `latest` from it with no LIST. A registry written before pointers (no pointer)
/// is still resolved, by listing.
#[tokio::test(flavor = "multi_thread")]
async fn latest_is_resolved_from_the_pointer_model_upload_writes() {
    let store = fresh_s3_store().await;
    let shared: SharedStore = Arc::new(store.clone());
    let cache = tempfile::tempdir().unwrap();
    let publisher = publisher(shared.clone(), &cache);
    for version in [2, 1] {
        let path = format!("/models/mlp/versions/{version}");
        let (status, body) =
            call_upload(&publisher, "PUT", &path, Some(model_bytes("mlp").to_vec())).await;
        assert_eq!(status, 201, "{body}");
    }
    let pointer = store.get("models/mlp/latest").await.unwrap().bytes().await.unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&pointer).unwrap(), json!({"version": 2}));

    let lists_to_serve_latest = || async {
        let counted = maas::store::CountingStore::new(shared.clone());
        let fresh = tempfile::tempdir().unwrap();
        let predictor = maas_tests::predictor(counted.clone(), &fresh);
        let (status, served) = served_version(&predictor, "latest").await;
        assert_eq!(status, 200, "{served}");
        assert_eq!(served["model_version"], "2");
        counted.lists.load(std::sync::atomic::Ordering::SeqCst)
    };
    assert_eq!(lists_to_serve_latest().await, 0, "latest was listed despite the pointer");
    store.delete("models/mlp/latest").await.unwrap();
    assert_eq!(lists_to_serve_latest().await, 1, "without a pointer latest is listed once");
}
