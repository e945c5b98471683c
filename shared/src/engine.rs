//! The inference engine: the only module that knows tract.
//!
//! Load once, optimise once, run many. At load the model's inputs get their declared types
//! and shapes, with every dynamic dimension (the batch first) made symbolic, so one optimised
//! plan serves any batch size the model allows without reloading.
//!
//! Uploads are validated here too ([`validate`]): parse, optimise, one trial inference.
//! [`to_nnef`] and [`Model::load_nnef`] exist for the load-time benchmark
//! (`scripts/bench_load.sh`), which showed that a pre-translated NNEF artefact does not make
//! cold loads faster; the registry serves ONNX files.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tract_onnx::pb;
use tract_onnx::prelude::{
    Datum, DatumType, Framework, InferenceFact, InferenceModelExt, TDim, TValue,
    Tensor as TractTensor, TypedFact, TypedModel, TypedOp, WithOnnx,
};
use tract_onnx::tract_core::plan::SimplePlan;

use crate::elapsed_ms;
use crate::error::Error;
use crate::manifest::{Loader, Signature, TensorSpec, ValidationReport};
use crate::tensor::{DataType, Tensor, TensorData};

type Plan = SimplePlan<TypedFact, Box<dyn TypedOp>>;

/// A loaded, optimised model, ready to run batches.
#[derive(Clone)]
pub struct Model {
    plan: Arc<Plan>,
    signature: Signature,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("signature", &self.signature).finish_non_exhaustive()
    }
}

fn engine_error(message: impl Into<String>, err: tract_onnx::prelude::TractError) -> Error {
    let boxed: Box<dyn std::error::Error + Send + Sync> = err.into();
    Error::Engine { message: message.into(), source: Some(Arc::from(boxed)) }
}

fn engine_problem(message: impl Into<String>) -> Error {
    Error::Engine { message: message.into(), source: None }
}

/// The NNEF framework with tract's ONNX extensions; building it registers every operator,
/// so it is built once.
fn nnef() -> &'static tract_nnef::framework::Nnef {
    static NNEF: std::sync::LazyLock<tract_nnef::framework::Nnef> =
        std::sync::LazyLock::new(|| tract_nnef::nnef().with_onnx());
    &NNEF
}

impl Model {
    /// Loads an ONNX file with the loader its validation recorded. The file is
    /// memory-mapped, not read into the heap.
    pub fn load_path(path: &Path, loader: Loader) -> Result<Self, Error> {
        let proto = tract_onnx::onnx()
            .proto_model_for_path(path)
            .map_err(|e| engine_error("cannot parse the ONNX file", e))?;
        let (typed, signature) = translate(&proto, loader)?;
        Self::optimise(typed, signature)
    }

    /// Loads the NNEF artefact written at upload: the ONNX translation is already done, so
    /// only optimisation is left. `signature` is the manifest's.
    pub fn load_nnef(path: &Path, signature: Signature) -> Result<Self, Error> {
        let typed = nnef()
            .model_for_path(path)
            .map_err(|e| engine_error("cannot read the NNEF artefact", e))?;
        Self::optimise(typed, signature)
    }

    fn optimise(typed: TypedModel, signature: Signature) -> Result<Self, Error> {
        let optimized =
            typed.into_optimized().map_err(|e| engine_error("cannot optimise the model", e))?;
        let plan =
            SimplePlan::new(optimized).map_err(|e| engine_error("cannot plan the model", e))?;
        Ok(Self { plan, signature })
    }

    /// The inputs and outputs as the ONNX file declares them.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Runs one batch. `inputs` must be in the signature's order and already checked against
    /// it (the protocol codec does that); outputs come back in the signature's order.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        let values =
            inputs.into_iter().map(|t| to_tract(t).map(TValue::from)).collect::<Result<_, _>>()?;
        let outputs = self.plan.run(values).map_err(|e| engine_error("inference failed", e))?;
        self.signature
            .outputs
            .iter()
            .zip(outputs)
            .map(|(spec, value)| from_tract(&spec.name, &value))
            .collect()
    }
}

