//! The Open Inference Protocol's binary tensor extension, as Triton defines it
//! (`binary_tensor_data`): a body is a JSON header of `Inference-Header-Content-Length`
//! bytes followed by raw tensor data. An input whose `parameters.binary_data_size` is set has
//! no `data` in the header: its elements are the next that many bytes. Outputs asked for in
//! binary (per output `parameters.binary_data`, or `parameters.binary_data_output` for the
//! whole request) come back the same way, each with its `binary_data_size`.
//!
//! Elements are little-endian and row-major, `BOOL` one byte each, and each `BYTES` element a
//! 4-byte little-endian length followed by that many bytes.

use lambda_http::http::HeaderMap;

use crate::error::Error;
use crate::tensor::{DataType, TensorData};

/// The extension's name in `GET /v2` `extensions`.
pub const EXTENSION: &str = "binary_tensor_data";

/// The header that gives the JSON part's length, in requests and in responses.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A request body split at `Inference-Header-Content-Length`: the JSON header, then the
/// binary tensor data (empty without the header).
pub fn split<'b>(headers: &HeaderMap, body: &'b [u8]) -> Result<(&'b [u8], &'b [u8]), Error> {
    let Some(value) = headers.get(HEADER_LENGTH) else { return Ok((body, &[])) };
    let length = value.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok());
    let length = length.ok_or_else(|| {
        Error::invalid_request(format!(
            "Inference-Header-Content-Length must be a byte count, not {value:?}"
        ))
    })?;
    if length > body.len() {
        return Err(Error::invalid_request(format!(
            "Inference-Header-Content-Length is {length} but the body has only {} bytes",
            body.len()
        )));
    }
    Ok(body.split_at(length))
}

/// The binary data after the JSON header, handed out input by input in request order.
#[derive(Debug)]
pub struct Chunks<'b> {
    rest: &'b [u8],
}

impl<'b> Chunks<'b> {
    pub fn new(data: &'b [u8]) -> Self {
        Self { rest: data }
    }

    /// The next `size` bytes, for `input`.
    pub fn take(&mut self, input: &str, size: usize) -> Result<&'b [u8], Error> {
        if size > self.rest.len() {
            return Err(Error::invalid_input(
                input,
                format!(
                    "binary_data_size is {size} but only {} bytes of binary data are left",
                    self.rest.len()
                ),
            ));
        }
        let (chunk, rest) = self.rest.split_at(size);
        self.rest = rest;
        Ok(chunk)
    }

    /// Refuses binary data that no input claimed.
    pub fn finish(self) -> Result<(), Error> {
        if self.rest.is_empty() {
            return Ok(());
        }
        Err(Error::invalid_request(format!(
            "{} bytes of binary data follow the inputs' binary_data_size",
            self.rest.len()
        )))
    }
}

macro_rules! binary_conversions {
    ($(($variant:ident, $ty:ty, $name:literal)),* $(,)?) => {
        /// Reads `count` elements of `datatype` from `bytes`, which must hold exactly them.
        pub fn decode(datatype: DataType, count: usize, bytes: &[u8]) -> Result<TensorData, String> {
            match datatype {
                $(DataType::$variant => {
                    const WIDTH: usize = std::mem::size_of::<$ty>();
                    let expected = count.checked_mul(WIDTH).filter(|&n| n == bytes.len());
                    if expected.is_none() {
                        return Err(format!(
                            "{} bytes of binary data are not {count} {} elements of {WIDTH} bytes",
                            bytes.len(), $name
                        ));
                    }
                    let values = bytes.chunks_exact(WIDTH).map(|chunk| {
                        let mut raw = [0u8; WIDTH];
                        raw.copy_from_slice(chunk);
                        <$ty as Element<WIDTH>>::read_le(raw)
                    });
                    values.collect::<Option<Vec<$ty>>>().map(TensorData::$variant).ok_or_else(|| {
                        "BOOL elements must be bytes 0 or 1".to_owned()
                    })
                })*
                DataType::Bytes => decode_bytes(count, bytes).map(TensorData::Bytes),
            }
        }

        /// Appends the elements to `out` in the binary form.
        pub fn encode(data: &TensorData, out: &mut Vec<u8>) {
            match data {
                $(TensorData::$variant(values) => {
                    out.reserve(values.len() * std::mem::size_of::<$ty>());
                    for value in values {
                        out.extend_from_slice(&value.write_le());
                    }
                })*
                TensorData::Bytes(values) => {
                    for value in values {
                        // Elements over 4 GiB cannot be written; no response gets near that.
                        let length = u32::try_from(value.len()).unwrap_or(u32::MAX);
                        out.extend_from_slice(&length.to_le_bytes());
                        out.extend_from_slice(value);
                    }
                }
            }
        }

        /// The bytes [`encode`] writes for `data`.
        pub fn encoded_len(data: &TensorData) -> usize {
            match data {
                $(TensorData::$variant(values) => values.len() * std::mem::size_of::<$ty>(),)*
                TensorData::Bytes(values) => values.iter().map(|v| 4 + v.len()).sum(),
            }
        }
    };
}
crate::for_each_numeric_type!(binary_conversions);

/// One fixed-width element and its `WIDTH` little-endian bytes.
trait Element<const WIDTH: usize>: Sized {
    /// `None` for bytes that are no value of the type (a `BOOL` other than 0 or 1).
    fn read_le(raw: [u8; WIDTH]) -> Option<Self>;
    fn write_le(&self) -> [u8; WIDTH];
}

