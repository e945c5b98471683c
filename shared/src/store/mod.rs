//! The object store: one narrow trait and its three backends (S3, a local directory, memory).
//!
//! Keys are relative, `/`-separated paths such as `models/iris/1/model.onnx`. Every backend
//! checks them with [`check_key`], so no key can reach outside the store's root or prefix.

mod counting;
mod local;
mod memory;
mod s3;
mod streaming;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;

pub use counting::CountingStore;
pub use local::LocalStore;
pub use memory::MemoryStore;
pub use s3::{aws_defaults, https_client, S3Settings, S3Store, UPLOAD_BYTES_PER_SECOND};
pub use streaming::{BoxWriter, ObjectWriter, MULTIPART_PART_BYTES};

use crate::error::Cause;

/// Why a store call failed. Each variant keeps the key it was about, where there is one.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("object `{key}` not found")]
    NotFound { key: String },

    #[error("object `{key}` already exists")]
    AlreadyExists { key: String },

    #[error("access to `{key}` denied")]
    AccessDenied {
        key: String,
        #[source]
        source: Cause,
    },

    #[error("store throttled the request for `{key}`")]
    Throttled {
        key: String,
        #[source]
        source: Cause,
    },

    #[error("store unreachable while accessing `{key}`")]
    Unavailable {
        key: String,
        #[source]
        source: Cause,
    },

    #[error("invalid key `{key}`: {problem}")]
    InvalidKey { key: String, problem: &'static str },

    #[error("this store does not support {operation}")]
    Unsupported { operation: &'static str },

    #[error("store failure on `{key}`")]
    Other {
        key: String,
        #[source]
        source: Cause,
    },
}

/// What a listing or a `head` returns about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
}

/// A stream of an object's bytes, chunk by chunk.
pub type ByteChunks = BoxStream<'static, Result<Bytes, StoreError>>;

/// An object being read: its size and its bytes as a stream, so large objects never have to
/// sit in memory whole.
pub struct GetResult {
    pub size: u64,
    pub chunks: ByteChunks,
}

impl GetResult {
    /// Collects the whole object into memory. Meant for small objects such as manifests.
    pub async fn bytes(mut self) -> Result<Bytes, StoreError> {
        let mut buf = BytesMut::with_capacity(usize::try_from(self.size).unwrap_or(0));
        while let Some(chunk) = self.chunks.next().await {
            buf.extend_from_slice(&chunk?);
        }
        Ok(buf.freeze())
    }
}

impl fmt::Debug for GetResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetResult").field("size", &self.size).finish_non_exhaustive()
    }
}

/// The storage every other part of maas goes through.
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// Opens an object for reading. A missing object is [`StoreError::NotFound`].
    async fn get(&self, key: &str) -> Result<GetResult, StoreError>;

    /// Size of an object without reading it. A missing object is [`StoreError::NotFound`].
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError>;

    /// Opens bytes `range` of an object for reading, clamped at its end: a range that starts
    /// at or past the end (or is empty) yields no bytes. The result's `size` is the number of
    /// bytes it yields. A missing object is [`StoreError::NotFound`].
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<GetResult, StoreError>;

    /// Writes an object whole, replacing any previous one. Readers never see a partial object.
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError>;

    /// Writes an object only if no object has that key yet; otherwise
    /// [`StoreError::AlreadyExists`] and nothing changes. Of two racing writers exactly one
    /// succeeds.
    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<(), StoreError>;

    /// Opens a streaming write of `key` ([`ObjectWriter`]): the object appears whole when the
    /// writer completes, and never if it aborts or is dropped.
    async fn put_streaming(&self, key: &str) -> Result<BoxWriter, StoreError>;

    /// A URL that lets its holder PUT exactly this one key, valid for `expires_in`.
    /// Only stores reachable from outside support it.
    async fn presign_put(&self, key: &str, expires_in: Duration) -> Result<String, StoreError> {
        let _ = (key, expires_in);
        Err(StoreError::Unsupported { operation: "presigned uploads" })
    }

    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;

    /// Removes an object. Removing a missing object succeeds.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
}

/// A store shared by every part of an execution environment.
pub type SharedStore = Arc<dyn ObjectStore>;

/// Refuses keys that could escape the store's root: absolute paths, empty, `.` or `..`
/// segments, backslashes and control characters.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let invalid = |problem| Err(StoreError::InvalidKey { key: key.to_owned(), problem });
    if key.is_empty() {
        return invalid("empty key");
    }
    if key.len() > 1024 {
        return invalid("longer than 1024 bytes");
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return invalid("contains a control character or a backslash");
    }
    if key.split('/').any(|segment| matches!(segment, "" | "." | "..")) {
        return invalid("contains an empty, `.` or `..` segment");
    }
    Ok(())
}

/// The part of `range` that lies within an object of `size` bytes.
fn clamp(range: &Range<u64>, size: u64) -> Range<u64> {
    range.start.min(size)..range.end.clamp(range.start.min(size), size)
}

/// A prefix for `list` may end with `/` or be empty; otherwise it follows the key rules.
fn check_prefix(prefix: &str) -> Result<(), StoreError> {
    match prefix.strip_suffix('/').unwrap_or(prefix) {
        "" => Ok(()),
        trimmed => check_key(trimmed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_escape_the_root_are_refused() {
        for key in ["", "/etc/passwd", "a/../b", "..", "a//b", "a/./b", "a\\b", "a/\u{0}b", "a/"] {
            assert!(
                matches!(check_key(key), Err(StoreError::InvalidKey { .. })),
                "{key:?} was accepted"
            );
        }
        for key in ["models/iris/1/model.onnx", "a", "a.b-c_d/e"] {
            assert!(check_key(key).is_ok(), "{key:?} was refused");
        }
    }

    #[test]
    fn ranges_are_clamped_at_the_end_of_the_object() {
        assert_eq!(clamp(&(2..5), 10), 2..5);
        assert_eq!(clamp(&(8..20), 10), 8..10);
        assert_eq!(clamp(&(10..20), 10), 10..10);
        assert_eq!(clamp(&(12..20), 10), 10..10);
        let (start, end) = (5, 3);
        assert_eq!(clamp(&(start..end), 10), 5..5);
    }

    #[test]
    fn list_prefixes_may_be_empty_or_end_with_a_slash() {
        assert!(check_prefix("").is_ok());
        assert!(check_prefix("models/").is_ok());
        assert!(check_prefix("models/ir").is_ok());
        assert!(check_prefix("../").is_err());
    }
}
