//! `model-upload`: publishes validated ONNX models, as a Lambda function behind API Gateway
//! or, with `serve --store DIR`, as a local HTTP server.

use maas::{function, Config, Publisher};

fn main() -> Result<(), lambda_http::Error> {
    let serve = function::command_line(
        "model-upload",
        "Publishes validated ONNX models (under Lambda unless `serve`)",
        "Serve the API on a local address; --store (or MAAS_STORE) is required",
    );
    function::init_tracing(serve.is_none());
    let config = function::config(serve.as_ref().and_then(|args| args.store.as_deref()))?;
    function::runtime(&config, function::SERVING)?.block_on(run(serve, config))
}

async fn run(serve: Option<function::ServeArgs>, config: Config) -> Result<(), lambda_http::Error> {
    let registry = function::registry(&config).await;
    let publisher = Publisher::new(registry, config.publish, config.presign_expiry);
    let handler = move |request| {
        let publisher = publisher.clone();
        async move { model_upload::handler::handle(&publisher, request).await }
    };
    // A direct upload carries the whole model; the local server accepts up to the model limit.
    let serving = function::Serving {
        function: "model-upload",
        body_limit: usize::try_from(config.publish.max_model_bytes).unwrap_or(usize::MAX),
        response_limit: config.max_response_bytes,
    };
    function::run(serve.map(|args| args.addr), serving, handler).await
}
