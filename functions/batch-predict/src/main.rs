//! `batch-predict`: runs a model over files dropped into S3. Not built yet: every event is
//! refused with a `NotImplemented` error, so nothing is silently dropped.

use aws_lambda_events::event::s3::S3Event;
use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};

async fn handle(event: LambdaEvent<S3Event>) -> Result<(), Diagnostic> {
    let keys: Vec<String> =
        event.payload.records.iter().filter_map(|r| r.s3.object.key.clone()).collect();
    tracing::warn!(?keys, "batch prediction is not implemented yet");
    Err(Diagnostic {
        error_type: "NotImplemented".into(),
        error_message: format!(
            "batch prediction is not implemented yet; {} object(s) not processed",
            keys.len()
        ),
    })
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    maas::function::init_tracing(true);
    lambda_runtime::run(service_fn(handle)).await
}
