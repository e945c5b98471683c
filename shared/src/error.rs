//! The one error type of the core crate, and what each variant means to a client.

use std::sync::Arc;

use crate::names::ModelId;
use crate::store::StoreError;

/// A cause kept behind an `Arc` so that an error can be cloned: one failed cold load is
/// reported to every request that waited for it.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong while serving a model.
///
/// Client mistakes (`InvalidRequest`, `InvalidInput`, `ModelNotFound`, `VersionNotFound`,
/// `PayloadTooLarge`) carry a message that is safe to return. Internal failures keep their
/// cause for the logs; their client message says nothing internal.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request as a whole is malformed: bad JSON, a bad model name or version string.
    #[error("{message}")]
    InvalidRequest { message: String },

    /// One input tensor does not fit the model's signature.
    #[error("input `{input}`: {problem}")]
    InvalidInput { input: String, problem: String },

    /// No version of this model exists.
    #[error("model `{name}` not found")]
    ModelNotFound { name: String },

    /// The model exists but not in this version.
    #[error("model `{name}` has no version {version}")]
    VersionNotFound { name: String, version: u64 },

    /// No route answers this path: protocols that read their own paths (TensorFlow
    /// Serving's `/v1/models/...`) say what they expected.
    #[error("{message}")]
    NoRoute { message: String },

    /// The path exists, but not for this method.
    #[error("{method} is not allowed on {path}; use {allowed}")]
    MethodNotAllowed { method: String, path: String, allowed: &'static str },

    /// The request conflicts with what is stored: a published version, an alias.
    #[error("{message}")]
    Conflict { message: String },

    /// An uploaded file is not a model maas can serve; the problem says what failed.
    #[error("invalid model: {problem}")]
    InvalidModel { problem: String },

    /// The inputs fit the model's signature, but the model cannot compute on them: a
    /// dimension too small for its convolutions, an index out of range, a shape its plan
    /// cannot be built for.
    #[error("the model cannot run on these inputs: {problem}")]
    InferenceRejected { problem: String },

    /// Loading or running the model would take more memory than the engine's budget: a
    /// tensor whose size comes from the inputs' values or the model's constants.
    #[error("{what} would need {bytes} bytes, over the engine's memory budget of {limit} bytes")]
    OverBudget { what: String, bytes: u64, limit: u64 },

    /// The configured store cannot do what was asked (presigned uploads on a local store).
    #[error("{message}")]
    Unsupported { message: String },

    /// The alias does not exist.
    #[error("model `{name}` has no alias `{alias}`")]
    AliasNotFound { name: String, alias: String },

    /// A presigned upload was never made, was already committed, or expired.
    #[error("upload `{upload}` of model `{name}` not found: it was never uploaded, was already committed, or expired")]
    UploadNotFound { name: String, upload: String },

    /// A request body or a model is over its configured limit.
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge { what: &'static str, size: u64, limit: u64 },

    /// A compressed request body inflates past the request body limit.
    #[error("the request body inflates to more than {limit} bytes, the limit of a request body")]
    InflatesTooLarge { limit: u64 },

    /// The request body is encoded (`Content-Encoding`) in a way maas does not decode.
    #[error("Content-Encoding `{encoding}` is not supported; send the body as it is (identity), or compressed with gzip or deflate")]
    UnsupportedEncoding { encoding: String },

    /// A request asks for more than a configured limit allows (rows, elements).
    #[error("{what} is {size}, over the limit of {limit} ({variable})")]
    OverLimit { what: &'static str, size: u64, limit: u64, variable: &'static str },

    /// The response would not fit a synchronous Lambda response.
    #[error("the response would be {size} bytes as Lambda returns it, over the limit of {limit} bytes of a synchronous invocation; ask for fewer rows or outputs, or use batch-predict (files in S3) for large results")]
    ResponseTooLarge { size: u64, limit: u64 },

    /// A batch input cannot be processed at all: its key names no valid model or no
    /// supported format, its event comes from elsewhere, or the file is unreadable.
    #[error("batch input `{key}`: {problem}")]
    InvalidBatchInput { key: String, problem: String },

    /// More rows of a batch input failed than the configured ratio allows.
    #[error("{failed} of the first {rows} rows failed, over the limit of {ratio} (MAAS_BATCH_MAX_FAILED_RATIO); the job stopped")]
    TooManyFailedRows { failed: u64, rows: u64, ratio: f64 },

    /// A batch job could not finish before the invocation's deadline.
    #[error("the job stopped at the invocation's deadline after {rows} rows, and wrote nothing; split the file or use the Step Functions state machine for files this large")]
    DeadlineExceeded { rows: u64 },

    /// The object store cannot be reached or is throttling us; retrying later may work.
    #[error("model store unavailable")]
    StoreUnavailable {
        #[source]
        source: StoreError,
    },

    /// The store answered, but not in a way we can use (access denied, a broken manifest...).
    #[error("model store failure")]
    Store {
        #[source]
        source: StoreError,
    },

    /// A published model's bytes do not match its manifest, or its manifest is unreadable.
    #[error("model `{name}` version {version} is corrupt in the store: {problem}")]
    CorruptModel { name: String, version: u64, problem: String },

    /// The inference engine could not load or run a model.
    #[error("engine failure: {message}")]
    Engine {
        message: String,
        #[source]
        source: Option<Cause>,
    },

    /// Anything else: local disk failures, task panics.
    #[error("internal failure: {context}")]
    Internal {
        context: String,
        #[source]
        source: Cause,
    },
}

impl Error {
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Error::InvalidRequest { message: message.into() }
    }

    pub fn invalid_input(input: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::InvalidInput { input: input.into(), problem: problem.into() }
    }

    pub fn internal(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Internal { context: context.into(), source: Arc::new(source) }
    }

    /// A stored version that cannot be served as it is (its files missing, damaged or
    /// unloadable).
    pub fn corrupt_model(id: &ModelId, problem: impl Into<String>) -> Self {
        Error::CorruptModel {
            name: id.name.to_string(),
            version: id.version.get(),
            problem: problem.into(),
        }
    }

    /// The HTTP status this error maps to.
    pub fn status(&self) -> u16 {
        match self {
            Error::InvalidRequest { .. }
            | Error::InvalidInput { .. }
            | Error::InvalidBatchInput { .. } => 400,
            Error::ModelNotFound { .. }
            | Error::VersionNotFound { .. }
            | Error::AliasNotFound { .. }
            | Error::UploadNotFound { .. }
            | Error::NoRoute { .. } => 404,
            Error::MethodNotAllowed { .. } => 405,
            Error::Conflict { .. } => 409,
            Error::PayloadTooLarge { .. }
            | Error::OverLimit { .. }
            | Error::ResponseTooLarge { .. }
            | Error::InflatesTooLarge { .. } => 413,
            Error::UnsupportedEncoding { .. } => 415,
            Error::InvalidModel { .. }
            | Error::InferenceRejected { .. }
            | Error::OverBudget { .. }
            | Error::TooManyFailedRows { .. } => 422,
            Error::DeadlineExceeded { .. } => 504,
            Error::Unsupported { .. } => 501,
            Error::StoreUnavailable { .. } => 503,
            Error::Store { .. }
            | Error::CorruptModel { .. }
            | Error::Engine { .. }
            | Error::Internal { .. } => 500,
        }
    }

    /// True when the client caused the error (4xx) or asked for what this deployment does
    /// not offer (501); such errors are not logged as errors and their message is shown.
    pub fn is_client_error(&self) -> bool {
        self.status() < 500 || self.status() == 501
    }

    /// The message safe to show a client: the full text for client errors, a generic
    /// sentence for internal ones.
    pub fn client_message(&self) -> String {
        if let Error::CorruptModel { name, version, .. } = self {
            // Which model is broken is the caller's to know; why stays in the logs.
            return format!(
                "model `{name}` version {version} cannot be served: its files in the store are \
                 damaged or not a model the engine can load; republish it through model-upload"
            );
        }
        match self.status() {
            503 => "model store unavailable, retry later".to_owned(),
            // A deadline says nothing internal, and what to do about it.
            504 => self.to_string(),
            _ if !self.is_client_error() => "internal error".to_owned(),
            _ => self.to_string(),
        }
    }

    /// How many seconds a client should wait before retrying, for the errors that waiting
    /// may cure (503): longer after throttling, which asks callers to slow down.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Error::StoreUnavailable { source: StoreError::Throttled { .. } } => Some(2),
            Error::StoreUnavailable { .. } => Some(1),
            _ => None,
        }
    }

    /// A short machine-readable name of the variant, for logs and Lambda `errorType`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidRequest { .. } => "InvalidRequest",
            Error::InvalidInput { .. } => "InvalidInput",
            Error::ModelNotFound { .. } => "ModelNotFound",
            Error::VersionNotFound { .. } => "VersionNotFound",
            Error::AliasNotFound { .. } => "AliasNotFound",
            Error::UploadNotFound { .. } => "UploadNotFound",
            Error::NoRoute { .. } => "NoRoute",
            Error::MethodNotAllowed { .. } => "MethodNotAllowed",
            Error::Conflict { .. } => "Conflict",
            Error::InvalidModel { .. } => "InvalidModel",
            Error::InferenceRejected { .. } => "InferenceRejected",
            Error::OverBudget { .. } => "OverBudget",
            Error::Unsupported { .. } => "Unsupported",
            Error::PayloadTooLarge { .. } => "PayloadTooLarge",
            Error::OverLimit { .. } => "OverLimit",
            Error::InflatesTooLarge { .. } => "InflatesTooLarge",
            Error::UnsupportedEncoding { .. } => "UnsupportedEncoding",
            Error::ResponseTooLarge { .. } => "ResponseTooLarge",
            Error::InvalidBatchInput { .. } => "InvalidBatchInput",
            Error::TooManyFailedRows { .. } => "TooManyFailedRows",
            Error::DeadlineExceeded { .. } => "DeadlineExceeded",
            Error::StoreUnavailable { .. } => "StoreUnavailable",
            Error::Store { .. } => "StoreFailure",
            Error::CorruptModel { .. } => "CorruptModel",
            Error::Engine { .. } => "EngineFailure",
            Error::Internal { .. } => "InternalFailure",
        }
    }
}

