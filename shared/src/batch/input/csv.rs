//! CSV for one-input tabular models: one row per record, numeric columns in the order of the
//! input's second dimension, with an optional header (a first record that is not all numbers).

use std::io::{self, BufRead};

use serde_json::Value;

use super::decimal::{self, Float, Refusal};
use super::records::{self, Fields, Malformed};
use super::{Row, RowResult};
use crate::error::Error;
use crate::protocol::json;
use crate::signature::TensorSpec;
use crate::tensor::{DataType, Tensor, TensorData};

/// Calls `emit` with each record decoded for `input`, of shape `[rows, columns]`; a record
/// over `max_record` bytes is an error of its own, or ends the reading ([`records`]).
pub(super) fn read(
    reader: impl BufRead,
    input: &TensorSpec,
    max_record: usize,
    emit: &mut dyn FnMut(RowResult) -> bool,
) -> io::Result<()> {
    let mut first = true;
    records::read(reader, max_record, &mut |record| match record {
        Ok(fields) if std::mem::take(&mut first) && is_header(fields.clone()) => true,
        Ok(fields) => emit(decode_fields(fields, input)),
        Err(Malformed::TooLong(size)) => {
            emit(Err(Error::PayloadTooLarge { what: "a CSV line", size, limit: max_record as u64 }))
        }
        Err(Malformed::Csv(e)) => emit(Err(Error::invalid_request(format!("invalid CSV: {e}")))),
    })
}

/// A header is a first record with a field that is not a number.
fn is_header(mut fields: Fields<'_>) -> bool {
    fields.any(|field| number(field).is_err())
}

fn number(field: &[u8]) -> Result<Value, String> {
    if field.trim_ascii().is_empty() {
        return Err("an empty value".to_owned());
    }
    match json::from_slice::<Value>(field) {
        Ok(value @ Value::Number(_)) => Ok(value),
        Ok(Value::String(token)) if matches!(token.as_str(), "NaN" | "Infinity" | "-Infinity") => {
            Ok(Value::String(token))
        }
        _ => Err(format!("`{}` is not a number", String::from_utf8_lossy(field))),
    }
}

/// One row of `input`, `[rows, columns]`, from its columns as text: CSV records, and the
/// values of a Step Functions CSV item. FP32 and FP64 columns, the usual CSV, are parsed
/// straight into the tensor ([`decimal`]); going through a JSON value per field took most of
/// a wide row's time. Other datatypes take the protocols' JSON number path. A wrong column
/// count is the row's error before any of its values.
pub fn decode_fields<'f>(
    fields: impl IntoIterator<Item = &'f [u8]>,
    input: &TensorSpec,
) -> RowResult {
    let mut fields = fields.into_iter();
    let columns = usize::try_from(input.shape[1]).unwrap_or(0);
    let data = match input.datatype {
        DataType::F32 => TensorData::F32(floats(&mut fields, columns, input)?),
        DataType::F64 => TensorData::F64(floats(&mut fields, columns, input)?),
        _ => through_json(fields, columns, input)?,
    };
    let tensor = Tensor { name: input.name.clone(), shape: vec![1, columns], data };
    Ok(Row { inputs: vec![tensor], outputs: None })
}

fn count_error(input: &TensorSpec, count: usize, columns: usize) -> Error {
    Error::invalid_input(
        &input.name,
        format!("the row has {count} columns but the model expects {columns}"),
    )
}

fn column_error(input: &TensorSpec, index: usize, problem: String) -> Error {
    Error::invalid_input(&input.name, format!("column {}: {problem}", index + 1))
}

/// The fields as floats, in one pass: the count is checked at the end, or at the first
/// field that does not parse (whose error is the row's only when the count is right).
fn floats<'f, T: Float>(
    fields: &mut impl Iterator<Item = &'f [u8]>,
    columns: usize,
    input: &TensorSpec,
) -> Result<Vec<T>, Error> {
    let mut values = Vec::with_capacity(columns);
    while let Some(field) = fields.next() {
        match decimal::parse(field) {
            Ok(value) => values.push(value),
            Err(refusal) => {
                let count = values.len() + 1 + fields.count();
                return Err(if count == columns {
                    refusal_error(input, values.len(), field, refusal)
                } else {
                    count_error(input, count, columns)
                });
            }
        }
    }
    if values.len() == columns {
        Ok(values)
    } else {
        Err(count_error(input, values.len(), columns))
    }
}

