//! How batch jobs run: where inputs and outputs live, mini-batch size, when to give up.

use std::time::Duration;

/// Batch settings, read by [`crate::Config`] (which documents each variable).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSettings {
    /// Store keys of batch inputs start with this (`MAAS_BATCH_INPUT_PREFIX`).
    pub input_prefix: String,
    /// Outputs and manifests are written under this (`MAAS_BATCH_OUTPUT_PREFIX`); events for
    /// keys under it are ignored.
    pub output_prefix: String,
    /// Rows per inference (`MAAS_BATCH_SIZE`).
    pub batch_size: usize,
    /// Input elements per inference (`MAAS_BATCH_MAX_ELEMENTS`).
    pub max_elements: usize,
    /// Above this fraction of failed rows the job stops (`MAAS_BATCH_MAX_FAILED_RATIO`).
    pub max_failed_ratio: f64,
    /// Time kept before the invocation's deadline to abort cleanly
    /// (`MAAS_BATCH_DEADLINE_MARGIN_MS`).
    pub deadline_margin: Duration,
    /// Largest Step Functions answer returned inline; larger results go to the store
    /// (`MAAS_BATCH_MAX_INLINE_RESULT_BYTES`).
    pub max_inline_result_bytes: usize,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            input_prefix: "batch/input/".to_owned(),
            output_prefix: "batch/output/".to_owned(),
            batch_size: 256,
            // 256 KiB of FP32: a 784-input row makes mini-batches of 64 rows.
            max_elements: 1 << 16,
            max_failed_ratio: 0.5,
            deadline_margin: Duration::from_secs(10),
            // Step Functions' state payload limit is 256 KiB; the rest is the envelope's.
            max_inline_result_bytes: 250_000,
        }
    }
}

/// A prefix as keys are compared with it: empty, or ending with `/`.
pub fn folder(prefix: &str) -> String {
    match prefix.trim_matches('/') {
        "" => String::new(),
        trimmed => format!("{trimmed}/"),
    }
}
