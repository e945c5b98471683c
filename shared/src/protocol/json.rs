//! JSON numbers for every codec: a request's scalars read as a datatype's values (range
//! checked), nested data walked against a shape, and tensors written back. NaN and the
//! infinities travel as the tokens `NaN`, `Infinity` and `-Infinity` both ways, as Python's
//! `json` module and TensorFlow Serving read and write them, never as a silent `null`.

use std::borrow::Cow;
use std::io;

use serde::de::DeserializeOwned;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::tensor::{DataType, TensorData};

/// The non-finite tokens accepted in requests and written in responses.
const NON_FINITE: [(&str, f64); 3] =
    [("NaN", f64::NAN), ("Infinity", f64::INFINITY), ("-Infinity", f64::NEG_INFINITY)];

/// Parses a JSON body in which numbers may also be `NaN`, `Infinity` or `-Infinity`. Those
/// tokens (outside strings) are read as the strings `"NaN"`, ... which the float datatypes
/// accept; everything else is standard JSON.
pub fn from_slice<T: DeserializeOwned>(body: &[u8]) -> serde_json::Result<T> {
    serde_json::from_slice(&quote_non_finite(body))
}

/// Writes a value as JSON, with non-finite floats of [`TensorData`] as their tokens. Every
/// response goes through this: `serde_json::to_vec` would write those floats as integers.
pub fn to_vec(value: &impl Serialize) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    append(&mut out, value)?;
    Ok(out)
}

/// [`to_vec`] onto the end of `out`.
pub fn append(out: &mut Vec<u8>, value: &impl Serialize) -> serde_json::Result<()> {
    let mut serializer = serde_json::Serializer::with_formatter(out, NonFiniteTokens);
    value.serialize(&mut serializer)
}

/// Quotes the bare non-finite tokens of `body`, copying it only when it has any.
fn quote_non_finite(body: &[u8]) -> Cow<'_, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    let (mut in_string, mut escaped, mut copied) = (false, false, 0);
    let mut i = 0;
    while i < body.len() {
        let byte = body[i];
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if byte == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        let token = NON_FINITE.iter().map(|(t, _)| t).find(|t| body[i..].starts_with(t.as_bytes()));
        match token {
            Some(token) => {
                let out = out.get_or_insert_with(|| Vec::with_capacity(body.len() + 16));
                out.extend_from_slice(&body[copied..i]);
                out.push(b'"');
                out.extend_from_slice(token.as_bytes());
                out.push(b'"');
                i += token.len();
                copied = i;
            }
            None => i += 1,
        }
    }
    match out {
        None => Cow::Borrowed(body),
        Some(mut out) => {
            out.extend_from_slice(&body[copied..]);
            Cow::Owned(out)
        }
    }
}

/// A non-finite float as a quoted token in a request, or `None`.
fn non_finite(value: &Value) -> Option<f64> {
    let text = value.as_str()?;
    NON_FINITE.iter().find(|(token, _)| *token == text).map(|(_, value)| *value)
}

/// Converts one JSON scalar into a Rust value of an input's datatype.
trait FromJson: Sized {
    fn from_json(value: &Value) -> Option<Self>;
}

impl FromJson for bool {
    fn from_json(value: &Value) -> Option<Self> {
        value.as_bool()
    }
}

macro_rules! from_json_int {
    ($($ty:ty),*) => {$(
        impl FromJson for $ty {
            fn from_json(value: &Value) -> Option<Self> {
                match value.as_i64() {
                    Some(n) => <$ty>::try_from(n).ok(),
                    None => value.as_u64().and_then(|n| <$ty>::try_from(n).ok()),
                }
            }
        }
    )*};
}
from_json_int!(u8, u16, u32, u64, i8, i16, i32, i64);

impl FromJson for f32 {
    /// A finite number must fit FP32's range: 1e300 is refused, not turned into infinity.
    fn from_json(value: &Value) -> Option<Self> {
        match value.as_f64() {
            Some(n) => Some(n as f32).filter(|n| n.is_finite()),
            None => non_finite(value).map(|n| n as f32),
        }
    }
}

