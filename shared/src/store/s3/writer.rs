//! Streaming writes to S3: a spool file per part, multipart uploads completed only at the end.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use tokio::task::JoinHandle;

use super::{classify, write_config, S3Store};
use crate::store::{ObjectWriter, StoreError, MULTIPART_PART_BYTES};

/// A streaming write. Bytes gather in a spool file; each full part goes out with UploadPart
/// of a multipart upload created for the first one, and CompleteMultipartUpload makes the
/// object visible. An object smaller than one part is a single PutObject at completion. An
/// upload never completed (aborted, or its process killed) stays invisible; the bucket's
/// lifecycle rule removes its parts.
///
/// The part being gathered waits in a temporary file (Lambda's `/tmp`), not in memory, and
/// goes out read from it in small pieces: a job's memory does not grow by a part once its
/// output passes one (in memory, the first full part added its 8 MiB and the buffer's growth
/// to it; batch-predict's peak RSS grew by half from 10k to 100k rows).
///
/// A full part goes out on a task of its own while the next one gathers in a new spool, so
/// writing goes on during an upload; a part starts only once the one before it is out (at
/// most two spools, one part in flight). A failed part fails the write or completion after it.
pub(super) struct S3Writer {
    store: S3Store,
    key: String,
    full_key: String,
    spool: Spool,
    upload_id: Option<String>,
    parts: Vec<CompletedPart>,
    sending: Option<JoinHandle<Result<CompletedPart, StoreError>>>,
}

/// One part of a multipart upload: where it goes and its number.
struct Part {
    store: S3Store,
    key: String,
    full_key: String,
    upload_id: String,
    number: i32,
}

/// The bytes of the part being gathered, in a temporary file deleted with the writer, and
/// their CRC32. The checksum goes with the part as a header, computed as the bytes come: S3
/// checks it as it would the SDK's, and the body goes out as it is read, without the
/// aws-chunked framing in which the SDK would send a checksum it computes (a copy of every
/// piece, queued while the connection is busy: half a megabyte of a job's peak memory).
struct Spool {
    file: tokio::fs::File,
    path: tempfile::TempPath,
    len: u64,
    crc: crc32fast::Hasher,
}

/// Pieces a spooled part is read back in.
const SPOOL_READ_BYTES: usize = 64 << 10;

impl Spool {
    fn new(key: &str) -> Result<Spool, StoreError> {
        let failed = |e: std::io::Error| StoreError::Other {
            key: key.to_owned(),
            source: Arc::new(std::io::Error::new(
                e.kind(),
                format!("a spool file in {}: {e}", std::env::temp_dir().display()),
            )),
        };
        let (file, path) = tempfile::NamedTempFile::new().map_err(failed)?.into_parts();
        let file = tokio::fs::File::from_std(file);
        Ok(Spool { file, path, len: 0, crc: crc32fast::Hasher::new() })
    }

    async fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.file.write_all(bytes).await?;
        self.len += bytes.len() as u64;
        self.crc.update(bytes);
        Ok(())
    }

    /// The CRC32 of what the spool holds, as the `x-amz-checksum-crc32` header writes it.
    fn checksum(&self) -> String {
        use base64::Engine as _;
        let crc = self.crc.clone().finalize();
        base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
    }

    /// What the spool holds, as a body read from the file (which the SDK can read again
    /// for a retry).
    async fn body(&mut self) -> std::io::Result<ByteStream> {
        use tokio::io::AsyncWriteExt;
        self.file.flush().await?;
        ByteStream::read_from()
            .path(&self.path)
            .buffer_size(SPOOL_READ_BYTES)
            .length(aws_sdk_s3::primitives::Length::Exact(self.len))
            .build()
            .await
            .map_err(std::io::Error::other)
    }

    /// Timeouts for sending what the spool holds.
    fn config(&self, store: &S3Store) -> aws_sdk_s3::config::Builder {
        write_config(&store.settings, usize::try_from(self.len).unwrap_or(usize::MAX))
    }
}

impl S3Writer {
    pub(super) fn new(store: S3Store, key: &str, full_key: String) -> Result<Self, StoreError> {
        Ok(S3Writer {
            store,
            key: key.to_owned(),
            full_key,
            spool: Spool::new(key)?,
            upload_id: None,
            parts: Vec::new(),
            sending: None,
        })
    }

    /// Starts sending the spool as the next part once the one before it is out, creating
    /// the multipart upload first if needed; the part after it gathers in a new spool.
    async fn send_part(&mut self) -> Result<(), StoreError> {
        let upload_id = self.upload_id().await?;
        self.sent().await?;
        let number = i32::try_from(self.parts.len() + 1)
            .map_err(|_| protocol_error(&self.key, "too many parts"))?;
        let full = std::mem::replace(&mut self.spool, Spool::new(&self.key)?);
        let part = Part {
            store: self.store.clone(),
            key: self.key.clone(),
            full_key: self.full_key.clone(),
            upload_id,
            number,
        };
        self.sending = Some(tokio::spawn(part.send(full)));
        Ok(())
    }

