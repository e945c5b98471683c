//! The model registry: finds published versions in the store and keeps loaded models in a
//! bounded in-memory cache, so the first request in an execution environment pays for the
//! download and optimisation and every later one for a pinned version touches no store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::future::Cache;
use moka::policy::EvictionPolicy;

use crate::disk_cache::{sha256_hex, DiskCache};
use crate::engine;
use crate::error::Error;
use crate::manifest::Manifest;
use crate::names::{version_of_manifest_key, ModelId, ModelName, Version, VersionSpec};
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
    /// How long "latest" stays resolved to one version before the store is asked again.
    pub latest_ttl: Duration,
}

/// A model ready to serve, with the manifest it was published with.
#[derive(Debug)]
pub struct LoadedModel {
    pub id: ModelId,
    pub manifest: Manifest,
    pub model: engine::Model,
}

#[derive(Debug)]
pub struct Registry {
    store: SharedStore,
    disk: DiskCache,
    loaded: Cache<ModelId, Arc<LoadedModel>>,
    latest: Cache<ModelName, Version>,
}

impl Registry {
    pub fn new(store: SharedStore, settings: &CacheSettings) -> Self {
        let loaded = Cache::builder()
            .max_capacity(settings.memory_bytes)
            .weigher(|_, model: &Arc<LoadedModel>| {
                u32::try_from(model.manifest.size)
                    .unwrap_or(u32::MAX)
                    .max(1)
            })
            .eviction_policy(EvictionPolicy::lru())
            .eviction_listener(
                |id, _, cause| tracing::info!(model = %id, ?cause, "model left the memory cache"),
            )
            .build();
        let latest = Cache::builder()
            .max_capacity(10_000)
            .time_to_live(settings.latest_ttl)
            .build();
        Self {
            store,
            disk: DiskCache::new(&settings.disk_dir, settings.disk_bytes),
            loaded,
            latest,
        }
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Every published version of a model, ascending. A model with none is `ModelNotFound`.
    pub async fn versions(&self, name: &ModelName) -> Result<Vec<Version>, Error> {
        let objects = self.store.list(&name.prefix()).await?;
        let mut versions: Vec<Version> = objects
            .iter()
            .filter_map(|o| version_of_manifest_key(name, &o.key))
            .collect();
        if versions.is_empty() {
            return Err(Error::ModelNotFound {
                name: name.to_string(),
            });
        }
        versions.sort();
        Ok(versions)
    }

    /// Turns "latest" into a version number (remembered for the configured TTL); a pinned
    /// version is returned as it is, without asking the store.
    pub async fn resolve(&self, name: &ModelName, spec: VersionSpec) -> Result<ModelId, Error> {
        let version = match spec {
            VersionSpec::Exact(version) => version,
            VersionSpec::Latest => self
                .latest
                .try_get_with_by_ref(name, async {
                    let versions = self.versions(name).await?;
                    Ok::<_, Error>(versions[versions.len() - 1])
                })
                .await
                .map_err(|e| (*e).clone())?,
        };
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
        self.loaded
            .try_get_with_by_ref(id, self.load_uncached(id))
            .await
            .map_err(|e| (*e).clone())
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
        let path = self
            .disk
            .model_file(self.store.as_ref(), id, &manifest)
            .await?;
        let fetched_ms = started.elapsed().as_millis() as u64;
        let model = tokio::task::spawn_blocking(move || engine::Model::load_path(&path))
            .await
            .map_err(|e| Error::internal("loading a model", e))??;
        tracing::info!(
            model = %id,
            bytes = manifest.size,
            fetch_ms = fetched_ms,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Ok(Arc::new(LoadedModel {
            id: id.clone(),
            manifest,
            model,
        }))
    }

    async fn fetch_manifest(&self, id: &ModelId) -> Result<Manifest, Error> {
        let key = id.manifest_key();
        let bytes = match self.store.get(&key).await {
            Ok(object) => object.bytes().await?,
            Err(StoreError::NotFound { .. }) => return Err(self.not_found(id).await),
            Err(other) => return Err(other.into()),
        };
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| Error::CorruptModel {
                name: id.name.to_string(),
                version: id.version.get(),
                problem: format!("unreadable manifest: {e}"),
            })?;
        if manifest.name != id.name.as_str() || manifest.version != id.version.get() {
            return Err(Error::CorruptModel {
                name: id.name.to_string(),
                version: id.version.get(),
                problem: format!("manifest names {}@{}", manifest.name, manifest.version),
            });
        }
        Ok(manifest)
    }

    /// Tells a missing model from a missing version of an existing one.
    async fn not_found(&self, id: &ModelId) -> Error {
        match self.versions(&id.name).await {
            Ok(_) => Error::VersionNotFound {
                name: id.name.to_string(),
                version: id.version.get(),
            },
            Err(err) => err,
        }
    }

    /// Validates an ONNX file by loading it, then writes it and its manifest. The manifest is
    /// written last: a version exists once its manifest does.
    pub async fn publish(
        &self,
        id: &ModelId,
        bytes: Bytes,
        created: String,
    ) -> Result<Manifest, Error> {
        let for_engine = bytes.clone();
        let model = tokio::task::spawn_blocking(move || engine::Model::load_bytes(&for_engine))
            .await
            .map_err(|e| Error::internal("validating a model", e))??;
        let manifest = Manifest {
            name: id.name.to_string(),
            version: id.version.get(),
            sha256: sha256_hex(&bytes),
            size: bytes.len() as u64,
            created,
            signature: model.signature().clone(),
        };
        let manifest_json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| Error::internal("encoding a manifest", e))?;
        self.store.put(&id.model_key(), bytes).await?;
        self.store
            .put(&id.manifest_key(), manifest_json.into())
            .await?;
        self.latest.invalidate(&id.name).await;
        Ok(manifest)
    }
}
