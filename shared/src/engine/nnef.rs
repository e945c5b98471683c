//! NNEF export and loading, kept for the load-time benchmark (`scripts/bench_load.sh`), which
//! showed that a pre-translated NNEF artefact does not make cold loads faster; the registry
//! serves ONNX files.

use std::path::Path;

use tract_onnx::prelude::Framework;
use tract_onnx::WithOnnx;

use super::budget::{contained, measured};
use super::translate::translate_any;
use super::{engine_error, Model, Resources, Settings};
use crate::error::Error;
use crate::manifest::Signature;

/// The NNEF framework with tract's ONNX extensions; building it registers every operator,
/// so it is built once.
fn nnef() -> &'static tract_nnef::framework::Nnef {
    static NNEF: std::sync::LazyLock<tract_nnef::framework::Nnef> =
        std::sync::LazyLock::new(|| tract_nnef::nnef().with_onnx());
    &NNEF
}

impl Model {
    /// Loads the NNEF artefact written at upload: the ONNX translation is already done, so
    /// only optimisation is left. `signature` is the manifest's.
    pub fn load_nnef(
        path: &Path,
        signature: Signature,
        settings: &Settings,
    ) -> Result<Self, Error> {
        let resources = Resources::new(settings, std::fs::metadata(path).map_or(0, |m| m.len()));
        let (model, held) = measured(|| {
            contained(resources.cap, "loading the model", || {
                let typed = nnef()
                    .model_for_path(path)
                    .map_err(|e| engine_error("cannot read the NNEF artefact", e))?;
                Self::optimise(typed, signature, &resources)
            })
        });
        Ok(Self { held, ..model? })
    }
}

/// The model translated and decluttered, in NNEF form (the benchmark's comparison point).
pub fn to_nnef(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| engine_error("cannot parse the ONNX file", e))?;
    let (typed, _, _) = translate_any(&proto)?;
    nnef().write_to_tar(&typed, Vec::new()).map_err(|e| engine_error("cannot write NNEF", e))
}
