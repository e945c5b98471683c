//! Tensors as maas sees them: a datatype named as in the Open Inference Protocol, a shape, and
//! flat row-major data. Independent of the inference engine.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Calls `$mac!(Variant, rust_type, "OIP_NAME")` once for every datatype that maas carries
/// as fixed-width numbers (all but `BYTES`), so the per-type code below is written once.
#[macro_export]
#[doc(hidden)]
macro_rules! for_each_numeric_type {
    ($mac:ident) => {
        $mac! {
            (Bool, bool, "BOOL"),
            (U8, u8, "UINT8"),
            (U16, u16, "UINT16"),
            (U32, u32, "UINT32"),
            (U64, u64, "UINT64"),
            (I8, i8, "INT8"),
            (I16, i16, "INT16"),
            (I32, i32, "INT32"),
            (I64, i64, "INT64"),
            (F16, half::f16, "FP16"),
            (F32, f32, "FP32"),
            (F64, f64, "FP64"),
        }
    };
}

macro_rules! define_types {
    ($(($variant:ident, $ty:ty, $name:literal)),* $(,)?) => {
        /// An Open Inference Protocol datatype.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum DataType {
            $($variant,)*
            /// Byte strings of any length (ONNX `string` tensors).
            Bytes,
        }

        impl DataType {
            /// The protocol's name for this datatype, such as `FP32`.
            pub fn name(self) -> &'static str {
                match self {
                    $(DataType::$variant => $name,)*
                    DataType::Bytes => "BYTES",
                }
            }

            fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(DataType::$variant),)*
                    "BYTES" => Some(DataType::Bytes),
                    _ => None,
                }
            }
        }

        /// A tensor's elements, flat and row-major.
        #[derive(Debug, Clone, PartialEq)]
        pub enum TensorData {
            $($variant(Vec<$ty>),)*
            /// One byte string per element; models see them as UTF-8 strings.
            Bytes(Vec<Vec<u8>>),
        }

        impl TensorData {
            pub fn datatype(&self) -> DataType {
                match self {
                    $(TensorData::$variant(_) => DataType::$variant,)*
                    TensorData::Bytes(_) => DataType::Bytes,
                }
            }

            pub fn len(&self) -> usize {
                match self {
                    $(TensorData::$variant(v) => v.len(),)*
                    TensorData::Bytes(v) => v.len(),
                }
            }

            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }
        }
    };
}

for_each_numeric_type!(define_types);

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name is not one of the protocol's datatypes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown datatype {0:?}")]
pub struct UnknownDataType(pub String);

impl FromStr for DataType {
    type Err = UnknownDataType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DataType::from_name(s).ok_or_else(|| UnknownDataType(s.to_owned()))
    }
}

impl Serialize for DataType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for DataType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// A named tensor with a concrete shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datatype_names_round_trip() {
        for name in [
            "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
            "FP32", "FP64", "FP16", "BYTES",
        ] {
            let datatype: DataType = name.parse().unwrap();
            assert_eq!(datatype.name(), name);
        }
        assert!("FLOAT".parse::<DataType>().is_err());
    }
}