/// Parses the graph with `loader`, gives its inputs their declared types and symbolic
/// shapes, and translates it into tract's typed, decluttered form.
fn translate(proto: &pb::ModelProto, loader: Loader) -> Result<(TypedModel, Signature), Error> {
    let folded;
    let proto = match loader {
        Loader::FoldConstantIf => {
            folded = fold_constant_ifs(proto)
                .ok_or_else(|| engine_problem("the graph has no `If` with a constant condition"))?;
            &folded
        }
        Loader::Plain | Loader::IgnoreValueInfo => proto,
    };
    let signature = signature_of(proto)?;
    let onnx = tract_onnx::onnx().with_ignore_value_info(loader != Loader::Plain);
    let mut model = onnx
        .model_for_proto_model(proto)
        .map_err(|e| engine_error("cannot translate the ONNX graph", e))?;
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
        let shape = symbolic_shape(&model, proto, index, spec);
        model.set_input_fact(index, InferenceFact::dt_shape(datum_type, shape)).map_err(|e| {
            engine_error(format!("cannot set the facts of input `{}`", spec.name), e)
        })?;
    }
    let typed = model
        .into_typed()
        .and_then(|typed| typed.into_decluttered())
        .map_err(|e| engine_error("cannot analyse the model", e))?;
    Ok((typed, signature))
}

/// A boolean scalar tensor's value.
fn scalar_bool(tensor: &pb::TensorProto) -> Option<bool> {
    const BOOL: i32 = 9;
    if tensor.data_type != BOOL || tensor.dims.iter().product::<i64>() != 1 {
        return None;
    }
    tensor.int32_data.first().map(|&v| v != 0).or_else(|| tensor.raw_data.first().map(|&b| b != 0))
}

/// The model with every top-level `If` whose condition is a constant (an initializer or a
/// `Constant` node) replaced by the nodes of the branch it always takes; `None` when there is
/// no such `If`. tract analyses both branches of an `If` and refuses branches whose shapes
/// differ even when the condition can never select one of them.
fn fold_constant_ifs(proto: &pb::ModelProto) -> Option<pb::ModelProto> {
    let mut model = proto.clone();
    let graph = model.graph.as_mut()?;
    let mut folded = false;
    loop {
        let initializers =
            graph.initializer.iter().filter_map(|t| Some((t.name.clone(), scalar_bool(t)?)));
        let constant_nodes =
            graph.node.iter().filter(|n| n.op_type == "Constant").filter_map(|n| {
                let value = n.attribute.iter().find(|a| a.name == "value")?.t.as_ref()?;
                Some((n.output.first()?.clone(), scalar_bool(value)?))
            });
        let constants: std::collections::HashMap<String, bool> =
            initializers.chain(constant_nodes).collect();
        let Some(position) = graph.node.iter().position(|n| {
            n.op_type == "If"
                && n.domain.is_empty()
                && n.input.first().is_some_and(|c| constants.contains_key(c))
        }) else {
            break;
        };
        let node = graph.node.remove(position);
        let taken = if constants[&node.input[0]] { "then_branch" } else { "else_branch" };
        let branch = node.attribute.iter().find(|a| a.name == taken)?.g.clone()?;
        // The branch's outputs become the If's outputs through Identity nodes.
        let renames = branch.output.iter().zip(&node.output).map(|(from, to)| pb::NodeProto {
            name: format!("{}.{to}", node.name),
            op_type: "Identity".to_owned(),
            input: vec![from.name.clone()],
            output: vec![to.clone()],
            ..Default::default()
        });
        let inlined: Vec<pb::NodeProto> = branch.node.into_iter().chain(renames).collect();
        graph.initializer.extend(branch.initializer);
        graph.node.splice(position..position, inlined);
        folded = true;
    }
    folded.then_some(model)
}

/// Tries each loader in turn and returns the first translation that works with the loader
/// that made it; when none works, the plain loader's error, which names the failing node.
fn translate_any(proto: &pb::ModelProto) -> Result<(TypedModel, Signature, Loader), Error> {
    let mut first_error = None;
    for loader in Loader::ALL {
        match translate(proto, loader) {
            Ok((typed, signature)) => return Ok((typed, signature, loader)),
            Err(err) => {
                tracing::debug!(?loader, error = %crate::error::chain(&err), "loader failed");
                first_error.get_or_insert(err);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| engine_problem("no loader")))
}

/// Makes tract's matrix products use `threads` threads (one pool for the whole process);
/// 1 keeps them on the calling thread. Lambda gives 1 vCPU per 1769 MB of memory, up to 6.
pub fn use_threads(threads: usize) {
    use tract_linalg::multithread::{set_default_executor, Executor};
    let executor =
        if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
    set_default_executor(executor);
}

/// Limits an upload is validated against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest tensor a declared shape may describe, with dynamic dimensions at 1.
    pub max_tensor_bytes: u64,
}

/// What validating an upload found.
#[derive(Debug)]
pub struct Validated {
    pub signature: Signature,
    /// The default-domain ONNX opset the model imports.
    pub opset: Option<i64>,
    /// `producer_name producer_version`, as the exporter wrote them.
    pub producer: Option<String>,
    pub report: ValidationReport,
    /// The loader that read the model; `predict` loads it the same way.
    pub loader: Loader,
}

