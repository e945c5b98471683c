//! Validating an upload: parse, refuse what cannot be served safely, translate, optimise and
//! run once, saying what failed.

use std::sync::Arc;
use std::time::Instant;

use tract_onnx::pb;
use tract_onnx::prelude::Framework;

use super::convert::{datum_type_of, zeros};
use super::signature::{signature_of, tensor_spec};
use super::translate::translate_any;
use super::{budget::contained, roles, Model, Resources, Settings, Unplanned};
use crate::elapsed_ms;
use crate::error::Error;
use crate::manifest::{Loader, Planning, Signature, ValidationReport};
use crate::tensor::Tensor;

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
    /// Whether one symbolic plan serves every shape, or plans are made per shape.
    pub plans: Planning,
}

/// Checks that `bytes` are an ONNX model maas can serve: it parses, references no external
/// data, declares no tensor over the limit, translates, optimises, and runs once on zeros of
/// the declared types and shapes (dynamic dimensions at 1). When no loader gives a symbolic
/// plan, a per-shape plan is tried (`TRIAL_DIMS`). Any failure is [`Error::InvalidModel`]
/// saying what failed.
pub fn validate(bytes: &[u8], settings: &Settings) -> Result<Validated, Error> {
    // Trials time plans of given shapes: each batch waits for its own plan rather than run on
    // another bucket's while it is built.
    let resources =
        Resources { unplanned: Unplanned::Build, ..Resources::new(settings, bytes.len() as u64) };
    contained(resources.cap, "validating the model", || {
        validate_within(bytes, settings, &resources)
    })
    .map_err(as_invalid)
}

fn validate_within(
    bytes: &[u8],
    settings: &Settings,
    resources: &Resources,
) -> Result<Validated, Error> {
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
    check_declared(&proto, settings)?;
    check_string_ops(&proto)?;
    let (model, loader, report) = match translate_any(&proto) {
        Ok((typed, signature, loader)) => {
            let parse_ms = elapsed_ms(started);
            let optimising = Instant::now();
            let model = Model::optimise(typed, signature, resources).map_err(as_invalid)?;
            let optimise_ms = elapsed_ms(optimising);
            let trial = Instant::now();
            model.run(trial_inputs(model.signature(), 1, 1, None)?).map_err(trial_failed)?;
            let report = ValidationReport { parse_ms, optimise_ms, trial_ms: elapsed_ms(trial) };
            match faster_per_shape(&proto, &model, resources) {
                Some((per_shape, loader)) => (per_shape, loader, report),
                None => (model, loader, report),
            }
        }
        Err(symbolic) => {
            let parse_ms = elapsed_ms(started);
            let Some((model, loader, inputs, optimise_ms)) = per_shape_trial(&proto, resources)
            else {
                return Err(as_invalid(symbolic));
            };
            let trial = Instant::now();
            model.run(inputs).map_err(trial_failed)?;
            (model, loader, ValidationReport { parse_ms, optimise_ms, trial_ms: elapsed_ms(trial) })
        }
    };
    let producer = [proto.producer_name.as_str(), proto.producer_version.as_str()].join(" ");
    Ok(Validated {
        opset: proto
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version),
        producer: Some(producer.trim().to_owned()).filter(|p| !p.is_empty()),
        plans: model.planning(),
        signature: Arc::unwrap_or_clone(model.signature),
        report,
        loader,
    })
}

/// Sizes tried for the dynamic dimensions other than the batch when a per-shape model is
/// validated: models that compute shapes often need a realistic size (an audio model may
/// squeeze `(samples + 320) / 512` to one at 16 kHz, `(samples + 160) / 256` at 8 kHz, which
/// is what Silero's `sr` input selects when the trial gives it 0).
const TRIAL_DIMS: [usize; 4] = [1, 64, 256, 512];

