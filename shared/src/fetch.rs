//! Fetching a model file from the store into a local file: a small file in one GET, a large
//! one in parallel ranged GETs. Each part is written at its place in the file as it arrives
//! and hashed (SHA-256) in order as the contiguous prefix completes, so the check against the
//! manifest costs no second pass over the file.
//!
//! The parts cover one byte more than the manifest's size, so an object longer than its
//! manifest shows itself without a HEAD. A part that arrives short is asked for again (up to
//! [`FetchSettings::part_attempts`]); a part whose store call fails was already retried (and
//! its body resumed) by the store, within `MAAS_S3_MAX_ATTEMPTS`, and fails the fetch: the
//! other parts stop and nothing is kept.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures::{stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::manifest::Artefact;
use crate::names::ModelId;
use crate::store::{SharedStore, StoreError};

/// How model files are fetched; [`crate::Config`] documents the variables that set them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchSettings {
    /// Bytes per ranged GET; a file no larger arrives in one GET.
    pub part_bytes: u64,
    /// Ranged GETs in flight at once. Parts that arrive ahead of the hashed prefix wait in
    /// memory, so at most this many parts are held: `part_bytes * parallelism` bytes.
    pub parallelism: usize,
    /// Attempts at a part that arrives shorter than asked for.
    pub part_attempts: u32,
}

impl Default for FetchSettings {
    /// Lambda defaults: 8 MiB parts, the size AWS suggests for byte-range GETs from S3, eight
    /// in flight (64 MiB held at most, within a 512 MB function); one S3 connection carries
    /// a fraction of what a function's network takes in.
    fn default() -> Self {
        Self { part_bytes: 8 << 20, parallelism: 8, part_attempts: 3 }
    }
}

/// A spawned task, aborted when dropped before it ends: a fetch that fails or is abandoned
/// stops its other parts.
struct Task<T>(JoinHandle<T>);

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Task<T> {
    async fn join(mut self) -> Result<T, Error> {
        (&mut self.0).await.map_err(|e| Error::internal("fetching a part of a model", e))
    }
}

/// The first part of a model file, asked for before its manifest (and so its size) is known.
pub struct Prefetch {
    range: Range<u64>,
    task: Task<Result<Bytes, StoreError>>,
}

impl std::fmt::Debug for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetch").field("range", &self.range).finish_non_exhaustive()
    }
}

impl Prefetch {
    /// Starts reading the first `settings.part_bytes` of `key`.
    pub fn start(store: &SharedStore, key: &str, settings: &FetchSettings) -> Self {
        let range = 0..settings.part_bytes.max(1);
        let (store, key, asked) = (Arc::clone(store), key.to_owned(), range.clone());
        let task = Task(tokio::spawn(async move { read(&store, &key, asked).await }));
        Self { range, task }
    }
}

async fn read(store: &SharedStore, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
    store.get_range(key, range).await?.bytes().await
}

/// One part to fetch: where it is, what the manifest says it holds, and where it goes.
#[derive(Clone)]
struct PartJob {
    store: SharedStore,
    id: ModelId,
    key: String,
    file: Arc<File>,
    attempts: u32,
}

impl PartJob {
    /// The bytes of `range` (holding `want` bytes by the manifest), asked for again while
    /// short, written at their place in the file.
    async fn run(
        self,
        range: Range<u64>,
        want: u64,
        first: Option<Prefetch>,
    ) -> Result<Bytes, Error> {
        let mut bytes = match first {
            Some(prefetch) => prefetch.task.join().await?,
            None => read(&self.store, &self.key, range.clone()).await,
        }
        .map_err(|e| model_store_error(&self.id, e))?;
        let mut attempt = 1;
        while (bytes.len() as u64) < want && attempt < self.attempts {
            tracing::warn!(model = %self.id, ?range, got = bytes.len(), want, "short part; asking again");
            bytes = read(&self.store, &self.key, range.clone())
                .await
                .map_err(|e| model_store_error(&self.id, e))?;
            attempt += 1;
        }
        if bytes.len() as u64 != want {
            return Err(self.mismatch(format!(
                "bytes {}..{} of `{}` came as {} bytes where the manifest's size makes {want}",
                range.start,
                range.end,
                self.key,
                bytes.len()
            )));
        }
        let (file, written) = (Arc::clone(&self.file), bytes.clone());
        tokio::task::spawn_blocking(move || file.write_all_at(&written, range.start))
            .await
            .map_err(|e| Error::internal("writing a cache file", e))?
            .map_err(|e| Error::internal("writing a cache file", e))?;
        Ok(bytes)
    }

    fn mismatch(&self, problem: String) -> Error {
        Error::CorruptModel {
            name: self.id.name.to_string(),
            version: self.id.version.get(),
            problem,
        }
    }
}

/// The ranges of a file of `size` bytes in parts of `part_bytes`: they cover one byte more
/// than `size`, so that a longer object is seen.
fn plan(size: u64, part_bytes: u64) -> Vec<Range<u64>> {
    let part = part_bytes.max(1);
    (0..=size / part).map(|i| i * part..((i + 1) * part).min(size + 1)).collect()
}

/// Where the bytes of a file go besides the disk, in file order as they are hashed: the
/// model's decoder ([`crate::engine::StreamDecoder`]), which works while the rest arrives.
pub type Tee<'a> = &'a mut (dyn FnMut(&Bytes) + Send);

