//! Streaming writes: an object written piece by piece, which appears whole when completed and
//! not at all when aborted (or when the writer is dropped, or the process dies, first).

use async_trait::async_trait;
use bytes::Bytes;

use super::StoreError;

/// An object being written by [`super::ObjectStore::put_streaming`]. Nothing of it is visible
/// until [`ObjectWriter::complete`] returns; then readers see all of it at once, replacing any
/// previous object with that key.
#[async_trait]
pub trait ObjectWriter: Send {
    /// Appends `bytes` to the object. Backends buffer as they need (S3 sends a part once it
    /// has [`MULTIPART_PART_BYTES`]), so memory stays bounded whatever the object's size.
    async fn write(&mut self, bytes: Bytes) -> Result<(), StoreError>;

    /// Makes the object visible, whole.
    async fn complete(self: Box<Self>) -> Result<(), StoreError>;

    /// Discards everything written; no object appears and any previous one stays.
    async fn abort(self: Box<Self>) -> Result<(), StoreError>;
}

/// A writer as the store returns it.
pub type BoxWriter = Box<dyn ObjectWriter>;

/// Size of each S3 part but the last (S3's minimum is 5 MiB). An object smaller than one part
/// is written with a single PUT when completed, without a multipart upload.
pub const MULTIPART_PART_BYTES: usize = 8 << 20;