/// For a model no loader can plan symbolically: the first loader and trial size with which
/// a per-shape plan builds and runs, the trial inputs, and how long building and running
/// that plan took (ms).
fn per_shape_trial(
    proto: &pb::ModelProto,
    resources: &Resources,
) -> Option<(Model, Loader, Vec<Tensor>, f64)> {
    let signature = signature_of(proto).ok()?;
    let batch_axes = roles::batch_axes(proto, &signature);
    for loader in Loader::ALL {
        for dims in TRIAL_DIMS {
            let started = Instant::now();
            let attempt = Model::per_shape(proto.clone(), loader, resources).and_then(|model| {
                let inputs = trial_inputs(model.signature(), 1, dims, batch_axes.as_deref())?;
                model.run(inputs.clone())?;
                Ok((model, inputs))
            });
            match attempt {
                Ok((model, inputs)) => return Some((model, loader, inputs, elapsed_ms(started))),
                Err(err) => {
                    let error = crate::error::chain(&err);
                    tracing::debug!(?loader, dims, %error, "per-shape plan failed");
                }
            }
        }
    }
    None
}

/// How much faster per-shape plans must run one row than the symbolic plan to be chosen.
const PER_SHAPE_GAIN: f64 = 1.2;
/// How much slower than the symbolic plan they may run a batch of 8 (measurement noise).
const PER_SHAPE_BATCH_SLACK: f64 = 1.1;

/// For a model with convolutions that plans symbolically: per-shape plans instead, with the
/// loader that builds them, when they run one row faster by [`PER_SHAPE_GAIN`] and a batch
/// of 8 no slower (within [`PER_SHAPE_BATCH_SLACK`]), medians of a few runs each, one thread.
/// With a concrete batch size tract plans a small network's convolutions without the
/// symbolic batch's generic path (about twice as fast for one row on the zoo's CNN). Other
/// models keep their one symbolic plan.
fn faster_per_shape(
    proto: &pb::ModelProto,
    symbolic: &Model,
    resources: &Resources,
) -> Option<(Model, Loader)> {
    let graph = proto.graph.as_ref()?;
    if !graph.node.iter().any(|node| matches!(node.op_type.as_str(), "Conv" | "ConvTranspose")) {
        return None;
    }
    let (per_shape, loader, _, _) = per_shape_trial(proto, resources)?;
    let batch_axes = roles::batch_axes(proto, symbolic.signature());
    for (batch, gain) in [(1, PER_SHAPE_GAIN), (8, 1.0 / PER_SHAPE_BATCH_SLACK)] {
        let inputs = trial_inputs(symbolic.signature(), batch, 1, batch_axes.as_deref()).ok()?;
        let symbolic_ms = median_run_ms(symbolic, &inputs)?;
        let per_shape_ms = median_run_ms(&per_shape, &inputs)?;
        tracing::debug!(batch, symbolic_ms, per_shape_ms, "symbolic or per-shape plans");
        if per_shape_ms * gain > symbolic_ms {
            return None;
        }
    }
    Some((per_shape, loader))
}

/// The median time of runs of `model` on `inputs` (ms), after one that builds what it needs;
/// `None` when a run fails.
fn median_run_ms(model: &Model, inputs: &[Tensor]) -> Option<f64> {
    model.run(inputs.to_vec()).ok()?;
    let mut times = (0..9)
        .map(|_| {
            let started = Instant::now();
            model.run(inputs.to_vec()).ok().map(|_| elapsed_ms(started))
        })
        .collect::<Option<Vec<f64>>>()?;
    times.sort_by(f64::total_cmp);
    Some(times[times.len() / 2])
}

fn trial_failed(err: Error) -> Error {
    match as_invalid(err) {
        Error::InvalidModel { problem } => invalid(format!("trial inference failed: {problem}")),
        other => other,
    }
}

pub(super) fn invalid(problem: String) -> Error {
    Error::InvalidModel { problem }
}

/// Engine failures during validation are the upload's fault: they become `InvalidModel`
/// with the whole cause chain, which names the failing operator or node.
fn as_invalid(err: Error) -> Error {
    match err {
        Error::Engine { .. } => {
            invalid(crate::error::chain(&err).trim_start_matches("engine failure: ").to_owned())
        }
        Error::InferenceRejected { problem } => invalid(problem),
        over @ Error::OverBudget { .. } => invalid(over.to_string()),
        other => other,
    }
}

