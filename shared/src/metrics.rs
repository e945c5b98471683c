//! What each invocation reports when it ends: one summary log line (request id, model,
//! version, protocol, status, timings) and, under Lambda, one CloudWatch Embedded Metric
//! Format record, a JSON log line that CloudWatch turns into metrics without an API call.
//!
//! The core notes what it learns while serving (the model, the timings, a cold load's fetch
//! and engine time) into a record scoped to the request's task ([`note`]); [`observe`]
//! wraps a handler and writes both lines once the response is known. Written by hand: one
//! `serde_json::json!` value is smaller than a metrics facade and its exporter.

use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::{json, Value};

use crate::names::ModelId;
use crate::predictor::Timings;

/// The CloudWatch namespace of maas's metrics.
pub const NAMESPACE: &str = "maas";

/// What one invocation learnt about itself.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub model: Option<ModelId>,
    pub timings: Timings,
    /// Set when this request fetched the model file (a cold load).
    pub fetch_ms: Option<f64>,
    /// Set when this request loaded the model into the engine.
    pub engine_ms: Option<f64>,
}

tokio::task_local! {
    static RECORD: RefCell<Record>;
}

/// Updates the current request's record; does nothing outside [`observe`] (tests, preload).
pub fn note(change: impl FnOnce(&mut Record)) {
    let _ = RECORD.try_with(|record| change(&mut record.borrow_mut()));
}

/// Whether metrics records are written (under Lambda) or only the summary line (locally).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    SummaryAndMetrics,
    SummaryOnly,
}

static WARM: AtomicBool = AtomicBool::new(false);

/// Runs one request through `handler` and reports it: the summary log line, and the
/// metrics record when `output` says so.
pub async fn observe<F>(
    function: &'static str,
    output: Output,
    request: Request,
    handler: impl FnOnce(Request) -> F,
) -> Response<Body>
where
    F: Future<Output = Response<Body>>,
{
    let cold_start = !WARM.swap(true, Ordering::Relaxed);
    let started = Instant::now();
    let request_id = request.lambda_context_ref().map(|context| context.request_id.clone());
    let protocol = protocol(&request);
    let (response, record) = RECORD
        .scope(RefCell::new(Record::default()), async move {
            let response = handler(request).await;
            (response, RECORD.with(|record| record.take()))
        })
        .await;
    let invocation = Invocation {
        function,
        request_id: request_id.as_deref().unwrap_or("-"),
        protocol,
        status: response.status().as_u16(),
        cold_start,
        total_ms: crate::elapsed_ms(started),
        record: &record,
    };
    invocation.log_summary();
    if output == Output::SummaryAndMetrics {
        println!("{}", invocation.metrics(epoch_ms()));
    }
    response
}

/// The protocol a request speaks, from its path and headers.
fn protocol(request: &Request) -> &'static str {
    let path = request.uri().path();
    if path.starts_with("/v1/") {
        "tfserving"
    } else if request.headers().contains_key("inference-header-content-length") {
        "oip-binary"
    } else if path.starts_with("/v2") {
        "oip-json"
    } else {
        "other"
    }
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One finished invocation.
struct Invocation<'a> {
    function: &'static str,
    request_id: &'a str,
    protocol: &'static str,
    status: u16,
    cold_start: bool,
    total_ms: f64,
    record: &'a Record,
}

