//! Batch input formats: the rows of a file, read as a stream and decoded against the
//! model's signature. One module per format; `.gz` is decompressed on the fly.

mod csv;
mod decimal;
mod jsonl;
mod npy;
mod records;

use std::io::{self, BufRead, BufReader, Read};

pub use self::csv::decode_fields;
pub use jsonl::decode_value;

use crate::error::Error;
use crate::signature::{Signature, TensorSpec};
use crate::tensor::Tensor;

/// How a batch input is written, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub kind: Kind,
    pub gzip: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Jsonl,
    Csv,
    Npy,
}

impl Format {
    /// The format a file name's suffix says: `.jsonl`/`.ndjson`, `.csv` or `.npy`, each
    /// optionally followed by `.gz`.
    pub fn of(name: &str) -> Option<Format> {
        let lower = name.to_ascii_lowercase();
        let (base, gzip) = match lower.strip_suffix(".gz") {
            Some(base) => (base, true),
            None => (lower.as_str(), false),
        };
        let kind = match base.rsplit_once('.')?.1 {
            "jsonl" | "ndjson" => Kind::Jsonl,
            "csv" => Kind::Csv,
            "npy" => Kind::Npy,
            _ => return None,
        };
        Some(Format { kind, gzip })
    }
}

/// One record of a batch input, decoded: the model's inputs (first dimension = its rows) and
/// the outputs it asks for (all when `None`).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub inputs: Vec<Tensor>,
    pub outputs: Option<Vec<String>>,
}

/// A record's decoding: a bad record is an error of that record only.
pub type RowResult = Result<Row, Error>;

/// Reads the records of `reader` one by one, calling `emit` with each until it returns
/// `false`. An error that makes the rest of the file unreadable (broken stream, bad gzip,
/// bad `.npy` header) ends the reading and is returned.
pub fn read(
    reader: impl Read,
    format: Format,
    key: &str,
    signature: &Signature,
    limits: &crate::predictor::RequestLimits,
    emit: &mut dyn FnMut(RowResult) -> bool,
) -> Result<(), Error> {
    let reader: Box<dyn BufRead> = if format.gzip {
        Box::new(BufReader::with_capacity(1 << 16, flate2::read::MultiGzDecoder::new(reader)))
    } else {
        Box::new(BufReader::with_capacity(1 << 16, reader))
    };
    let unreadable = |e: io::Error| unreadable(key, e);
    match format.kind {
        Kind::Jsonl => {
            jsonl::read(reader, signature, limits.max_request_bytes, emit).map_err(unreadable)
        }
        Kind::Csv => {
            let input = tabular_input(key, signature)?;
            csv::read(reader, input, limits.max_request_bytes, emit).map_err(unreadable)
        }
        Kind::Npy => npy::read(reader, key, single_input(key, signature, "a .npy file")?, emit),
    }
}

/// What [`read_line`] found.
enum Line {
    /// The reader is at its end.
    End,
    /// A line over the limit, of this many bytes at least; it was skipped to its end.
    TooLong(u64),
    /// A line, in the buffer given.
    Read,
}

/// Reads the next line of `reader` into `line` (emptied first, its `\n` kept), holding at
/// most `max` bytes of it: JSON Lines lines and CSV records are held whole while read.
fn read_line(reader: &mut impl BufRead, max: usize, line: &mut Vec<u8>) -> io::Result<Line> {
    line.clear();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    if reader.take(limit).read_until(b'\n', line)? == 0 {
        return Ok(Line::End);
    }
    if line.len() > max && line.last() != Some(&b'\n') {
        skip_line(reader)?;
        return Ok(Line::TooLong(line.len() as u64));
    }
    Ok(Line::Read)
}

/// Reads up to and including the next newline, keeping nothing.
fn skip_line(reader: &mut impl BufRead) -> io::Result<()> {
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            return Ok(());
        }
        match buffer.iter().position(|&b| b == b'\n') {
            Some(at) => {
                reader.consume(at + 1);
                return Ok(());
            }
            None => {
                let all = buffer.len();
                reader.consume(all);
            }
        }
    }
}

/// A read failure: the store's own error when the stream broke, else a bad file.
pub(crate) fn unreadable(key: &str, err: io::Error) -> Error {
    let store_error =
        err.get_ref().and_then(|inner| inner.downcast_ref::<crate::store::StoreError>()).cloned();
    match store_error {
        Some(store_error) => Error::from(store_error),
        None => Error::InvalidBatchInput {
            key: key.to_owned(),
            problem: format!("cannot read the file: {err}"),
        },
    }
}

/// The one input of a model fed from a table or array file.
fn single_input<'s>(
    key: &str,
    signature: &'s Signature,
    what: &str,
) -> Result<&'s TensorSpec, Error> {
    match signature.inputs.as_slice() {
        [input] => Ok(input),
        inputs => Err(Error::InvalidBatchInput {
            key: key.to_owned(),
            problem: format!(
                "{what} feeds models of one input; this model has {} (use JSON Lines)",
                inputs.len()
            ),
        }),
    }
}

/// The one input of a tabular model, of shape `[rows, columns]` with a fixed column count.
pub fn tabular_input<'s>(key: &str, signature: &'s Signature) -> Result<&'s TensorSpec, Error> {
    let input = single_input(key, signature, "a CSV file")?;
    match input.shape.as_slice() {
        [_, columns] if *columns > 0 => Ok(input),
        shape => Err(Error::InvalidBatchInput {
            key: key.to_owned(),
            problem: format!(
                "a CSV file feeds models whose input is [rows, columns]; input `{}` has shape \
                 {shape:?} (use JSON Lines or .npy)",
                input.name
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_come_from_the_suffix() {
        let jsonl = Format { kind: Kind::Jsonl, gzip: false };
        assert_eq!(Format::of("a/b.jsonl"), Some(jsonl));
        assert_eq!(Format::of("a/b.NDJSON"), Some(jsonl));
        assert_eq!(Format::of("b.csv.gz"), Some(Format { kind: Kind::Csv, gzip: true }));
        assert_eq!(Format::of("b.npy"), Some(Format { kind: Kind::Npy, gzip: false }));
        for name in ["b", "b.gz", "b.parquet", "b.json"] {
            assert_eq!(Format::of(name), None, "{name}");
        }
    }
}
