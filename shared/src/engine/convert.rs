//! Tensors between maas's types and tract's.

use tract_onnx::prelude::{tract_ndarray, Datum, DatumType, TDim, Tensor as TractTensor};

use super::{engine_error, engine_problem};
use crate::error::Error;
use crate::tensor::{DataType, Tensor, TensorData};

macro_rules! conversions {
    ($(($variant:ident, $ty:ty, $name:literal)),* $(,)?) => {
        pub(super) fn datum_type_of(datatype: DataType) -> Option<DatumType> {
            match datatype {
                $(DataType::$variant => Some(<$ty>::datum_type()),)*
                DataType::Bytes => Some(String::datum_type()),
            }
        }

        pub(super) fn zeros(datatype: DataType, count: usize) -> Option<TensorData> {
            match datatype {
                $(DataType::$variant => Some(TensorData::$variant(vec![<$ty>::default(); count])),)*
                DataType::Bytes => Some(TensorData::Bytes(vec![Vec::new(); count])),
            }
        }

        pub(super) fn to_tract(tensor: Tensor) -> Result<TractTensor, Error> {
            to_tract_rows(&tensor, None)
        }

        /// `rows` of `tensor` (the first and how many, along its first axis; all of it when
        /// `None`) as a tract tensor: the elements are copied once, whatever is left out is
        /// never read.
        pub(super) fn to_tract_rows(
            tensor: &Tensor,
            rows: Option<(usize, usize)>,
        ) -> Result<TractTensor, Error> {
            let cannot = || format!("cannot build input `{}`", tensor.name);
            let (shape, elements) = elements_of_rows(tensor, rows)
                .ok_or_else(|| engine_problem(format!("{}: rows {rows:?} out of its shape", cannot())))?;
            let result = match &tensor.data {
                $(TensorData::$variant(v) => {
                    TractTensor::from_shape::<$ty>(&shape, &v[elements])
                })*
                TensorData::Bytes(v) => {
                    let strings = utf8_strings(&tensor.name, &v[elements])?;
                    let array = tract_ndarray::ArrayD::from_shape_vec(shape, strings);
                    return array
                        .map(TractTensor::from)
                        .map_err(|e| Error::internal(cannot(), e));
                }
            };
            result.map_err(|e| engine_error(cannot(), e))
        }

        pub(super) fn from_tract(name: &str, value: &TractTensor) -> Result<Tensor, Error> {
            // tract computes some integer outputs (labels among them) as symbolic dimensions.
            let value = if value.datum_type() == TDim::datum_type() {
                value.cast_to::<i64>().map_err(|e| engine_error("cannot read an output", e))?
            } else {
                std::borrow::Cow::Borrowed(value)
            };
            let datum_type = value.datum_type();
            let data = $(if datum_type == <$ty>::datum_type() {
                TensorData::$variant(plain_slice::<$ty>(&value)?.to_vec())
            } else)* if datum_type == String::datum_type() {
                TensorData::Bytes(plain_slice::<String>(&value)?.iter().map(|s| s.as_bytes().to_vec()).collect())
            } else {
                return Err(engine_problem(format!("output `{name}` has unsupported type {datum_type:?}")));
            };
            Ok(Tensor { name: name.to_owned(), shape: value.shape().to_vec(), data })
        }
    };
}

crate::for_each_numeric_type!(conversions);

/// The shape of `rows` of `tensor` (the first and how many, along its first axis; all of it
/// when `None`) and where their elements lie in its data; `None` when the rows lie outside it
/// or the data does not fill the shape.
fn elements_of_rows(
    tensor: &Tensor,
    rows: Option<(usize, usize)>,
) -> Option<(Vec<usize>, std::ops::Range<usize>)> {
    let count = tensor.shape.iter().product::<usize>();
    if tensor.data.len() != count {
        return None;
    }
    let Some((first, taken)) = rows else { return Some((tensor.shape.clone(), 0..count)) };
    let (&all, row_dims) = tensor.shape.split_first()?;
    let end = first.checked_add(taken).filter(|&end| end <= all)?;
    let row: usize = row_dims.iter().product();
    let shape = std::iter::once(taken).chain(row_dims.iter().copied()).collect();
    Some((shape, first * row..end * row))
}

/// An output's elements.
fn plain_slice<T: Datum>(value: &TractTensor) -> Result<&[T], Error> {
    value
        .try_as_plain_ram()
        .and_then(|v| v.as_slice::<T>())
        .map_err(|e| engine_error("cannot read an output", e))
}

/// `BYTES` elements as the strings tract's string operators take: they must be UTF-8 (400).
fn utf8_strings(input: &str, elements: &[Vec<u8>]) -> Result<Vec<String>, Error> {
    elements
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            String::from_utf8(bytes.clone()).map_err(|e| {
                Error::invalid_input(
                    input,
                    format!("element {i} is not UTF-8 ({e}); the model takes strings"),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(shape: Vec<usize>, count: usize) -> Tensor {
        let data = TensorData::I64((0..count as i64).collect());
        Tensor { name: "x".into(), shape, data }
    }

    #[test]
    fn rows_along_the_first_axis_are_converted_alone() {
        let x = tensor(vec![4, 3], 12);
        let rows = to_tract_rows(&x, Some((1, 2))).unwrap();
        assert_eq!(rows, TractTensor::from_shape::<i64>(&[2, 3], &[3, 4, 5, 6, 7, 8]).unwrap());
        assert_eq!(to_tract_rows(&x, Some((4, 0))).unwrap().shape(), [0, 3]);
        assert_eq!(to_tract_rows(&x, None).unwrap(), to_tract(x.clone()).unwrap());
    }

    #[test]
    fn rows_outside_the_tensor_or_data_short_of_its_shape_are_errors() {
        let x = tensor(vec![4, 3], 12);
        for rows in [(3, 2), (5, 0), (usize::MAX, 2)] {
            assert!(to_tract_rows(&x, Some(rows)).is_err(), "{rows:?}");
        }
        assert!(to_tract_rows(&tensor(vec![], 1), Some((0, 1))).is_err(), "a scalar has no rows");
        assert!(to_tract_rows(&tensor(vec![4, 3], 11), None).is_err());
    }
}