impl Invocation<'_> {
    fn log_summary(&self) {
        let (model, version) = match &self.record.model {
            Some(id) => (id.name.to_string(), id.version.to_string()),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let t = &self.record.timings;
        tracing::info!(
            request_id = self.request_id,
            model,
            version,
            protocol = self.protocol,
            status = self.status,
            cold_start = self.cold_start,
            total_ms = self.total_ms,
            resolve_ms = t.resolve_ms,
            load_ms = t.load_ms,
            decode_ms = t.decode_ms,
            infer_ms = t.infer_ms,
            "request"
        );
    }

    /// The Embedded Metric Format record: dimensioned by function, model and version when
    /// a model was resolved, by function alone otherwise.
    fn metrics(&self, timestamp_ms: u64) -> Value {
        let class = self.status / 100;
        let mut metrics = vec![
            ("invocations", "Count", 1.0),
            ("cold_start", "Count", f64::from(u8::from(self.cold_start))),
            ("status_2xx", "Count", f64::from(u8::from(class == 2))),
            ("status_4xx", "Count", f64::from(u8::from(class == 4))),
            ("status_5xx", "Count", f64::from(u8::from(class == 5))),
            ("duration_ms", "Milliseconds", self.total_ms),
        ];
        if self.record.model.is_some() {
            metrics.push(("inference_ms", "Milliseconds", self.record.timings.infer_ms));
        }
        if let Some(ms) = self.record.fetch_ms {
            metrics.push(("fetch_ms", "Milliseconds", ms));
        }
        if let Some(ms) = self.record.engine_ms {
            metrics.push(("engine_ms", "Milliseconds", ms));
        }
        let mut record = json!({
            "function": self.function,
            "status": self.status,
            "protocol": self.protocol,
            "request_id": self.request_id,
        });
        let dimensions = match &self.record.model {
            Some(id) => {
                record["model"] = json!(id.name.as_str());
                record["version"] = json!(id.version.to_string());
                json!([["function", "model", "version"]])
            }
            None => json!([["function"]]),
        };
        for (name, _, value) in &metrics {
            record[*name] = json!(value);
        }
        record["_aws"] = json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": dimensions,
                "Metrics": metrics
                    .iter()
                    .map(|(name, unit, _)| json!({"Name": name, "Unit": unit}))
                    .collect::<Vec<_>>(),
            }],
        });
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Version;

    fn invocation(record: &Record, status: u16) -> Invocation<'_> {
        Invocation {
            function: "predict",
            request_id: "r-1",
            protocol: "oip-json",
            status,
            cold_start: true,
            total_ms: 12.5,
            record,
        }
    }

    /// Every metric named in `_aws` has a value at the top level, and every dimension too,
    /// as the Embedded Metric Format specification requires.
    fn assert_valid_emf(record: &Value) {
        let directive = &record["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], NAMESPACE);
        for metric in directive["Metrics"].as_array().unwrap() {
            let name = metric["Name"].as_str().unwrap();
            assert!(record[name].is_number(), "{name} has no value: {record}");
        }
        for set in directive["Dimensions"].as_array().unwrap() {
            for dimension in set.as_array().unwrap() {
                assert!(record[dimension.as_str().unwrap()].is_string(), "{record}");
            }
        }
        assert!(record["_aws"]["Timestamp"].is_u64());
    }

    #[test]
    fn a_served_request_is_dimensioned_by_model_and_version() {
        let record = Record {
            model: Some(ModelId::new("iris".parse().unwrap(), Version::new(3).unwrap())),
            timings: Timings { infer_ms: 0.75, ..Timings::default() },
            fetch_ms: Some(40.0),
            engine_ms: Some(9.0),
        };
        let emf = invocation(&record, 200).metrics(1_700_000_000_000);
        assert_valid_emf(&emf);
        assert_eq!(emf["model"], "iris");
        assert_eq!(emf["version"], "3");
        assert_eq!(
            emf["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["function", "model", "version"]])
        );
        assert_eq!(
            (emf["status_2xx"].as_f64(), emf["status_4xx"].as_f64()),
            (Some(1.0), Some(0.0))
        );
        assert_eq!(emf["fetch_ms"], 40.0);
        assert_eq!(emf["inference_ms"], 0.75);
        assert_eq!(emf["cold_start"], 1.0);
    }

    #[test]
    fn a_request_without_a_model_is_dimensioned_by_function_only() {
        let record = Record::default();
        let emf = invocation(&record, 404).metrics(1);
        assert_valid_emf(&emf);
        assert_eq!(emf["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([["function"]]));
        assert_eq!(emf["status_4xx"], 1.0);
        assert!(emf.get("model").is_none() && emf.get("fetch_ms").is_none());
    }
}
