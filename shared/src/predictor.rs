//! Serving operations over the registry, independent of protocol and of how requests arrive
//! (API Gateway, a local server, a test, a batch job): resolve a model, check a decoded
//! request against its signature, run it, and return the outputs asked for.

use std::sync::Arc;
use std::time::Instant;

use crate::error::Error;
use crate::manifest::Manifest;
use crate::metrics;
use crate::names::{ModelId, ModelName, Version, VersionSpec};
use crate::registry::{LoadedModel, Registry};
use crate::signature::{CheckedRequest, InferenceRequest, Signature};
use crate::stats::{Scope, Statistics, StatsResponse};
use crate::tensor::Tensor;

#[derive(Debug, Clone)]
pub struct Predictor {
    registry: Arc<Registry>,
    limits: RequestLimits,
    stats: Arc<Statistics>,
}

/// Bounds on what one request may ask for (413 beyond each, naming it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Bytes of a request body.
    pub max_request_bytes: usize,
    /// Rows of a batch: the first dimension of inputs whose first dimension is dynamic.
    pub max_batch: usize,
    /// Elements of all input tensors together.
    pub max_elements: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits { max_request_bytes: 6 << 20, max_batch: 4096, max_elements: 4 << 20 }
    }
}

/// One inference: the model that ran, the outputs asked for (in the order asked), and where
/// the time went.
#[derive(Debug)]
pub struct Inference {
    pub model: ModelId,
    pub outputs: Vec<Tensor>,
    pub timings: Timings,
}

/// Milliseconds spent in each step of an inference.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Resolving the version (a manifest or alias read when not cached).
    pub resolve_ms: f64,
    /// Getting the loaded model: fetching and loading it on a cold request, else a lookup.
    pub load_ms: f64,
    /// Decoding the request against the signature and checking it.
    pub decode_ms: f64,
    /// Running the engine.
    pub infer_ms: f64,
}

impl Timings {
    pub fn total_ms(&self) -> f64 {
        self.resolve_ms + self.load_ms + self.decode_ms + self.infer_ms
    }
}

/// A model as metadata describes it: the manifest of the version resolved, and the versions
/// the request covers (all of them when it named none).
#[derive(Debug, Clone)]
pub struct ModelDescription {
    pub manifest: Manifest,
    pub versions: Vec<Version>,
}

/// The `{name}` and optional `{version}` of a request path, validated.
fn parse_target(name: &str, version: Option<&str>) -> Result<(ModelName, VersionSpec), Error> {
    Ok((name.parse()?, version.map_or(Ok(VersionSpec::Latest), str::parse)?))
}

