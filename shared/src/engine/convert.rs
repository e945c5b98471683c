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

        /// `parts` of an output (a split batch's shares' in row order, or the whole output
        /// alone) joined along `axis` as one tensor named `name`: each element is copied once.
        /// The parts' element types, and their shapes but along `axis`, must agree.
        pub(super) fn from_tract_joined(
            name: &str,
            parts: &[&TractTensor],
            axis: usize,
        ) -> Result<Tensor, Error> {
            let Some(first) = parts.first() else {
                return Err(engine_problem(format!("output `{name}` has no value")));
            };
            let datum_type = first.datum_type();
            // tract computes some integer outputs (labels among them) as symbolic dimensions.
            if datum_type == TDim::datum_type() {
                let cast: Vec<_> = parts.iter().map(|part| part.cast_to::<i64>()).collect::<Result<_, _>>()
                    .map_err(|e| engine_error("cannot read an output", e))?;
                return from_tract_joined(name, &cast.iter().map(|c| c.as_ref()).collect::<Vec<_>>(), axis);
            }
            let mut shape = first.shape().to_vec();
            if let Some(rows) = shape.get_mut(axis) {
                *rows = parts.iter().map(|part| part.shape().get(axis).copied().unwrap_or(0)).sum();
            }
            let outer = shape.get(..axis).unwrap_or_default().iter().product();
            let data = $(if datum_type == <$ty>::datum_type() {
                TensorData::$variant(joined::<$ty>(parts, outer)?)
            } else)* if datum_type == String::datum_type() {
                TensorData::Bytes(joined::<String>(parts, outer)?.into_iter().map(String::into_bytes).collect())
            } else {
                return Err(engine_problem(format!("output `{name}` has unsupported type {datum_type:?}")));
            };
            Ok(Tensor { name: name.to_owned(), shape, data })
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

/// An output as a tensor named `name`.
pub(super) fn from_tract(name: &str, value: &TractTensor) -> Result<Tensor, Error> {
    from_tract_joined(name, &[value], 0)
}

/// The elements of `parts` joined: from each of the `outer` blocks of every part in turn
/// (the part's elements cut into `outer` blocks of equal size).
fn joined<T: Datum + Clone>(parts: &[&TractTensor], outer: usize) -> Result<Vec<T>, Error> {
    let slices: Vec<&[T]> = parts.iter().map(|part| plain_slice(part)).collect::<Result<_, _>>()?;
    let mut joined = Vec::with_capacity(slices.iter().map(|slice| slice.len()).sum());
    for block in 0..outer {
        for slice in &slices {
            let size = slice.len() / outer;
            joined.extend_from_slice(&slice[block * size..(block + 1) * size]);
        }
    }
    Ok(joined)
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
    fn parts_join_along_their_axis_as_tract_stacks_them() {
        let part = |shape: &[usize], from: i64| {
            let count = shape.iter().product::<usize>() as i64;
            TractTensor::from_shape::<i64>(shape, &(from..from + count).collect::<Vec<_>>())
                .unwrap()
        };
        let cases = [
            (vec![part(&[2, 3], 0), part(&[1, 3], 100)], 0),
            (vec![part(&[2, 1, 2], 0), part(&[2, 3, 2], 100), part(&[2, 2, 2], 200)], 1),
            (vec![part(&[3, 2], 0), part(&[3, 1], 100)], 1),
            (vec![part(&[0, 2], 0), part(&[0, 3], 100)], 1),
        ];
        for (parts, axis) in cases {
            let parts: Vec<&TractTensor> = parts.iter().collect();
            let stacked = TractTensor::stack_tensors(axis, &parts).unwrap();
            let joined = from_tract_joined("y", &parts, axis).unwrap();
            assert_eq!(joined, from_tract("y", &stacked).unwrap(), "{axis}");
            assert_eq!(joined.shape, stacked.shape());
        }
    }

    #[test]
    fn strings_and_symbolic_integers_join_as_they_convert() {
        let strings = |values: &[&str]| {
            let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
            TractTensor::from(tract_ndarray::arr1(&values))
        };
        let (a, b) = (strings(&["cat", "dog"]), strings(&["émeu"]));
        let joined = from_tract_joined("label", &[&a, &b], 0).unwrap();
        let bytes = ["cat", "dog", "émeu"].map(|s| s.as_bytes().to_vec()).to_vec();
        assert_eq!(joined.data, TensorData::Bytes(bytes));
        let dims = |values: &[i64]| {
            let values: Vec<TDim> = values.iter().map(|&v| TDim::from(v)).collect();
            TractTensor::from(tract_ndarray::arr1(&values))
        };
        let joined = from_tract_joined("n", &[&dims(&[1, 2]), &dims(&[3])], 0).unwrap();
        assert_eq!((joined.shape, joined.data), (vec![3], TensorData::I64(vec![1, 2, 3])));
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
