//! The registry's write path: publishing versions (validated, claimed create-only), aliases
//! and deletion. Only model-upload writes; predict and batch-predict hold a [`Registry`]
//! alone, which cannot.
//!
//! A version exists once its manifest does. Publishing writes `model.onnx` and then the
//! manifest, each only if absent, so published versions are immutable and of two racing
//! uploads of one version exactly one wins. Every write tells the registry's caches in this
//! execution environment at once; other environments see it when their resolutions expire.
//!
//! After each publish or deletion the writer points `models/<name>/latest` at the highest
//! published version, so that predict resolves `latest` with one GET rather than a LIST. The
//! pointer is written after the manifest it names exists, from a listing made after reading
//! it, and read back until it names the highest version listed: of two racing publishers,
//! the one whose write lands last sees the other's version and corrects the pointer. A
//! pointer that could not be brought up to date is removed, and readers list instead.

use std::sync::Arc;

use bytes::Bytes;

use super::{AliasTarget, Registry};
use crate::disk_cache::sha256_hex;
use crate::engine;
use crate::error::Error;
use crate::manifest::Manifest;
use crate::names::{alias_key, latest_key, AliasName, ModelId, ModelName, Version};
use crate::store::StoreError;

/// Limits on what may be published.
#[derive(Debug, Clone, Copy)]
pub struct PublishLimits {
    /// The largest ONNX file accepted.
    pub max_model_bytes: u64,
    pub engine: engine::Settings,
}

/// Writes to the registry's store: the publishing side of a [`Registry`].
#[derive(Debug, Clone)]
pub struct Writer {
    registry: Arc<Registry>,
}

impl Writer {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    /// The registry this writer publishes to, for reading back what it wrote.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Whether an object exists.
    async fn exists(&self, key: &str) -> Result<bool, Error> {
        match self.registry.store.head(key).await {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// Whether a version's manifest exists.
    async fn is_published(&self, id: &ModelId) -> Result<bool, Error> {
        self.exists(&id.manifest_key()).await
    }

    /// Validates an ONNX file and publishes it as `id`. An existing version is a conflict and
    /// is never changed.
    pub async fn publish(
        &self,
        id: &ModelId,
        bytes: Bytes,
        limits: &PublishLimits,
    ) -> Result<Manifest, Error> {
        if bytes.len() as u64 > limits.max_model_bytes {
            return Err(Error::PayloadTooLarge {
                what: "model",
                size: bytes.len() as u64,
                limit: limits.max_model_bytes,
            });
        }
        if self.is_published(id).await? {
            return Err(version_exists(id));
        }
        let for_engine = bytes.clone();
        let engine_limits = limits.engine;
        let validated =
            tokio::task::spawn_blocking(move || engine::validate(&for_engine, &engine_limits))
                .await
                .map_err(|e| Error::internal("validating a model", e))??;
        let manifest = Manifest {
            name: id.name.to_string(),
            version: id.version.get(),
            sha256: sha256_hex(&bytes),
            size: bytes.len() as u64,
            created: now_rfc3339(),
            signature: validated.signature,
            opset: validated.opset,
            producer: validated.producer,
            loader: validated.loader,
            plans: validated.plans,
            validation: Some(validated.report),
        };
        self.claim_model_key(id, bytes, &manifest.sha256).await?;
        let manifest_json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| Error::internal("encoding a manifest", e))?;
        match self.registry.store.put_if_absent(&id.manifest_key(), manifest_json.into()).await {
            Err(StoreError::AlreadyExists { .. }) => return Err(version_exists(id)),
            other => other?,
        }
        self.update_latest(&id.name).await;
        self.registry.forget_resolution(&id.name, None).await;
        tracing::info!(model = %id, bytes = manifest.size, sha256 = %manifest.sha256, "published");
        Ok(manifest)
    }

    /// Writes `model.onnx` only if absent. If it is there already, the upload may go on only
    /// when it holds the same bytes and no manifest exists (a retry of an interrupted publish).
    async fn claim_model_key(&self, id: &ModelId, bytes: Bytes, sha256: &str) -> Result<(), Error> {
        let store = &self.registry.store;
        match store.put_if_absent(&id.model_key(), bytes).await {
            Err(StoreError::AlreadyExists { .. }) => {}
            other => return Ok(other?),
        }
        if self.is_published(id).await? {
            return Err(version_exists(id));
        }
        let existing = store.get(&id.model_key()).await?.bytes().await?;
        if sha256_hex(&existing) == sha256 {
            Ok(())
        } else {
            Err(Error::Conflict {
                message: format!(
                    "version {} of model `{}` is being published by another upload",
                    id.version, id.name
                ),
            })
        }
    }

    /// Publishes as the next free version, trying the following one if another upload takes
    /// it first.
    pub async fn publish_next(
        &self,
        name: &ModelName,
        bytes: Bytes,
        limits: &PublishLimits,
    ) -> Result<Manifest, Error> {
        const ATTEMPTS: usize = 5;
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let next = match self.registry.versions(name).await {
                Ok(versions) => versions[versions.len() - 1].get() + 1,
                Err(Error::ModelNotFound { .. }) => 1,
                Err(err) => return Err(err),
            };
            let id = ModelId::new(name.clone(), Version::new(next).unwrap_or(Version::MIN));
            match self.publish(&id, bytes.clone(), limits).await {
                Err(err @ Error::Conflict { .. }) => last = Some(err),
                other => return other,
            }
        }
        Err(last
            .unwrap_or_else(|| Error::Conflict { message: "too many concurrent uploads".into() }))
    }

