//! The model registry's read path: finds published versions and aliases in the store,
//! resolves `latest` and aliases (for a bounded time), and keeps loaded models in a bounded
//! in-memory cache, so the first request in an execution environment pays for the download
//! and optimisation and every later one for a pinned version touches no store. Concurrent
//! requests for one cold model share one load.
//!
//! The cache weighs a model by the memory it holds loaded ([`LoadedModel::weight`]), measured
//! by the engine, not by its file. A model evicted while requests still run on it stays in
//! memory until they end; a request for it meanwhile takes that copy back into the cache
//! rather than loading a second one.
//!
//! Publishing, aliases and deletion are the write path, [`publish::Writer`], which only
//! model-upload holds.

pub mod publish;
#[cfg(test)]
pub(crate) mod testing;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use serde::{Deserialize, Serialize};

use crate::disk_cache::{DiskCache, ModelFile};
use crate::elapsed_ms;
use crate::engine::{self, StreamDecoder};
use crate::error::Error;
use crate::fetch::FetchSettings;
use crate::manifest::Manifest;
use crate::names::{
    alias_key, alias_of_key, latest_key, version_of_manifest_key, AliasName, ModelId, ModelName,
    Version, VersionSpec,
};
use crate::store::{SharedStore, StoreError};

pub use publish::{PublishLimits, Writer};

/// Limits of the caches; see [`crate::Config`] for the variables that set them.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Bytes of loaded models the memory cache may hold (see [`LoadedModel::weight`]).
    pub memory_bytes: u64,
    /// Where downloaded model files are kept.
    pub disk_dir: std::path::PathBuf,
    /// Bytes the disk cache may hold.
    pub disk_bytes: u64,
    /// How long `latest` and aliases stay resolved before the store is asked again.
    pub resolve_ttl: Duration,
    /// How model files are fetched from the store.
    pub fetch: FetchSettings,
    /// How models are loaded and run: memory limits, threads, plans per shape.
    pub engine: engine::Settings,
}

/// A model ready to serve, with the manifest it was published with.
#[derive(Debug)]
pub struct LoadedModel {
    pub id: ModelId,
    pub manifest: Manifest,
    pub model: engine::Model,
    /// The weight the memory cache last gave it.
    weighed: AtomicU64,
}

impl LoadedModel {
    fn new(id: ModelId, manifest: Manifest, model: engine::Model) -> Self {
        let loaded = Self { id, manifest, model, weighed: AtomicU64::new(0) };
        loaded.weighed.store(loaded.weight(), Ordering::Relaxed);
        loaded
    }

    /// What the model weighs in the memory cache: the bytes it holds in memory
    /// ([`engine::Model::memory_bytes`]: measured while it was loaded and optimised, plus any
    /// per-shape plans it holds), and never less than its ONNX file. An optimised model
    /// holds several times its file (weights packed for the matrix kernels beside the graph).
    pub fn weight(&self) -> u64 {
        self.model.memory_bytes().max(self.manifest.size)
    }
}

/// What an alias object, and the `latest` pointer, hold.
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
    engine_settings: engine::Settings,
    /// One model is parsed and optimised at a time (see `load_uncached`).
    loading: tokio::sync::Semaphore,
    loaded: Cache<ModelId, Arc<LoadedModel>>,
    /// Models evicted from `loaded`, alive while a request still holds them.
    evicted: Arc<Mutex<HashMap<ModelId, Weak<LoadedModel>>>>,
    resolved: Cache<ResolveKey, Version>,
}