impl From<StoreError> for Error {
    /// A store error outside any model context. `NotFound` should normally be mapped by the
    /// caller, who knows which model was asked for.
    fn from(source: StoreError) -> Self {
        match source {
            StoreError::Throttled { .. } | StoreError::Unavailable { .. } => {
                Error::StoreUnavailable { source }
            }
            StoreError::Unsupported { operation } => Error::Unsupported {
                message: format!("this deployment's store does not support {operation}"),
            },
            _ => Error::Store { source },
        }
    }
}

/// A failed invocation of a non-HTTP function: `errorType` is the variant's [`Error::kind`]
/// (what an on-failure destination or a Step Functions `Catch` matches), `errorMessage` what
/// a client may see.
impl From<Error> for lambda_runtime::Diagnostic {
    fn from(err: Error) -> Self {
        lambda_runtime::Diagnostic {
            error_type: err.kind().to_owned(),
            error_message: err.client_message(),
        }
    }
}

/// An error followed by each of its sources, `: `-separated.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_do_not_leak_details_to_clients() {
        let err = Error::CorruptModel {
            name: "iris".into(),
            version: 3,
            problem: "sha256 mismatch in /tmp/secret/path".into(),
        };
        assert_eq!(err.status(), 500);
        let message = err.client_message();
        assert!(message.starts_with("model `iris` version 3 cannot be served"), "{message}");
        assert!(!message.contains("/tmp") && !message.contains("sha256"), "{message}");
    }

    #[test]
    fn throttling_is_503_and_access_denied_is_500() {
        let throttled: Error =
            StoreError::Throttled { key: "k".into(), source: Arc::new(std::fmt::Error) }.into();
        let denied: Error =
            StoreError::AccessDenied { key: "k".into(), source: Arc::new(std::fmt::Error) }.into();
        assert_eq!(throttled.status(), 503);
        assert_eq!(denied.status(), 500);
    }

    #[test]
    fn only_503s_say_when_to_retry() {
        let cause: Cause = Arc::new(std::fmt::Error);
        let throttled: Error =
            StoreError::Throttled { key: "k".into(), source: cause.clone() }.into();
        let unavailable: Error = StoreError::Unavailable { key: "k".into(), source: cause }.into();
        assert_eq!(throttled.retry_after(), Some(2));
        assert_eq!(unavailable.retry_after(), Some(1));
        assert_eq!(Error::ModelNotFound { name: "m".into() }.retry_after(), None);
    }
}