impl FromJson for half::f16 {
    /// A finite number must fit FP16's range (65504): 1e5 is refused, not turned into infinity.
    fn from_json(value: &Value) -> Option<Self> {
        match value.as_f64() {
            Some(n) => Some(half::f16::from_f64(n)).filter(|n| n.is_finite()),
            None => non_finite(value).map(half::f16::from_f64),
        }
    }
}

impl FromJson for f64 {
    fn from_json(value: &Value) -> Option<Self> {
        value.as_f64().or_else(|| non_finite(value))
    }
}

fn convert_all<T: FromJson>(leaves: &[&Value], datatype: DataType) -> Result<Vec<T>, String> {
    leaves
        .iter()
        .enumerate()
        .map(|(i, v)| {
            T::from_json(v)
                .ok_or_else(|| format!("element {i} ({v}) is not a valid {datatype} value"))
        })
        .collect()
}

/// Written in place of a non-finite float and turned into its token by [`NonFiniteTokens`]:
/// no tensor holds 128-bit integers, so these values cannot be anything else.
const NON_FINITE_MARKS: [i128; 3] = [i128::MIN, i128::MIN + 1, i128::MIN + 2];

fn serialize_float<S: Serializer>(value: f64, serializer: S) -> Result<S::Ok, S::Error> {
    if value.is_finite() {
        return serializer.serialize_f64(value);
    }
    let index = if value.is_nan() {
        0
    } else if value > 0.0 {
        1
    } else {
        2
    };
    serializer.serialize_i128(NON_FINITE_MARKS[index])
}

/// serde_json's compact output, with [`NON_FINITE_MARKS`] written as their tokens.
struct NonFiniteTokens;

impl serde_json::ser::Formatter for NonFiniteTokens {
    fn write_i128<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: i128) -> io::Result<()> {
        match NON_FINITE_MARKS.iter().position(|&mark| mark == value) {
            Some(index) => writer.write_all(NON_FINITE[index].0.as_bytes()),
            None => writer.write_all(value.to_string().as_bytes()),
        }
    }
}

/// How one element of each datatype is written.
trait ToJson {
    fn serialize_element<S: SerializeSeq>(&self, seq: &mut S) -> Result<(), S::Error>;
}

macro_rules! to_json_plain {
    ($($ty:ty),*) => {$(
        impl ToJson for $ty {
            fn serialize_element<S: SerializeSeq>(&self, seq: &mut S) -> Result<(), S::Error> {
                seq.serialize_element(self)
            }
        }
    )*};
}
to_json_plain!(bool, u8, u16, u32, u64, i8, i16, i32, i64);

/// A float element, finite or not.
struct Float(f64);

impl Serialize for Float {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_float(self.0, serializer)
    }
}

impl ToJson for f32 {
    fn serialize_element<S: SerializeSeq>(&self, seq: &mut S) -> Result<(), S::Error> {
        // Finite FP32 values keep their shortest FP32 form (0.1, not 0.10000000149011612).
        if self.is_finite() {
            return seq.serialize_element(self);
        }
        seq.serialize_element(&Float(f64::from(*self)))
    }
}

impl ToJson for half::f16 {
    fn serialize_element<S: SerializeSeq>(&self, seq: &mut S) -> Result<(), S::Error> {
        // As the FP32 value it widens to, which holds it exactly.
        self.to_f32().serialize_element(seq)
    }
}

impl ToJson for f64 {
    fn serialize_element<S: SerializeSeq>(&self, seq: &mut S) -> Result<(), S::Error> {
        seq.serialize_element(&Float(*self))
    }
}

