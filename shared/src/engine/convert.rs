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
            let result = match &tensor.data {
                $(TensorData::$variant(v) => TractTensor::from_shape::<$ty>(&tensor.shape, v),)*
                TensorData::Bytes(v) => {
                    let strings = utf8_strings(&tensor.name, v)?;
                    let array = tract_ndarray::ArrayD::from_shape_vec(tensor.shape.clone(), strings);
                    return array.map(TractTensor::from).map_err(|e| {
                        Error::internal(format!("cannot build input `{}`", tensor.name), e)
                    });
                }
            };
            result.map_err(|e| engine_error(format!("cannot build input `{}`", tensor.name), e))
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