    /// Points an alias at a published version (creating or moving it).
    pub async fn set_alias(
        &self,
        name: &ModelName,
        alias: &AliasName,
        version: Version,
    ) -> Result<(), Error> {
        let id = ModelId::new(name.clone(), version);
        if !self.is_published(&id).await? {
            return Err(self.registry.not_found(&id).await);
        }
        let body = serde_json::to_vec(&AliasTarget { version: version.get() })
            .map_err(|e| Error::internal("encoding an alias", e))?;
        self.registry.store.put(&alias_key(name, alias), body.into()).await?;
        self.registry.forget_resolution(name, Some(alias)).await;
        Ok(())
    }

    pub async fn delete_alias(&self, name: &ModelName, alias: &AliasName) -> Result<(), Error> {
        self.registry.alias_target(name, alias).await?;
        self.registry.store.delete(&alias_key(name, alias)).await?;
        self.registry.forget_resolution(name, Some(alias)).await;
        Ok(())
    }

    /// Removes a version, refused while an alias points to it. The manifest goes first, so
    /// the version disappears before its files do.
    pub async fn delete_version(&self, id: &ModelId) -> Result<(), Error> {
        let pointing: Vec<String> = self
            .registry
            .aliases(&id.name)
            .await?
            .into_iter()
            .filter(|(_, version)| *version == id.version.get())
            .map(|(alias, _)| alias)
            .collect();
        if !pointing.is_empty() {
            return Err(Error::Conflict {
                message: format!(
                    "version {} of model `{}` is the target of alias(es) {}; move or delete them first",
                    id.version,
                    id.name,
                    pointing.join(", ")
                ),
            });
        }
        let has_model = self.exists(&id.model_key()).await?;
        if !self.is_published(id).await? && !has_model {
            return Err(self.registry.not_found(id).await);
        }
        for key in [id.manifest_key(), id.model_key()] {
            self.registry.store.delete(&key).await?;
        }
        self.update_latest(&id.name).await;
        self.registry.forget_model(id).await;
        Ok(())
    }
}

impl Writer {
    /// Brings the `latest` pointer up to date ([`Self::point_latest_at_highest`]), or removes
    /// it when that fails, so that no reader follows a pointer older than the listing.
    async fn update_latest(&self, name: &ModelName) {
        if let Err(err) = self.point_latest_at_highest(name).await {
            let error = crate::error::chain(&err);
            tracing::warn!(model = %name, %error, "latest pointer not updated; removing it");
            if let Err(err) = self.registry.store.delete(&latest_key(name)).await {
                let error = crate::error::chain(&err);
                tracing::error!(model = %name, %error, "stale latest pointer left in place");
            }
        }
    }

    /// Points `latest` at the highest published version (removes it when none is left),
    /// reading it back until it does: the pointer is read before the listing, so the listing
    /// holds the version it names unless that was deleted.
    async fn point_latest_at_highest(&self, name: &ModelName) -> Result<(), Error> {
        const ROUNDS: usize = 5;
        let (store, key) = (&self.registry.store, latest_key(name));
        for _ in 0..ROUNDS {
            let pointer = self.registry.latest_pointer(name).await.ok().flatten();
            let highest = match self.registry.versions(name).await {
                Ok(versions) => Some(versions[versions.len() - 1]),
                Err(Error::ModelNotFound { .. }) => None,
                Err(err) => return Err(err),
            };
            match highest {
                _ if pointer == highest => return Ok(()),
                Some(version) => {
                    let body = serde_json::to_vec(&AliasTarget { version: version.get() })
                        .map_err(|e| Error::internal("encoding the latest pointer", e))?;
                    store.put(&key, body.into()).await?;
                }
                None => store.delete(&key).await?,
            }
        }
        Err(Error::Conflict {
            message: format!("model `{name}` kept changing while its latest pointer was written"),
        })
    }
}