#[cold]
fn refusal_error(input: &TensorSpec, index: usize, field: &[u8], refusal: Refusal) -> Error {
    let shown = String::from_utf8_lossy(field);
    let problem = match refusal {
        Refusal::Empty => "an empty value".to_owned(),
        Refusal::NotANumber => format!("`{shown}` is not a number"),
        Refusal::OutOfRange => format!("`{shown}` is not a valid {} value", input.datatype),
    };
    column_error(input, index, problem)
}

/// Each field as a JSON value, then converted as the protocols convert request data.
fn through_json<'f>(
    fields: impl Iterator<Item = &'f [u8]>,
    columns: usize,
    input: &TensorSpec,
) -> Result<TensorData, Error> {
    let fields: Vec<&[u8]> = fields.collect();
    if fields.len() != columns {
        return Err(count_error(input, fields.len(), columns));
    }
    let values = fields
        .into_iter()
        .enumerate()
        .map(|(i, field)| number(field).map_err(|problem| column_error(input, i, problem)))
        .collect::<Result<Vec<Value>, Error>>()?;
    let leaves: Vec<&Value> = values.iter().collect();
    json::convert(input.datatype, &leaves)
        .map_err(|problem| Error::invalid_input(&input.name, problem))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iris() -> TensorSpec {
        TensorSpec { name: "x".into(), datatype: DataType::F32, shape: vec![-1, 4] }
    }

    fn rows(text: &str) -> Vec<RowResult> {
        let mut rows = Vec::new();
        read(text.as_bytes(), &iris(), 1 << 20, &mut |row| {
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
        // A wrong count is the row's error even when a value before the end is bad too.
        let counted = super::tests::rows("1,2,3,4\n1,x,3\n1,2,3,4,x\n");
        for (row, columns) in counted[1..].iter().zip([3, 5]) {
            let message = row.as_ref().unwrap_err().to_string();
            assert!(message.contains(&format!("{columns} columns but")), "{message}");
        }
    }

    /// The direct float path accepts and refuses what the JSON path does, with the same
    /// values (FP64 correctly rounded, where the JSON path may be a unit in the last place off).
    #[test]
    fn floats_parse_as_the_json_path_does() {
        let fields = [
            "0",
            "-0",
            "5.1",
            "-3.25e-2",
            "1E5",
            "1e+3",
            "123456789.123456789",
            "3.4028235e38",
            "1e39",
            "1e-50",
            "1e400",
            "NaN",
            "Infinity",
            "-Infinity",
            "01",
            "1.",
            ".5",
            "+1",
            "inf",
            "nan",
            "-",
            "1e",
            "1e+",
            "0x10",
            "1,5",
            " 1",
            "1_0",
            "--1",
            "",
        ];
        for datatype in [DataType::F32, DataType::F64] {
            let input = TensorSpec { name: "x".into(), datatype, shape: vec![-1, 1] };
            for field in fields {
                let direct =
                    decode_fields([field.as_bytes()], &input).map(|row| row.inputs[0].data.clone());
                let json = through_json([field.as_bytes()].into_iter(), 1, &input);
                match (&direct, &json) {
                    // serde_json's float parser may be one unit in the last place off where
                    // Rust's is correctly rounded: FP64 agrees within that, FP32 exactly.
                    (Ok(TensorData::F64(a)), Ok(TensorData::F64(b))) => {
                        let close = a[0] == b[0]
                            || (a[0] - b[0]).abs() <= f64::EPSILON * a[0].abs()
                            || (a[0].is_nan() && b[0].is_nan());
                        assert!(close, "{field}: {a:?} vs {b:?}");
                    }
                    (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}"), "{field}"),
                    (Err(_), Err(_)) => {}
                    _ => panic!("{datatype:?} {field:?}: direct {direct:?}, JSON {json:?}"),
                }
            }
        }
    }

    #[test]
    fn float_errors_name_the_column_and_the_value() {
        let input = TensorSpec { name: "x".into(), datatype: DataType::F32, shape: vec![-1, 3] };
        let message = |fields: &[&str]| {
            decode_fields(fields.iter().map(|f| f.as_bytes()), &input).unwrap_err().to_string()
        };
        assert!(message(&["1", "2", "1e39"]).contains("column 3: `1e39` is not a valid FP32"));
        assert!(message(&["1", "+2", "3"]).contains("column 2: `+2` is not a number"));
        assert!(message(&["", "2", "3"]).contains("column 1: an empty value"));
    }
}