impl Predictor {
    pub fn new(registry: Arc<Registry>, limits: RequestLimits) -> Self {
        Self { registry, limits, stats: Arc::default() }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn limits(&self) -> &RequestLimits {
        &self.limits
    }

    async fn resolve(&self, name: &str, version: Option<&str>) -> Result<ModelId, Error> {
        let (name, spec) = parse_target(name, version)?;
        self.registry.resolve(&name, &spec).await
    }

    /// Refuses a request body over the configured size (413).
    pub fn check_request_size(&self, bytes: usize) -> Result<(), Error> {
        if bytes <= self.limits.max_request_bytes {
            return Ok(());
        }
        Err(Error::PayloadTooLarge {
            what: "request body",
            size: bytes as u64,
            limit: self.limits.max_request_bytes as u64,
        })
    }

    /// Runs one inference on `{name}` at `{version}` (latest when absent). `decode` turns
    /// the protocol's request into named tensors given the model's signature; the result is
    /// checked against the signature here, the same way for every protocol.
    #[tracing::instrument(skip(self, decode))]
    pub async fn infer<D>(
        &self,
        name: &str,
        version: Option<&str>,
        decode: D,
    ) -> Result<Inference, Error>
    where
        D: FnOnce(&Signature) -> Result<InferenceRequest, Error>,
    {
        let mut timings = Timings::default();
        let started = Instant::now();
        let target = parse_target(name, version)?;
        let id = self.registry.resolve(&target.0, &target.1).await?;
        timings.resolve_ms = crate::elapsed_ms(started);
        metrics::note(|record| record.model = Some(id.clone()));
        let loading = Instant::now();
        // A version that does not exist or cannot load fails here and has no statistics.
        let loaded = self.registry.load(&id).await?;
        timings.load_ms = crate::elapsed_ms(loading);
        let result = self.run(&loaded, decode, timings).await;
        match &result {
            Ok(inference) => metrics::note(|record| record.timings = inference.timings),
            Err(_) => self.stats.failure(&id, started.elapsed()),
        }
        result
    }

    /// [`Predictor::infer`] once the version is known.
    async fn run<D>(
        &self,
        loaded: &Arc<LoadedModel>,
        decode: D,
        mut timings: Timings,
    ) -> Result<Inference, Error>
    where
        D: FnOnce(&Signature) -> Result<InferenceRequest, Error>,
    {
        let id = &loaded.id;
        let started = Instant::now();
        let signature = loaded.model.signature();
        let request = signature.check(decode(signature)?)?;
        let batch = self.check_limits(&request, signature)?;
        timings.decode_ms = crate::elapsed_ms(started);
        let started = Instant::now();
        let runner = Arc::clone(loaded);
        let inputs = request.inputs;
        loaded.model.expect_run(&inputs);
        let outputs = tokio::task::spawn_blocking(move || runner.model.run(inputs))
            .await
            .map_err(|e| Error::internal("running inference", e))?;
        // A per-shape model may have built a plan for these inputs (even for a failed run):
        // it weighs more now.
        self.registry.reweigh(loaded).await;
        let outputs = outputs?;
        timings.infer_ms = crate::elapsed_ms(started);
        let started = Instant::now();
        let mut outputs: Vec<Option<Tensor>> = outputs.into_iter().map(Some).collect();
        let selected = request
            .outputs
            .iter()
            .filter_map(|wanted| {
                let position = signature.outputs.iter().position(|spec| &spec.name == wanted)?;
                outputs[position].take()
            })
            .collect();
        self.stats.success(id, batch, &timings, crate::elapsed_ms(started));
        Ok(Inference { model: id.clone(), outputs: selected, timings })
    }

    /// Checks the batch size and element count against the limits; returns the batch size
    /// (1 when no input has a dynamic first dimension).
    fn check_limits(
        &self,
        request: &CheckedRequest,
        signature: &Signature,
    ) -> Result<usize, Error> {
        let batch = request
            .inputs
            .iter()
            .zip(&signature.inputs)
            .find(|(_, spec)| spec.shape.first() == Some(&-1))
            .map_or(1, |(tensor, _)| tensor.shape[0]);
        let elements: usize = request.inputs.iter().map(|tensor| tensor.data.len()).sum();
        let checks = [
            ("the batch size (rows)", batch, self.limits.max_batch, "MAAS_MAX_BATCH"),
            (
                "the number of input elements",
                elements,
                self.limits.max_elements,
                "MAAS_MAX_ELEMENTS",
            ),
        ];
        for (what, size, limit, variable) in checks {
            if size > limit {
                return Err(Error::OverLimit {
                    what,
                    size: size as u64,
                    limit: limit as u64,
                    variable,
                });
            }
        }
        Ok(batch)
    }

    /// Statistics of this execution environment (`GET /v2/models[/{name}[/versions/{v}]]/stats`):
    /// every model served when `name` is `None`; else the model, which must exist.
    pub async fn stats(
        &self,
        name: Option<&str>,
        version: Option<&str>,
    ) -> Result<StatsResponse, Error> {
        let Some(name) = name else { return Ok(self.stats.report(Scope::All)) };
        let (model_name, spec) = parse_target(name, version)?;
        let id = self.registry.resolve(&model_name, &spec).await?;
        // The version must exist (resolving a number does not read the store).
        self.registry.manifest(&id).await?;
        Ok(match version {
            Some(_) => self.stats.report(Scope::Version(&id)),
            None => self.stats.report(Scope::Model(&model_name, &id)),
        })
    }

    /// Model metadata (`GET /v2/models/{name}[/versions/{v}]`). Without a version it
    /// describes the latest and lists every version; with one, only that version.
    pub async fn metadata(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<ModelDescription, Error> {
        let (model_name, spec) = parse_target(name, version)?;
        let id = self.registry.resolve(&model_name, &spec).await?;
        let manifest = self.registry.manifest(&id).await?;
        let versions = match spec {
            VersionSpec::Exact(_) | VersionSpec::Alias(_) => vec![id.version],
            VersionSpec::Latest => self.registry.versions(&model_name).await?,
        };
        Ok(ModelDescription { manifest, versions })
    }

    /// Builds a loaded per-shape model's plans for batches of `rows` rows, logging what each
    /// took, and weighs it again with them.
    async fn prepare(&self, loaded: &Arc<LoadedModel>, rows: &[usize]) {
        if rows.is_empty() {
            return;
        }
        let model = loaded.clone();
        let rows = rows.to_vec();
        let prepared = tokio::task::spawn_blocking(move || model.model.prepare(&rows)).await;
        match prepared.map_err(|e| Error::internal("preparing plans", e)).and_then(|r| r) {
            Ok(buckets) => {
                for (rows, elapsed_ms) in buckets {
                    tracing::info!(model = %loaded.id, rows, elapsed_ms, "plan prepared");
                }
                self.registry.reweigh(loaded).await;
            }
            Err(err) => tracing::warn!(model = %loaded.id, error = %err, "plans not prepared"),
        }
    }

    /// Readiness of one model (`GET .../ready`): loads it if it is not loaded, so a call
    /// also warms the execution environment.
    pub async fn ready(&self, name: &str, version: Option<&str>) -> Result<ModelId, Error> {
        let id = self.resolve(name, version).await?;
        self.registry.load(&id).await?;
        Ok(id)
    }

    /// Loads the listed models, logging (not failing on) the ones that cannot be loaded, and
    /// builds the plans of per-shape models for batches of `rows` rows.
    pub async fn preload(&self, models: &[(ModelName, VersionSpec)], rows: &[usize]) {
        for (name, spec) in models {
            let started = std::time::Instant::now();
            let loaded = match self.registry.resolve(name, spec).await {
                Ok(id) => self.registry.load(&id).await,
                Err(err) => Err(err),
            };
            match loaded {
                Ok(loaded) => {
                    let id = &loaded.id;
                    tracing::info!(model = %id, elapsed_ms = crate::elapsed_ms(started), "preloaded");
                    self.prepare(&loaded, rows).await;
                }
                Err(err) => {
                    tracing::error!(model = %name, error = %err, kind = err.kind(), "preload failed")
                }
            }
        }
    }
}
