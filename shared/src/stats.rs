//! Inference statistics of one execution environment, in the shape of the Open Inference
//! Protocol's statistics extension as Triton defines it (`GET /v2/models[/{name}[/versions/
//! {v}]]/stats`). Counters live in this process only: on Lambda each execution environment
//! counts its own requests, from its cold start until it is recycled.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::names::{ModelId, ModelName};
use crate::predictor::Timings;

/// A count and the nanoseconds it took in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StatDuration {
    pub count: u64,
    pub ns: u64,
}

impl StatDuration {
    fn add(&mut self, ms: f64) {
        self.count += 1;
        self.ns += (ms * 1e6) as u64;
    }
}

/// Where the time of successful requests went; `fail` counts failed ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InferenceStats {
    pub success: StatDuration,
    pub fail: StatDuration,
    /// Resolving the version and waiting for the loaded model (a cold load included).
    pub queue: StatDuration,
    /// Decoding the request and checking it against the signature.
    pub compute_input: StatDuration,
    /// Running the engine.
    pub compute_infer: StatDuration,
    /// Picking the outputs asked for (encoding the response is the codec's, not counted).
    pub compute_output: StatDuration,
    /// maas has no response cache: always zero.
    pub cache_hit: StatDuration,
    pub cache_miss: StatDuration,
}

/// The engine's time per batch size.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BatchStats {
    pub batch_size: usize,
    pub compute_input: StatDuration,
    pub compute_infer: StatDuration,
    pub compute_output: StatDuration,
}

/// One model version's statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelStats {
    pub name: String,
    pub version: String,
    /// Milliseconds since the Unix epoch of the last successful inference; 0 before any.
    pub last_inference: u64,
    /// Rows inferred (a batch of 8 counts 8).
    pub inference_count: u64,
    /// Engine runs.
    pub execution_count: u64,
    pub inference_stats: InferenceStats,
    pub batch_stats: Vec<BatchStats>,
}

/// `GET .../stats` answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatsResponse {
    pub model_stats: Vec<ModelStats>,
}

/// The statistics of every model version this process served.
#[derive(Debug, Default)]
pub struct Statistics {
    models: Mutex<BTreeMap<(String, u64), Entry>>,
}

#[derive(Debug, Default)]
struct Entry {
    stats: ModelStats,
    batches: BTreeMap<usize, BatchStats>,
}

impl Statistics {
    /// Counts a successful inference of `batch` rows.
    pub fn success(&self, id: &ModelId, batch: usize, timings: &Timings, output_ms: f64) {
        self.update(id, |entry| {
            let stats = &mut entry.stats;
            stats.last_inference = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            stats.inference_count += batch as u64;
            stats.execution_count += 1;
            let s = &mut stats.inference_stats;
            s.success.add(timings.total_ms() + output_ms);
            s.queue.add(timings.resolve_ms + timings.load_ms);
            s.compute_input.add(timings.decode_ms);
            s.compute_infer.add(timings.infer_ms);
            s.compute_output.add(output_ms);
            let b = entry
                .batches
                .entry(batch)
                .or_insert_with(|| BatchStats { batch_size: batch, ..Default::default() });
            b.compute_input.add(timings.decode_ms);
            b.compute_infer.add(timings.infer_ms);
            b.compute_output.add(output_ms);
        });
    }

    /// Counts a request that reached the model and failed after `elapsed`.
    pub fn failure(&self, id: &ModelId, elapsed: Duration) {
        self.update(id, |entry| entry.stats.inference_stats.fail.add(elapsed.as_secs_f64() * 1e3));
    }

    fn update(&self, id: &ModelId, change: impl FnOnce(&mut Entry)) {
        let mut models = self.models.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry =
            models.entry((id.name.to_string(), id.version.get())).or_insert_with(|| Entry {
                stats: ModelStats {
                    name: id.name.to_string(),
                    version: id.version.to_string(),
                    ..Default::default()
                },
                batches: BTreeMap::new(),
            });
        change(entry);
    }

    /// The statistics of `version` (zeros when it has served nothing yet), of every version
    /// of `name` served so far (or its `latest`, zeroed, when none), or of every model.
    pub fn report(&self, scope: Scope<'_>) -> StatsResponse {
        let models = self.models.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let snapshot = |entry: &Entry| ModelStats {
            batch_stats: entry.batches.values().cloned().collect(),
            ..entry.stats.clone()
        };
        let zeros = |id: &ModelId| ModelStats {
            name: id.name.to_string(),
            version: id.version.to_string(),
            ..Default::default()
        };
        let model_stats = match scope {
            Scope::All => models.values().map(snapshot).collect(),
            Scope::Model(name, latest) => {
                let served: Vec<_> = models
                    .iter()
                    .filter(|((n, _), _)| n == name.as_str())
                    .map(|(_, entry)| snapshot(entry))
                    .collect();
                if served.is_empty() {
                    vec![zeros(latest)]
                } else {
                    served
                }
            }
            Scope::Version(id) => vec![models
                .get(&(id.name.to_string(), id.version.get()))
                .map_or_else(|| zeros(id), snapshot)],
        };
        StatsResponse { model_stats }
    }
}

/// What a statistics request covers.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    All,
    /// Every version of a model, with the version `latest` resolves to.
    Model(&'a ModelName, &'a ModelId),
    Version(&'a ModelId),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Version;

    fn id(name: &str, version: u64) -> ModelId {
        ModelId::new(name.parse().unwrap(), Version::new(version).unwrap())
    }

    #[test]
    fn successes_and_failures_are_counted_per_version_and_batch_size() {
        let stats = Statistics::default();
        let timings = Timings { resolve_ms: 1.0, load_ms: 2.0, decode_ms: 0.5, infer_ms: 3.0 };
        stats.success(&id("a", 1), 4, &timings, 0.25);
        stats.success(&id("a", 1), 1, &timings, 0.25);
        stats.failure(&id("a", 1), Duration::from_millis(2));
        stats.success(&id("a", 2), 1, &timings, 0.0);
        let report = stats.report(Scope::Version(&id("a", 1))).model_stats;
        let a1 = &report[0];
        assert_eq!((a1.inference_count, a1.execution_count), (5, 2));
        assert_eq!(a1.inference_stats.success, StatDuration { count: 2, ns: 13_500_000 });
        assert_eq!(a1.inference_stats.fail, StatDuration { count: 1, ns: 2_000_000 });
        assert_eq!(a1.inference_stats.queue, StatDuration { count: 2, ns: 6_000_000 });
        let sizes: Vec<_> = a1.batch_stats.iter().map(|b| b.batch_size).collect();
        assert_eq!(sizes, [1, 4]);
        assert!(a1.last_inference > 0);
        let name = "a".parse().unwrap();
        let all_of_a = stats.report(Scope::Model(&name, &id("a", 2))).model_stats;
        assert_eq!(all_of_a.len(), 2);
        assert_eq!(stats.report(Scope::All).model_stats.len(), 2);
    }

    #[test]
    fn a_model_not_served_yet_reports_zeros() {
        let stats = Statistics::default();
        let name = "b".parse().unwrap();
        let report = stats.report(Scope::Model(&name, &id("b", 3))).model_stats;
        assert_eq!(report.len(), 1);
        assert_eq!((report[0].name.as_str(), report[0].version.as_str()), ("b", "3"));
        assert_eq!(report[0].inference_stats, InferenceStats::default());
    }
}