macro_rules! data_conversions {
    ($(($variant:ident, $ty:ty, $name:literal)),* $(,)?) => {
        /// Converts JSON scalars into values of `datatype`; the message names the first that
        /// does not fit.
        pub fn convert(datatype: DataType, leaves: &[&Value]) -> Result<TensorData, String> {
            match datatype {
                $(DataType::$variant => convert_all::<$ty>(leaves, datatype).map(TensorData::$variant),)*
                DataType::Bytes => convert_strings(leaves).map(TensorData::Bytes),
            }
        }

        /// A flat JSON array of the elements in the range. Non-finite floats need
        /// [`to_vec`]. `BYTES` elements are strings, invalid UTF-8 replaced by U+FFFD: binary
        /// outputs carry the exact bytes.
        impl Serialize for Elements<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let short = || serde::ser::Error::custom("elements past the tensor's end");
                match self.data {
                    $(TensorData::$variant(values) => {
                        let values = values.get(self.range.clone()).ok_or_else(short)?;
                        let mut seq = serializer.serialize_seq(Some(values.len()))?;
                        for value in values {
                            value.serialize_element(&mut seq)?;
                        }
                        seq.end()
                    })*
                    TensorData::Bytes(values) => {
                        let values = values.get(self.range.clone()).ok_or_else(short)?;
                        let mut seq = serializer.serialize_seq(Some(values.len()))?;
                        for value in values {
                            seq.serialize_element(&String::from_utf8_lossy(value))?;
                        }
                        seq.end()
                    }
                }
            }
        }
    };
}
crate::for_each_numeric_type!(data_conversions);

/// Elements `range` of a tensor's flat data, written as a flat JSON array: a batch's rows
/// written without copying them out.
#[derive(Debug, Clone)]
pub struct Elements<'a> {
    pub data: &'a TensorData,
    pub range: std::ops::Range<usize>,
}

/// The whole of the data, as [`Elements`] writes it.
impl Serialize for TensorData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Elements { data: self, range: 0..self.len() }.serialize(serializer)
    }
}

/// How one element is written on its own, for [`Nested`]: floats as in [`to_vec`].
trait ScalarJson {
    fn serialize_scalar<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error>;
}

macro_rules! scalar_json_plain {
    ($($ty:ty),*) => {$(
        impl ScalarJson for $ty {
            fn serialize_scalar<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                self.serialize(serializer)
            }
        }
    )*};
}
scalar_json_plain!(bool, u8, u16, u32, u64, i8, i16, i32, i64);

impl ScalarJson for f32 {
    fn serialize_scalar<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.is_finite() {
            return self.serialize(serializer);
        }
        serialize_float(f64::from(*self), serializer)
    }
}

impl ScalarJson for half::f16 {
    fn serialize_scalar<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_f32().serialize_scalar(serializer)
    }
}

impl ScalarJson for f64 {
    fn serialize_scalar<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_float(*self, serializer)
    }
}

/// Part of a tensor written as nested JSON arrays that follow `shape` (a bare scalar when the
/// shape is `[]`), starting at element `offset` of the flat, row-major `data`: the form of
/// TensorFlow Serving's answers. Non-finite floats need [`to_vec`].
#[derive(Debug, Clone, Copy)]
pub struct Nested<'a> {
    pub data: &'a TensorData,
    pub shape: &'a [usize],
    pub offset: usize,
    /// BYTES elements as `{"b64": "..."}` rather than (UTF-8) strings.
    pub b64: bool,
}

impl<'a> Nested<'a> {
    /// The whole of a tensor's data, nested by its shape.
    pub fn new(data: &'a TensorData, shape: &'a [usize], b64: bool) -> Self {
        Nested { data, shape, offset: 0, b64 }
    }

    /// Row `index` of dimension 0: the sub-tensor of shape `shape[1..]` (of a scalar, the
    /// element `index` places further).
    pub fn row(&self, index: usize) -> Nested<'a> {
        let inner = self.shape.get(1..).unwrap_or_default();
        let stride = inner.iter().product::<usize>();
        Nested { shape: inner, offset: self.offset + index * stride, ..*self }
    }
}

macro_rules! nested_scalar {
    ($(($variant:ident, $ty:ty, $name:literal)),* $(,)?) => {
        /// Element `index` of `data`, on its own.
        fn serialize_scalar_at<S: Serializer>(
            nested: &Nested<'_>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            let short = || serde::ser::Error::custom("tensor data shorter than its shape");
            match nested.data {
                $(TensorData::$variant(values) => match values.get(nested.offset) {
                    Some(value) => value.serialize_scalar(serializer),
                    None => Err(short()),
                },)*
                TensorData::Bytes(values) => {
                    use base64::Engine as _;
                    let value = values.get(nested.offset).ok_or_else(short)?;
                    if nested.b64 {
                        let text = base64::engine::general_purpose::STANDARD.encode(value);
                        let mut map = serializer.serialize_map(Some(1))?;
                        map.serialize_entry("b64", &text)?;
                        map.end()
                    } else {
                        serializer.serialize_str(&String::from_utf8_lossy(value))
                    }
                }
            }
        }
    };
}
crate::for_each_numeric_type!(nested_scalar);

