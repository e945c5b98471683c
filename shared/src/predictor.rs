//! Open Inference Protocol operations over the registry, independent of how requests arrive
//! (API Gateway, a local server, a test).

use std::sync::Arc;

use crate::error::Error;
use crate::names::{ModelId, ModelName, VersionSpec};
use crate::protocol::{self, InferResponse, ModelMetadata, ResponseOutput, PLATFORM};
use crate::registry::Registry;

#[derive(Debug, Clone)]
pub struct Predictor {
    registry: Arc<Registry>,
    max_request_bytes: usize,
}

/// The `{name}` and optional `{version}` of a request path, validated.
fn parse_target(name: &str, version: Option<&str>) -> Result<(ModelName, VersionSpec), Error> {
    Ok((name.parse()?, version.map_or(Ok(VersionSpec::Latest), str::parse)?))
}

impl Predictor {
    pub fn new(registry: Arc<Registry>, max_request_bytes: usize) -> Self {
        Self { registry, max_request_bytes }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn max_request_bytes(&self) -> usize {
        self.max_request_bytes
    }

    async fn resolve(&self, name: &str, version: Option<&str>) -> Result<ModelId, Error> {
        let (name, spec) = parse_target(name, version)?;
        self.registry.resolve(&name, &spec).await
    }

    /// Runs one inference request (`POST /v2/models/{name}[/versions/{v}]/infer`).
    #[tracing::instrument(skip(self, body), fields(bytes = body.len()))]
    pub async fn infer(
        &self,
        name: &str,
        version: Option<&str>,
        body: &[u8],
    ) -> Result<InferResponse, Error> {
        if body.len() > self.max_request_bytes {
            return Err(Error::PayloadTooLarge {
                what: "request body",
                size: body.len() as u64,
                limit: self.max_request_bytes as u64,
            });
        }
        let target = parse_target(name, version)?;
        let request = protocol::parse_request(body)?;
        let id = self.registry.resolve(&target.0, &target.1).await?;
        let loaded = self.registry.load(&id).await?;
        let decoded = protocol::decode(request, loaded.model.signature())?;
        let runner = Arc::clone(&loaded);
        let inputs = decoded.inputs;
        let outputs = tokio::task::spawn_blocking(move || runner.model.run(inputs))
            .await
            .map_err(|e| Error::internal("running inference", e))?;
        // A per-shape model may have built a plan for these inputs (even for a failed run):
        // it weighs more now.
        self.registry.reweigh(&loaded).await;
        let outputs = outputs?;
        let mut outputs: Vec<Option<_>> = outputs.into_iter().map(Some).collect();
        let selected = decoded
            .outputs
            .iter()
            .filter_map(|wanted| {
                let position = loaded
                    .model
                    .signature()
                    .outputs
                    .iter()
                    .position(|spec| &spec.name == wanted)?;
                outputs[position].take().map(ResponseOutput::from)
            })
            .collect();
        Ok(InferResponse {
            model_name: id.name.to_string(),
            model_version: id.version.to_string(),
            id: decoded.id,
            outputs: selected,
        })
    }

    /// Model metadata (`GET /v2/models/{name}[/versions/{v}]`). Without a version it
    /// describes the latest and lists every version; with one, only that version.
    pub async fn metadata(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<ModelMetadata, Error> {
        let (model_name, spec) = parse_target(name, version)?;
        let id = self.registry.resolve(&model_name, &spec).await?;
        let manifest = self.registry.manifest(&id).await?;
        let versions = match spec {
            VersionSpec::Exact(_) | VersionSpec::Alias(_) => vec![id.version],
            VersionSpec::Latest => self.registry.versions(&model_name).await?,
        };
        Ok(ModelMetadata {
            name: manifest.name,
            versions: versions.iter().map(ToString::to_string).collect(),
            platform: PLATFORM,
            inputs: manifest.signature.inputs,
            outputs: manifest.signature.outputs,
        })
    }

    /// Readiness of one model (`GET .../ready`): loads it if it is not loaded, so a call
    /// also warms the execution environment.
    pub async fn ready(&self, name: &str, version: Option<&str>) -> Result<ModelId, Error> {
        let id = self.resolve(name, version).await?;
        self.registry.load(&id).await?;
        Ok(id)
    }

    /// Loads the listed models, logging (not failing on) the ones that cannot be loaded.
    pub async fn preload(&self, models: &[(ModelName, VersionSpec)]) {
        for (name, spec) in models {
            let started = std::time::Instant::now();
            let loaded = match self.registry.resolve(name, spec).await {
                Ok(id) => self.registry.load(&id).await.map(|_| id),
                Err(err) => Err(err),
            };
            match loaded {
                Ok(id) => {
                    tracing::info!(model = %id, elapsed_ms = crate::elapsed_ms(started), "preloaded")
                }
                Err(err) => {
                    tracing::error!(model = %name, error = %err, kind = err.kind(), "preload failed")
                }
            }
        }
    }
}
