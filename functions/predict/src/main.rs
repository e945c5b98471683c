//! `predict`: serves ONNX models over the Open Inference Protocol, as a Lambda function
//! behind API Gateway or, with `serve`, as a local HTTP server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use maas::{Config, Predictor, Registry};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the same HTTP API on a local address, without Lambda.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// Model store; defaults to the example store shipped in the repository.
        #[arg(long, env = "MAAS_STORE", default_value = "scripts/example-store")]
        store: String,
    },
}

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let cli = Cli::parse();
    let local_store = match &cli.command {
        Some(Command::Serve { store, .. }) => Some(store.clone()),
        None => None,
    };
    init_tracing(local_store.is_none());
    let config = Config::from_lookup(|name| match (name, &local_store) {
        ("MAAS_STORE", Some(store)) => Some(store.clone()),
        _ => std::env::var(name).ok(),
    })?;
    let store = config.store.open(config.s3_force_path_style).await;
    let registry = Arc::new(Registry::new(store, &config.cache));
    let predictor = Predictor::new(registry, config.max_request_bytes);
    predictor.preload(&config.preload).await;

    let handle = move |request| {
        let predictor = predictor.clone();
        async move { predict::handler::handle(&predictor, request).await }
    };
    match cli.command {
        Some(Command::Serve { addr, .. }) => {
            Ok(maas::http::serve_locally(addr, config.max_request_bytes, handle).await?)
        }
        None => {
            lambda_http::run(lambda_http::service_fn(move |request| {
                let response = handle(request);
                async move { Ok::<_, Infallible>(response.await) }
            }))
            .await
        }
    }
}

/// JSON logs in Lambda (CloudWatch adds the time); compact human logs locally.
fn init_tracing(in_lambda: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if in_lambda {
        builder.json().without_time().with_ansi(false).init();
    } else {
        builder.compact().init();
    }
}
