//! `model-upload`: publishes validated ONNX models. Not built yet: every route answers 501
//! with a JSON error.

use std::convert::Infallible;

use lambda_http::{service_fn, Body, Request, Response};

async fn handle(request: Request) -> Result<Response<Body>, Infallible> {
    tracing::warn!(
        path = request.uri().path(),
        "model upload is not implemented yet"
    );
    Ok(maas::http::message_response(
        501,
        "model upload is not implemented yet",
    ))
}

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    tracing_subscriber::fmt()
        .json()
        .without_time()
        .with_ansi(false)
        .init();
    lambda_http::run(service_fn(handle)).await
}
