//! Fetching a model file from the store into a local file: a small file in one GET, a large
//! one in parallel ranged GETs. The bytes are hashed (SHA-256), handed on (the model's
//! decoder, [`Tee`]) and written to the file in file order as they arrive, chunk by chunk,
//! even within one GET, so the check against the manifest costs no second pass over the file
//! and the decoder works while the rest arrives. Parts that arrive ahead of that order wait
//! in memory.
//!
//! The parts cover one byte more than the manifest's size, so an object longer than its
//! manifest shows itself without a HEAD. A part that ends short is asked for again (up to
//! [`FetchSettings::part_attempts`]); a part whose store call fails was already retried (and
//! its body resumed) by the store, within `MAAS_S3_MAX_ATTEMPTS`, and fails the fetch: the
//! other parts stop and nothing is kept.

use std::collections::VecDeque;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
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
    /// Whether a downloaded model file is decoded as it arrives
    /// ([`crate::engine::StreamDecoder`]) rather than after its download.
    pub decode: bool,
}

impl Default for FetchSettings {
    /// Lambda defaults: 8 MiB parts, the size AWS suggests for byte-range GETs from S3, eight
    /// in flight (64 MiB held at most, within a 512 MB function); one S3 connection carries
    /// a fraction of what a function's network takes in.
    fn default() -> Self {
        Self { part_bytes: 8 << 20, parallelism: 8, part_attempts: 3, decode: true }
    }
}

/// Where the bytes of a file go besides the disk, in file order as they are hashed: the
/// model's decoder ([`crate::engine::StreamDecoder`]), which works while the rest arrives.
pub type Tee<'a> = &'a mut (dyn FnMut(&Bytes) + Send);

/// Bytes hashed and written at once: chunks of a GET are small, and each batch is one
/// blocking task.
const WRITE_BATCH_BYTES: usize = 1 << 20;

/// A spawned task, aborted when dropped before it ends: a fetch that fails or is abandoned
/// stops its other parts.
struct Task<T>(JoinHandle<T>);

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The chunks of one GET as a task reads them ahead of their consumer, ending with the
/// GET's error if it fails.
struct Reading {
    chunks: mpsc::UnboundedReceiver<Result<Bytes, StoreError>>,
    _task: Task<()>,
}

impl Reading {
    fn start(store: &SharedStore, key: &str, range: Range<u64>) -> Self {
        let (sender, chunks) = mpsc::unbounded_channel();
        let (store, key) = (Arc::clone(store), key.to_owned());
        let task = tokio::spawn(async move {
            let mut body = match store.get_range(&key, range).await {
                Ok(got) => got.chunks,
                Err(err) => {
                    let _ = sender.send(Err(err));
                    return;
                }
            };
            while let Some(chunk) = body.next().await {
                let failed = chunk.is_err();
                if sender.send(chunk).is_err() || failed {
                    return;
                }
            }
        });
        Self { chunks, _task: Task(task) }
    }
}

/// The first part of a model file, asked for before its manifest (and so its size) is known.
pub struct Prefetch {
    range: Range<u64>,
    reading: Reading,
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
        Self { reading: Reading::start(store, key, range.clone()), range }
    }
}

/// One part to fetch: where it is and what the manifest says it holds.
#[derive(Clone)]
struct PartJob {
    store: SharedStore,
    id: ModelId,
    key: String,
    attempts: u32,
}

impl PartJob {
    /// Sends the `want` bytes of `range` (by the manifest) to `out` as they arrive, asking
    /// for the range again (and skipping what was sent) while it ends short; ends with an
    /// error in `out` when it fails.
    async fn run(
        self,
        range: Range<u64>,
        want: u64,
        first: Option<Prefetch>,
        out: mpsc::UnboundedSender<Result<Bytes, Error>>,
    ) {
        if let Err(err) = self.send(range, want, first, &out).await {
            let _ = out.send(Err(err));
        }
    }

    async fn send(
        &self,
        range: Range<u64>,
        want: u64,
        first: Option<Prefetch>,
        out: &mpsc::UnboundedSender<Result<Bytes, Error>>,
    ) -> Result<(), Error> {
        let mut reading = match first {
            Some(prefetch) => prefetch.reading,
            None => Reading::start(&self.store, &self.key, range.clone()),
        };
        let (mut sent, mut attempt) = (0u64, 1);
        loop {
            // Bytes of this attempt; those already sent by an earlier one are skipped.
            let mut offset = 0u64;
            while let Some(chunk) = reading.chunks.recv().await {
                let chunk = chunk.map_err(|e| model_store_error(&self.id, e))?;
                let end = offset + chunk.len() as u64;
                if end > want {
                    return Err(self.mismatch(format!(
                        "bytes {}..{} of `{}` came as more than {want} bytes, the manifest's size",
                        range.start, range.end, self.key
                    )));
                }
                if end > sent {
                    let new = chunk.slice(usize::try_from(sent - offset).unwrap_or(0)..);
                    sent = end;
                    if out.send(Ok(new)).is_err() {
                        return Ok(());
                    }
                }
                offset = end;
            }
            if sent == want {
                return Ok(());
            }
            if attempt >= self.attempts {
                return Err(self.mismatch(format!(
                    "bytes {}..{} of `{}` came as {sent} bytes where the manifest's size makes {want}",
                    range.start, range.end, self.key
                )));
            }
            tracing::warn!(model = %self.id, ?range, got = offset, want, "short part; asking again");
            reading = Reading::start(&self.store, &self.key, range.clone());
            attempt += 1;
        }
    }

    fn mismatch(&self, problem: String) -> Error {
        Error::corrupt_model(&self.id, problem)
    }
}

