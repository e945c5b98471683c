//! JSON Lines: each line an Open Inference Protocol request body (`{"inputs": [...]}`), a
//! TensorFlow Serving request (`{"instances": [...]}`), or one TensorFlow Serving instance
//! (an object of inputs by name, or a bare value or array for one-input models).

use std::io::{self, BufRead};

use serde_json::Value;

use super::{read_line, Line, Row, RowResult};
use crate::error::Error;
use crate::protocol::{json, oip, tfserving};
use crate::signature::Signature;

/// Calls `emit` with each non-blank line decoded; a line over `max_line` bytes is an error of
/// its own and is skipped.
pub(super) fn read(
    mut reader: impl BufRead,
    signature: &Signature,
    max_line: usize,
    emit: &mut dyn FnMut(RowResult) -> bool,
) -> io::Result<()> {
    let mut line = Vec::new();
    loop {
        let row = match read_line(&mut reader, max_line, &mut line)? {
            Line::End => return Ok(()),
            Line::TooLong(size) => Err(Error::PayloadTooLarge {
                what: "a JSON Lines line",
                size,
                limit: max_line as u64,
            }),
            Line::Read if line.iter().all(u8::is_ascii_whitespace) => continue,
            Line::Read => decode_line(&line, signature),
        };
        if !emit(row) {
            return Ok(());
        }
    }
}

fn decode_line(line: &[u8], signature: &Signature) -> RowResult {
    let value: Value =
        json::from_slice(line).map_err(|e| Error::invalid_request(format!("invalid JSON: {e}")))?;
    decode_value(value, signature)
}

/// One JSON Lines record (or Step Functions item) decoded against the model's signature.
pub fn decode_value(value: Value, signature: &Signature) -> RowResult {
    match value {
        Value::Object(map) if map.contains_key("inputs") && !has_input(signature, "inputs") => {
            let request: oip::InferRequest = serde_json::from_value(Value::Object(map))
                .map_err(|e| Error::invalid_request(format!("invalid request: {e}")))?;
            let outputs =
                request.outputs.as_ref().map(|o| o.iter().map(|o| o.name.clone()).collect());
            let decoded = oip::decode(request, signature)?;
            Ok(Row { inputs: decoded.inputs, outputs: outputs.or(decoded.outputs) })
        }
        Value::Object(map)
            if map.contains_key("instances") && !has_input(signature, "instances") =>
        {
            let request: tfserving::PredictRequest = serde_json::from_value(Value::Object(map))
                .map_err(|e| Error::invalid_request(format!("invalid request: {e}")))?;
            let decoded = tfserving::decode(request.into_form()?, signature)?;
            Ok(Row { inputs: decoded.inputs, outputs: None })
        }
        row @ (Value::Object(_) | Value::Array(_)) => {
            let decoded = tfserving::decode(tfserving::Form::Rows(vec![row]), signature)?;
            Ok(Row { inputs: decoded.inputs, outputs: None })
        }
        other => Err(Error::invalid_request(format!(
            "a JSON Lines record is an object or an array, not `{other}`"
        ))),
    }
}

/// Whether the model has an input of this name (which then is a row's field, not a form).
fn has_input(signature: &Signature, name: &str) -> bool {
    signature.inputs.iter().any(|input| input.name == name)
}
