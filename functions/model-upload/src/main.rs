//! `model-upload`: publishes validated ONNX models, as a Lambda function behind API Gateway
//! or, with `serve --store DIR`, as a local HTTP server.

use clap::{Parser, Subcommand};
use maas::function::{self, ServeArgs};
use maas::Publisher;

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API on a local address; `--store` (or `MAAS_STORE`) is required.
    Serve(ServeArgs),
}

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let Cli { command } = Cli::parse();
    let serve = command.map(|Command::Serve(args)| args);
    function::init_tracing(serve.is_none());
    let config = function::config(serve.as_ref().and_then(|args| args.store.as_deref()))?;
    let publisher =
        Publisher::new(function::registry(&config).await, config.publish, config.presign_expiry);
    let handler = move |request| {
        let publisher = publisher.clone();
        async move { model_upload::handler::handle(&publisher, request).await }
    };
    // A direct upload carries the whole model; the local server accepts up to the model limit.
    let body_limit = usize::try_from(config.publish.max_model_bytes).unwrap_or(usize::MAX);
    function::run(serve.map(|args| args.addr), body_limit, handler).await
}
