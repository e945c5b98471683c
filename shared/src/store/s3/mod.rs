//! The S3 backend, over `aws-sdk-s3`. Works with any S3-compatible server: the endpoint comes
//! from the standard `AWS_ENDPOINT_URL`/`AWS_ENDPOINT_URL_S3` variables, and local servers
//! need path-style addressing (see [`S3Settings::force_path_style`]).
//!
//! Every call is bounded in time ([`S3Settings`]): connecting, each attempt (up to the first
//! response byte), the whole call with its retries, and every wait for the next bytes of a
//! GET body. Throttling and transport errors are retried by the SDK with jittered
//! exponential backoff; a GET body that breaks or stalls mid-way is resumed from where it
//! broke with a `Range` request pinned to the object's ETag (a ranged GET within its range). What still fails is
//! [`StoreError::Throttled`] or [`StoreError::Unavailable`], a 503 for clients.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::retry::{RetryConfig, RetryMode};
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::StalledStreamProtectionConfig;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;
use futures::stream;

use super::{check_key, check_prefix, BoxWriter, GetResult, ObjectMeta, ObjectStore, StoreError};
use crate::error::Cause;
use writer::S3Writer;

mod writer;

/// How the S3 client connects, waits and retries. [`crate::Config`] documents the variables
/// that set each field; the defaults suit a Lambda function in the bucket's region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// Path-style addressing, which local S3-compatible servers need.
    pub force_path_style: bool,
    /// Limit on opening a connection.
    pub connect_timeout: Duration,
    /// Limit on one attempt of a call: up to the response head for a GET (whose body is
    /// streamed), the whole exchange for every other call.
    pub attempt_timeout: Duration,
    /// Limit on a whole call, its retries and backoff included. Writes get longer limits in
    /// proportion to their size ([`UPLOAD_BYTES_PER_SECOND`]).
    pub operation_timeout: Duration,
    /// Longest wait for the next bytes of a GET body; after it the read is resumed (or fails).
    pub body_idle_timeout: Duration,
    /// Attempts per call, the first included; also bounds the resumptions of one GET body.
    pub max_attempts: u32,
    /// `Standard` retries; `Adaptive` also rate-limits the client after throttling.
    pub retry_mode: RetryMode,
    /// Backoff before the first retry; each further one doubles it, up to `max_backoff`, and
    /// the SDK waits a random fraction of it (full jitter).
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for S3Settings {
    /// Lambda defaults. In-region S3 connects in milliseconds and sends a response head in
    /// tens of milliseconds: 1 s to connect and 5 s per attempt cut only what is broken.
    /// Three attempts fit in the 15 s per call, so a request whose store call fails for good
    /// still gets its 503 well inside predict's 30 s function timeout. A body that sends
    /// nothing for 5 s (the SDK's own stalled-stream grace period) is broken.
    fn default() -> Self {
        Self {
            force_path_style: false,
            connect_timeout: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(15),
            body_idle_timeout: Duration::from_secs(5),
            max_attempts: 3,
            retry_mode: RetryMode::Standard,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// The slowest write throughput the timeouts allow for: each attempt of a write gets one more
/// second per this many bytes of its body (a 512 MiB model: 32 s).
pub const UPLOAD_BYTES_PER_SECOND: u64 = 16 << 20;

impl S3Settings {
    fn timeouts(&self, extra: Duration) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(self.connect_timeout)
            .operation_attempt_timeout(self.attempt_timeout + extra)
            .operation_timeout(self.operation_timeout + extra * self.max_attempts.max(1))
            .build()
    }

    fn retries(&self) -> RetryConfig {
        let retry = match self.retry_mode {
            RetryMode::Adaptive => RetryConfig::adaptive(),
            _ => RetryConfig::standard(),
        };
        retry
            .with_max_attempts(self.max_attempts.max(1))
            .with_initial_backoff(self.initial_backoff)
            .with_max_backoff(self.max_backoff)
    }
}

/// The AWS SDK's configuration loader (region, credentials, endpoint from the standard
/// environment) with [`https_client`] as its HTTP client.
pub fn aws_defaults() -> aws_config::ConfigLoader {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(https_client())
}

/// The SDK's default HTTP client (hyper, rustls, the system's root certificates), with ring
/// as its cryptography instead of the default aws-lc.
pub fn https_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// Objects live in `bucket` under `prefix` (empty, or ending with `/`).
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    settings: S3Settings,
}

impl S3Store {
    /// A store over a client built elsewhere, whose timeouts and retries are its own; GET
    /// bodies get the default idle timeout and resumptions of [`S3Settings`].
    pub fn new(client: Client, bucket: impl Into<String>, prefix: impl Into<String>) -> Self {
        let mut prefix = prefix.into();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Self { client, bucket: bucket.into(), prefix, settings: S3Settings::default() }
    }

    /// Builds a client from the standard AWS environment (region, credentials, endpoint),
    /// with the timeouts and retries of `settings`.
    pub async fn connect(bucket: &str, prefix: &str, settings: &S3Settings) -> Self {
        let shared = aws_defaults().load().await;
        Self::from_sdk_config(&shared, bucket, prefix, settings)
    }

    /// Builds a client from an already loaded AWS configuration, with the timeouts and
    /// retries of `settings` taking the place of the configuration's own.
    pub fn from_sdk_config(
        shared: &aws_config::SdkConfig,
        bucket: &str,
        prefix: &str,
        settings: &S3Settings,
    ) -> Self {
        let config = aws_sdk_s3::config::Builder::from(shared)
            .force_path_style(settings.force_path_style)
            .timeout_config(settings.timeouts(Duration::ZERO))
            .retry_config(settings.retries())
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .grace_period(settings.body_idle_timeout)
                    .build(),
            )
            .build();
        let mut store = Self::new(Client::from_conf(config), bucket, prefix);
        store.settings = settings.clone();
        store
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn full_key(&self, key: &str) -> Result<String, StoreError> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    /// Timeouts for writing `bytes`: the configured ones, longer by the time the body takes
    /// at [`UPLOAD_BYTES_PER_SECOND`].
    fn write_config(&self, bytes: &Bytes) -> aws_sdk_s3::config::Builder {
        write_config(&self.settings, bytes.len())
    }
}

pub(super) fn write_config(settings: &S3Settings, bytes: usize) -> aws_sdk_s3::config::Builder {
    let extra = Duration::from_secs_f64(bytes as f64 / UPLOAD_BYTES_PER_SECOND as f64);
    aws_sdk_s3::config::Builder::new().timeout_config(settings.timeouts(extra))
}

impl S3Store {
    /// A GET of the whole object, or of a non-empty `range` of it; a range that starts past
    /// the end (S3's 416) yields no bytes.
    async fn read(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult, StoreError> {
        let full = self.full_key(key)?;
        let header = range.as_ref().map(|r| format!("bytes={}-{}", r.start, r.end - 1));
        let output = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .set_range(header)
            .send()
            .await
        {
            Err(e) if e.raw_response().is_some_and(|raw| raw.status().as_u16() == 416) => {
                return Ok(GetResult { size: 0, chunks: Box::pin(stream::empty()) });
            }
            other => other.map_err(|e| classify(key, e))?,
        };
        let size = output.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        let body = ResumableBody {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            full_key: full,
            key: key.to_owned(),
            etag: output.e_tag().map(str::to_owned),
            body: Some(output.body),
            first: range.as_ref().map_or(0, |r| r.start),
            last: range.map(|r| r.end - 1),
            received: 0,
            size,
            idle_timeout: self.settings.body_idle_timeout,
            resumes_left: self.settings.max_attempts.saturating_sub(1),
        };
        Ok(GetResult { size, chunks: Box::pin(stream::unfold(body, ResumableBody::advance)) })
    }
}

/// Sorts an SDK failure into the store's error variants by its error code and HTTP status.
pub(crate) fn classify<E>(
    key: &str,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let key = key.to_owned();
    let status = err.raw_response().map(|raw| raw.status().as_u16());
    let code = err.code().map(str::to_owned);
    // A response that could not be read whole (reset, truncated) is a transport failure too.
    let transport = matches!(
        err,
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_)
    );
    let source: crate::error::Cause = Arc::new(err);
    match (code.as_deref(), status) {
        _ if transport => StoreError::Unavailable { key, source },
        (Some("NoSuchBucket"), _) => StoreError::Other { key, source },
        (Some("NoSuchKey" | "NotFound"), _) | (_, Some(404)) => StoreError::NotFound { key },
        (Some("PreconditionFailed" | "ConditionalRequestConflict"), _) | (_, Some(412)) => {
            StoreError::AlreadyExists { key }
        }
        (
            Some("AccessDenied" | "Forbidden" | "InvalidAccessKeyId" | "SignatureDoesNotMatch"),
            _,
        )
        | (_, Some(403)) => StoreError::AccessDenied { key, source },
        (
            Some(
                "SlowDown"
                | "Throttling"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "TooManyRequests"
                | "RequestThrottled",
            ),
            _,
        )
        | (_, Some(429 | 503)) => StoreError::Throttled { key, source },
        (_, Some(500..=599)) => StoreError::Unavailable { key, source },
        _ => StoreError::Other { key, source },
    }
}

/// A GET body being read: the SDK's byte stream, and what is needed to resume it.
struct ResumableBody {
    client: Client,
    bucket: String,
    full_key: String,
    key: String,
    etag: Option<String>,
    body: Option<ByteStream>,
    /// Where the body starts in the object, and its last byte for a ranged GET.
    first: u64,
    last: Option<u64>,
    received: u64,
    size: u64,
    idle_timeout: Duration,
    resumes_left: u32,
}

impl ResumableBody {
    /// [`Self::next`] in the shape `stream::unfold` takes.
    async fn advance(mut self) -> Option<(Result<Bytes, StoreError>, Self)> {
        self.next().await.map(|chunk| (chunk, self))
    }

    /// The next chunk; a broken or stalled stream is resumed where it broke while resumptions
    /// are left, then reported as [`StoreError::Unavailable`].
    async fn next(&mut self) -> Option<Result<Bytes, StoreError>> {
        loop {
            let body = self.body.as_mut()?;
            let failure: Cause = match tokio::time::timeout(self.idle_timeout, body.next()).await {
                Ok(None) => {
                    self.body = None;
                    return None;
                }
                Ok(Some(Ok(chunk))) => {
                    self.received += chunk.len() as u64;
                    return Some(Ok(chunk));
                }
                Ok(Some(Err(e))) => Arc::new(e),
                Err(_) => Arc::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no body bytes for {:?}", self.idle_timeout),
                )),
            };
            self.body = None;
            let etag = match &self.etag {
                Some(etag) if self.resumes_left > 0 => etag.clone(),
                _ => {
                    return Some(Err(StoreError::Unavailable {
                        key: self.key.clone(),
                        source: failure,
                    }))
                }
            };
            self.resumes_left -= 1;
            tracing::warn!(
                key = %self.key,
                received = self.received,
                size = self.size,
                error = %crate::error::chain(failure.as_ref()),
                "S3 body broke off; resuming"
            );
            match self.resume(&etag).await {
                Ok(body) => self.body = Some(body),
                Err(err) => return Some(Err(err)),
            }
        }
    }

    /// The rest of the body from `received` on, provided it is still the same object.
    async fn resume(&self, etag: &str) -> Result<ByteStream, StoreError> {
        let from = self.first + self.received;
        let to = self.last.map(|last| last.to_string()).unwrap_or_default();
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.full_key)
            .range(format!("bytes={from}-{to}"))
            .if_match(etag)
            .send()
            .await
            .map_err(|e| match classify(&self.key, e) {
                // 412: the object was replaced while it was being read.
                StoreError::AlreadyExists { key } => StoreError::Other {
                    key,
                    source: Arc::new(std::io::Error::other("object changed while being read")),
                },
                other => other,
            })?;
        let expected = format!("bytes {from}-");
        if !output.content_range().is_some_and(|range| range.starts_with(&expected)) {
            return Err(StoreError::Unavailable {
                key: self.key.clone(),
                source: Arc::new(std::io::Error::other(format!(
                    "asked for {expected}, got range {:?}",
                    output.content_range()
                ))),
            });
        }
        Ok(output.body)
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn get(&self, key: &str) -> Result<GetResult, StoreError> {
        self.read(key, None).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let full = self.full_key(key)?;
        let output = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        let size = output.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        Ok(ObjectMeta { key: key.to_owned(), size })
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<GetResult, StoreError> {
        if range.is_empty() {
            self.head(key).await?;
            return Ok(GetResult { size: 0, chunks: Box::pin(stream::empty()) });
        }
        self.read(key, Some(range)).await
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        let config = self.write_config(&bytes);
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .body(ByteStream::from(bytes))
            .customize()
            .config_override(config)
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        let config = self.write_config(&bytes);
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .if_none_match("*")
            .body(ByteStream::from(bytes))
            .customize()
            .config_override(config)
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        Ok(())
    }

    async fn put_streaming(&self, key: &str) -> Result<BoxWriter, StoreError> {
        let full_key = self.full_key(key)?;
        Ok(Box::new(S3Writer::new(self.clone(), key, full_key)?))
    }

    async fn presign_put(&self, key: &str, expires_in: Duration) -> Result<String, StoreError> {
        let full = self.full_key(key)?;
        let config = PresigningConfig::expires_in(expires_in)
            .map_err(|e| StoreError::Other { key: key.to_owned(), source: Arc::new(e) })?;
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .presigned(config)
            .await
            .map_err(|e| classify(key, e))?;
        Ok(request.uri().to_owned())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        check_prefix(prefix)?;
        let full_prefix = format!("{}{prefix}", self.prefix);
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify(prefix, e))?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| k.strip_prefix(&self.prefix)) else {
                    continue;
                };
                let size = object.size().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
                found.push(ObjectMeta { key: key.to_owned(), size });
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        Ok(())
    }
}
