//! A store in a local directory: the default for running maas without AWS.

use std::io::{self, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{
    check_key, check_prefix, clamp, BoxWriter, GetResult, ObjectMeta, ObjectStore, ObjectWriter,
    StoreError,
};

/// Objects are files below `root`; a key's segments are directories. Writes go to a
/// temporary file in the same directory and are renamed into place, so readers never see a
/// partial object.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

/// Temporary files being written start with this and are never listed.
const TEMP_PREFIX: &str = ".maas-tmp";

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    async fn file_meta(&self, key: &str) -> Result<(PathBuf, u64), StoreError> {
        let path = self.path(key)?;
        let meta = tokio::fs::metadata(&path).await.map_err(|e| io_error(key, e))?;
        if !meta.is_file() {
            return Err(StoreError::NotFound { key: key.to_owned() });
        }
        Ok((path, meta.len()))
    }
}

/// Runs blocking file work off the async threads, mapping its I/O errors for `key`.
async fn blocking<T: Send + 'static>(
    key: &str,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|e| io_error(key, e)),
        Err(e) => Err(StoreError::Other { key: key.to_owned(), source: Arc::new(e) }),
    }
}

fn io_error(key: &str, err: io::Error) -> StoreError {
    let key = key.to_owned();
    match err.kind() {
        io::ErrorKind::NotFound => StoreError::NotFound { key },
        io::ErrorKind::AlreadyExists => StoreError::AlreadyExists { key },
        io::ErrorKind::PermissionDenied => StoreError::AccessDenied { key, source: Arc::new(err) },
        _ => StoreError::Other { key, source: Arc::new(err) },
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn get(&self, key: &str) -> Result<GetResult, StoreError> {
        let (path, size) = self.file_meta(key).await?;
        let file = tokio::fs::File::open(&path).await.map_err(|e| io_error(key, e))?;
        let owned_key = key.to_owned();
        let chunks = ReaderStream::new(file).map_err(move |e| io_error(&owned_key, e));
        Ok(GetResult { size, chunks: Box::pin(chunks) })
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let (_, size) = self.file_meta(key).await?;
        Ok(ObjectMeta { key: key.to_owned(), size })
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<GetResult, StoreError> {
        let (path, size) = self.file_meta(key).await?;
        let part = clamp(&range, size);
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| io_error(key, e))?;
        file.seek(SeekFrom::Start(part.start)).await.map_err(|e| io_error(key, e))?;
        let owned_key = key.to_owned();
        let chunks = ReaderStream::new(file.take(part.end - part.start))
            .map_err(move |e| io_error(&owned_key, e));
        Ok(GetResult { size: part.end - part.start, chunks: Box::pin(chunks) })
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let path = self.path(key)?;
        blocking(key, move || write_atomically(&path, &bytes, Replace::Yes)).await
    }

    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let path = self.path(key)?;
        blocking(key, move || write_atomically(&path, &bytes, Replace::No)).await
    }

    async fn put_streaming(&self, key: &str) -> Result<BoxWriter, StoreError> {
        let path = self.path(key)?;
        let temp = blocking(key, move || {
            let dir = path.parent().ok_or_else(|| io::Error::other("object path has no parent"))?;
            std::fs::create_dir_all(dir)?;
            let temp = tempfile::Builder::new().prefix(TEMP_PREFIX).tempfile_in(dir)?;
            Ok((temp, path))
        })
        .await?;
        Ok(Box::new(LocalWriter { key: key.to_owned(), temp: Some(temp) }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        check_prefix(prefix)?;
        let root = self.root.clone();
        let owned_prefix = prefix.to_owned();
        let mut objects = blocking(prefix, move || {
            let mut found = Vec::new();
            walk(&root, "", &owned_prefix, &mut found).map(|()| found)
        })
        .await?;
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(key, e)),
            _ => Ok(()),
        }
    }
}

/// A streaming write: a temporary file beside the object, renamed into place when completed
/// and deleted when aborted or dropped.
struct LocalWriter {
    key: String,
    /// The temporary file and the object's path; `None` only while a blocking task holds it.
    temp: Option<(tempfile::NamedTempFile, PathBuf)>,
}

impl LocalWriter {
    fn take(&mut self) -> Result<(tempfile::NamedTempFile, PathBuf), StoreError> {
        self.temp.take().ok_or_else(|| StoreError::Other {
            key: self.key.clone(),
            source: Arc::new(io::Error::other("an earlier write of this object failed")),
        })
    }
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, bytes: Bytes) -> Result<(), StoreError> {
        use std::io::Write;
        let (mut temp, path) = self.take()?;
        let temp = blocking(&self.key, move || temp.write_all(&bytes).map(|()| temp)).await?;
        self.temp = Some((temp, path));
        Ok(())
    }

    async fn complete(mut self: Box<Self>) -> Result<(), StoreError> {
        let (temp, path) = self.take()?;
        blocking(&self.key, move || {
            temp.as_file().sync_all()?;
            temp.persist(path).map(drop).map_err(|e| e.error)
        })
        .await
    }

    async fn abort(self: Box<Self>) -> Result<(), StoreError> {
        // Dropping the temporary file deletes it.
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Replace {
    Yes,
    No,
}

/// Writes a temporary file beside `path`, then renames it into place (`Replace::Yes`) or
/// hard-links it there, which fails if `path` already exists (`Replace::No`).
fn write_atomically(path: &Path, bytes: &[u8], replace: Replace) -> io::Result<()> {
    use std::io::Write;
    let dir = path.parent().ok_or_else(|| io::Error::other("object path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    let mut temp = tempfile::Builder::new().prefix(TEMP_PREFIX).tempfile_in(dir)?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    match replace {
        Replace::Yes => temp.persist(path).map(drop).map_err(|e| e.error),
        Replace::No => std::fs::hard_link(temp.path(), path),
    }
}

/// Collects the files below `dir` whose key (`key_prefix` + name) starts with `prefix`,
/// skipping directories that cannot contain such keys and files still being written.
fn walk(dir: &Path, key_prefix: &str, prefix: &str, found: &mut Vec<ObjectMeta>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let key = format!("{key_prefix}{name}");
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            let dir_key = format!("{key}/");
            if dir_key.starts_with(prefix) || prefix.starts_with(&dir_key) {
                walk(&entry.path(), &dir_key, prefix, found)?;
            }
        } else if file_type.is_file() && key.starts_with(prefix) {
            found.push(ObjectMeta { key, size: entry.metadata()?.len() });
        }
    }
    Ok(())
}
