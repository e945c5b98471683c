//! One batch file, start to end: resolve the model its key names, read the file as a stream
//! on a thread of its own, infer in mini-batches, serialise the output lines and stream them
//! to a store writer on a task of its own (bounded channels between the three, so memory does
//! not grow with the file), complete the output, then write the manifest. Any failure aborts
//! the output; the deadline aborts it too and writes no manifest.

use std::time::Instant;

use bytes::Bytes;
use futures::TryStreamExt;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::input;
use super::layout::InputObject;
use super::manifest::{
    ErrorInfo, InputInfo, JobManifest, JobTimings, ModelInfo, OutputInfo, RowCounts, Status,
};
use super::minibatch::{Bounds, MiniBatch};
use super::output::{self, Chunk, Written};
use super::{infer, Batch};
use crate::error::Error;
use crate::names::ModelId;
use crate::store::StoreError;

/// Mini-batches (and output chunks) in flight between the reader, the inference and the writer.
const IN_FLIGHT: usize = 4;

/// Runs the job of `input` and writes its manifest (unless the deadline stopped it).
pub async fn run(
    batch: &Batch,
    input: &InputObject,
    etag: Option<String>,
    deadline: Option<tokio::time::Instant>,
) -> Result<JobManifest, Error> {
    let started = Instant::now();
    let mut manifest = JobManifest {
        status: Status::Failed,
        input: InputInfo { key: input.key.clone(), etag, size: None },
        output: None,
        model: None,
        rows: RowCounts::default(),
        error: None,
        timings_ms: JobTimings::default(),
    };
    let result = execute(batch, input, deadline, &mut manifest).await;
    manifest.timings_ms.total = crate::elapsed_ms(started);
    match result {
        Ok(ref written) => {
            manifest.status = Status::Succeeded;
            manifest.output = Some(OutputInfo {
                key: input.output_key(&batch.settings),
                sha256: written.sha256.clone(),
                bytes: written.bytes,
            });
        }
        Err(err @ Error::DeadlineExceeded { .. }) => return Err(err),
        Err(ref err) => {
            manifest.error =
                Some(ErrorInfo { kind: err.kind().to_owned(), message: err.client_message() });
        }
    }
    let body = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::internal("writing a manifest", e))?;
    let written = batch.store.put(&input.manifest_key(&batch.settings), Bytes::from(body)).await;
    tracing::info!(input = %input.key, status = ?manifest.status, ok = manifest.rows.ok, failed = manifest.rows.failed, elapsed_ms = manifest.timings_ms.total, "batch job");
    match (result, written) {
        (Ok(_), Ok(())) => Ok(manifest),
        (Ok(_), Err(err)) => Err(err.into()),
        (Err(err), written) => {
            if let Err(manifest_error) = written {
                tracing::warn!(input = %input.key, error = %manifest_error, "the error manifest could not be written");
            }
            Err(err)
        }
    }
}

