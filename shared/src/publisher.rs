//! Model publishing as `model-upload` offers it, independent of how requests arrive: direct
//! uploads, presigned uploads for models too large for a Lambda payload, aliases, deletion.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::manifest::Manifest;
use crate::names::{staging_key, AliasName, ModelId, ModelName, UploadId, Version};
use crate::registry::{ModelDetail, PublishLimits, Registry, Writer};
use crate::store::StoreError;

#[derive(Debug, Clone)]
pub struct Publisher {
    writer: Writer,
    limits: PublishLimits,
    presign_expiry: Duration,
}

/// The answer to starting a presigned upload. The URL is a credential: it is returned to
/// the caller and never logged.
#[derive(Serialize)]
pub struct UploadTicket {
    pub upload_id: String,
    pub url: String,
    pub method: &'static str,
    pub expires_in_seconds: u64,
}

impl std::fmt::Debug for UploadTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadTicket").field("upload_id", &self.upload_id).finish_non_exhaustive()
    }
}

/// The body of `PUT /models/{name}/aliases/{alias}`, and optionally of a commit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionBody {
    version: u64,
}

/// An alias as returned after it is set.
#[derive(Debug, Serialize)]
pub struct AliasInfo {
    pub name: String,
    pub alias: String,
    pub version: u64,
}

fn parse_version_body(body: &[u8]) -> Result<Version, Error> {
    let parsed: VersionBody = serde_json::from_slice(body).map_err(|e| {
        Error::invalid_request(format!(
            "invalid body: {e}; expected {{\"version\": <positive integer>}}"
        ))
    })?;
    Version::new(parsed.version)
        .ok_or_else(|| Error::invalid_request("version must be a positive integer"))
}

fn parse_id(name: &str, version: &str) -> Result<ModelId, Error> {
    Ok(ModelId::new(name.parse()?, version.parse()?))
}

impl Publisher {
    pub fn new(registry: Arc<Registry>, limits: PublishLimits, presign_expiry: Duration) -> Self {
        Self { writer: Writer::new(registry), limits, presign_expiry }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        self.writer.registry()
    }

    fn model_bytes(body: &[u8]) -> Result<bytes::Bytes, Error> {
        if body.is_empty() {
            return Err(Error::invalid_request("the request body is empty: send the ONNX file"));
        }
        Ok(bytes::Bytes::copy_from_slice(body))
    }

    /// `PUT /models/{name}/versions/{v}`.
    pub async fn put_version(
        &self,
        name: &str,
        version: &str,
        body: &[u8],
    ) -> Result<Manifest, Error> {
        let id = parse_id(name, version)?;
        self.writer.publish(&id, Self::model_bytes(body)?, &self.limits).await
    }

    /// `POST /models/{name}/versions`: the next free version.
    pub async fn post_version(&self, name: &str, body: &[u8]) -> Result<Manifest, Error> {
        let name: ModelName = name.parse()?;
        self.writer.publish_next(&name, Self::model_bytes(body)?, &self.limits).await
    }

    /// `POST /models/{name}/uploads`: a presigned PUT URL for one staging key.
    pub async fn start_upload(&self, name: &str) -> Result<UploadTicket, Error> {
        let name: ModelName = name.parse()?;
        let upload = UploadId::random();
        let url = self
            .registry()
            .store()
            .presign_put(&staging_key(&name, &upload), self.presign_expiry)
            .await?;
        tracing::info!(model = %name, upload = %upload, "presigned upload started");
        Ok(UploadTicket {
            upload_id: upload.to_string(),
            url,
            method: "PUT",
            expires_in_seconds: self.presign_expiry.as_secs(),
        })
    }

    /// `POST /models/{name}/uploads/{id}/commit`: validates the staged file and publishes it
    /// as the version in the body, or the next free one. The staged file is removed once it
    /// is published or refused.
    pub async fn commit_upload(
        &self,
        name: &str,
        upload: &str,
        body: &[u8],
    ) -> Result<Manifest, Error> {
        let name: ModelName = name.parse()?;
        let upload: UploadId = upload.parse()?;
        let version = if body.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(parse_version_body(body)?)
        };
        let key = staging_key(&name, &upload);
        let store = self.registry().store();
        let meta = match store.head(&key).await {
            Err(StoreError::NotFound { .. }) => {
                return Err(Error::UploadNotFound {
                    name: name.to_string(),
                    upload: upload.to_string(),
                })
            }
            other => other?,
        };
        let result = if meta.size > self.limits.max_model_bytes {
            Err(Error::PayloadTooLarge {
                what: "model",
                size: meta.size,
                limit: self.limits.max_model_bytes,
            })
        } else {
            let bytes = store.get(&key).await?.bytes().await?;
            match version {
                Some(version) => {
                    self.writer
                        .publish(&ModelId::new(name.clone(), version), bytes, &self.limits)
                        .await
                }
                None => self.writer.publish_next(&name, bytes, &self.limits).await,
            }
        };
        // A conflict or an outage leaves the staged file for another commit.
        if matches!(
            &result,
            Ok(_) | Err(Error::InvalidModel { .. } | Error::PayloadTooLarge { .. })
        ) {
            store.delete(&key).await?;
        }
        result
    }

    /// `GET /models`.
    pub async fn models(&self) -> Result<Vec<String>, Error> {
        self.registry().models().await
    }

    /// `GET /models/{name}`.
    pub async fn detail(&self, name: &str) -> Result<ModelDetail, Error> {
        self.registry().detail(&name.parse()?).await
    }

    /// `PUT /models/{name}/aliases/{alias}` with `{"version": n}`.
    pub async fn set_alias(
        &self,
        name: &str,
        alias: &str,
        body: &[u8],
    ) -> Result<AliasInfo, Error> {
        let (name, alias): (ModelName, AliasName) = (name.parse()?, alias.parse()?);
        let version = parse_version_body(body)?;
        self.writer.set_alias(&name, &alias, version).await?;
        Ok(AliasInfo { name: name.to_string(), alias: alias.to_string(), version: version.get() })
    }

    /// `DELETE /models/{name}/aliases/{alias}`.
    pub async fn delete_alias(&self, name: &str, alias: &str) -> Result<(), Error> {
        self.writer.delete_alias(&name.parse()?, &alias.parse()?).await
    }

    /// `DELETE /models/{name}/versions/{v}`.
    pub async fn delete_version(&self, name: &str, version: &str) -> Result<(), Error> {
        self.writer.delete_version(&parse_id(name, version)?).await
    }
}
