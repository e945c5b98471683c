//! The output JSON Lines: one line per input record, in input order, with the record's
//! number (from 0) and its outputs in the Open Inference Protocol's form, or its error.
//! Nothing else goes in (no timings, no ids), so the same input gives the same bytes.

use bytes::Bytes;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::infer::{Inferred, OutputView};
use crate::error::Error;
use crate::protocol::json;
use crate::store::BoxWriter;

#[derive(Serialize)]
#[serde(untagged)]
enum Line<'a> {
    Outputs { row: u64, outputs: Vec<OutputView<'a>> },
    Error { row: u64, error: &'a str },
}

/// Appends the lines of a mini-batch's records, the first numbered `first_row`, to `out`.
pub fn write_lines(out: &mut Vec<u8>, first_row: u64, inferred: &Inferred) -> Result<(), Error> {
    for (index, row) in (0..inferred.outcomes.len()).zip(first_row..) {
        let message;
        let line = match inferred.outputs(index) {
            Ok(outputs) => Line::Outputs { row, outputs },
            Err(err) => {
                message = err.client_message();
                Line::Error { row, error: &message }
            }
        };
        json::append(out, &line).map_err(|e| Error::internal("writing an output line", e))?;
        out.push(b'\n');
    }
    Ok(())
}

/// What the writer wrote: its SHA-256 (hex) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub sha256: String,
    pub bytes: u64,
}

/// The outcomes of a mini-batch whose first row is numbered `first_row`.
pub struct Chunk {
    pub first_row: u64,
    pub inferred: Inferred,
}

/// Writes the lines of everything `chunks` brings to `writer`, hashing them, until the
/// channel closes; hands the writer back (to complete or abort) with the result. Lines are
/// serialised here, on the writer's task, while the next mini-batch is inferred.
pub async fn write_all(
    mut writer: BoxWriter,
    mut chunks: mpsc::Receiver<Chunk>,
) -> (BoxWriter, Result<Written, Error>) {
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    while let Some(Chunk { first_row, inferred }) = chunks.recv().await {
        let mut out = Vec::with_capacity(inferred.outcomes.len() * 128);
        if let Err(err) = write_lines(&mut out, first_row, &inferred) {
            return (writer, Err(err));
        }
        hash.update(&out);
        bytes += out.len() as u64;
        if let Err(err) = writer.write(Bytes::from(out)).await {
            return (writer, Err(err.into()));
        }
    }
    (writer, Ok(Written { sha256: hex::encode(hash.finalize()), bytes }))
}