impl Registry {
    pub fn new(store: SharedStore, settings: &CacheSettings) -> Self {
        let evicted = Arc::new(Mutex::new(HashMap::new()));
        let remember = Arc::clone(&evicted);
        let loaded = Cache::builder()
            .max_capacity(settings.memory_bytes)
            .weigher(|_, model: &Arc<LoadedModel>| {
                u32::try_from(model.weight()).unwrap_or(u32::MAX).max(1)
            })
            .eviction_policy(EvictionPolicy::lru())
            .eviction_listener(move |id: Arc<ModelId>, model: Arc<LoadedModel>, cause| {
                match cause {
                    // Weighed again (`reweigh`): the model stays.
                    RemovalCause::Replaced => return,
                    // Deleted (`forget_model`): never taken back.
                    RemovalCause::Explicit => {}
                    RemovalCause::Size | RemovalCause::Expired => {
                        remember_evicted(&remember, &id, &model);
                    }
                }
                let bytes = model.weight();
                tracing::info!(model = %id, ?cause, bytes, "model left the memory cache");
            })
            .build();
        let resolved =
            Cache::builder().max_capacity(10_000).time_to_live(settings.resolve_ttl).build();
        Self {
            store,
            disk: DiskCache::new(&settings.disk_dir, settings.disk_bytes, settings.fetch),
            engine_settings: settings.engine,
            loading: tokio::sync::Semaphore::new(1),
            loaded,
            evicted,
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
                    None => self.latest(name).await,
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

    /// Weighs a loaded model again once it holds more or less than the cache last counted (a
    /// per-shape plan built or dropped), so eviction follows what models really hold. Nothing
    /// happens when the cache no longer holds this very model.
    pub async fn reweigh(&self, loaded: &Arc<LoadedModel>) {
        let weight = loaded.weight();
        if loaded.weighed.swap(weight, Ordering::Relaxed) == weight {
            return;
        }
        self.loaded
            .entry_by_ref(&loaded.id)
            .and_compute_with(|entry| {
                let same = entry.is_some_and(|e| Arc::ptr_eq(e.value(), loaded));
                std::future::ready(if same { Op::Put(Arc::clone(loaded)) } else { Op::Nop })
            })
            .await;
        tracing::debug!(model = %loaded.id, bytes = weight, "model weighed again");
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
        if let Some(alive) = self.take_back(id) {
            let bytes = alive.weight();
            tracing::info!(model = %id, bytes, "model taken back into the memory cache");
            return Ok(alive);
        }
        let started = Instant::now();
        // The model's first part is asked for beside its manifest (on a cold disk cache).
        let prefetched = self.disk.prefetch(&self.store, id);
        let manifest = self.fetch_manifest(id).await?;
        let file = ModelFile::onnx(id, &manifest);
        // A downloaded file is decoded as it arrives, beside the download.
        let mut decoder = None;
        let (settings, size) = (self.engine_settings, manifest.size);
        let decode = self.disk.decodes_while_fetching();
        let mut tee = |part: &Bytes| {
            if decode {
                let decoder = decoder.get_or_insert_with(|| StreamDecoder::start(&settings, size));
                decoder.push(part.clone());
            }
        };
        let path = self.disk.file(&self.store, id, &file, prefetched, &mut tee).await?;
        let fetch_ms = elapsed_ms(started);
        // Loading a model needs several times its file for a while (decoded protobuf, graph,
        // optimised copy). Loads of different models at once would add those peaks up, and
        // compete for the same CPUs anyway: one at a time.
        let _loading = self
            .loading
            .acquire()
            .await
            .map_err(|e| Error::internal("waiting to load a model", e))?;
        let fetched = Instant::now();
        let (loader, plans) = (manifest.loader, manifest.plans);
        let model = tokio::task::spawn_blocking(move || {
            match decoder.map(StreamDecoder::finish) {
                Some(Ok(decoded)) => engine::Model::load_decoded(decoded, loader, plans, &settings),
                // Not decodable as it came: loading the file says why.
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "decoding the model file again");
                    engine::Model::load_path(&path, loader, plans, &settings)
                }
                // From the disk cache.
                None => engine::Model::load_path(&path, loader, plans, &settings),
            }
        })
        .await
        .map_err(|e| Error::internal("loading a model", e))?
        .map_err(|err| match err {
            // A model placed in the store without model-upload's validation: an error for
            // this model only.
            Error::Engine { .. } | Error::InvalidModel { .. } | Error::InferenceRejected { .. } => {
                Error::corrupt_model(
                    id,
                    format!("it cannot be loaded: {}", crate::error::chain(&err)),
                )
            }
            other => other,
        })?;
        let engine_ms = elapsed_ms(fetched);
        crate::metrics::note(|record| {
            record.fetch_ms = Some(fetch_ms);
            record.engine_ms = Some(engine_ms);
        });
        let loaded = LoadedModel::new(id.clone(), manifest, model);
        tracing::info!(
            model = %id,
            bytes = loaded.manifest.size,
            memory_bytes = loaded.weight(),
            fetch_ms,
            engine_ms,
            elapsed_ms = elapsed_ms(started),
            "model loaded"
        );
        Ok(Arc::new(loaded))
    }

