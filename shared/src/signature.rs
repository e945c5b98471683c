//! What a model takes and gives ([`Signature`], [`TensorSpec`]) and the checks every protocol
//! codec and batch-predict apply to a request before it reaches the engine, with one set of
//! error messages.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::tensor::{DataType, Tensor};

/// The tensors a model takes and gives, in the model's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// One input or output of a model. A dynamic dimension is `-1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

/// What a codec decodes a request into: named input tensors in any order, and the outputs
/// asked for by name (all of them when `None`).
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceRequest {
    pub inputs: Vec<Tensor>,
    pub outputs: Option<Vec<String>>,
}

/// A request that fits its model: inputs in the model's order, the outputs to return in the
/// order asked.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedRequest {
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<String>,
}

impl TensorSpec {
    /// Whether a concrete shape fits this spec: same rank, and equal in every fixed dimension.
    pub fn accepts_shape(&self, shape: &[usize]) -> bool {
        shape.len() == self.shape.len()
            && self.shape.iter().zip(shape).all(|(&want, &got)| want < 0 || want as usize == got)
    }

    /// The datatype a request states for this input, checked against the model's. Codecs
    /// that read a stated datatype call this before decoding data.
    pub fn check_datatype(&self, datatype: DataType) -> Result<(), Error> {
        if datatype != self.datatype {
            return Err(Error::invalid_input(
                &self.name,
                format!("datatype is {datatype} but the model expects {}", self.datatype),
            ));
        }
        Ok(())
    }

    /// The shape a request states for this input, checked against the model's.
    pub fn check_shape(&self, shape: &[usize]) -> Result<(), Error> {
        if self.accepts_shape(shape) {
            return Ok(());
        }
        Err(Error::invalid_input(
            &self.name,
            format!(
                "shape {shape:?} does not match the model's shape {:?} (-1 is any size)",
                self.shape
            ),
        ))
    }

    /// A decoded tensor checked against this spec: datatype, shape, and element count.
    fn check(&self, tensor: &Tensor) -> Result<(), Error> {
        self.check_datatype(tensor.datatype())?;
        self.check_shape(&tensor.shape)?;
        let count = tensor.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if count != Some(tensor.data.len()) {
            return Err(Error::invalid_input(
                &self.name,
                format!(
                    "shape {:?} needs {} elements but data has {}",
                    tensor.shape,
                    count.map_or_else(|| "too many".to_owned(), |c| c.to_string()),
                    tensor.data.len()
                ),
            ));
        }
        Ok(())
    }
}

impl Signature {
    /// The input named `name`, or a 400 listing the model's inputs.
    pub fn input(&self, name: &str) -> Result<&TensorSpec, Error> {
        self.inputs.iter().find(|spec| spec.name == name).ok_or_else(|| {
            Error::invalid_input(
                name,
                format!("the model has no such input; its inputs are {}", names(&self.inputs)),
            )
        })
    }