impl Serialize for Nested<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some(&len) = self.shape.first() else {
            return serialize_scalar_at(self, serializer);
        };
        let mut seq = serializer.serialize_seq(Some(len))?;
        for index in 0..len {
            seq.serialize_element(&self.row(index))?;
        }
        seq.end()
    }
}

/// `BYTES` elements in JSON are strings, taken as their UTF-8 bytes, or `{"b64": "..."}`
/// objects (TensorFlow Serving's form), taken as the bytes their base64 stands for.
fn convert_strings(leaves: &[&Value]) -> Result<Vec<Vec<u8>>, String> {
    use base64::Engine as _;
    leaves
        .iter()
        .enumerate()
        .map(|(i, v)| match (v, b64_text(v)) {
            (Value::String(text), _) => Ok(text.as_bytes().to_vec()),
            (_, Some(text)) => base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| format!("element {i}: `b64` is not valid base64 ({e})")),
            _ => Err(format!(
                "element {i} ({v}) is not a string or {{\"b64\": ...}}, as BYTES elements are in JSON"
            )),
        })
        .collect()
}

/// The text of a `{"b64": "..."}` value, TensorFlow Serving's form of a BYTES element.
pub fn b64_text(value: &Value) -> Option<&str> {
    match value {
        Value::Object(map) if map.len() == 1 => map.get("b64").and_then(Value::as_str),
        _ => None,
    }
}

