//! Fixtures of the registry's unit tests: the committed example model, placed in an
//! in-memory store behind a call counter the way a bucket writer or another execution
//! environment would place it (straight into the store, telling no cache).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{CacheSettings, PublishLimits, Registry, Writer};
use crate::manifest::Manifest;
use crate::names::{alias_key, ModelId, Version};
use crate::store::{CountingStore, MemoryStore, ObjectStore};

/// `scripts/example-store/models/iris/1/model.onnx`: a small random forest.
pub const EXAMPLE_MODEL: &[u8] =
    include_bytes!("../../../scripts/example-store/models/iris/1/model.onnx");
const EXAMPLE_MANIFEST: &str =
    include_str!("../../../scripts/example-store/models/iris/1/manifest.json");

/// `tests/zoo/torch_mlp_legacy.onnx`: a small MLP exported by PyTorch, planned symbolically.
pub const ZOO_MLP: &[u8] = include_bytes!("../../../tests/zoo/torch_mlp_legacy.onnx");
/// `tests/zoo/torch_attention_dynamo.onnx`: attention exported by PyTorch's dynamo exporter,
/// planned per input shape.
pub const ZOO_ATTENTION: &[u8] = include_bytes!("../../../tests/zoo/torch_attention_dynamo.onnx");

/// The default publishing limits of `Config`.
pub fn publish_limits() -> PublishLimits {
    let memory = |name: &str| (name == "MAAS_STORE").then(|| "memory://".to_owned());
    crate::Config::from_lookup(memory).unwrap().publish
}

pub fn id(name: &str, version: u64) -> ModelId {
    ModelId::new(name.parse().unwrap(), Version::new(version).unwrap())
}

/// The example model with `doc_string` (ModelProto field 6) set to `doc`: a valid model
/// with bytes of its own.
pub fn example_variant(doc: &str) -> Bytes {
    let mut bytes = EXAMPLE_MODEL.to_vec();
    bytes.push((6 << 3) | 2); // field 6, length-delimited
    bytes.push(u8::try_from(doc.len()).unwrap());
    bytes.extend_from_slice(doc.as_bytes());
    bytes.into()
}

/// A registry over a counted in-memory store, with a disk cache of its own.
pub struct Fixture {
    pub store: Arc<CountingStore>,
    pub registry: Arc<Registry>,
    _disk: tempfile::TempDir,
}

impl Fixture {
    /// Resolutions kept for `ttl`; room in memory for `memory_bytes` of model files.
    pub fn new(ttl: Duration, memory_bytes: u64) -> Self {
        let disk = tempfile::tempdir().unwrap();
        let store = CountingStore::new(Arc::new(MemoryStore::new()));
        let settings = CacheSettings {
            memory_bytes,
            disk_dir: disk.path().to_owned(),
            disk_bytes: 1 << 30,
            resolve_ttl: ttl,
            fetch: crate::fetch::FetchSettings::default(),
            engine: crate::engine::Settings::default(),
        };
        let registry = Arc::new(Registry::new(store.clone(), &settings));
        Self { store, registry, _disk: disk }
    }

    /// Generous caches, resolutions kept for 30 s.
    pub fn roomy() -> Self {
        Self::new(Duration::from_secs(30), 1 << 30)
    }

    /// Writes the example model and its committed manifest (renamed) as `name` `version`.
    pub async fn place(&self, name: &str, version: u64) {
        let id = id(name, version);
        let mut manifest: serde_json::Value = serde_json::from_str(EXAMPLE_MANIFEST).unwrap();
        manifest["name"] = name.into();
        manifest["version"] = version.into();
        self.store.put(&id.model_key(), Bytes::from_static(EXAMPLE_MODEL)).await.unwrap();
        let manifest = serde_json::to_vec(&manifest).unwrap();
        self.store.put(&id.manifest_key(), manifest.into()).await.unwrap();
    }

    /// Publishes `model` as `name` `version` through the write path: validated, with the
    /// manifest model-upload would write.
    pub async fn publish(&self, name: &str, version: u64, model: &'static [u8]) -> Manifest {
        let writer = Writer::new(self.registry.clone());
        writer
            .publish(&id(name, version), Bytes::from_static(model), &publish_limits())
            .await
            .unwrap()
    }

    /// Points `alias` of `name` at `version`.
    pub async fn place_alias(&self, name: &str, alias: &str, version: u64) {
        let key = alias_key(&name.parse().unwrap(), &alias.parse().unwrap());
        self.store.put(&key, format!(r#"{{"version": {version}}}"#).into()).await.unwrap();
    }
}