async fn execute(
    batch: &Batch,
    input: &InputObject,
    deadline: Option<tokio::time::Instant>,
    manifest: &mut JobManifest,
) -> Result<Written, Error> {
    let (name, spec) = input.target()?;
    let format = input.format()?;
    let registry = batch.predictor.registry();
    let id = registry.resolve(&name, &spec).await?;
    let model = registry.manifest(&id).await?;
    manifest.model = Some(ModelInfo {
        name: id.name.to_string(),
        version: id.version.get(),
        sha256: model.sha256.clone(),
    });
    // Loads the model (before the file is opened): how it batches decides the mini-batches.
    let bounds = batch.bounds(&id).await?;
    let object = batch.store.get(&input.key).await.map_err(|e| match e {
        StoreError::NotFound { key } => Error::InvalidBatchInput {
            key,
            problem: "the file does not exist (deleted since the event?)".to_owned(),
        },
        other => Error::from(other),
    })?;
    manifest.input.size = Some(object.size);

    let (rows_tx, rows_rx) = mpsc::channel(IN_FLIGHT);
    let key = input.key.clone();
    let limits = *batch.predictor.limits();
    let chunks = object.chunks.map_err(std::io::Error::other);
    tokio::task::spawn_blocking(move || {
        let reader = SyncIoBridge::new(StreamReader::new(chunks));
        read_rows(reader, format, &key, &model.signature, &limits, bounds, rows_tx)
    });

    let writer = batch.store.put_streaming(&input.output_key(&batch.settings)).await?;
    let (chunks_tx, chunks_rx) = mpsc::channel(IN_FLIGHT);
    let writing = tokio::spawn(output::write_all(writer, chunks_rx));
    let mut counts = RowCounts::default();
    let mut inference_ms = 0.0;
    let inferring =
        Box::pin(infer_all(batch, &id, rows_rx, chunks_tx, &mut counts, &mut inference_ms));
    let outcome = match deadline {
        Some(deadline) => tokio::select! {
            outcome = inferring => outcome,
            () = tokio::time::sleep_until(deadline) => Err(Error::DeadlineExceeded { rows: 0 }),
        },
        None => inferring.await,
    };
    manifest.rows = counts;
    manifest.timings_ms.inference = inference_ms;
    let outcome = outcome.map_err(|err| match err {
        Error::DeadlineExceeded { .. } => {
            Error::DeadlineExceeded { rows: counts.ok + counts.failed }
        }
        other => other,
    });
    let (writer, written) = writing.await.map_err(|e| Error::internal("the output writer", e))?;
    match outcome.and(written) {
        Ok(written) => {
            writer.complete().await?;
            Ok(written)
        }
        Err(err) => {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(input = %input.key, error = %abort, "aborting the output failed; the bucket's lifecycle rule removes its parts");
            }
            Err(err)
        }
    }
}

/// The reader thread: records in mini-batches bounded by `bounds` into `rows`, or the error
/// that made the file unreadable. Stops when the receiver is gone.
fn read_rows(
    reader: impl std::io::Read,
    format: input::Format,
    key: &str,
    signature: &crate::signature::Signature,
    limits: &crate::predictor::RequestLimits,
    bounds: Bounds,
    rows: mpsc::Sender<Result<MiniBatch, Error>>,
) {
    let mut batch = MiniBatch::new(bounds);
    let read = input::read(reader, format, key, signature, limits, &mut |row| {
        batch.push(row);
        !batch.is_full()
            || rows.blocking_send(Ok(std::mem::replace(&mut batch, MiniBatch::new(bounds)))).is_ok()
    });
    let last = match read {
        Ok(()) if batch.is_empty() => return,
        Ok(()) => Ok(batch),
        Err(err) => Err(err),
    };
    let _ = rows.blocking_send(last);
}

/// The inference stage: each mini-batch through the model, its outcomes to the writer, the
/// failure ratio checked as rows come.
async fn infer_all(
    batch: &Batch,
    id: &ModelId,
    mut rows: mpsc::Receiver<Result<MiniBatch, Error>>,
    chunks: mpsc::Sender<Chunk>,
    counts: &mut RowCounts,
    inference_ms: &mut f64,
) -> Result<(), Error> {
    while let Some(mini_batch) = rows.recv().await {
        let started = Instant::now();
        let inferred = infer::infer(&batch.predictor, id, mini_batch?).await?;
        *inference_ms += crate::elapsed_ms(started);
        let first_row = counts.ok + counts.failed;
        let failed = inferred.failed() as u64;
        counts.failed += failed;
        counts.ok += inferred.outcomes.len() as u64 - failed;
        if chunks.send(Chunk { first_row, inferred }).await.is_err() {
            // The writer failed; its error is the job's.
            return Ok(());
        }
        let seen = counts.ok + counts.failed;
        if counts.failed as f64 > batch.settings.max_failed_ratio * seen as f64 {
            return Err(Error::TooManyFailedRows {
                failed: counts.failed,
                rows: seen,
                ratio: batch.settings.max_failed_ratio,
            });
        }
    }
    Ok(())
}