    async fn fetch_manifest(&self, id: &ModelId) -> Result<Manifest, Error> {
        let bytes = match self.store.get(&id.manifest_key()).await {
            Ok(object) => object.bytes().await?,
            Err(StoreError::NotFound { .. }) => return Err(self.not_found(id).await),
            Err(other) => return Err(other.into()),
        };
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt_model(id, format!("unreadable manifest: {e}")))?;
        if manifest.name != id.name.as_str() || manifest.version != id.version.get() {
            return Err(Error::corrupt_model(
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
        self.target(&alias_key(name, alias)).await?.ok_or_else(|| Error::AliasNotFound {
            name: name.to_string(),
            alias: alias.to_string(),
        })
    }

    /// The highest published version: what the `latest` pointer says, or, for a model
    /// published before pointers were written (or whose pointer is unreadable), the highest
    /// version a listing finds.
    async fn latest(&self, name: &ModelName) -> Result<Version, Error> {
        match self.latest_pointer(name).await {
            Ok(Some(version)) => return Ok(version),
            Ok(None) => {}
            Err(Error::Store { source: StoreError::Other { key, source } }) => {
                let error = crate::error::chain(source.as_ref());
                tracing::warn!(%key, %error, "latest pointer unreadable; listing versions");
            }
            Err(err) => return Err(err),
        }
        self.versions(name).await.map(|v| v[v.len() - 1])
    }

    /// The version the `latest` pointer of a model names, if there is a pointer.
    async fn latest_pointer(&self, name: &ModelName) -> Result<Option<Version>, Error> {
        self.target(&latest_key(name)).await
    }

    /// The version an alias object or pointer at `key` names; `None` when there is none.
    async fn target(&self, key: &str) -> Result<Option<Version>, Error> {
        let bytes = match self.store.get(key).await {
            Ok(object) => object.bytes().await?,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let target = serde_json::from_slice::<AliasTarget>(&bytes).ok();
        match target.and_then(|target| Version::new(target.version)) {
            Some(version) => Ok(Some(version)),
            None => Err(Error::Store {
                source: StoreError::Other {
                    key: key.to_owned(),
                    source: Arc::new(std::io::Error::other("unreadable version pointer")),
                },
            }),
        }
    }

    /// Forgets what `latest` (no alias) or an alias of a model resolved to, after a write.
    async fn forget_resolution(&self, name: &ModelName, alias: Option<&AliasName>) {
        self.resolved.invalidate(&(name.clone(), alias.cloned())).await;
    }

    /// The evicted copy of a model that a request still holds, if any.
    fn take_back(&self, id: &ModelId) -> Option<Arc<LoadedModel>> {
        let mut evicted = self.evicted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        evicted.remove(id)?.upgrade()
    }

    /// Forgets a deleted version: its loaded model and what `latest` resolved to.
    async fn forget_model(&self, id: &ModelId) {
        self.loaded.invalidate(id).await;
        self.evicted.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
        self.forget_resolution(&id.name, None).await;
    }
}

/// Remembers an evicted model so that a request can take it back while another still holds
/// it, and forgets the ones no request holds any more.
fn remember_evicted(
    evicted: &Mutex<HashMap<ModelId, Weak<LoadedModel>>>,
    id: &ModelId,
    model: &Arc<LoadedModel>,
) {
    let mut evicted = evicted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    evicted.retain(|_, model| model.strong_count() > 0);
    evicted.insert(id.clone(), Arc::downgrade(model));
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::testing::{self, id, Fixture, ZOO_ATTENTION, ZOO_MLP};
    use super::*;
    use crate::store::ObjectStore;

    fn spec(text: &str) -> VersionSpec {
        text.parse().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_loads_of_a_cold_model_read_the_store_once() {
        let fixture = Fixture::roomy();
        fixture.place("iris", 1).await;
        let id = id("iris", 1);
        let start = Arc::new(tokio::sync::Barrier::new(16));
        let loads: Vec<_> = (0..16)
            .map(|_| {
                let (registry, id, start) = (fixture.registry.clone(), id.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    registry.load(&id).await
                })
            })
            .collect();
        let mut models = Vec::new();
        for load in loads {
            models.push(load.await.unwrap().unwrap());
        }
        assert!(models.iter().all(|m| Arc::ptr_eq(m, &models[0])), "not one shared model");
        assert_eq!(fixture.store.gets_of(&id.model_key()), 1, "model.onnx read more than once");
        assert_eq!(fixture.store.gets_of(&id.manifest_key()), 1, "manifest read more than once");
    }

    /// What the example model weighs once loaded, measured in a registry of its own.
    async fn example_weight() -> u64 {
        let fixture = Fixture::roomy();
        fixture.place("iris", 1).await;
        fixture.registry.load(&id("iris", 1)).await.unwrap().weight()
    }

    #[tokio::test]
    async fn the_least_recently_used_model_leaves_memory_and_reloads_from_disk() {
        let weight = example_weight().await;
        let fixture = Fixture::new(Duration::from_secs(30), weight * 5 / 2); // room for two
        let registry = &fixture.registry;
        for name in ["a", "b", "c"] {
            fixture.place(name, 1).await;
        }
        let mut weights = BTreeMap::new();
        for name in ["a", "b", "a", "c"] {
            let loaded = registry.load(&id(name, 1)).await.unwrap(); // the second `a` makes b the oldest
            weights.insert(name, loaded.weight());
            registry.memory_usage().await;
        }
        assert_eq!(registry.memory_usage().await, (2, weights["a"] + weights["c"]));
        assert!(registry.is_loaded(&id("a", 1)).await, "the recently used model was evicted");
        assert!(!registry.is_loaded(&id("b", 1)).await, "the least recently used model stayed");
        assert!(registry.is_loaded(&id("c", 1)).await);

        // Loading b again takes its file from the disk cache, not the store.
        registry.load(&id("b", 1)).await.unwrap();
        assert!(registry.is_loaded(&id("b", 1)).await);
        assert_eq!(fixture.store.gets_of(&id("b", 1).model_key()), 1);
        assert_eq!(fixture.store.gets_of(&id("b", 1).manifest_key()), 2);
    }

    #[tokio::test]
    async fn a_loaded_model_weighs_what_it_holds_in_memory_not_its_file() {
        let fixture = Fixture::roomy();
        for (name, model) in [("mlp", ZOO_MLP), ("attention", ZOO_ATTENTION)] {
            let manifest = fixture.publish(name, 1, model).await;
            let loaded = fixture.registry.load(&id(name, 1)).await.unwrap();
            // Packed weights beside the graph: about 2.7 times the MLP's file, 3.5 times
            // attention's.
            assert!(
                loaded.weight() > 2 * manifest.size,
                "{name}: {} bytes loaded for a file of {}",
                loaded.weight(),
                manifest.size
            );
            // Measured, not guessed: a few times the file, not the process's whole heap.
            assert!(loaded.weight() < 8 * manifest.size, "{name}: {} bytes", loaded.weight());
        }
        let (entries, bytes) = fixture.registry.memory_usage().await;
        assert_eq!(entries, 2);
        let loaded_mlp = fixture.registry.load(&id("mlp", 1)).await.unwrap();
        let loaded_attention = fixture.registry.load(&id("attention", 1)).await.unwrap();
        assert_eq!(bytes, loaded_mlp.weight() + loaded_attention.weight());
    }

    #[tokio::test]
    async fn eviction_counts_what_models_hold_so_files_that_fit_can_still_be_too_many() {
        let fixture = Fixture::roomy();
        let mlp = fixture.publish("probe", 1, ZOO_MLP).await;
        let weight = fixture.registry.load(&id("probe", 1)).await.unwrap().weight();
        // Room for the three files many times over, for two of the loaded models only.
        let budget = weight * 5 / 2;
        assert!(budget > 3 * mlp.size, "the test needs files that all fit the budget");
        let fixture = Fixture::new(Duration::from_secs(30), budget);
        for name in ["a", "b", "c"] {
            fixture.publish(name, 1, ZOO_MLP).await;
        }
        let registry = &fixture.registry;
        let mut weights = BTreeMap::new();
        for name in ["a", "b", "c"] {
            weights.insert(name, registry.load(&id(name, 1)).await.unwrap().weight());
            registry.memory_usage().await;
        }
        let (entries, bytes) = registry.memory_usage().await;
        assert_eq!(entries, 2, "the cache holds more than its budget");
        assert_eq!(bytes, weights["b"] + weights["c"]);
        assert!(!registry.is_loaded(&id("a", 1)).await, "the least recently used model stayed");
        assert!(registry.is_loaded(&id("c", 1)).await);
    }

    #[tokio::test]
    async fn an_evicted_model_a_request_still_holds_is_taken_back_not_loaded_again() {
        let weight = example_weight().await;
        let fixture = Fixture::new(Duration::from_secs(30), weight * 3 / 2); // room for one
        let registry = &fixture.registry;
        for name in ["a", "b"] {
            fixture.place(name, 1).await;
        }
        let held = registry.load(&id("a", 1)).await.unwrap(); // a request running on a
        registry.load(&id("b", 1)).await.unwrap();
        registry.memory_usage().await;
        assert!(!registry.is_loaded(&id("a", 1)).await, "a was not evicted");

        let again = registry.load(&id("a", 1)).await.unwrap();
        assert!(Arc::ptr_eq(&held, &again), "a second copy of a was loaded");
        assert_eq!(fixture.store.gets_of(&id("a", 1).manifest_key()), 1, "a was loaded again");
        assert!(registry.is_loaded(&id("a", 1)).await, "a was not taken back into the cache");
        assert_eq!(registry.memory_usage().await, (1, again.weight()));

        // Once no request holds it, an evicted model is gone (moka lets go of an evicted
        // value within a maintenance run or two): the next request loads it.
        let weak = Arc::downgrade(&held);
        drop((held, again));
        registry.load(&id("b", 1)).await.unwrap();
        for _ in 0..10 {
            registry.memory_usage().await;
        }
        assert!(!registry.is_loaded(&id("a", 1)).await);
        assert_eq!(weak.strong_count(), 0, "an evicted model nobody uses stayed in memory");
        registry.load(&id("a", 1)).await.unwrap();
        assert_eq!(fixture.store.gets_of(&id("a", 1).manifest_key()), 2);
    }

    /// moka keeps time with its own clock, not tokio's, so the TTL is short and real.
    #[tokio::test]
    async fn latest_and_aliases_stay_resolved_for_the_ttl_then_follow_the_store() {
        let ttl = Duration::from_millis(400);
        let fixture = Fixture::new(ttl, 1 << 30);
        let (registry, iris) = (&fixture.registry, "iris".parse::<ModelName>().unwrap());
        fixture.place("iris", 1).await;
        fixture.place_alias("iris", "prod", 1).await;
        assert_eq!(registry.resolve(&iris, &spec("latest")).await.unwrap(), id("iris", 1));
        assert_eq!(registry.resolve(&iris, &spec("prod")).await.unwrap(), id("iris", 1));

        // Another environment publishes version 2 and moves the alias: unseen within the TTL,
        // and resolving again asks the store nothing.
        fixture.place("iris", 2).await;
        fixture.place_alias("iris", "prod", 2).await;
        let calls = fixture.store.total();
        assert_eq!(registry.resolve(&iris, &spec("latest")).await.unwrap(), id("iris", 1));
        assert_eq!(registry.resolve(&iris, &spec("prod")).await.unwrap(), id("iris", 1));
        // A pinned version needs no store call, even one that does not exist.
        assert_eq!(registry.resolve(&iris, &spec("7")).await.unwrap(), id("iris", 7));
        assert_eq!(fixture.store.total(), calls, "a resolution within the TTL asked the store");

        tokio::time::sleep(ttl + Duration::from_millis(200)).await;
        assert_eq!(registry.resolve(&iris, &spec("latest")).await.unwrap(), id("iris", 2));
        assert_eq!(registry.resolve(&iris, &spec("prod")).await.unwrap(), id("iris", 2));
        assert_eq!(fixture.store.lists.load(Ordering::SeqCst), 2, "latest listed once per TTL");
    }

    #[tokio::test]
    async fn latest_reads_the_pointer_model_upload_writes_and_lists_nothing() {
        let fixture = Fixture::roomy();
        let (registry, iris) = (&fixture.registry, "iris".parse::<ModelName>().unwrap());
        let writer = Writer::new(registry.clone());
        for version in [1, 2] {
            let bytes = testing::example_variant(&version.to_string());
            writer.publish(&id("iris", version), bytes, &testing::publish_limits()).await.unwrap();
        }
        let (lists, calls) = (fixture.store.lists.load(Ordering::SeqCst), fixture.store.total());
        let pointer_reads = fixture.store.gets_of(&latest_key(&iris));
        assert_eq!(registry.resolve(&iris, &spec("latest")).await.unwrap(), id("iris", 2));
        assert_eq!(fixture.store.lists.load(Ordering::SeqCst), lists, "latest listed versions");
        assert_eq!(fixture.store.total(), calls + 1, "more than one store call");
        assert_eq!(fixture.store.gets_of(&latest_key(&iris)), pointer_reads + 1);
    }

    #[tokio::test]
    async fn without_a_readable_pointer_latest_lists_the_versions() {
        let fixture = Fixture::new(Duration::from_millis(1), 1 << 30);
        let (registry, iris) = (&fixture.registry, "iris".parse::<ModelName>().unwrap());
        // Published before pointers were written: no pointer at all.
        fixture.place("iris", 1).await;
        fixture.place("iris", 2).await;
        assert_eq!(registry.resolve(&iris, &spec("latest")).await.unwrap(), id("iris", 2));
        assert_eq!(fixture.store.lists.load(Ordering::SeqCst), 1);
        // A pointer that is not one is not followed.
        fixture.store.put(&latest_key(&iris), "version 1".into()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(registry.resolve(&iris, &spec("latest")).await.unwrap(), id("iris", 2));
        assert_eq!(fixture.store.lists.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_corrupt_manifest_fails_that_version_only_and_is_not_remembered() {
        let fixture = Fixture::roomy();
        let registry = &fixture.registry;
        fixture.place("iris", 1).await;
        fixture.place("iris", 2).await;
        fixture
            .store
            .put(&id("iris", 2).manifest_key(), "{\"name\": \"iris\",".into())
            .await
            .unwrap();
        let manifest_of_1 = fixture.store.get(&id("iris", 1).manifest_key()).await.unwrap();
        let manifest_of_1 = manifest_of_1.bytes().await.unwrap();
        fixture.store.put(&id("iris", 3).manifest_key(), manifest_of_1).await.unwrap();

        let err = registry.load(&id("iris", 2)).await.unwrap_err();
        assert!(
            matches!(&err, Error::CorruptModel { version: 2, problem, .. } if problem.contains("unreadable manifest")),
            "{err:?}"
        );
        assert_eq!(err.status(), 500);
        let err = registry.load(&id("iris", 3)).await.unwrap_err();
        assert!(
            matches!(&err, Error::CorruptModel { version: 3, problem, .. } if problem.contains("iris@1")),
            "a manifest of another version was accepted: {err:?}"
        );
        assert!(registry.load(&id("iris", 1)).await.is_ok(), "a sound version was refused");

        // Mended in the store, the version loads: the failure was not cached.
        fixture.place("iris", 2).await;
        assert!(registry.load(&id("iris", 2)).await.is_ok());
    }
}