    /// Checks a decoded request against the model: every input given once and known, each
    /// of the model's datatype and shape with its elements, inputs with a dynamic first
    /// dimension agreeing on the batch size, and requested outputs existing.
    pub fn check(&self, request: InferenceRequest) -> Result<CheckedRequest, Error> {
        let mut seen = HashSet::new();
        for tensor in &request.inputs {
            if !seen.insert(tensor.name.as_str()) {
                return Err(Error::invalid_input(&tensor.name, "given more than once"));
            }
            self.input(&tensor.name)?.check(tensor)?;
        }
        let mut by_name: HashMap<String, Tensor> =
            request.inputs.into_iter().map(|tensor| (tensor.name.clone(), tensor)).collect();
        let inputs = self
            .inputs
            .iter()
            .map(|spec| {
                by_name.remove(&spec.name).ok_or_else(|| {
                    Error::invalid_input(&spec.name, "missing: the model requires this input")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.check_batch_sizes_agree(&inputs)?;
        let outputs = match request.outputs {
            None => self.outputs.iter().map(|spec| spec.name.clone()).collect(),
            Some(requested) => {
                let mut seen = HashSet::new();
                requested
                    .into_iter()
                    .map(|name| self.check_output(name, &mut seen))
                    .collect::<Result<_, _>>()?
            }
        };
        Ok(CheckedRequest { inputs, outputs })
    }

    fn check_output(&self, name: String, seen: &mut HashSet<String>) -> Result<String, Error> {
        if !seen.insert(name.clone()) {
            return Err(Error::invalid_request(format!(
                "output `{name}` is requested more than once"
            )));
        }
        if self.outputs.iter().any(|spec| spec.name == name) {
            return Ok(name);
        }
        Err(Error::invalid_request(format!(
            "requested output `{name}` does not exist; the model's outputs are {}",
            names(&self.outputs)
        )))
    }

    /// Inputs whose first dimension is dynamic form the batch: they must agree on its size.
    fn check_batch_sizes_agree(&self, inputs: &[Tensor]) -> Result<(), Error> {
        let mut batch: Option<(&str, usize)> = None;
        for (tensor, spec) in inputs.iter().zip(&self.inputs) {
            if spec.shape.first() != Some(&-1) {
                continue;
            }
            match batch {
                None => batch = Some((&tensor.name, tensor.shape[0])),
                Some((first, size)) if size != tensor.shape[0] => {
                    return Err(Error::invalid_input(
                        &tensor.name,
                        format!(
                            "batch size {} differs from input `{first}`'s {size}",
                            tensor.shape[0]
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// The names of `specs`, quoted, for error messages.
pub fn names(specs: &[TensorSpec]) -> String {
    specs.iter().map(|spec| format!("`{}`", spec.name)).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::TensorData;

    fn spec(name: &str, shape: &[i64]) -> TensorSpec {
        TensorSpec { name: name.into(), datatype: DataType::F32, shape: shape.to_vec() }
    }

    fn signature() -> Signature {
        Signature {
            inputs: vec![spec("a", &[-1, 2]), spec("b", &[-1])],
            outputs: vec![spec("y", &[-1]), spec("z", &[-1])],
        }
    }

    fn tensor(name: &str, shape: &[usize]) -> Tensor {
        let count = shape.iter().product();
        Tensor { name: name.into(), shape: shape.to_vec(), data: TensorData::F32(vec![0.0; count]) }
    }

    fn refusal(inputs: Vec<Tensor>, outputs: Option<Vec<String>>) -> String {
        let err = signature().check(InferenceRequest { inputs, outputs }).unwrap_err();
        assert_eq!(err.status(), 400, "{err}");
        err.to_string()
    }

    #[test]
    fn dynamic_dimensions_accept_any_size_and_fixed_ones_only_theirs() {
        let spec = spec("x", &[-1, 4]);
        assert!(spec.accepts_shape(&[1, 4]));
        assert!(spec.accepts_shape(&[64, 4]));
        assert!(!spec.accepts_shape(&[1, 3]));
        assert!(!spec.accepts_shape(&[4]));
        assert!(!spec.accepts_shape(&[1, 4, 1]));
    }

    #[test]
    fn inputs_come_back_in_the_models_order_with_every_output_by_default() {
        let request = InferenceRequest {
            inputs: vec![tensor("b", &[3]), tensor("a", &[3, 2])],
            outputs: None,
        };
        let checked = signature().check(request).unwrap();
        let names: Vec<_> = checked.inputs.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(checked.outputs, ["y", "z"]);
    }

    #[test]
    fn each_mismatch_with_the_signature_is_named() {
        let wrong_type =
            Tensor { name: "b".into(), shape: vec![1], data: TensorData::F64(vec![1.0]) };
        let short = Tensor { name: "b".into(), shape: vec![2], data: TensorData::F32(vec![1.0]) };
        let cases = [
            (vec![tensor("a", &[1, 2])], None, "input `b`: missing"),
            (vec![tensor("a", &[1, 2]), tensor("a", &[1, 2])], None, "given more than once"),
            (vec![tensor("c", &[1])], None, "no such input; its inputs are `a`, `b`"),
            (vec![tensor("a", &[1, 3])], None, "does not match the model's shape [-1, 2]"),
            (vec![tensor("a", &[1, 2]), wrong_type], None, "is FP64 but the model expects FP32"),
            (vec![tensor("a", &[2, 2]), short], None, "needs 2 elements but data has 1"),
            (vec![tensor("a", &[2, 2]), tensor("b", &[3])], None, "batch size 3 differs"),
            (
                vec![tensor("a", &[1, 2]), tensor("b", &[1])],
                Some(vec!["w".into()]),
                "requested output `w` does not exist; the model's outputs are `y`, `z`",
            ),
            (
                vec![tensor("a", &[1, 2]), tensor("b", &[1])],
                Some(vec!["y".into(), "y".into()]),
                "output `y` is requested more than once",
            ),
        ];
        for (inputs, outputs, expected) in cases {
            let message = refusal(inputs, outputs);
            assert!(message.contains(expected), "got {message:?}, expected {expected:?}");
        }
    }
}