fn version_exists(id: &ModelId) -> Error {
    Error::Conflict {
        message: format!(
            "version {} of model `{}` is already published; versions are immutable",
            id.version, id.name
        ),
    }
}

/// The current time, RFC 3339, to the second.
fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::VersionSpec;
    use crate::registry::testing::{
        example_variant, id, publish_limits as limits, Fixture, EXAMPLE_MODEL,
    };
    use crate::store::ObjectStore;

    fn writer(fixture: &Fixture) -> Writer {
        Writer::new(fixture.registry.clone())
    }

    async fn stored(fixture: &Fixture, key: &str) -> Bytes {
        fixture.store.get(key).await.unwrap().bytes().await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_publishes_of_one_version_have_exactly_one_winner() {
        let fixture = Fixture::roomy();
        // Two racers per file: losers with other bytes lose the model key, losers with the
        // winner's bytes lose the manifest.
        let files: Vec<Bytes> =
            (0..8).map(|i| example_variant(&format!("racer {}", i % 4))).collect();
        let start = Arc::new(tokio::sync::Barrier::new(files.len()));
        let racers: Vec<_> = files
            .iter()
            .map(|bytes| {
                let (writer, bytes, start) = (writer(&fixture), bytes.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    writer.publish(&id("iris", 1), bytes, &limits()).await
                })
            })
            .collect();
        let mut winners = Vec::new();
        for (racer, bytes) in racers.into_iter().zip(&files) {
            match racer.await.unwrap() {
                Ok(manifest) => winners.push((manifest, bytes.clone())),
                Err(Error::Conflict { .. }) => {}
                Err(other) => panic!("a loser got {other:?}, not a conflict"),
            }
        }
        assert_eq!(winners.len(), 1, "{} publishes of one version succeeded", winners.len());
        let (manifest, bytes) = &winners[0];
        assert_eq!(stored(&fixture, &id("iris", 1).model_key()).await, *bytes);
        assert_eq!(manifest.sha256, sha256_hex(bytes));
        let manifest_json = stored(&fixture, &id("iris", 1).manifest_key()).await;
        let stored_manifest: Manifest = serde_json::from_slice(&manifest_json).unwrap();
        assert_eq!(stored_manifest.sha256, manifest.sha256, "the manifest is another racer's");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_next_version_publishes_each_get_a_version_of_their_own() {
        let fixture = Fixture::roomy();
        let name: ModelName = "iris".parse().unwrap();
        let racers: Vec<_> = (0..4)
            .map(|i| {
                let (writer, name) = (writer(&fixture), name.clone());
                let bytes = example_variant(&format!("racer {i}"));
                tokio::spawn(async move { writer.publish_next(&name, bytes, &limits()).await })
            })
            .collect();
        let mut versions = Vec::new();
        for racer in racers {
            versions.push(racer.await.unwrap().unwrap().version);
        }
        versions.sort_unstable();
        assert_eq!(versions, [1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn an_interrupted_publish_is_retried_with_the_same_bytes_only() {
        let fixture = Fixture::roomy();
        let writer = writer(&fixture);
        // A publish that stopped after writing model.onnx, before its manifest.
        let interrupted = example_variant("first");
        fixture.store.put(&id("iris", 1).model_key(), interrupted.clone()).await.unwrap();

        let other = writer.publish(&id("iris", 1), example_variant("second"), &limits()).await;
        assert!(matches!(other, Err(Error::Conflict { .. })), "{other:?}");
        let manifest =
            writer.publish(&id("iris", 1), interrupted.clone(), &limits()).await.unwrap();
        assert_eq!(manifest.sha256, sha256_hex(&interrupted));
        let again = writer.publish(&id("iris", 1), interrupted, &limits()).await;
        assert!(matches!(again, Err(Error::Conflict { .. })), "a published version changed");
    }

    #[tokio::test]
    async fn writes_are_seen_at_once_in_the_same_environment() {
        // An hour of TTL: only the writer's invalidation can make changes visible.
        let fixture = Fixture::new(std::time::Duration::from_secs(3600), 1 << 30);
        let (writer, registry) = (writer(&fixture), &fixture.registry);
        let iris: ModelName = "iris".parse().unwrap();
        let (latest, prod) = (VersionSpec::Latest, "prod".parse::<VersionSpec>().unwrap());
        let prod_alias: AliasName = "prod".parse().unwrap();
        let model = Bytes::from_static(EXAMPLE_MODEL);

        writer.publish(&id("iris", 1), model.clone(), &limits()).await.unwrap();
        assert_eq!(registry.resolve(&iris, &latest).await.unwrap(), id("iris", 1));
        writer.publish(&id("iris", 2), example_variant("2"), &limits()).await.unwrap();
        assert_eq!(registry.resolve(&iris, &latest).await.unwrap(), id("iris", 2));

        writer.set_alias(&iris, &prod_alias, Version::MIN).await.unwrap();
        assert_eq!(registry.resolve(&iris, &prod).await.unwrap(), id("iris", 1));
        writer.set_alias(&iris, &prod_alias, id("iris", 2).version).await.unwrap();
        assert_eq!(registry.resolve(&iris, &prod).await.unwrap(), id("iris", 2));
        writer.delete_alias(&iris, &prod_alias).await.unwrap();
        let gone = registry.resolve(&iris, &prod).await;
        assert!(matches!(gone, Err(Error::AliasNotFound { .. })), "{gone:?}");

        registry.load(&id("iris", 2)).await.unwrap();
        writer.delete_version(&id("iris", 2)).await.unwrap();
        assert!(!registry.is_loaded(&id("iris", 2)).await, "a deleted version stayed loaded");
        assert_eq!(registry.resolve(&iris, &latest).await.unwrap(), id("iris", 1));
    }

    /// The version the stored `latest` pointer names, if there is one.
    async fn pointer(fixture: &Fixture) -> Option<u64> {
        let key = latest_key(&"iris".parse().unwrap());
        let object = fixture.store.get(&key).await.ok()?;
        let target: AliasTarget = serde_json::from_slice(&object.bytes().await.unwrap()).unwrap();
        Some(target.version)
    }

    #[tokio::test]
    async fn the_latest_pointer_follows_the_highest_version_and_never_goes_back() {
        let fixture = Fixture::roomy();
        let writer = writer(&fixture);
        writer.publish(&id("iris", 5), example_variant("5"), &limits()).await.unwrap();
        assert_eq!(pointer(&fixture).await, Some(5));
        writer.publish(&id("iris", 3), example_variant("3"), &limits()).await.unwrap();
        assert_eq!(pointer(&fixture).await, Some(5), "a lower version moved the pointer back");
        writer.delete_version(&id("iris", 5)).await.unwrap();
        assert_eq!(pointer(&fixture).await, Some(3), "the pointer names a deleted version");
        writer.delete_version(&id("iris", 3)).await.unwrap();
        assert_eq!(pointer(&fixture).await, None, "a model without versions kept a pointer");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_publishes_leave_the_pointer_on_the_highest_version() {
        for round in 0..3 {
            let fixture = Fixture::roomy();
            let start = Arc::new(tokio::sync::Barrier::new(8));
            let racers: Vec<_> = (1..=8)
                .map(|version| {
                    let (writer, start) = (writer(&fixture), start.clone());
                    let bytes = example_variant(&format!("racer {version}"));
                    tokio::spawn(async move {
                        start.wait().await;
                        writer.publish(&id("iris", version), bytes, &limits()).await
                    })
                })
                .collect();
            for racer in racers {
                racer.await.unwrap().unwrap();
            }
            assert_eq!(pointer(&fixture).await, Some(8), "round {round}");
        }
    }

    #[tokio::test]
    async fn a_version_an_alias_points_to_is_not_deleted() {
        let fixture = Fixture::roomy();
        let writer = writer(&fixture);
        let iris: ModelName = "iris".parse().unwrap();
        let prod: AliasName = "prod".parse().unwrap();
        writer.publish(&id("iris", 1), Bytes::from_static(EXAMPLE_MODEL), &limits()).await.unwrap();
        writer.set_alias(&iris, &prod, Version::MIN).await.unwrap();

        let refused = writer.delete_version(&id("iris", 1)).await;
        assert!(
            matches!(&refused, Err(Error::Conflict { message }) if message.contains("prod")),
            "{refused:?}"
        );
        assert!(fixture.store.head(&id("iris", 1).model_key()).await.is_ok());
        writer.delete_alias(&iris, &prod).await.unwrap();
        writer.delete_version(&id("iris", 1)).await.unwrap();
        let gone = fixture.registry.load(&id("iris", 1)).await;
        assert!(matches!(gone, Err(Error::ModelNotFound { .. })), "{gone:?}");
        let unpublished = writer.set_alias(&iris, &prod, Version::MIN).await;
        assert!(matches!(unpublished, Err(Error::ModelNotFound { .. })), "{unpublished:?}");
    }
}