/// Collects the scalars of flat or nested `data`. Nested data must follow the shape exactly;
/// flat data is counted by the caller.
pub fn flatten<'a>(
    data: &'a [Value],
    shape: &[usize],
    out: &mut Vec<&'a Value>,
) -> Result<(), String> {
    let nested = data.first().is_some_and(Value::is_array);
    if !nested {
        let composite = |v: &Value| v.is_array() || (v.is_object() && b64_text(v).is_none());
        if let Some(position) = data.iter().position(composite) {
            return Err(format!("data mixes nested arrays and scalars (element {position})"));
        }
        out.extend(data);
        return Ok(());
    }
    fn walk<'a>(
        value: &'a Value,
        shape: &[usize],
        depth: usize,
        out: &mut Vec<&'a Value>,
    ) -> Result<(), String> {
        match (value, shape.get(depth)) {
            (Value::Array(items), Some(&len)) => {
                if items.len() != len {
                    return Err(format!(
                        "nested data has {} elements at depth {depth} where the shape says {len}",
                        items.len()
                    ));
                }
                items.iter().try_for_each(|item| walk(item, shape, depth + 1, out))
            }
            (Value::Array(_), None) => {
                Err(format!("nested data is deeper than the shape's {} dimensions", shape.len()))
            }
            (scalar, None) => {
                out.push(scalar);
                Ok(())
            }
            (_, Some(_)) => {
                Err(format!("nested data is shallower than the shape's {} dimensions", shape.len()))
            }
        }
    }
    match shape.first() {
        Some(&len) if len == data.len() => {
            data.iter().try_for_each(|item| walk(item, shape, 1, out))
        }
        Some(&len) => Err(format!(
            "nested data has {} elements at depth 0 where the shape says {len}",
            data.len()
        )),
        None => Err("nested data is deeper than the shape's 0 dimensions".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integers_are_range_checked_per_datatype() {
        let value = json!(300);
        assert_eq!(
            convert(DataType::U8, &[&value]),
            Err("element 0 (300) is not a valid UINT8 value".into())
        );
        assert_eq!(convert(DataType::I16, &[&value]), Ok(TensorData::I16(vec![300])));
        let float = json!(1.5);
        assert!(convert(DataType::I64, &[&float]).is_err());
        let big = json!(1e300);
        assert!(convert(DataType::F32, &[&big]).is_err());
        assert_eq!(convert(DataType::F64, &[&big]), Ok(TensorData::F64(vec![1e300])));
        let truth = json!(true);
        assert_eq!(convert(DataType::Bool, &[&truth]), Ok(TensorData::Bool(vec![true])));
    }

    #[test]
    fn fp16_is_range_checked_and_bytes_are_strings_both_ways() {
        let (half, huge, text) = (json!(0.5), json!(1e5), json!("setosa"));
        assert_eq!(
            convert(DataType::F16, &[&half]),
            Ok(TensorData::F16(vec![half::f16::from_f32(0.5)]))
        );
        assert!(convert(DataType::F16, &[&huge]).is_err(), "65504 is FP16's largest");
        assert_eq!(
            convert(DataType::Bytes, &[&text]),
            Ok(TensorData::Bytes(vec![b"setosa".to_vec()]))
        );
        assert_eq!(
            convert(DataType::Bytes, &[&half]),
            Err("element 0 (0.5) is not a string or {\"b64\": ...}, as BYTES elements are in JSON"
                .into())
        );
        let written = to_vec(&TensorData::F16(vec![half::f16::from_f32(0.1)])).unwrap();
        assert_eq!(written, b"[0.099975586]");
        let written = to_vec(&TensorData::Bytes(vec![b"a\"".to_vec(), vec![0xff]])).unwrap();
        assert_eq!(std::str::from_utf8(&written).unwrap(), "[\"a\\\"\",\"\u{fffd}\"]");
    }

    #[test]
    fn non_finite_tokens_are_read_outside_strings_only() {
        let body = br#"{"a": [NaN, -Infinity, Infinity, 1.5], "s": "NaN \" Infinity"}"#;
        let value: Value = from_slice(body).unwrap();
        let leaves: Vec<&Value> = value["a"].as_array().unwrap().iter().collect();
        let TensorData::F64(floats) = convert(DataType::F64, &leaves).unwrap() else {
            panic!("FP64 data expected")
        };
        assert!(floats[0].is_nan());
        assert_eq!(floats[1..], [f64::NEG_INFINITY, f64::INFINITY, 1.5]);
        assert_eq!(value["s"], "NaN \" Infinity");
        assert!(convert(DataType::I32, &leaves[..1]).is_err(), "NaN is no integer");
        assert!(from_slice::<Value>(b"[NaNa]").is_err());
    }

    #[test]
    fn nested_data_follows_the_shape_with_tokens_for_non_finite_floats() {
        let data = TensorData::F32(vec![1.0, f32::NAN, 2.5, f32::NEG_INFINITY, 0.1, 3.0]);
        let text = to_vec(&Nested::new(&data, &[2, 3], false)).unwrap();
        assert_eq!(std::str::from_utf8(&text).unwrap(), "[[1.0,NaN,2.5],[-Infinity,0.1,3.0]]");
        let rows = Nested::new(&data, &[3, 2], false);
        assert_eq!(to_vec(&rows.row(2)).unwrap(), b"[0.1,3.0]");
        let labels = TensorData::I64(vec![7, 8]);
        assert_eq!(to_vec(&Nested::new(&labels, &[2], false).row(1)).unwrap(), b"8");
        assert_eq!(to_vec(&Nested::new(&labels, &[2, 0], false)).unwrap(), b"[[],[]]");
    }

    #[test]
    fn non_finite_floats_are_written_as_tokens_and_read_back() {
        #[derive(Serialize)]
        struct Output {
            data: TensorData,
        }
        let data = TensorData::F32(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.1]);
        let text = to_vec(&Output { data }).unwrap();
        assert_eq!(std::str::from_utf8(&text).unwrap(), r#"{"data":[NaN,Infinity,-Infinity,0.1]}"#);
        let back: Value = from_slice(&text).unwrap();
        let leaves: Vec<&Value> = back["data"].as_array().unwrap().iter().collect();
        let TensorData::F32(floats) = convert(DataType::F32, &leaves).unwrap() else {
            panic!("FP32 data expected")
        };
        assert!(floats[0].is_nan());
        assert_eq!(floats[1..], [f32::INFINITY, f32::NEG_INFINITY, 0.1]);
    }
}