    /// Sends what the spool holds as the last part and waits until it is out.
    async fn send_last(&mut self) -> Result<(), StoreError> {
        if self.spool.len > 0 {
            self.send_part().await?;
        }
        self.sent().await
    }

    /// Waits for the part going out, if one is.
    async fn sent(&mut self) -> Result<(), StoreError> {
        let Some(sending) = self.sending.take() else { return Ok(()) };
        let part =
            sending.await.map_err(|e| spool_error(&self.key, std::io::Error::other(e)))??;
        self.parts.push(part);
        Ok(())
    }

    /// The multipart upload's id, created by the first call.
    async fn upload_id(&mut self) -> Result<String, StoreError> {
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        let created = self
            .store
            .client
            .create_multipart_upload()
            .bucket(&self.store.bucket)
            .key(&self.full_key)
            .send()
            .await
            .map_err(|e| classify(&self.key, e))?;
        let id = created.upload_id().map(str::to_owned).ok_or_else(|| {
            protocol_error(&self.key, "CreateMultipartUpload returned no upload id")
        })?;
        self.upload_id = Some(id.clone());
        Ok(id)
    }

    /// The object, smaller than one part, with one PutObject.
    async fn put_whole(&mut self) -> Result<(), StoreError> {
        let config = self.spool.config(&self.store);
        let body = self.spool.body().await.map_err(|e| spool_error(&self.key, e))?;
        self.store
            .client
            .put_object()
            .bucket(&self.store.bucket)
            .key(&self.full_key)
            // Named as well as given, so the object keeps it (a part's checksum is the
            // part's alone: the multipart upload is created without an algorithm).
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32)
            .checksum_crc32(self.spool.checksum())
            .body(body)
            .customize()
            .config_override(config)
            .send()
            .await
            .map_err(|e| classify(&self.key, e))?;
        Ok(())
    }
}

impl Part {
    /// Sends `spool` as this part; the spool's file goes when it is out.
    async fn send(self, mut spool: Spool) -> Result<CompletedPart, StoreError> {
        let config = spool.config(&self.store);
        let body = spool.body().await.map_err(|e| spool_error(&self.key, e))?;
        let sent = self
            .store
            .client
            .upload_part()
            .bucket(&self.store.bucket)
            .key(&self.full_key)
            .upload_id(self.upload_id)
            .part_number(self.number)
            .checksum_crc32(spool.checksum())
            .body(body)
            .customize()
            .config_override(config)
            .send()
            .await
            .map_err(|e| classify(&self.key, e))?;
        Ok(CompletedPart::builder().part_number(self.number).set_e_tag(sent.e_tag).build())
    }
}

fn spool_error(key: &str, err: std::io::Error) -> StoreError {
    StoreError::Other { key: key.to_owned(), source: Arc::new(err) }
}

fn protocol_error(key: &str, problem: &str) -> StoreError {
    spool_error(key, std::io::Error::other(problem.to_owned()))
}

#[async_trait]
impl ObjectWriter for S3Writer {
    async fn write(&mut self, bytes: Bytes) -> Result<(), StoreError> {
        self.spool.append(&bytes).await.map_err(|e| spool_error(&self.key, e))?;
        if self.spool.len >= MULTIPART_PART_BYTES as u64 {
            self.send_part().await?;
        }
        Ok(())
    }

    async fn complete(mut self: Box<Self>) -> Result<(), StoreError> {
        if self.upload_id.is_none() {
            return self.put_whole().await;
        }
        if let Err(err) = self.send_last().await {
            let _ = self.abort().await;
            return Err(err);
        }
        let parts = CompletedMultipartUpload::builder().set_parts(Some(self.parts.clone())).build();
        let completed = self
            .store
            .client
            .complete_multipart_upload()
            .bucket(&self.store.bucket)
            .key(&self.full_key)
            .set_upload_id(self.upload_id.clone())
            .multipart_upload(parts)
            .send()
            .await
            .map_err(|e| classify(&self.key, e));
        if let Err(err) = completed {
            let _ = self.abort().await;
            return Err(err);
        }
        Ok(())
    }

    async fn abort(mut self: Box<Self>) -> Result<(), StoreError> {
        if let Some(sending) = self.sending.take() {
            sending.abort();
            let _ = sending.await;
        }
        let Some(upload_id) = &self.upload_id else { return Ok(()) };
        self.store
            .client
            .abort_multipart_upload()
            .bucket(&self.store.bucket)
            .key(&self.full_key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| classify(&self.key, e))?;
        Ok(())
    }
}