/// Checks that `bytes` are an ONNX model maas can serve: it parses, references no external
/// data, declares no tensor over the limit, translates, optimises, and runs once on zeros of
/// the declared types and shapes (dynamic dimensions at 1). Any failure is
/// [`Error::InvalidModel`] saying what failed.
pub fn validate(bytes: &[u8], limits: &Limits) -> Result<Validated, Error> {
    let started = Instant::now();
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| invalid(format!("not an ONNX file: {e}")))?;
    let graph = proto.graph.as_ref().filter(|g| !g.node.is_empty() && !g.output.is_empty());
    let graph = graph.ok_or_else(|| {
        invalid("not an ONNX model: it has no graph with nodes and outputs".to_owned())
    })?;
    if let Some(tensor) =
        graph.initializer.iter().find(|t| t.data_location == Some(1) || !t.external_data.is_empty())
    {
        return Err(invalid(format!(
            "initializer `{}` references external data; embed all weights in the .onnx file",
            tensor.name
        )));
    }
    let declared = graph.input.iter().chain(&graph.output).chain(&graph.value_info);
    for value in declared {
        check_declared_size(value, limits)?;
    }
    let (typed, signature, loader) = translate_any(&proto).map_err(as_invalid)?;
    let parse_ms = elapsed_ms(started);
    let optimising = Instant::now();
    let model = Model::optimise(typed, signature).map_err(as_invalid)?;
    let optimise_ms = elapsed_ms(optimising);
    let trial = Instant::now();
    model.run(trial_inputs(model.signature())?).map_err(|e| match as_invalid(e) {
        Error::InvalidModel { problem } => invalid(format!("trial inference failed: {problem}")),
        other => other,
    })?;
    let trial_ms = elapsed_ms(trial);
    let producer = [proto.producer_name.as_str(), proto.producer_version.as_str()].join(" ");
    Ok(Validated {
        signature: model.signature,
        opset: proto
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version),
        producer: Some(producer.trim().to_owned()).filter(|p| !p.is_empty()),
        report: ValidationReport { parse_ms, optimise_ms, trial_ms },
        loader,
    })
}

fn invalid(problem: String) -> Error {
    Error::InvalidModel { problem }
}

/// Engine failures during validation are the upload's fault: they become `InvalidModel`
/// with the whole cause chain, which names the failing operator or node.
fn as_invalid(err: Error) -> Error {
    match err {
        Error::Engine { .. } => {
            invalid(crate::error::chain(&err).trim_start_matches("engine failure: ").to_owned())
        }
        other => other,
    }
}

fn check_declared_size(value: &pb::ValueInfoProto, limits: &Limits) -> Result<(), Error> {
    let Ok(spec) = tensor_spec(value) else { return Ok(()) };
    let Some(width) = datum_type_of(spec.datatype).map(|d| d.size_of() as u64) else {
        return Ok(());
    };
    let bytes = spec.shape.iter().try_fold(width, |acc, &d| acc.checked_mul(d.max(1) as u64));
    match bytes {
        Some(bytes) if bytes <= limits.max_tensor_bytes => Ok(()),
        _ => Err(invalid(format!(
            "`{}` is declared with shape {:?} of {}: over the limit of {} bytes per tensor",
            spec.name, spec.shape, spec.datatype, limits.max_tensor_bytes
        ))),
    }
}

/// Zeros of each input's declared type and shape, dynamic dimensions at 1.
fn trial_inputs(signature: &Signature) -> Result<Vec<Tensor>, Error> {
    signature
        .inputs
        .iter()
        .map(|spec| {
            let shape: Vec<usize> = spec.shape.iter().map(|&d| d.max(1) as usize).collect();
            let count = shape.iter().product();
            let data = zeros(spec.datatype, count).ok_or_else(|| {
                invalid(format!("input `{}` has unsupported datatype {}", spec.name, spec.datatype))
            })?;
            Ok(Tensor { name: spec.name.clone(), shape, data })
        })
        .collect()
}

/// The model translated and decluttered, in NNEF form (the benchmark's comparison point).
pub fn to_nnef(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| engine_error("cannot parse the ONNX file", e))?;
    let (typed, _, _) = translate_any(&proto)?;
    nnef().write_to_tar(&typed, Vec::new()).map_err(|e| engine_error("cannot write NNEF", e))
}

