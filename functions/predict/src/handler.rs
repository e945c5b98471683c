//! Routes of the Open Inference Protocol REST API, mapped to [`maas::Predictor`] calls.

use std::sync::LazyLock;

use lambda_http::http::{header, Method};
use lambda_http::{Body, Request, Response};
use maas::http::{error_response, json_response, message_response};
use maas::protocol::ServerMetadata;
use maas::Predictor;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Server,
    Live,
    Ready,
    Model,
    ModelReady,
    Infer,
}

impl Route {
    fn method(self) -> Method {
        if self == Route::Infer {
            Method::POST
        } else {
            Method::GET
        }
    }
}

static ROUTES: LazyLock<matchit::Router<Route>> = LazyLock::new(|| {
    let mut router = matchit::Router::new();
    let routes = [
        ("/v2", Route::Server),
        ("/v2/health/live", Route::Live),
        ("/v2/health/ready", Route::Ready),
        ("/v2/models/{name}", Route::Model),
        ("/v2/models/{name}/ready", Route::ModelReady),
        ("/v2/models/{name}/infer", Route::Infer),
        ("/v2/models/{name}/versions/{version}", Route::Model),
        (
            "/v2/models/{name}/versions/{version}/ready",
            Route::ModelReady,
        ),
        ("/v2/models/{name}/versions/{version}/infer", Route::Infer),
    ];
    for (path, route) in routes {
        router
            .insert(path, route)
            .expect("the route table is valid");
    }
    router
});

/// Answers one request. Never fails: every error becomes a JSON error response.
pub async fn handle(predictor: &Predictor, request: Request) -> Response<Body> {
    let path = request.uri().path().trim_end_matches('/');
    let Ok(matched) = ROUTES.at(if path.is_empty() { "/" } else { path }) else {
        return message_response(404, &format!("no route for {path}"));
    };
    let route = *matched.value;
    if request.method() != route.method() {
        let mut response = message_response(
            405,
            &format!(
                "{} is not allowed on {path}; use {}",
                request.method(),
                route.method()
            ),
        );
        if let Ok(allow) = route.method().as_str().parse() {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        return response;
    }
    let name = matched.params.get("name").unwrap_or_default();
    let version = matched.params.get("version");
    let result = match route {
        Route::Server => Ok(json_response(200, &ServerMetadata::current())),
        Route::Live => Ok(json_response(200, &json!({ "live": true }))),
        Route::Ready => Ok(json_response(200, &json!({ "ready": true }))),
        Route::Model => predictor.metadata(name, version).await.map(|m| json_response(200, &m)),
        Route::ModelReady => predictor.ready(name, version).await.map(|id| {
            json_response(200, &json!({ "name": id.name.as_str(), "version": id.version.to_string(), "ready": true }))
        }),
        Route::Infer => predictor.infer(name, version, request.body().as_ref()).await.map(|r| json_response(200, &r)),
    };
    result.unwrap_or_else(|err| error_response(&err))
}