/// Fetches `key` into `file` (empty, opened for writing) and checks it against `expected`;
/// `first` is the first part already asked for, if any. Each part goes to `tee` too, in
/// order, before the file is checked: what it makes of them must wait for this to succeed.
#[allow(clippy::too_many_arguments)]
pub async fn fetch(
    store: &SharedStore,
    id: &ModelId,
    key: &str,
    expected: &Artefact,
    file: File,
    settings: &FetchSettings,
    first: Option<Prefetch>,
    tee: Tee<'_>,
) -> Result<(), Error> {
    let size = expected.size;
    // A prefetched first part asked for at least the planned one; what it holds beyond the
    // manifest's size is caught all the same.
    let ranges = plan(size, settings.part_bytes);
    let job = PartJob {
        store: Arc::clone(store),
        id: id.clone(),
        key: key.to_owned(),
        file: Arc::new(file),
        attempts: settings.part_attempts.max(1),
    };
    let mut first = first;
    let parts = stream::iter(ranges).map(|range| {
        let want = range.end.min(size).saturating_sub(range.start);
        let prefetched = if range.start == 0 { first.take() } else { None };
        Task(tokio::spawn(job.clone().run(range, want, prefetched))).join()
    });
    let mut parts = parts.buffered(settings.parallelism.max(1));
    let mut hasher = Sha256::new();
    while let Some(part) = parts.next().await {
        let bytes = part??;
        tee(&bytes);
        hasher = tokio::task::spawn_blocking(move || {
            hasher.update(&bytes);
            hasher
        })
        .await
        .map_err(|e| Error::internal("hashing a model", e))?;
    }
    let sha256 = hex::encode(hasher.finalize());
    if sha256 != expected.sha256 {
        return Err(job.mismatch(format!(
            "stored `{key}` has sha256 {sha256}; the manifest says {}",
            expected.sha256
        )));
    }
    job.file.sync_data().map_err(|e| Error::internal("writing a cache file", e))?;
    Ok(())
}

/// A store error met while reading a model's file: a missing object means the version's
/// files are incomplete, which is corruption, not a client mistake.
pub fn model_store_error(id: &ModelId, err: StoreError) -> Error {
    match err {
        StoreError::NotFound { key } => Error::CorruptModel {
            name: id.name.to_string(),
            version: id.version.get(),
            problem: format!("`{key}` is missing"),
        },
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk_cache::sha256_hex;
    use crate::store::{CountingStore, MemoryStore, ObjectStore};

    #[test]
    fn parts_cover_one_byte_past_the_size() {
        assert_eq!(plan(10, 4), [0..4, 4..8, 8..11]);
        assert_eq!(plan(8, 4), [0..4, 4..8, 8..9]);
        assert_eq!(plan(3, 4), plan(3, 1 << 20));
        assert_eq!(plan(0, 4).len(), 1);
        assert_eq!(plan(0, 4)[0], 0..1);
    }

    fn object(size: usize) -> Bytes {
        (0..size).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>().into()
    }

    fn settings(part_bytes: u64) -> FetchSettings {
        FetchSettings { part_bytes, parallelism: 3, part_attempts: 2 }
    }

    /// Fetches `stored` expecting `expected` with parts of `part_bytes`, prefetching or not:
    /// the outcome, the file's bytes and the GETs it took.
    async fn run(
        stored: Bytes,
        expected: &Artefact,
        part_bytes: u64,
        prefetch: bool,
    ) -> (Result<(), Error>, Vec<u8>, usize) {
        let store = CountingStore::new(Arc::new(MemoryStore::new()));
        store.put("m", stored).await.unwrap();
        let shared: SharedStore = store.clone();
        let id = ModelId::new("m".parse().unwrap(), crate::names::Version::MIN);
        let temp = tempfile::NamedTempFile::new().unwrap();
        let settings = settings(part_bytes);
        let first = prefetch.then(|| Prefetch::start(&shared, "m", &settings));
        let file = temp.reopen().unwrap();
        let result = fetch(&shared, &id, "m", expected, file, &settings, first, &mut |_| ()).await;
        let gets = store.gets.load(std::sync::atomic::Ordering::SeqCst);
        (result, std::fs::read(temp.path()).unwrap(), gets)
    }

    fn artefact(bytes: &[u8]) -> Artefact {
        Artefact { sha256: sha256_hex(bytes), size: bytes.len() as u64 }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parts_arrive_whole_in_place_and_hashed_in_order() {
        let bytes = object(10_000);
        for (part_bytes, prefetch, gets) in [
            (1000, false, 11),
            (1000, true, 11),
            (999, true, 11),
            (4096, true, 3),
            (1 << 20, true, 1),
        ] {
            let (result, file, got) =
                run(bytes.clone(), &artefact(&bytes), part_bytes, prefetch).await;
            result.unwrap();
            assert_eq!(file, bytes, "parts of {part_bytes}");
            assert_eq!(got, gets, "parts of {part_bytes}, prefetch {prefetch}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_that_differs_from_its_manifest_fails() {
        let bytes = object(10_000);
        let cases = [
            ("longer", [&bytes[..], b"x"].concat(), artefact(&bytes)),
            ("shorter", bytes[..9_000].to_vec(), artefact(&bytes)),
            ("other bytes", object(10_001)[1..].to_vec(), artefact(&bytes)),
        ];
        for (what, stored, expected) in cases {
            for part_bytes in [1000, 1 << 20] {
                let (result, _, _) = run(stored.clone().into(), &expected, part_bytes, true).await;
                let err = result.unwrap_err();
                assert!(matches!(err, Error::CorruptModel { .. }), "{what}, {part_bytes}: {err:?}");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_object_is_a_corrupt_version() {
        let store: SharedStore = Arc::new(MemoryStore::new());
        let id = ModelId::new("m".parse().unwrap(), crate::names::Version::MIN);
        let file = tempfile::tempfile().unwrap();
        let expected = artefact(b"abc");
        let err = fetch(&store, &id, "gone", &expected, file, &settings(2), None, &mut |_| ())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::CorruptModel { problem, .. } if problem.contains("missing")),
            "{err:?}"
        );
    }
}