/// ONNX operators on string tensors that tract 0.23 does not implement. tract runs strings
/// through `CategoryMapper`, the labels of `LinearClassifier` and `TreeEnsembleClassifier`,
/// `Cast` to FP32, and the operators that only move elements (`Identity`, `Reshape`,
/// `Gather`, `Concat`...).
const STRING_OPS_TRACT_LACKS: [&str; 9] = [
    "StringNormalizer",
    "TfIdfVectorizer",
    "LabelEncoder",
    "OneHotEncoder",
    "DictVectorizer",
    "StringConcat",
    "StringSplit",
    "RegexFullMatch",
    "Tokenizer",
];

/// Refuses a graph with string operators tract cannot run, naming each node and operator
/// (tract alone would name only the first operator it fails to find).
fn check_string_ops(proto: &pb::ModelProto) -> Result<(), Error> {
    let Some(graph) = proto.graph.as_ref() else { return Ok(()) };
    let lacking: Vec<String> = graph
        .node
        .iter()
        .filter(|n| STRING_OPS_TRACT_LACKS.contains(&n.op_type.as_str()))
        .map(|n| format!("`{}` ({})", n.name, n.op_type))
        .collect();
    if lacking.is_empty() {
        return Ok(());
    }
    Err(invalid(format!(
        "node{} {} work{} on string tensors with operators tract cannot run; tract runs strings \
         through CategoryMapper, the labels of LinearClassifier and TreeEnsembleClassifier, \
         Cast to FP32 and operators that only move elements",
        if lacking.len() > 1 { "s" } else { "" },
        lacking.join(", "),
        if lacking.len() > 1 { "" } else { "s" },
    )))
}

/// Refuses a graph whose declared inputs, outputs or intermediate values describe a tensor
/// over the limit.
pub(super) fn check_declared(proto: &pb::ModelProto, settings: &Settings) -> Result<(), Error> {
    let Some(graph) = proto.graph.as_ref() else { return Ok(()) };
    let declared = graph.input.iter().chain(&graph.output).chain(&graph.value_info);
    declared.into_iter().try_for_each(|value| check_declared_size(value, settings))
}

fn check_declared_size(value: &pb::ValueInfoProto, settings: &Settings) -> Result<(), Error> {
    let Ok(spec) = tensor_spec(value) else { return Ok(()) };
    let Some(width) = datum_type_of(spec.datatype).map(|d| d.size_of() as u64) else {
        return Ok(());
    };
    let bytes = spec.shape.iter().try_fold(width, |acc, &d| acc.checked_mul(d.max(1) as u64));
    match bytes {
        Some(bytes) if bytes <= settings.max_tensor_bytes => Ok(()),
        _ => {
            let shape = match spec.shape.len() {
                rank if rank > 8 => format!("{:?}... ({rank} dimensions)", &spec.shape[..8]),
                _ => format!("{:?}", spec.shape),
            };
            Err(invalid(format!(
                "`{}` is declared with shape {shape} of {}: over the limit of {} bytes per tensor",
                spec.name, spec.datatype, settings.max_tensor_bytes
            )))
        }
    }
}

/// Zeros of each input's declared type and shape: the batch dimensions at `rows` (each
/// input's `batch_axes`, by default its first), other dynamic dimensions at `dims`.
pub(super) fn trial_inputs(
    signature: &Signature,
    rows: usize,
    dims: usize,
    batch_axes: Option<&[Vec<usize>]>,
) -> Result<Vec<Tensor>, Error> {
    signature
        .inputs
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            let is_batch = |axis: usize| match batch_axes {
                Some(axes) => axes.get(index).is_some_and(|a| a.contains(&axis)),
                None => axis == 0,
            };
            let shape: Vec<usize> = spec
                .shape
                .iter()
                .enumerate()
                .map(|(axis, &d)| match d {
                    d if d > 0 => d as usize,
                    _ if is_batch(axis) => rows,
                    _ => dims,
                })
                .collect();
            let count = shape.iter().product();
            let data = zeros(spec.datatype, count).ok_or_else(|| {
                invalid(format!("input `{}` has unsupported datatype {}", spec.name, spec.datatype))
            })?;
            Ok(Tensor { name: spec.name.clone(), shape, data })
        })
        .collect()
}
