//! Shared by the zoo examples (`zoo_bench`, `zoo_profile`): a case of the zoo's
//! `cases.json` (Open Inference Protocol tensors) in maas's form.

use maas::tensor::{DataType, Tensor, TensorData};
use serde_json::Value;

/// One case's inputs in maas's form.
pub fn inputs_of(case: &Value) -> Vec<Tensor> {
    let tensors = case["inputs"].as_array().expect("inputs");
    tensors
        .iter()
        .map(|t| {
            let shape: Vec<usize> = serde_json::from_value(t["shape"].clone()).expect("shape");
            let numbers = t["data"].as_array().expect("data");
            let datatype: DataType =
                t["datatype"].as_str().expect("datatype").parse().expect("type");
            let data = match datatype {
                DataType::F32 => {
                    TensorData::F32(numbers.iter().map(|v| v.as_f64().unwrap() as f32).collect())
                }
                DataType::I32 => {
                    TensorData::I32(numbers.iter().map(|v| v.as_i64().unwrap() as i32).collect())
                }
                DataType::I64 => {
                    TensorData::I64(numbers.iter().map(|v| v.as_i64().unwrap()).collect())
                }
                other => panic!("no inputs of type {other}"),
            };
            Tensor { name: t["name"].as_str().unwrap().to_owned(), shape, data }
        })
        .collect()
}
