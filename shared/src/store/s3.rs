//! The S3 backend, over `aws-sdk-s3`. Works with any S3-compatible server: the endpoint comes
//! from the standard `AWS_ENDPOINT_URL`/`AWS_ENDPOINT_URL_S3` variables, and local servers
//! need path-style addressing (see [`S3Store::connect`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;
use futures::stream;

use super::{check_key, check_prefix, GetResult, ObjectMeta, ObjectStore, StoreError};

/// Objects live in `bucket` under `prefix` (empty, or ending with `/`).
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
}

impl S3Store {
    pub fn new(client: Client, bucket: impl Into<String>, prefix: impl Into<String>) -> Self {
        let mut prefix = prefix.into();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Self { client, bucket: bucket.into(), prefix }
    }

    /// Builds a client from the standard AWS environment (region, credentials, endpoint).
    pub async fn connect(bucket: &str, prefix: &str, force_path_style: bool) -> Self {
        let shared = aws_config::load_from_env().await;
        let config =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(force_path_style).build();
        Self::new(Client::from_conf(config), bucket, prefix)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn full_key(&self, key: &str) -> Result<String, StoreError> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
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
    let transport = matches!(err, SdkError::DispatchFailure(_) | SdkError::TimeoutError(_));
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

#[async_trait]
impl ObjectStore for S3Store {
    async fn get(&self, key: &str) -> Result<GetResult, StoreError> {
        let full = self.full_key(key)?;
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        let size = output.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        let owned_key = key.to_owned();
        let chunks = stream::unfold(Some(output.body), move |body| {
            let key = owned_key.clone();
            async move {
                let mut body: ByteStream = body?;
                match body.next().await {
                    None => None,
                    Some(Ok(chunk)) => Some((Ok(chunk), Some(body))),
                    // The connection broke mid-object: report it and end the stream.
                    Some(Err(e)) => {
                        Some((Err(StoreError::Unavailable { key, source: Arc::new(e) }), None))
                    }
                }
            }
        });
        Ok(GetResult { size, chunks: Box::pin(chunks) })
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

    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .if_none_match("*")
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        Ok(())
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
