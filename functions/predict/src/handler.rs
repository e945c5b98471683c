//! Routes of the Open Inference Protocol REST API (`/v2`) and TensorFlow Serving's REST API
//! (`/v1/models/...`, whose paths its codec parses), mapped to [`maas::Predictor`] calls.

use std::sync::LazyLock;

use lambda_http::http::Method;
use lambda_http::{Body, Request, Response};
use maas::http::{error_response, json_response, Routes};
use maas::protocol::oip::{self, ModelMetadata, ServerMetadata};
use maas::protocol::{encoding, tfserving};
use maas::Predictor;
use serde_json::json;

#[derive(Debug, Clone, Copy)]
enum Action {
    Server,
    Live,
    Ready,
    Model,
    ModelReady,
    Infer,
    Stats,
    TfServing,
}

static ROUTES: LazyLock<Routes<Action>> = LazyLock::new(|| {
    Routes::new(&[
        ("/v2", Method::GET, Action::Server),
        ("/v2/health/live", Method::GET, Action::Live),
        ("/v2/health/ready", Method::GET, Action::Ready),
        ("/v2/models/{name}", Method::GET, Action::Model),
        ("/v2/models/{name}/ready", Method::GET, Action::ModelReady),
        ("/v2/models/{name}/infer", Method::POST, Action::Infer),
        ("/v2/models/{name}/versions/{version}", Method::GET, Action::Model),
        ("/v2/models/{name}/versions/{version}/ready", Method::GET, Action::ModelReady),
        ("/v2/models/{name}/versions/{version}/infer", Method::POST, Action::Infer),
        ("/v2/models/stats", Method::GET, Action::Stats),
        ("/v2/models/{name}/stats", Method::GET, Action::Stats),
        ("/v2/models/{name}/versions/{version}/stats", Method::GET, Action::Stats),
        ("/v1/models/{*rest}", Method::GET, Action::TfServing),
        ("/v1/models/{*rest}", Method::POST, Action::TfServing),
    ])
});

/// Answers one request. Never fails: every error becomes a JSON error response.
/// `{version}` may be a number, `latest` or an alias. Compressed bodies are inflated first
/// (`Content-Encoding`, [`encoding::decode`]).
pub async fn handle(predictor: &Predictor, request: Request) -> Response<Body> {
    let matched = match ROUTES.find(&request) {
        Ok(matched) => matched,
        Err(response) => return *response,
    };
    let named = matched.params.get("name");
    let name = named.unwrap_or_default();
    let version = matched.params.get("version");
    let limit = predictor.limits().max_request_bytes;
    let body = || encoding::decode(request.headers(), request.body(), limit);
    let result = match matched.action {
        Action::Server => Ok(json_response(200, &ServerMetadata::current())),
        Action::Live => Ok(json_response(200, &json!({ "live": true }))),
        Action::Ready => Ok(json_response(200, &json!({ "ready": true }))),
        Action::Model => predictor
            .metadata(name, version)
            .await
            .map(|m| json_response(200, &ModelMetadata::from(m))),
        Action::ModelReady => predictor.ready(name, version).await.map(|id| {
            let version = id.version.to_string();
            json_response(
                200,
                &json!({ "name": id.name.as_str(), "version": version, "ready": true }),
            )
        }),
        Action::Stats => predictor.stats(named, version).await.map(|s| json_response(200, &s)),
        Action::Infer => match body() {
            Ok(body) => oip::infer(predictor, name, version, request.headers(), &body).await,
            Err(err) => Err(err),
        },
        Action::TfServing => match body() {
            Ok(body) => {
                let rest = matched.params.get("rest").unwrap_or_default();
                tfserving::handle(predictor, request.method(), rest, &body).await
            }
            Err(err) => Err(err),
        },
    };
    result.unwrap_or_else(|err| error_response(&err))
}
