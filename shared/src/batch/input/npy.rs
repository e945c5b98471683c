//! `.npy` arrays (NumPy's format, versions 1 to 3): the first dimension is the rows, the rest
//! must fit the model's one input, and the dtype must be the input's datatype. Written here
//! rather than with `npyz`, which brings a Python-literal parser (pest, a second `syn`) for a
//! header of three fixed keys.

use std::io::{self, Read};

use super::{Row, RowResult};
use crate::error::Error;
use crate::protocol::binary;
use crate::signature::TensorSpec;
use crate::tensor::{DataType, Tensor};

const MAGIC: &[u8] = b"\x93NUMPY";

/// The parts of an `.npy` header that matter.
#[derive(Debug, Clone, PartialEq)]
struct Header {
    datatype: DataType,
    shape: Vec<usize>,
}

/// Calls `emit` with each row of the array, for `input`.
pub(super) fn read(
    mut reader: impl Read,
    key: &str,
    input: &TensorSpec,
    emit: &mut dyn FnMut(RowResult) -> bool,
) -> Result<(), Error> {
    let refuse = |problem: String| Error::InvalidBatchInput { key: key.to_owned(), problem };
    let header = read_header(&mut reader).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
            refuse(format!("not a .npy file: {e}"))
        }
        _ => super::unreadable(key, e),
    })?;
    if header.datatype != input.datatype {
        return Err(refuse(format!(
            "the array's dtype is {} but input `{}` is {}",
            header.datatype, input.name, input.datatype
        )));
    }
    let Some((&rows, row_shape)) = header.shape.split_first() else {
        return Err(refuse("a scalar array has no rows".to_owned()));
    };
    let mut shape = vec![1];
    shape.extend_from_slice(row_shape);
    input.check_shape(&shape).map_err(|e| refuse(e.to_string()))?;
    let count: usize = row_shape.iter().product();
    let width = element_width(header.datatype);
    let mut bytes = vec![0u8; count * width];
    for _ in 0..rows {
        reader.read_exact(&mut bytes).map_err(|e| super::unreadable(key, e))?;
        let data = binary::decode(header.datatype, count, &bytes).map_err(&refuse);
        let row = data.map(|data| Row {
            inputs: vec![Tensor { name: input.name.clone(), shape: shape.clone(), data }],
            outputs: None,
        });
        if !emit(row) {
            break;
        }
    }
    Ok(())
}

fn element_width(datatype: DataType) -> usize {
    match datatype {
        DataType::Bool | DataType::U8 | DataType::I8 => 1,
        DataType::U16 | DataType::I16 | DataType::F16 => 2,
        DataType::U32 | DataType::I32 | DataType::F32 => 4,
        DataType::U64 | DataType::I64 | DataType::F64 | DataType::Bytes => 8,
    }
}

fn invalid(problem: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, problem.into())
}

/// Reads the magic, version and header dictionary, e.g.
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (150, 4), }`.
fn read_header(reader: &mut impl Read) -> io::Result<Header> {
    let mut start = [0u8; 8];
    reader.read_exact(&mut start)?;
    if &start[..6] != MAGIC {
        return Err(invalid("no NUMPY magic"));
    }
    let length = match start[6] {
        1 => {
            let mut raw = [0u8; 2];
            reader.read_exact(&mut raw)?;
            usize::from(u16::from_le_bytes(raw))
        }
        2 | 3 => {
            let mut raw = [0u8; 4];
            reader.read_exact(&mut raw)?;
            usize::try_from(u32::from_le_bytes(raw)).map_err(|_| invalid("header too long"))?
        }
        major => return Err(invalid(format!("unknown format version {major}"))),
    };
    if length > 1 << 16 {
        return Err(invalid("header too long"));
    }
    let mut text = vec![0u8; length];
    reader.read_exact(&mut text)?;
    let text = String::from_utf8(text).map_err(|_| invalid("header is not text"))?;
    parse_header(&text).map_err(invalid)
}

/// The value that follows `'key':` in the header's dictionary.
fn field<'t>(text: &'t str, key: &str) -> Result<&'t str, String> {
    let quoted = [format!("'{key}'"), format!("\"{key}\"")];
    let at = quoted
        .iter()
        .find_map(|q| text.find(q.as_str()).map(|at| at + q.len()))
        .ok_or_else(|| format!("header has no `{key}`"))?;
    let rest = text[at..].trim_start();
    rest.strip_prefix(':')
        .map(str::trim_start)
        .ok_or_else(|| format!("header's `{key}` has no value"))
}

fn parse_header(text: &str) -> Result<Header, String> {
    let descr = field(text, "descr")?;
    let descr = descr
        .strip_prefix('\'')
        .or_else(|| descr.strip_prefix('"'))
        .and_then(|d| d.split(['\'', '"']).next())
        .ok_or("the dtype is not a simple one such as '<f4'")?;
    let datatype = match descr {
        "|b1" => DataType::Bool,
        "|u1" => DataType::U8,
        "|i1" => DataType::I8,
        "<u2" => DataType::U16,
        "<i2" => DataType::I16,
        "<f2" => DataType::F16,
        "<u4" => DataType::U32,
        "<i4" => DataType::I32,
        "<f4" => DataType::F32,
        "<u8" => DataType::U64,
        "<i8" => DataType::I64,
        "<f8" => DataType::F64,
        other => return Err(format!("unsupported dtype `{other}` (little-endian numbers only)")),
    };
    if field(text, "fortran_order")?.starts_with("True") {
        return Err("Fortran-ordered arrays are not supported; save with C order".to_owned());
    }
    let shape = field(text, "shape")?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("the shape is not a tuple")?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.trim_end_matches('L').parse::<usize>().map_err(|_| format!("bad dimension `{d}`"))
        })
        .collect::<Result<Vec<usize>, String>>()?;
    Ok(Header { datatype, shape })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&u16::try_from(header.len()).unwrap().to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn headers_parse() {
        assert_eq!(
            parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (150, 4), }").unwrap(),
            Header { datatype: DataType::F32, shape: vec![150, 4] }
        );
        assert_eq!(
            parse_header("{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }")
                .unwrap()
                .shape,
            [3]
        );
        assert!(parse_header("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }").is_err());
        assert!(parse_header("{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }").is_err());
    }

    #[test]
    fn rows_are_read_and_dtypes_checked() {
        let spec = TensorSpec { name: "x".into(), datatype: DataType::F32, shape: vec![-1, 2] };
        let data: Vec<u8> = [1f32, 2., 3., 4.].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut rows = Vec::new();
        read(npy("<f4", "(2, 2)", &data).as_slice(), "k", &spec, &mut |row| {
            rows.push(row.unwrap().inputs[0].shape.clone());
            true
        })
        .unwrap();
        assert_eq!(rows, [vec![1, 2], vec![1, 2]]);
        let wrong = read(npy("<f8", "(1, 2)", &[0; 16]).as_slice(), "k", &spec, &mut |_| true);
        assert!(wrong.unwrap_err().to_string().contains("dtype is FP64 but input `x` is FP32"));
        let short = read(npy("<f4", "(3, 2)", &data).as_slice(), "k", &spec, &mut |_| true);
        assert!(short.is_err());
        let garbage = read(&b"not numpy at all"[..], "k", &spec, &mut |_| true);
        assert!(garbage.unwrap_err().to_string().contains("not a .npy file"));
    }
}
