//! The model registry: publishes versions and aliases to the store, finds them again, and
//! keeps loaded models in a bounded in-memory cache, so the first request in an execution
//! environment pays for the download and optimisation and every later one for a pinned
//! version touches no store.
//!
//! A version exists once its manifest does. Publishing writes `model.onnx` and then the
//! manifest, each only if absent, so published versions are immutable and of two racing
//! uploads of one version exactly one wins.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::future::Cache;
use moka::policy::EvictionPolicy;
use serde::{Deserialize, Serialize};

use crate::disk_cache::{sha256_hex, DiskCache, ModelFile};
use crate::elapsed_ms;
use crate::engine;
use crate::error::Error;
use crate::manifest::Manifest;
use crate::names::{
    alias_key, alias_of_key, version_of_manifest_key, AliasName, ModelId, ModelName, Version,
    VersionSpec,
};
use crate::store::{SharedStore, StoreError};

/// Limits of the caches; see [`crate::Config`] for the variables that set them.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Bytes of model files the memory cache may hold (models weigh their ONNX file size).
    pub memory_bytes: u64,
    /// Where downloaded model files are kept.
    pub disk_dir: std::path::PathBuf,
    /// Bytes the disk cache may hold.
    pub disk_bytes: u64,
    /// How long `latest` and aliases stay resolved before the store is asked again.
    pub resolve_ttl: Duration,
    /// The limits models are loaded and run within.
    pub engine: engine::Limits,
}

/// Limits on what may be published.
#[derive(Debug, Clone, Copy)]
pub struct PublishLimits {
    /// The largest ONNX file accepted.
    pub max_model_bytes: u64,
    pub engine: engine::Limits,
}

/// A model ready to serve, with the manifest it was published with.
#[derive(Debug)]
pub struct LoadedModel {
    pub id: ModelId,
    pub manifest: Manifest,
    pub model: engine::Model,
}

/// What an alias object holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AliasTarget {
    version: u64,
}

/// Everything published for one model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelDetail {
    pub name: String,
    pub versions: Vec<Manifest>,
    pub aliases: BTreeMap<String, u64>,
}

/// What `latest` or an alias of a model resolves through.
type ResolveKey = (ModelName, Option<AliasName>);

#[derive(Debug)]
pub struct Registry {
    store: SharedStore,
    disk: DiskCache,
    engine_limits: engine::Limits,
    loaded: Cache<ModelId, Arc<LoadedModel>>,
    resolved: Cache<ResolveKey, Version>,
}

fn corrupt(id: &ModelId, problem: impl Into<String>) -> Error {
    Error::CorruptModel {
        name: id.name.to_string(),
        version: id.version.get(),
        problem: problem.into(),
    }
}

