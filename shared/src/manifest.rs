//! The manifest stored beside every published model: what the model is and what it expects.

use serde::{Deserialize, Serialize};

pub use crate::signature::{Signature, TensorSpec};

/// `models/<name>/<version>/manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: u64,
    /// Lowercase hex SHA-256 of `model.onnx`.
    pub sha256: String,
    /// Size of `model.onnx` in bytes.
    pub size: u64,
    /// When the version was published, RFC 3339.
    pub created: String,
    pub signature: Signature,
    /// The default-domain ONNX opset the model imports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opset: Option<i64>,
    /// The exporter that wrote the model, as it names itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<String>,
    /// How the engine reads the model (written by model-upload; `plain` when absent).
    #[serde(default)]
    pub loader: Loader,
    /// Whether one optimised plan serves every input shape (`symbolic`, the default) or the
    /// engine keeps plans per input shape (`per_shape`).
    #[serde(default)]
    pub plans: Planning,
    /// How long validation at upload took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<ValidationReport>,
}

/// How the engine reads a model's graph. Validation tries them in this order and records the
/// first that works.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loader {
    /// As the file says.
    #[default]
    Plain,
    /// Ignoring the graph's `value_info` shapes: PyTorch's dynamo exporter writes symbolic
    /// dimensions there (`s0`) that contradict the inputs' (`batch`), which tract refuses.
    IgnoreValueInfo,
    /// Also replacing each `If` whose condition is a constant by the branch it takes: tract
    /// refuses `If` branches of different shapes even when one can never run.
    FoldConstantIf,
}

impl Loader {
    pub const ALL: [Loader; 3] = [Loader::Plain, Loader::IgnoreValueInfo, Loader::FoldConstantIf];
}

/// How the engine plans a model's runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Planning {
    /// One plan, optimised once with symbolic dynamic dimensions, for every input shape.
    #[default]
    Symbolic,
    /// A plan per input shape (batch sizes bucketed to powers of two), for models whose
    /// symbolic dimensions do not survive optimisation.
    PerShape,
}

/// Timings of an upload's validation, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationReport {
    /// Parsing and translating the ONNX graph.
    pub parse_ms: f64,
    /// Optimising it.
    pub optimise_ms: f64,
    /// One trial inference on zeros.
    pub trial_ms: f64,
}

/// A file identified by its content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artefact {
    pub sha256: String,
    pub size: u64,
}
