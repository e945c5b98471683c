//! `batch-predict`: runs models over files dropped into S3 and over Step Functions item
//! batches. `main` wires configuration, the registry and the batch core; the handler maps an
//! invocation to [`maas::batch::Batch::handle`].

use lambda_runtime::{service_fn, LambdaEvent};
use maas::batch::{Batch, Event};
use maas::{function, Config, Predictor};

fn main() -> Result<(), lambda_runtime::Error> {
    function::init_tracing(true);
    let config = function::config(None)?;
    function::runtime(&config, function::BATCH)?.block_on(serve(config))
}

async fn serve(config: Config) -> Result<(), lambda_runtime::Error> {
    let predictor = Predictor::new(function::registry(&config).await, config.requests);
    // Runs during the Lambda init phase, before the first event.
    predictor.preload(&config.preload, &config.preload_batches).await;
    let batch = Batch::new(predictor, config.store.clone(), config.batch.clone());
    lambda_runtime::run(service_fn(|event: LambdaEvent<Event>| {
        batch_predict::handler::handle(&batch, event)
    }))
    .await
}
