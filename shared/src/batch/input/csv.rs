//! CSV for one-input tabular models: one row per record, numeric columns in the order of the
//! input's second dimension, with an optional header (a first record that is not all numbers).

use std::io::{self, Read};

use serde_json::Value;

use super::{Row, RowResult};
use crate::error::Error;
use crate::protocol::json;
use crate::signature::TensorSpec;
use crate::tensor::Tensor;

/// Calls `emit` with each record decoded for `input`, of shape `[rows, columns]`.
pub(super) fn read(
    reader: impl Read,
    input: &TensorSpec,
    emit: &mut dyn FnMut(RowResult) -> bool,
) -> io::Result<()> {
    let mut records = ::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(::csv::Trim::All)
        .from_reader(reader);
    let mut record = ::csv::StringRecord::new();
    let mut first = true;
    loop {
        let more = match records.read_record(&mut record) {
            Ok(more) => more,
            Err(e) if e.is_io_error() => return Err(io::Error::from(e)),
            Err(e) => {
                if !emit(Err(Error::invalid_request(format!("invalid CSV: {e}")))) {
                    return Ok(());
                }
                continue;
            }
        };
        if !more {
            return Ok(());
        }
        if std::mem::take(&mut first) && is_header(&record) {
            continue;
        }
        let fields: Vec<&str> = record.iter().collect();
        if !emit(decode_fields(&fields, input)) {
            return Ok(());
        }
    }
}

/// A header is a first record with a field that is not a number.
fn is_header(record: &::csv::StringRecord) -> bool {
    record.iter().any(|field| number(field).is_err())
}

fn number(field: &str) -> Result<Value, String> {
    if field.is_empty() {
        return Err("an empty value".to_owned());
    }
    match json::from_slice::<Value>(field.as_bytes()) {
        Ok(value @ Value::Number(_)) => Ok(value),
        Ok(Value::String(token)) if matches!(token.as_str(), "NaN" | "Infinity" | "-Infinity") => {
            Ok(Value::String(token))
        }
        _ => Err(format!("`{field}` is not a number")),
    }
}

/// One row of `input`, `[rows, columns]`, from its columns as text: CSV records, and the
/// values of a Step Functions CSV item.
pub fn decode_fields(fields: &[&str], input: &TensorSpec) -> RowResult {
    let columns = usize::try_from(input.shape[1]).unwrap_or(0);
    if fields.len() != columns {
        return Err(Error::invalid_input(
            &input.name,
            format!("the row has {} columns but the model expects {columns}", fields.len()),
        ));
    }
    let values = fields
        .iter()
        .enumerate()
        .map(|(i, field)| {
            number(field).map_err(|problem| {
                Error::invalid_input(&input.name, format!("column {}: {problem}", i + 1))
            })
        })
        .collect::<Result<Vec<Value>, Error>>()?;
    let leaves: Vec<&Value> = values.iter().collect();
    let data = json::convert(input.datatype, &leaves)
        .map_err(|problem| Error::invalid_input(&input.name, problem))?;
    let tensor = Tensor { name: input.name.clone(), shape: vec![1, columns], data };
    Ok(Row { inputs: vec![tensor], outputs: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{DataType, TensorData};

    fn iris() -> TensorSpec {
        TensorSpec { name: "x".into(), datatype: DataType::F32, shape: vec![-1, 4] }
    }

    fn rows(text: &str) -> Vec<RowResult> {
        let mut rows = Vec::new();
        read(text.as_bytes(), &iris(), &mut |row| {
            rows.push(row);
            true
        })
        .unwrap();
        rows
    }

    #[test]
    fn a_header_is_skipped_and_rows_decode() {
        for text in ["a,b,c,d\n5.1,3.5,1.4,0.2\n6,3,5,2\n", "5.1, 3.5, 1.4, 0.2\n6,3,5,2"] {
            let rows = rows(text);
            assert_eq!(rows.len(), 2, "{text:?}");
            let first = &rows[0].as_ref().unwrap().inputs[0];
            assert_eq!(first.shape, [1, 4]);
            assert_eq!(first.data, TensorData::F32(vec![5.1, 3.5, 1.4, 0.2]));
        }
    }

    #[test]
    fn bad_rows_are_errors_of_their_own() {
        let rows = rows("1,2,3,4\n1,2,3\n1,x,3,4\n1,,3,4\n1,2,3,4\n");
        assert_eq!(rows.len(), 5);
        assert!(rows[0].is_ok() && rows[4].is_ok());
        let message = |i: usize| rows[i].as_ref().unwrap_err().to_string();
        assert!(message(1).contains("3 columns but the model expects 4"), "{}", message(1));
        assert!(message(2).contains("column 2: `x` is not a number"), "{}", message(2));
        assert!(message(3).contains("column 2: an empty value"), "{}", message(3));
    }
}
