//! Translating a parsed ONNX graph into tract's typed, decluttered form, under the input
//! facts maas gives it: declared types, and symbolic or concrete shapes (and values).

use std::sync::Arc;
use tract_onnx::pb;

use tract_onnx::prelude::{
    tensor0, Framework, InferenceFact, InferenceModel, InferenceModelExt, TDim, TypedModel,
};

use super::convert::datum_type_of;
use super::fold::fold_ifs;
use super::signature::{dim_params, signature_of};
use super::{engine_error, engine_problem, onnx};
use crate::error::Error;
use crate::manifest::{Loader, Signature, TensorSpec};

/// The facts a per-shape plan is built for: each input's concrete shape and, for the inputs
/// that select a branch of the graph, the value it is built for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Concrete {
    pub(super) shapes: Vec<Vec<usize>>,
    /// By input: the value of a branch-selecting scalar input (see `roles::selectors`),
    /// `None` for the others.
    pub(super) values: Vec<Option<i64>>,
}

/// Parses the graph with `loader`, gives its inputs their declared types and either symbolic
/// shapes or, when given, `concrete` facts, and translates it into tract's typed, decluttered
/// form.
pub(super) fn translate(
    proto: &pb::ModelProto,
    loader: Loader,
    concrete: Option<&Concrete>,
) -> Result<(TypedModel, Signature), Error> {
    let folded;
    let proto = match loader {
        Loader::FoldConstantIf => {
            folded = fold_ifs(proto, concrete)?;
            &folded
        }
        Loader::Plain | Loader::IgnoreValueInfo => proto,
    };
    let signature = signature_of(proto)?;
    let onnx = onnx().with_ignore_value_info(loader != Loader::Plain);
    let mut model = onnx
        .model_for_proto_model(proto)
        .map_err(|e| engine_error("cannot translate the ONNX graph", e))?;
    set_input_facts(&mut model, proto, &signature, concrete)?;
    let typed = model
        .into_typed()
        .and_then(|typed| typed.into_decluttered())
        .map_err(|e| engine_error("cannot analyse the model", e))?;
    Ok((typed, signature))
}

/// Gives the graph's inputs their declared types and either symbolic shapes or, when given,
/// `concrete` shapes and values.
pub(super) fn set_input_facts(
    model: &mut InferenceModel,
    proto: &pb::ModelProto,
    signature: &Signature,
    concrete: Option<&Concrete>,
) -> Result<(), Error> {
    if model.input_outlets().map_or(0, |o| o.len()) != signature.inputs.len() {
        return Err(engine_problem("the graph's inputs do not match its declared inputs"));
    }
    for (index, spec) in signature.inputs.iter().enumerate() {
        let datum_type = datum_type_of(spec.datatype).ok_or_else(|| {
            engine_problem(format!(
                "input `{}` has unsupported datatype {}",
                spec.name, spec.datatype
            ))
        })?;
        let cannot = |e| engine_error(format!("cannot set the facts of input `{}`", spec.name), e);
        let shape = match concrete.and_then(|c| c.shapes.get(index)) {
            Some(shape) => shape.iter().map(|&d| TDim::from(d)).collect(),
            None => symbolic_shape(model, proto, index, spec),
        };
        let mut fact = InferenceFact::dt_shape(datum_type, shape);
        if let Some(&value) = concrete.and_then(|c| c.values.get(index)).and_then(Option::as_ref) {
            let value = tensor0(value).cast_to_dt(datum_type).map_err(cannot)?.into_owned();
            fact.value = Arc::new(value).into();
        }
        model.set_input_fact(index, fact).map_err(cannot)?;
    }
    Ok(())
}

/// Tries each loader in turn and returns the first translation that works with the loader
/// that made it; when none works, the plain loader's error, which names the failing node.
pub(super) fn translate_any(
    proto: &pb::ModelProto,
) -> Result<(TypedModel, Signature, Loader), Error> {
    let mut first_error = None;
    for loader in Loader::ALL {
        match translate(proto, loader, None) {
            Ok((typed, signature)) => return Ok((typed, signature, loader)),
            Err(err) => {
                tracing::debug!(?loader, error = %crate::error::chain(&err), "loader failed");
                first_error.get_or_insert(err);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| engine_problem("no loader")))
}

/// The input's shape with its dynamic dimensions as symbols: the ONNX `dim_param` name where
/// there is one (so tract unifies it with the rest of the graph), `N` for an unnamed first
/// (batch) dimension, and a fresh symbol for any other unnamed one.
fn symbolic_shape(
    model: &InferenceModel,
    proto: &pb::ModelProto,
    index: usize,
    spec: &TensorSpec,
) -> Vec<TDim> {
    let params = dim_params(proto, &spec.name);
    spec.shape
        .iter()
        .enumerate()
        .map(|(axis, &dim)| {
            if dim > 0 {
                return TDim::from(dim);
            }
            let name = params.get(axis).cloned().flatten().unwrap_or_else(|| {
                if axis == 0 {
                    "N".to_owned()
                } else {
                    format!("in{index}_dim{axis}")
                }
            });
            TDim::from(model.sym(&name))
        })
        .collect()
}
