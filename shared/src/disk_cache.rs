//! The disk cache of model files (under `/tmp` by default): keeps what was downloaded across
//! evictions from memory, bounded in size, and never trusted without a SHA-256 check.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::fetch::{self, FetchSettings, Prefetch, Tee};
use crate::manifest::{Artefact, Manifest};
use crate::names::ModelId;
use crate::store::SharedStore;

/// Files live at `<dir>/<name>/<version>/<sha256>.onnx`; the least recently used are removed
/// once the total passes `budget_bytes` (the file just written always stays).
#[derive(Debug, Clone)]
pub struct DiskCache {
    dir: PathBuf,
    budget_bytes: u64,
    fetch: FetchSettings,
}

/// The ONNX file of a published version: where it is in the store and what it must hash to.
#[derive(Debug, Clone)]
pub struct ModelFile {
    pub key: String,
    pub expected: Artefact,
}

impl ModelFile {
    pub fn onnx(id: &ModelId, manifest: &Manifest) -> Self {
        let expected = Artefact { sha256: manifest.sha256.clone(), size: manifest.size };
        ModelFile { key: id.model_key(), expected }
    }
}

/// Temporary downloads start with this and are never served.
const PARTIAL_PREFIX: &str = ".partial";

impl DiskCache {
    pub fn new(dir: impl Into<PathBuf>, budget_bytes: u64, fetch: FetchSettings) -> Self {
        Self { dir: dir.into(), budget_bytes, fetch }
    }

    fn version_dir(&self, id: &ModelId) -> PathBuf {
        self.dir.join(id.name.as_str()).join(id.version.to_string())
    }

    /// Whether downloaded files are decoded as they arrive (`FetchSettings::decode`).
    pub fn decodes_while_fetching(&self) -> bool {
        self.fetch.decode
    }

    pub fn path_for(&self, id: &ModelId, file: &ModelFile) -> PathBuf {
        self.version_dir(id).join(format!("{}.onnx", file.expected.sha256))
    }

    /// Starts fetching the first part of a version's model file before its manifest is read,
    /// so the two requests overlap, when the cache holds no file of that version (a cold
    /// start); with a file there, the manifest decides whether it is the right one.
    pub fn prefetch(&self, store: &SharedStore, id: &ModelId) -> Option<Prefetch> {
        let mut files = std::fs::read_dir(self.version_dir(id)).into_iter().flatten().flatten();
        let cached = files.any(|f| !f.file_name().to_string_lossy().starts_with(PARTIAL_PREFIX));
        (!cached).then(|| Prefetch::start(store, &id.model_key(), &self.fetch))
    }

    /// A file of a model, from the cache when a verified copy is there, otherwise downloaded
    /// from the store (and verified) first, starting from `prefetched` when given, its bytes
    /// passed to `tee` too as they arrive ([`fetch::fetch`]).
    pub async fn file(
        &self,
        store: &SharedStore,
        id: &ModelId,
        file: &ModelFile,
        prefetched: Option<Prefetch>,
        tee: Tee<'_>,
    ) -> Result<PathBuf, Error> {
        let path = self.path_for(id, file);
        if self.verify_cached(&path, &file.expected).await? {
            tracing::debug!(model = %id, key = %file.key, "disk cache hit");
            return Ok(path);
        }
        self.download(store, id, file, &path, prefetched, tee).await?;
        if let Err(err) = self.evict_beyond_budget(&path).await {
            tracing::warn!(error = %err, "disk cache eviction failed");
        }
        Ok(path)
    }

    /// True when a cached file exists and matches the manifest; a file that does not match
    /// is removed.
    async fn verify_cached(&self, path: &Path, expected: &Artefact) -> Result<bool, Error> {
        let owned = path.to_owned();
        let digest = tokio::task::spawn_blocking(move || sha256_of_file(&owned))
            .await
            .map_err(|e| Error::internal("hashing a cached model", e))?;
        match digest {
            Ok((sha256, size)) if sha256 == expected.sha256 && size == expected.size => {
                // Mark it recently used for eviction; failing to do so is harmless.
                let _ = std::fs::File::options()
                    .write(true)
                    .open(path)
                    .and_then(|f| f.set_modified(SystemTime::now()));
                Ok(true)
            }
            Ok(_) => {
                tracing::warn!(path = %path.display(), "cached model does not match its manifest; fetching it again");
                remove_if_present(path)
                    .map_err(|e| Error::internal("removing a corrupt cached model", e))?;
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::internal("reading a cached model", e)),
        }
    }

    /// Fetches the object into a temporary file beside `path` ([`fetch::fetch`]: checked
    /// against size and SHA-256) and renames it into place only when both match.
    async fn download(
        &self,
        store: &SharedStore,
        id: &ModelId,
        file: &ModelFile,
        path: &Path,
        prefetched: Option<Prefetch>,
        tee: Tee<'_>,
    ) -> Result<(), Error> {
        let started = std::time::Instant::now();
        let dir = path.parent().unwrap_or(&self.dir).to_owned();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| Error::internal("creating the cache directory", e))?;
        let temp = tempfile::Builder::new()
            .prefix(PARTIAL_PREFIX)
            .tempfile_in(&dir)
            .map_err(|e| Error::internal("creating a cache file", e))?;
        let out = temp.reopen().map_err(|e| Error::internal("opening a cache file", e))?;
        let expected = &file.expected;
        fetch::fetch(store, id, &file.key, expected, out, &self.fetch, prefetched, tee).await?;
        temp.persist(path)
            .map_err(|e| Error::internal("moving a cache file into place", e.error))?;
        tracing::info!(model = %id, bytes = expected.size, elapsed_ms = crate::elapsed_ms(started), "model downloaded");
        Ok(())
    }

    /// Removes the least recently used files until the cache fits its budget.
    async fn evict_beyond_budget(&self, keep: &Path) -> io::Result<()> {
        let dir = self.dir.clone();
        let keep = keep.to_owned();
        let budget = self.budget_bytes;
        tokio::task::spawn_blocking(move || {
            let mut files = Vec::new();
            collect_files(&dir, &mut files)?;
            let mut total: u64 = files.iter().map(|(_, size, _)| size).sum();
            files.sort_by_key(|(_, _, modified)| *modified);
            for (path, size, _) in files {
                if total <= budget {
                    break;
                }
                if path != keep {
                    remove_if_present(&path)?;
                    total -= size;
                    tracing::info!(path = %path.display(), bytes = size, "evicted from disk cache");
                }
            }
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }
}

fn sha256_of_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn collect_files(dir: &Path, out: &mut Vec<(PathBuf, u64, SystemTime)>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            collect_files(&entry.path(), out)?;
        } else if meta.is_file() && !entry.file_name().to_string_lossy().starts_with(PARTIAL_PREFIX)
        {
            out.push((entry.path(), meta.len(), meta.modified()?));
        }
    }
    Ok(())
}

/// Lowercase hex SHA-256 of bytes in memory.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
