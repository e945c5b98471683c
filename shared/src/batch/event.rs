//! What batch-predict is invoked with: S3 `ObjectCreated` events (several records possible)
//! or Step Functions item batches, told apart by their shape; and what it answers.

use aws_lambda_events::event::s3::{S3Event, S3EventRecord};
use serde::Deserialize;
use serde_json::{json, Value};

use super::items::ItemBatch;
use super::layout::{self, Placement};
use super::{job, Batch};
use crate::error::Error;

/// An invocation's event.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Event {
    /// `{"Items": [...], "BatchInput": {...}}`.
    Items(ItemBatch),
    /// `{"Records": [...]}`.
    S3(S3Event),
}

/// Runs the job of every `ObjectCreated` record for a batch input; ignores other records and
/// keys under the output prefix. Every record is tried; the first failure is the
/// invocation's (the others are logged), so a retry redoes them all, with the same outputs.
pub async fn s3(
    batch: &Batch,
    event: S3Event,
    deadline: Option<tokio::time::Instant>,
) -> Result<Value, Error> {
    if event.records.is_empty() {
        return Err(Error::invalid_request("the S3 event has no records"));
    }
    let mut processed = Vec::new();
    let mut ignored = Vec::new();
    let mut failure = None;
    for record in event.records {
        let raw_key = record.s3.object.key.clone().unwrap_or_default();
        match one_record(batch, record, deadline).await {
            Ok(Some(done)) => processed.push(done),
            Ok(None) => ignored.push(Value::from(raw_key)),
            Err(err) => {
                tracing::warn!(key = %raw_key, error = %err, kind = err.kind(), "batch record failed");
                failure.get_or_insert(err);
            }
        }
    }
    match failure {
        Some(err) => Err(err),
        None => Ok(json!({"processed": processed, "ignored": ignored})),
    }
}

/// One record: `None` when it is not for batch-predict.
async fn one_record(
    batch: &Batch,
    record: S3EventRecord,
    deadline: Option<tokio::time::Instant>,
) -> Result<Option<Value>, Error> {
    let created =
        record.event_name.as_deref().is_some_and(|name| name.starts_with("ObjectCreated"));
    let bucket = record.s3.bucket.name.unwrap_or_default();
    let raw_key = record.s3.object.key.unwrap_or_default();
    if !created {
        tracing::info!(key = %raw_key, event = ?record.event_name, "not an ObjectCreated event; ignored");
        return Ok(None);
    }
    let input = match layout::place(&batch.location, &batch.settings, &bucket, &raw_key)? {
        Placement::Output(key) => {
            tracing::info!(%key, "a key under the output prefix; ignored");
            return Ok(None);
        }
        Placement::Input(input) => input,
    };
    let manifest = job::run(batch, &input, record.s3.object.e_tag, deadline).await?;
    Ok(Some(json!({
        "input": input.key,
        "output": manifest.output.map(|o| o.key),
        "manifest": input.manifest_key(&batch.settings),
        "rows_ok": manifest.rows.ok,
        "rows_failed": manifest.rows.failed,
    })))
}
