//! The handler of `batch-predict`: one invocation, either event shape, its deadline from the
//! invocation context; a failure's `errorType` is the core error's kind (`ModelNotFound`,
//! `InvalidBatchInput`, `DeadlineExceeded`, ...), which the on-failure destination and a
//! state machine's `Catch` see.

use lambda_runtime::{Diagnostic, LambdaEvent};
use maas::batch::{Batch, Event};
use serde_json::Value;

pub async fn handle(batch: &Batch, event: LambdaEvent<Event>) -> Result<Value, Diagnostic> {
    let stop_at = batch.stop_at(event.context.deadline());
    batch.handle(event.payload, stop_at).await.map_err(|err| {
        if err.is_client_error() {
            tracing::warn!(error = %err, kind = err.kind(), "batch invocation failed");
        } else {
            tracing::error!(error = %maas::error::chain(&err), kind = err.kind(), "batch invocation failed");
        }
        Diagnostic::from(err)
    })
}