/// Reads the declared inputs (initializers excluded) and outputs of the graph.
fn signature_of(proto: &pb::ModelProto) -> Result<Signature, Error> {
    let graph = proto.graph.as_ref().ok_or_else(|| engine_problem("the file has no graph"))?;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let specs = |values: &[pb::ValueInfoProto]| {
        values
            .iter()
            .filter(|v| !initializers.contains(v.name.as_str()))
            .map(tensor_spec)
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Signature { inputs: specs(&graph.input)?, outputs: specs(&graph.output)? })
}

fn tensor_spec(value: &pb::ValueInfoProto) -> Result<TensorSpec, Error> {
    let Some(pb::type_proto::Value::TensorType(tensor)) =
        value.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(engine_problem(format!(
            "`{}` is not a tensor: sequences and maps are not supported (a scikit-learn \
             classifier converted with ZipMap? convert it with options={{'zipmap': False}})",
            value.name
        )));
    };
    let datatype = datatype_of_onnx(tensor.elem_type).ok_or_else(|| {
        engine_problem(format!(
            "`{}` has unsupported ONNX element type {}",
            value.name, tensor.elem_type
        ))
    })?;
    let shape = tensor
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) if n > 0 => n,
                    _ => -1,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(TensorSpec { name: value.name.clone(), datatype, shape })
}

/// The input's shape with its dynamic dimensions as symbols: the ONNX `dim_param` name where
/// there is one (so tract unifies it with the rest of the graph), `N` for an unnamed first
/// (batch) dimension, and a fresh symbol for any other unnamed one.
fn symbolic_shape(
    model: &tract_onnx::prelude::InferenceModel,
    proto: &pb::ModelProto,
    index: usize,
    spec: &TensorSpec,
) -> Vec<TDim> {
    let declared = proto
        .graph
        .as_ref()
        .and_then(|g| g.input.iter().find(|v| v.name == spec.name))
        .and_then(|v| v.r#type.as_ref())
        .and_then(|t| match &t.value {
            Some(pb::type_proto::Value::TensorType(tensor)) => tensor.shape.clone(),
            None => None,
        });
    spec.shape
        .iter()
        .enumerate()
        .map(|(axis, &dim)| {
            if dim > 0 {
                return TDim::from(dim);
            }
            let param =
                declared.as_ref().and_then(|s| s.dim.get(axis)).and_then(|d| match &d.value {
                    Some(pb::tensor_shape_proto::dimension::Value::DimParam(p))
                        if !p.is_empty() =>
                    {
                        Some(p.clone())
                    }
                    _ => None,
                });
            let name = param.unwrap_or_else(|| {
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

fn datatype_of_onnx(elem_type: i32) -> Option<DataType> {
    Some(match elem_type {
        1 => DataType::F32,
        2 => DataType::U8,
        3 => DataType::I8,
        4 => DataType::U16,
        5 => DataType::I16,
        6 => DataType::I32,
        7 => DataType::I64,
        8 => DataType::Bytes,
        9 => DataType::Bool,
        10 => DataType::F16,
        11 => DataType::F64,
        12 => DataType::U32,
        13 => DataType::U64,
        _ => return None,
    })
}

macro_rules! conversions {
    ($(($variant:ident, $ty:ty, $name:literal)),* $(,)?) => {
        fn datum_type_of(datatype: DataType) -> Option<DatumType> {
            match datatype {
                $(DataType::$variant => Some(<$ty>::datum_type()),)*
                DataType::F16 | DataType::Bytes => None,
            }
        }

        fn zeros(datatype: DataType, count: usize) -> Option<TensorData> {
            match datatype {
                $(DataType::$variant => Some(TensorData::$variant(vec![<$ty>::default(); count])),)*
                DataType::F16 | DataType::Bytes => None,
            }
        }

        fn to_tract(tensor: Tensor) -> Result<TractTensor, Error> {
            let result = match &tensor.data {
                $(TensorData::$variant(v) => TractTensor::from_shape::<$ty>(&tensor.shape, v),)*
            };
            result.map_err(|e| engine_error(format!("cannot build input `{}`", tensor.name), e))
        }

        fn from_tract(name: &str, value: &TractTensor) -> Result<Tensor, Error> {
            let datum_type = value.datum_type();
            let data = $(if datum_type == <$ty>::datum_type() {
                TensorData::$variant(value.try_as_plain_ram().and_then(|v| v.as_slice::<$ty>().map(<[$ty]>::to_vec)).map_err(|e| engine_error("cannot read an output", e))?)
            } else)* {
                return Err(engine_problem(format!("output `{name}` has unsupported type {datum_type:?}")));
            };
            Ok(Tensor { name: name.to_owned(), shape: value.shape().to_vec(), data })
        }
    };
}

crate::for_each_numeric_type!(conversions);
