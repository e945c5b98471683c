//! One conformance suite for the object store, run against every backend: memory, a local
//! directory, and the real S3-compatible server. Faults no real server can be made to
//! produce (access denied, throttling) come from a tiny HTTP responder.

use std::sync::Arc;

use bytes::Bytes;
use maas::store::{
    LocalStore, MemoryStore, ObjectStore, S3Store, StoreError, MULTIPART_PART_BYTES,
};
use maas_tests::{fresh_s3_store, s3_client, s3_client_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn read(store: &dyn ObjectStore, key: &str) -> Bytes {
    store.get(key).await.unwrap_or_else(|e| panic!("get {key}: {e}")).bytes().await.unwrap()
}

fn keys(list: Vec<maas::store::ObjectMeta>) -> Vec<String> {
    list.into_iter().map(|o| o.key).collect()
}

/// What every backend must do.
async fn conformance(store: &dyn ObjectStore) {
    // A missing object is NotFound for get and head; deleting it succeeds.
    assert!(matches!(store.get("nothing/here").await, Err(StoreError::NotFound { .. })));
    assert!(matches!(store.head("nothing/here").await, Err(StoreError::NotFound { .. })));
    store.delete("nothing/here").await.unwrap();

    // Bytes round-trip exactly, zeros and all, including an empty object.
    let binary: Bytes = (0..=255u8).cycle().take(1000).collect::<Vec<_>>().into();
    store.put("a/binary", binary.clone()).await.unwrap();
    assert_eq!(read(store, "a/binary").await, binary);
    assert_eq!(store.head("a/binary").await.unwrap().size, 1000);
    store.put("a/empty", Bytes::new()).await.unwrap();
    assert_eq!(read(store, "a/empty").await, Bytes::new());

    // A large object streams in chunks and arrives whole.
    let large: Bytes =
        (0..3 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect::<Vec<_>>().into();
    store.put("a/large", large.clone()).await.unwrap();
    let object = store.get("a/large").await.unwrap();
    assert_eq!(object.size, large.len() as u64);
    assert_eq!(object.bytes().await.unwrap(), large);

    // A ranged read yields the range's bytes, clamped at the end of the object: a range past
    // the end (or empty) yields nothing, and a missing object is NotFound.
    let end = large.len() as u64;
    for range in [0..10, 1000..1_500_000, end - 5..end + 100, end..end + 10, end + 7..end + 9, 7..7]
    {
        let part = store.get_range("a/large", range.clone()).await.unwrap();
        let (start, stop) = (range.start.min(end) as usize, range.end.min(end) as usize);
        let want = large.slice(start..stop.max(start));
        assert_eq!(part.size, want.len() as u64, "{range:?}");
        assert_eq!(part.bytes().await.unwrap(), want, "{range:?}");
    }
    let missing = store.get_range("nothing/here", 0..10).await;
    assert!(matches!(missing, Err(StoreError::NotFound { .. })), "{missing:?}");
    let missing = store.get_range("nothing/here", 3..3).await;
    assert!(matches!(missing, Err(StoreError::NotFound { .. })), "{missing:?}");

    // A put replaces.
    store.put("a/binary", Bytes::from_static(b"second")).await.unwrap();
    assert_eq!(read(store, "a/binary").await, Bytes::from_static(b"second"));

    // Listing is by prefix, sorted, and a prefix is a string prefix.
    store.put("ab/c", Bytes::from_static(b"1")).await.unwrap();
    store.put("b/d/e", Bytes::from_static(b"2")).await.unwrap();
    assert_eq!(keys(store.list("a/").await.unwrap()), ["a/binary", "a/empty", "a/large"]);
    assert_eq!(keys(store.list("a").await.unwrap()), ["a/binary", "a/empty", "a/large", "ab/c"]);
    assert_eq!(
        keys(store.list("").await.unwrap()),
        ["a/binary", "a/empty", "a/large", "ab/c", "b/d/e"]
    );
    assert_eq!(keys(store.list("b/d/").await.unwrap()), ["b/d/e"]);
    assert!(store.list("zzz/").await.unwrap().is_empty());
    let listed = store.list("b/").await.unwrap();
    assert_eq!(listed[0].size, 1);

    // Delete removes.
    store.delete("a/large").await.unwrap();
    assert!(matches!(store.get("a/large").await, Err(StoreError::NotFound { .. })));
    assert_eq!(keys(store.list("a/").await.unwrap()), ["a/binary", "a/empty"]);

    // A create-only write refuses to replace, and leaves the object as it was.
    store.put_if_absent("once", Bytes::from_static(b"first")).await.unwrap();
    let second = store.put_if_absent("once", Bytes::from_static(b"second")).await;
    assert!(matches!(second, Err(StoreError::AlreadyExists { .. })), "{second:?}");
    assert_eq!(read(store, "once").await, Bytes::from_static(b"first"));

    // Keys that could escape the root are refused before any I/O.
    for key in ["../escape", "/abs", "", "a/../../b", "a//b"] {
        assert!(
            matches!(store.put(key, Bytes::new()).await, Err(StoreError::InvalidKey { .. })),
            "{key:?}"
        );
        assert!(matches!(store.get(key).await, Err(StoreError::InvalidKey { .. })), "{key:?}");
        assert!(
            matches!(store.put_streaming(key).await, Err(StoreError::InvalidKey { .. })),
            "{key:?}"
        );
    }

    streaming_writes(store).await;
}

/// More than two S3 parts, written in chunks that do not divide a part.
pub const STREAMED_BYTES: usize = 2 * MULTIPART_PART_BYTES + 12_345;

/// A streaming write appears whole when completed and not before; an aborted or dropped one
/// never appears, and leaves any previous object as it was.
async fn streaming_writes(store: &dyn ObjectStore) {
    let big: Bytes = (0..STREAMED_BYTES).map(|i| (i % 253) as u8).collect::<Vec<_>>().into();
    store.put("s/replaced", Bytes::from_static(b"old")).await.unwrap();
    let mut writer = store.put_streaming("s/replaced").await.unwrap();
    for chunk in big.chunks((1 << 20) + 7) {
        writer.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(read(store, "s/replaced").await, Bytes::from_static(b"old"), "visible early");
    assert_eq!(keys(store.list("s/").await.unwrap()), ["s/replaced"]);
    writer.complete().await.unwrap();
    assert_eq!(store.head("s/replaced").await.unwrap().size, big.len() as u64);
    assert!(read(store, "s/replaced").await == big, "streamed object differs");

    for (key, abort) in [("s/aborted", true), ("s/dropped", false)] {
        let mut writer = store.put_streaming(key).await.unwrap();
        writer.write(big.slice(..MULTIPART_PART_BYTES + 1)).await.unwrap();
        writer.write(Bytes::from_static(b"tail")).await.unwrap();
        if abort {
            writer.abort().await.unwrap();
        } else {
            drop(writer);
        }
        assert!(matches!(store.get(key).await, Err(StoreError::NotFound { .. })), "{key}");
    }
    let mut writer = store.put_streaming("s/replaced").await.unwrap();
    writer.write(Bytes::from_static(b"never")).await.unwrap();
    writer.abort().await.unwrap();
    assert_eq!(store.head("s/replaced").await.unwrap().size, big.len() as u64);

    // Small and empty objects.
    let mut writer = store.put_streaming("s/small").await.unwrap();
    writer.write(Bytes::from_static(b"one ")).await.unwrap();
    writer.write(Bytes::from_static(b"two")).await.unwrap();
    writer.complete().await.unwrap();
    assert_eq!(read(store, "s/small").await, Bytes::from_static(b"one two"));
    store.put_streaming("s/empty").await.unwrap().complete().await.unwrap();
    assert_eq!(read(store, "s/empty").await, Bytes::new());
    assert_eq!(keys(store.list("s/").await.unwrap()), ["s/empty", "s/replaced", "s/small"]);
}

/// Of many writers racing to create one key, exactly one succeeds and its bytes stay.
async fn create_only_race(store: Arc<dyn ObjectStore>) {
    for round in 0..5 {
        let key = format!("race/{round}");
        let writers = (0..8u8).map(|writer| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                (writer, store.put_if_absent(&key, Bytes::from(vec![writer; 64])).await)
            })
        });
        let results = futures::future::join_all(writers).await;
        let winners: Vec<u8> = results
            .iter()
            .filter_map(|r| match r.as_ref().unwrap() {
                (writer, Ok(())) => Some(*writer),
                (_, Err(StoreError::AlreadyExists { .. })) => None,
                (_, Err(other)) => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        assert_eq!(read(store.as_ref(), &key).await, Bytes::from(vec![winners[0]; 64]));
    }
}

/// On the memory and local stores. The S3 store sends `If-None-Match: *`, which S3 applies
/// atomically; moto's threaded server checks the header and writes in two steps, so two
/// racing creates can both succeed there (seen once in a loaded run): the race would test
/// moto, not maas. The conformance suite checks that the S3 store refuses a second create.
#[tokio::test(flavor = "multi_thread")]
async fn create_only_writes_have_one_winner_on_the_memory_and_local_stores() {
    let dir = tempfile::tempdir().unwrap();
    create_only_race(Arc::new(MemoryStore::new())).await;
    create_only_race(Arc::new(LocalStore::new(dir.path()))).await;
}

#[tokio::test]
async fn only_s3_presigns_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let expiry = std::time::Duration::from_secs(60);
    for store in [&MemoryStore::new() as &dyn ObjectStore, &LocalStore::new(dir.path())] {
        assert!(matches!(
            store.presign_put("staging/x", expiry).await,
            Err(StoreError::Unsupported { .. })
        ));
    }
    let url = fresh_s3_store().await.presign_put("staging/x", expiry).await.unwrap();
    assert!(url.contains("/maas/staging/x?"), "{url}");
    assert!(url.contains("X-Amz-Expires=60"), "{url}");
}

#[tokio::test]
async fn memory_store_conforms() {
    conformance(&MemoryStore::new()).await;
}

#[tokio::test]
async fn local_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance(&LocalStore::new(dir.path())).await;
    // Nothing escaped the root, and no temporary files were left behind.
    let leftovers: Vec<_> =
        walk(dir.path()).into_iter().filter(|p| p.contains(".maas-tmp")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn s3_store_conforms() {
    let store = fresh_s3_store().await;
    conformance(&store).await;
    // The large streamed object went up as a multipart upload of three parts, and no upload
    // was left open (the aborted ones were aborted; the dropped one is the lifecycle rule's).
    let client = s3_client().await;
    let head =
        client.head_object().bucket(store.bucket()).key("maas/s/replaced").send().await.unwrap();
    assert!(head.e_tag().is_some_and(|tag| tag.ends_with("-3\"")), "{:?}", head.e_tag());
    let open = client.list_multipart_uploads().bucket(store.bucket()).send().await.unwrap();
    let open: Vec<_> = open.uploads().iter().filter_map(|u| u.key()).collect();
    assert_eq!(open, ["maas/s/dropped"]);
    // Streamed bytes go up with their CRC32 (which S3 checks; moto keeps what it was sent).
    let small = client
        .get_object()
        .bucket(store.bucket())
        .key("maas/s/small")
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(small.checksum_crc32(), Some(crc32_header(b"one two").as_str()));
}

/// The CRC32 (IEEE) of `bytes`, bit by bit, as base64 of its big-endian bytes: the form of
/// the `x-amz-checksum-crc32` header.
fn crc32_header(bytes: &[u8]) -> String {
    use base64::Engine as _;
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    base64::engine::general_purpose::STANDARD.encode((!crc).to_be_bytes())
}

#[tokio::test]
async fn s3_store_sees_only_its_prefix() {
    let store = fresh_s3_store().await;
    let client = s3_client().await;
    client
        .put_object()
        .bucket(store.bucket())
        .key("outside/x")
        .body(Bytes::from_static(b"x").into())
        .send()
        .await
        .unwrap();
    store.put("inside", Bytes::from_static(b"y")).await.unwrap();
    assert_eq!(keys(store.list("").await.unwrap()), ["inside"]);
    assert!(matches!(store.get("outside/x").await, Err(StoreError::NotFound { .. })));
    let raw = client.get_object().bucket(store.bucket()).key("maas/inside").send().await.unwrap();
    assert_eq!(raw.body.collect().await.unwrap().into_bytes(), Bytes::from_static(b"y"));
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}

async fn store_at(endpoint: &str) -> S3Store {
    let client = s3_client_for(endpoint, aws_config::retry::RetryConfig::disabled()).await;
    S3Store::new(client, "bucket", "")
}

#[tokio::test]
async fn unreachable_s3_is_unavailable() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let store = store_at(&format!("http://127.0.0.1:{port}")).await;
    let err = store.get("models/x").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert_eq!(maas::Error::from(err).status(), 503);
}

/// Serves every request with the same S3 error response, as a real S3 does when it denies
/// access or throttles.
async fn fault_server(status: &'static str, code: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>fault</Message><RequestId>1</RequestId></Error>");
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    endpoint
}

#[tokio::test]
async fn access_denied_and_throttling_are_distinct_errors() {
    let denied = store_at(&fault_server("403 Forbidden", "AccessDenied").await).await;
    for err in [
        denied.get("k").await.unwrap_err(),
        denied.head("k").await.unwrap_err(),
        denied.list("").await.unwrap_err(),
    ] {
        assert!(matches!(err, StoreError::AccessDenied { .. }), "{err:?}");
    }
    let throttled = store_at(&fault_server("503 Slow Down", "SlowDown").await).await;
    for err in
        [throttled.get("k").await.unwrap_err(), throttled.put("k", Bytes::new()).await.unwrap_err()]
    {
        assert!(matches!(err, StoreError::Throttled { .. }), "{err:?}");
    }
    let missing = store_at(&fault_server("404 Not Found", "NoSuchKey").await).await;
    assert!(matches!(missing.get("k").await.unwrap_err(), StoreError::NotFound { .. }));
}

#[tokio::test]
async fn store_errors_reach_clients_as_503_without_details() {
    let store: maas::store::SharedStore =
        Arc::new(store_at(&fault_server("503 Slow Down", "SlowDown").await).await);
    let cache = tempfile::tempdir().unwrap();
    let predictor = maas_tests::predictor(store, &cache);
    let (status, body) = maas_tests::call(&predictor, "GET", "/v2/models/iris", None).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "model store unavailable, retry later");
}
