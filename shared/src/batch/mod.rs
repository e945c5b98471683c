//! Batch prediction over files in the store and Step Functions item batches: the core of
//! `batch-predict`, which only wires it to the Lambda runtime.
//!
//! [`layout`] maps S3 events onto input keys (`<input prefix><model>[@<version>]/<path>`) and
//! names the outputs; [`input`] reads the formats (JSON Lines, CSV, `.npy`, each optionally
//! gzipped) as streams; [`infer`] runs mini-batches through [`crate::Predictor`] (same
//! signature checks, limits, registry and caches as `predict`); [`output`] writes the
//! deterministic output lines; [`job`] runs one file end to end and writes its [`manifest`];
//! [`event`] and [`items`] answer the two event shapes.

pub mod event;
pub mod infer;
pub mod input;
pub mod items;
pub mod job;
pub mod layout;
pub mod manifest;
pub mod minibatch;
pub mod output;
pub mod settings;
pub mod tensors;

use std::time::SystemTime;

use serde_json::Value;

pub use event::Event;
pub use settings::BatchSettings;

use crate::config::StoreLocation;
use crate::error::Error;
use crate::names::ModelId;
use crate::predictor::Predictor;
use crate::store::SharedStore;

/// Batch prediction for one execution environment.
#[derive(Debug, Clone)]
pub struct Batch {
    predictor: Predictor,
    store: SharedStore,
    location: StoreLocation,
    settings: BatchSettings,
}

impl Batch {
    /// Batch jobs over the predictor's registry and its store, which is at `location`.
    pub fn new(predictor: Predictor, location: StoreLocation, settings: BatchSettings) -> Self {
        let store = predictor.registry().store().clone();
        Self { predictor, store, location, settings }
    }

    pub fn settings(&self) -> &BatchSettings {
        &self.settings
    }

    /// How large a mini-batch of the model `id` grows: the configured rows and elements,
    /// within the limits of one request; one record when the model's rows are not
    /// independent (a record's outputs must not depend on the records read with it).
    async fn bounds(&self, id: &ModelId) -> Result<minibatch::Bounds, Error> {
        let limits = self.predictor.limits();
        let loaded = self.predictor.registry().load(id).await?;
        let rows = match loaded.model.rows_independent() {
            true => self.settings.batch_size.min(limits.max_batch).max(1),
            false => 1,
        };
        Ok(minibatch::Bounds {
            rows,
            elements: self.settings.max_elements.min(limits.max_elements).max(1),
        })
    }

    /// Handles one event; jobs stop cleanly at `deadline`.
    pub async fn handle(
        &self,
        event: Event,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Value, Error> {
        match event {
            Event::S3(event) => event::s3(self, event, deadline).await,
            Event::Items(items) => items::run(self, items).await,
        }
    }

    /// When jobs must stop for an invocation whose deadline is `deadline` (Lambda's, as a
    /// time): the configured margin before it. `None` when the deadline has already passed
    /// as the invocation starts, which no real invocation has: local emulators send a
    /// duration where Lambda sends a time (cargo-lambda sends 600000, ten minutes after
    /// 1970), and a context built by hand has none.
    pub fn stop_at(&self, deadline: SystemTime) -> Option<tokio::time::Instant> {
        let Ok(left) = deadline.duration_since(SystemTime::now()) else {
            tracing::warn!(
                ?deadline,
                "the invocation's deadline has passed already; running without one"
            );
            return None;
        };
        Some(tokio::time::Instant::now() + left.saturating_sub(self.settings.deadline_margin))
    }
}