/// The ranges of a file of `size` bytes in parts of `part_bytes`: they cover one byte more
/// than `size`, so that a longer object is seen.
fn plan(size: u64, part_bytes: u64) -> Vec<Range<u64>> {
    let part = part_bytes.max(1);
    (0..=size / part).map(|i| i * part..((i + 1) * part).min(size + 1)).collect()
}

/// The file being written in order, and its hash.
struct Sink {
    file: Arc<File>,
    hasher: Option<Sha256>,
    written: u64,
    batch: Vec<Bytes>,
    batched: usize,
}

impl Sink {
    async fn push(&mut self, chunk: Bytes) -> Result<(), Error> {
        self.batched += chunk.len();
        self.batch.push(chunk);
        if self.batched >= WRITE_BATCH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Hashes and writes the batch, on a blocking thread.
    async fn flush(&mut self) -> Result<(), Error> {
        let (file, mut hasher) = (Arc::clone(&self.file), self.hasher.take().unwrap_or_default());
        let (batch, at) = (std::mem::take(&mut self.batch), self.written);
        self.written += std::mem::take(&mut self.batched) as u64;
        let hasher = tokio::task::spawn_blocking(move || {
            let mut at = at;
            for chunk in batch {
                hasher.update(&chunk);
                file.write_all_at(&chunk, at)?;
                at += chunk.len() as u64;
            }
            Ok::<_, std::io::Error>(hasher)
        })
        .await
        .map_err(|e| Error::internal("writing a cache file", e))?
        .map_err(|e| Error::internal("writing a cache file", e))?;
        self.hasher = Some(hasher);
        Ok(())
    }
}

/// Fetches `key` into `file` (empty, opened for writing) and checks it against `expected`;
/// `first` is the first part already asked for, if any. Each chunk goes to `tee` too, in
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
    let job = PartJob {
        store: Arc::clone(store),
        id: id.clone(),
        key: key.to_owned(),
        attempts: settings.part_attempts.max(1),
    };
    let mut first = first;
    let mut start = |range: Range<u64>| {
        let want = range.end.min(size).saturating_sub(range.start);
        let prefetched = if range.start == 0 { first.take() } else { None };
        let (sender, chunks) = mpsc::unbounded_channel();
        let task = Task(tokio::spawn(job.clone().run(range, want, prefetched, sender)));
        (chunks, want, task)
    };
    let mut ranges = plan(size, settings.part_bytes).into_iter();
    let mut in_flight: VecDeque<_> =
        ranges.by_ref().take(settings.parallelism.max(1)).map(&mut start).collect();
    let mut sink =
        Sink { file: Arc::new(file), hasher: None, written: 0, batch: Vec::new(), batched: 0 };
    while let Some((mut chunks, want, _task)) = in_flight.pop_front() {
        // A part's task sends its bytes, or an error, before it ends.
        let mut got = 0;
        while let Some(chunk) = chunks.recv().await {
            let chunk = chunk?;
            got += chunk.len() as u64;
            tee(&chunk);
            sink.push(chunk).await?;
        }
        if got != want {
            let problem = std::io::Error::other(format!("a part stopped at {got} of {want} bytes"));
            return Err(Error::internal("fetching a model", problem));
        }
        in_flight.extend(ranges.next().map(&mut start));
    }
    sink.flush().await?;
    let sha256 = hex::encode(sink.hasher.unwrap_or_default().finalize());
    if sha256 != expected.sha256 {
        return Err(job.mismatch(format!(
            "stored `{key}` has sha256 {sha256}; the manifest says {}",
            expected.sha256
        )));
    }
    sink.file.sync_data().map_err(|e| Error::internal("writing a cache file", e))?;
    Ok(())
}

/// A store error met while reading a model's file: a missing object means the version's
/// files are incomplete, which is corruption, not a client mistake.
pub fn model_store_error(id: &ModelId, err: StoreError) -> Error {
    match err {
        StoreError::NotFound { key } => Error::corrupt_model(id, format!("`{key}` is missing")),
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
        FetchSettings { part_bytes, parallelism: 3, part_attempts: 2, decode: true }
    }

    /// Fetches `stored` expecting `expected` with parts of `part_bytes`, prefetching or not:
    /// the outcome, the file's bytes and the GETs it took.
    async fn run(
        stored: Bytes,
        expected: &Artefact,
        part_bytes: u64,
        prefetch: bool,
    ) -> (Result<(), Error>, Vec<u8>, usize, Vec<u8>) {
        let store = CountingStore::new(Arc::new(MemoryStore::new()));
        store.put("m", stored).await.unwrap();
        let shared: SharedStore = store.clone();
        let id = ModelId::new("m".parse().unwrap(), crate::names::Version::MIN);
        let temp = tempfile::NamedTempFile::new().unwrap();
        let settings = settings(part_bytes);
        let first = prefetch.then(|| Prefetch::start(&shared, "m", &settings));
        let file = temp.reopen().unwrap();
        let mut teed = Vec::new();
        let mut tee = |chunk: &Bytes| teed.extend_from_slice(chunk);
        let result = fetch(&shared, &id, "m", expected, file, &settings, first, &mut tee).await;
        let gets = store.gets.load(std::sync::atomic::Ordering::SeqCst);
        (result, std::fs::read(temp.path()).unwrap(), gets, teed)
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
            let (result, file, got, teed) =
                run(bytes.clone(), &artefact(&bytes), part_bytes, prefetch).await;
            result.unwrap();
            assert_eq!(file, bytes, "parts of {part_bytes}");
            assert_eq!(teed, bytes, "handed on, parts of {part_bytes}");
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
                let (result, _, _, _) =
                    run(stored.clone().into(), &expected, part_bytes, true).await;
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