macro_rules! numeric_element {
    ($($ty:ty),*) => {$(
        impl Element<{ std::mem::size_of::<$ty>() }> for $ty {
            fn read_le(raw: [u8; std::mem::size_of::<$ty>()]) -> Option<Self> {
                Some(<$ty>::from_le_bytes(raw))
            }
            fn write_le(&self) -> [u8; std::mem::size_of::<$ty>()] {
                self.to_le_bytes()
            }
        }
    )*};
}
numeric_element!(u8, u16, u32, u64, i8, i16, i32, i64, f32, f64, half::f16);

impl Element<1> for bool {
    fn read_le(raw: [u8; 1]) -> Option<Self> {
        match raw[0] {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
    fn write_le(&self) -> [u8; 1] {
        [u8::from(*self)]
    }
}

/// `count` `BYTES` elements, each a 4-byte little-endian length and its bytes, filling
/// `bytes` exactly.
fn decode_bytes(count: usize, mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut elements = Vec::with_capacity(count.min(bytes.len() / 4));
    for index in 0..count {
        let Some((length, rest)) = bytes.split_first_chunk::<4>() else {
            return Err(format!("BYTES element {index} has no 4-byte length"));
        };
        let length = u32::from_le_bytes(*length) as usize;
        if length > rest.len() {
            return Err(format!(
                "BYTES element {index} says {length} bytes but only {} are left",
                rest.len()
            ));
        }
        let (element, rest) = rest.split_at(length);
        elements.push(element.to_vec());
        bytes = rest;
    }
    if !bytes.is_empty() {
        return Err(format!("{} bytes are left after the {count} BYTES elements", bytes.len()));
    }
    Ok(elements)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_http::http::HeaderValue;

    #[test]
    fn elements_are_little_endian_and_round_trip() {
        let data = TensorData::F32(vec![1.0, -2.5, f32::NAN]);
        let mut out = Vec::new();
        encode(&data, &mut out);
        assert_eq!(out[..8], [0, 0, 0x80, 0x3f, 0, 0, 0x20, 0xc0]);
        assert_eq!(encoded_len(&data), 12);
        let back = decode(DataType::F32, 3, &out).unwrap();
        assert_eq!(format!("{back:?}"), format!("{data:?}"));
        let half = TensorData::F16(vec![half::f16::from_f32(1.0), half::f16::from_f32(-0.5)]);
        let mut out = Vec::new();
        encode(&half, &mut out);
        assert_eq!(out, [0x00, 0x3c, 0x00, 0xb8]);
        assert_eq!(decode(DataType::F16, 2, &out).unwrap(), half);
        assert_eq!(
            decode(DataType::I64, 1, &(-3i64).to_le_bytes()).unwrap(),
            TensorData::I64(vec![-3])
        );
    }

    #[test]
    fn bytes_elements_are_length_prefixed() {
        let data = TensorData::Bytes(vec![b"setosa".to_vec(), Vec::new(), vec![0xff]]);
        let mut out = Vec::new();
        encode(&data, &mut out);
        assert_eq!(out, b"\x06\0\0\0setosa\0\0\0\0\x01\0\0\0\xff");
        assert_eq!(encoded_len(&data), out.len());
        assert_eq!(decode(DataType::Bytes, 3, &out).unwrap(), data);
    }

    #[test]
    fn sizes_that_do_not_fit_are_named() {
        let cases = [
            (DataType::F32, 2, &[0u8; 7][..], "7 bytes of binary data are not 2 FP32 elements"),
            (DataType::Bool, 1, &[2u8][..], "BOOL elements must be bytes 0 or 1"),
            (DataType::Bytes, 1, &[5, 0, 0, 0, b'a'][..], "says 5 bytes but only 1 are left"),
            (DataType::Bytes, 1, &[1, 0, 0][..], "has no 4-byte length"),
            (DataType::Bytes, 1, &[0, 0, 0, 0, 9][..], "1 bytes are left after the 1 BYTES"),
            (DataType::U64, usize::MAX, &[][..], "are not"),
        ];
        for (datatype, count, bytes, expected) in cases {
            let message = decode(datatype, count, bytes).unwrap_err();
            assert!(message.contains(expected), "{datatype}: {message:?}");
        }
    }

    #[test]
    fn the_header_length_splits_the_body() {
        let mut headers = HeaderMap::new();
        assert_eq!(split(&headers, b"{}").unwrap(), (&b"{}"[..], &b""[..]));
        headers.insert(HEADER_LENGTH, HeaderValue::from_static("2"));
        assert_eq!(split(&headers, b"{}\x01\x02").unwrap(), (&b"{}"[..], &b"\x01\x02"[..]));
        headers.insert(HEADER_LENGTH, HeaderValue::from_static("9"));
        let err = split(&headers, b"{}").unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(err.to_string().contains("is 9 but the body has only 2 bytes"), "{err}");
        headers.insert(HEADER_LENGTH, HeaderValue::from_static("-1"));
        assert!(split(&headers, b"{}").unwrap_err().to_string().contains("a byte count"));
    }

    #[test]
    fn binary_data_is_claimed_exactly() {
        let mut chunks = Chunks::new(b"abcdef");
        assert_eq!(chunks.take("x", 2).unwrap(), b"ab");
        let err = chunks.take("y", 5).unwrap_err();
        assert!(err.to_string().contains("input `y`: binary_data_size is 5 but only 4"), "{err}");
        assert_eq!(chunks.take("y", 3).unwrap(), b"cde");
        assert!(chunks.finish().unwrap_err().to_string().contains("1 bytes of binary data"));
    }
}