impl Registry {
    pub fn new(store: SharedStore, settings: &CacheSettings) -> Self {
        let loaded = Cache::builder()
            .max_capacity(settings.memory_bytes)
            .weigher(|_, model: &Arc<LoadedModel>| {
                u32::try_from(model.manifest.size).unwrap_or(u32::MAX).max(1)
            })
            .eviction_policy(EvictionPolicy::lru())
            .eviction_listener(
                |id, _, cause| tracing::info!(model = %id, ?cause, "model left the memory cache"),
            )
            .build();
        let resolved =
            Cache::builder().max_capacity(10_000).time_to_live(settings.resolve_ttl).build();
        Self {
            store,
            disk: DiskCache::new(&settings.disk_dir, settings.disk_bytes),
            engine_limits: settings.engine,
            loaded,
            resolved,
        }
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Every published version of a model, ascending. A model with none is `ModelNotFound`.
    pub async fn versions(&self, name: &ModelName) -> Result<Vec<Version>, Error> {
        let objects = self.store.list(&name.prefix()).await?;
        let mut versions: Vec<Version> =
            objects.iter().filter_map(|o| version_of_manifest_key(name, &o.key)).collect();
        if versions.is_empty() {
            return Err(Error::ModelNotFound { name: name.to_string() });
        }
        versions.sort();
        Ok(versions)
    }

    /// The names of every model with at least one published version, sorted.
    pub async fn models(&self) -> Result<Vec<String>, Error> {
        let objects = self.store.list("models/").await?;
        let mut names: Vec<String> = objects
            .iter()
            .filter_map(|o| {
                let name: ModelName =
                    o.key.strip_prefix("models/")?.split('/').next()?.parse().ok()?;
                version_of_manifest_key(&name, &o.key).map(|_| name.to_string())
            })
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Turns `latest` or an alias into a version number (remembered for the configured TTL);
    /// a pinned version is returned as it is, without asking the store.
    pub async fn resolve(&self, name: &ModelName, spec: &VersionSpec) -> Result<ModelId, Error> {
        let key = match spec {
            VersionSpec::Exact(version) => return Ok(ModelId::new(name.clone(), *version)),
            VersionSpec::Latest => (name.clone(), None),
            VersionSpec::Alias(alias) => (name.clone(), Some(alias.clone())),
        };
        let version = self
            .resolved
            .try_get_with_by_ref(&key, async {
                match &key.1 {
                    None => self.versions(name).await.map(|v| v[v.len() - 1]),
                    Some(alias) => self.alias_target(name, alias).await,
                }
            })
            .await
            .map_err(|e| (*e).clone())?;
        Ok(ModelId::new(name.clone(), version))
    }

    /// The manifest of a version: from memory when the model is loaded, else from the store.
    pub async fn manifest(&self, id: &ModelId) -> Result<Manifest, Error> {
        match self.loaded.get(id).await {
            Some(loaded) => Ok(loaded.manifest.clone()),
            None => self.fetch_manifest(id).await,
        }
    }

    /// The loaded model, loading it on first use. Concurrent callers for the same cold model
    /// share one load.
    pub async fn load(&self, id: &ModelId) -> Result<Arc<LoadedModel>, Error> {
        self.loaded.try_get_with_by_ref(id, self.load_uncached(id)).await.map_err(|e| (*e).clone())
    }

    /// True when the model is in the memory cache (nothing is fetched).
    pub async fn is_loaded(&self, id: &ModelId) -> bool {
        self.loaded.contains_key(id)
    }

    /// Models held in memory and their total weight in bytes, once pending evictions ran.
    pub async fn memory_usage(&self) -> (u64, u64) {
        self.loaded.run_pending_tasks().await;
        (self.loaded.entry_count(), self.loaded.weighted_size())
    }

    async fn load_uncached(&self, id: &ModelId) -> Result<Arc<LoadedModel>, Error> {
        let started = Instant::now();
        let manifest = self.fetch_manifest(id).await?;
        let file = ModelFile::onnx(id, &manifest);
        let path = self.disk.file(self.store.as_ref(), id, &file).await?;
        let fetch_ms = elapsed_ms(started);
        let fetched = Instant::now();
        let (loader, plans, limits) = (manifest.loader, manifest.plans, self.engine_limits);
        let model = tokio::task::spawn_blocking(move || {
            engine::Model::load_path(&path, loader, plans, &limits)
        })
        .await
        .map_err(|e| Error::internal("loading a model", e))??;
        tracing::info!(
            model = %id,
            bytes = manifest.size,
            fetch_ms,
            engine_ms = elapsed_ms(fetched),
            elapsed_ms = elapsed_ms(started),
            "model loaded"
        );
        Ok(Arc::new(LoadedModel { id: id.clone(), manifest, model }))
    }

    async fn fetch_manifest(&self, id: &ModelId) -> Result<Manifest, Error> {
        let bytes = match self.store.get(&id.manifest_key()).await {
            Ok(object) => object.bytes().await?,
            Err(StoreError::NotFound { .. }) => return Err(self.not_found(id).await),
            Err(other) => return Err(other.into()),
        };
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(id, format!("unreadable manifest: {e}")))?;
        if manifest.name != id.name.as_str() || manifest.version != id.version.get() {
            return Err(corrupt(
                id,
                format!("manifest names {}@{}", manifest.name, manifest.version),
            ));
        }
        Ok(manifest)
    }

    /// Tells a missing model from a missing version of an existing one.
    async fn not_found(&self, id: &ModelId) -> Error {
        match self.versions(&id.name).await {
            Ok(_) => {
                Error::VersionNotFound { name: id.name.to_string(), version: id.version.get() }
            }
            Err(err) => err,
        }
    }

    /// Whether a version's manifest exists.
    async fn is_published(&self, id: &ModelId) -> Result<bool, Error> {
        match self.store.head(&id.manifest_key()).await {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(err) => Err(err.into()),
        }
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
        match self.store.put_if_absent(&id.manifest_key(), manifest_json.into()).await {
            Err(StoreError::AlreadyExists { .. }) => return Err(version_exists(id)),
            other => other?,
        }
        self.resolved.invalidate(&(id.name.clone(), None)).await;
        tracing::info!(model = %id, bytes = manifest.size, sha256 = %manifest.sha256, "published");
        Ok(manifest)
    }

    /// Writes `model.onnx` only if absent. If it is there already, the upload may go on only
    /// when it holds the same bytes and no manifest exists (a retry of an interrupted publish).
    async fn claim_model_key(&self, id: &ModelId, bytes: Bytes, sha256: &str) -> Result<(), Error> {
        match self.store.put_if_absent(&id.model_key(), bytes).await {
            Err(StoreError::AlreadyExists { .. }) => {}
            other => return Ok(other?),
        }
        if self.is_published(id).await? {
            return Err(version_exists(id));
        }
        let existing = self.store.get(&id.model_key()).await?.bytes().await?;
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
            let next = match self.versions(name).await {
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

    /// Versions, manifests and aliases of one model.
    pub async fn detail(&self, name: &ModelName) -> Result<ModelDetail, Error> {
        let versions = self.versions(name).await?;
        let mut manifests = Vec::with_capacity(versions.len());
        for version in versions {
            manifests.push(self.fetch_manifest(&ModelId::new(name.clone(), version)).await?);
        }
        Ok(ModelDetail {
            name: name.to_string(),
            versions: manifests,
            aliases: self.aliases(name).await?,
        })
    }

    /// Every alias of a model and the version it points to.
    pub async fn aliases(&self, name: &ModelName) -> Result<BTreeMap<String, u64>, Error> {
        let prefix = format!("{}aliases/", name.prefix());
        let mut aliases = BTreeMap::new();
        for object in self.store.list(&prefix).await? {
            let Some(alias) = alias_of_key(name, &object.key) else { continue };
            match self.alias_target(name, &alias).await {
                Ok(version) => {
                    aliases.insert(alias.to_string(), version.get());
                }
                Err(Error::AliasNotFound { .. }) => {} // deleted meanwhile
                Err(err) => return Err(err),
            }
        }
        Ok(aliases)
    }

    async fn alias_target(&self, name: &ModelName, alias: &AliasName) -> Result<Version, Error> {
        let bytes = match self.store.get(&alias_key(name, alias)).await {
            Ok(object) => object.bytes().await?,
            Err(StoreError::NotFound { .. }) => {
                return Err(Error::AliasNotFound {
                    name: name.to_string(),
                    alias: alias.to_string(),
                })
            }
            Err(err) => return Err(err.into()),
        };
        serde_json::from_slice::<AliasTarget>(&bytes)
            .ok()
            .and_then(|target| Version::new(target.version))
            .ok_or_else(|| Error::Store {
                source: StoreError::Other {
                    key: alias_key(name, alias),
                    source: Arc::new(std::io::Error::other("unreadable alias")),
                },
            })
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
            return Err(self.not_found(&id).await);
        }
        let body = serde_json::to_vec(&AliasTarget { version: version.get() })
            .map_err(|e| Error::internal("encoding an alias", e))?;
        self.store.put(&alias_key(name, alias), body.into()).await?;
        self.resolved.invalidate(&(name.clone(), Some(alias.clone()))).await;
        Ok(())
    }

    pub async fn delete_alias(&self, name: &ModelName, alias: &AliasName) -> Result<(), Error> {
        self.alias_target(name, alias).await?;
        self.store.delete(&alias_key(name, alias)).await?;
        self.resolved.invalidate(&(name.clone(), Some(alias.clone()))).await;
        Ok(())
    }

    /// Removes a version, refused while an alias points to it. The manifest goes first, so
    /// the version disappears before its files do.
    pub async fn delete_version(&self, id: &ModelId) -> Result<(), Error> {
        let pointing: Vec<String> = self
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
        let has_model = match self.store.head(&id.model_key()).await {
            Ok(_) => true,
            Err(StoreError::NotFound { .. }) => false,
            Err(err) => return Err(err.into()),
        };
        if !self.is_published(id).await? && !has_model {
            return Err(self.not_found(id).await);
        }
        for key in [id.manifest_key(), id.model_key()] {
            self.store.delete(&key).await?;
        }
        self.loaded.invalidate(id).await;
        self.resolved.invalidate(&(id.name.clone(), None)).await;
        Ok(())
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
