//! `predict`: serves ONNX models over the Open Inference Protocol, as a Lambda function
//! behind API Gateway or, with `serve`, as a local HTTP server.

use maas::{function, Config, Predictor};

/// The store `serve` uses when neither `--store` nor `MAAS_STORE` names one.
const EXAMPLE_STORE: &str = "scripts/example-store";

fn main() -> Result<(), lambda_http::Error> {
    let serve = function::command_line(
        "predict",
        "Serves ONNX models over the Open Inference Protocol (under Lambda unless `serve`)",
        "Serve the API on a local address; the store defaults to the example store",
    );
    function::init_tracing(serve.is_none());
    let store = serve.as_ref().map(|args| args.store.as_deref().unwrap_or(EXAMPLE_STORE));
    let config = function::config(store)?;
    function::runtime(&config, function::SERVING)?.block_on(run(serve, config))
}

async fn run(serve: Option<function::ServeArgs>, config: Config) -> Result<(), lambda_http::Error> {
    let predictor = Predictor::new(function::registry(&config).await, config.requests);
    // Runs during the Lambda init phase, before the first request.
    predictor.preload(&config.preload, &config.preload_batches).await;
    let handler = move |request| {
        let predictor = predictor.clone();
        async move { predict::handler::handle(&predictor, request).await }
    };
    let serving = function::Serving {
        function: "predict",
        body_limit: config.requests.max_request_bytes,
        response_limit: config.max_response_bytes,
    };
    function::run(serve.map(|args| args.addr), serving, handler).await
}
