//! HTTP glue shared by the HTTP functions: JSON responses, error responses, routes, the
//! Lambda runtime's entry with its event checks, and a local server that feeds the same
//! handlers as API Gateway.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use base64::Engine as _;
use lambda_http::http::{header, HeaderValue, Method, StatusCode};
use lambda_http::request::LambdaRequest;
use lambda_http::{Body, Request, Response};
use serde::Serialize;

use crate::error::Error;

/// A JSON response with the given status (non-finite floats as `NaN`, `Infinity`,
/// `-Infinity`: [`crate::protocol::json::to_vec`]).
pub fn json_response(status: u16, body: &impl Serialize) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // Text, not binary: API Gateway gets JSON as it is, not base64 (a third larger).
    match crate::protocol::json::to_vec(body).map(String::from_utf8) {
        Ok(Ok(text)) => Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::Text(text))
            .unwrap_or_else(|_| Response::new(Body::Empty)),
        Ok(Err(err)) => {
            tracing::error!(error = %err, "a JSON response is not UTF-8");
            message_response(500, "internal error")
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot encode a response");
            message_response(500, "internal error")
        }
    }
}

/// `{"error": message}` with the given status.
pub fn message_response(status: u16, message: &str) -> Response<Body> {
    json_response(status, &serde_json::json!({ "error": message }))
}

/// The response for an error: its status and client message, `Retry-After` when retrying
/// later may work (503), and `Allow` for a method not allowed (405). Internal failures are logged with their whole cause chain;
/// client mistakes only at debug level.
pub fn error_response(err: &Error) -> Response<Body> {
    if err.is_client_error() {
        tracing::debug!(kind = err.kind(), error = %err, "request refused");
    } else {
        tracing::error!(kind = err.kind(), error = %crate::error::chain(err), "request failed");
    }
    let mut response = message_response(err.status(), &err.client_message());
    if let Some(seconds) = err.retry_after() {
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
    }
    if let Error::MethodNotAllowed { allowed, .. } = err {
        response.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allowed));
    }
    response
}

/// The header [`sanitize_event`] sets on a request whose body API Gateway marked as base64
/// but is not; [`Routes::find`] answers such a request with a 400. The same header sent by a
/// client is removed first (and by the local server).
const UNDECODABLE_BODY: &str = "x-maas-undecodable-body";

/// Makes an API Gateway event safe to convert into a request. lambda_http decodes a body
/// marked `isBase64Encoded` with an `expect`, so garbage there panics, which aborts a release
/// build and throws away the warm environment. Such a body is dropped and the request marked,
/// for the route lookup to answer 400 naming the problem.
pub fn sanitize_event(event: &mut LambdaRequest) {
    let LambdaRequest::ApiGatewayV2(event) = event else { return };
    event.headers.remove(UNDECODABLE_BODY);
    let engine = &base64::engine::general_purpose::STANDARD;
    if event.is_base64_encoded && event.body.as_deref().is_some_and(|b| engine.decode(b).is_err()) {
        event.body = None;
        event.is_base64_encoded = false;
        event.headers.insert(UNDECODABLE_BODY, HeaderValue::from_static("base64"));
    }
}

/// An API Gateway event as a handler receives it under the Lambda runtime ([`run_lambda`]):
/// sanitized, then converted by lambda_http.
pub fn event_request(mut event: LambdaRequest) -> Request {
    sanitize_event(&mut event);
    event.into()
}

/// A route table: paths with `{parameters}`, each with the methods it answers and the action
/// each method maps to.
#[derive(Debug)]
pub struct Routes<A: Copy + 'static> {
    router: matchit::Router<Vec<(Method, A)>>,
}

/// A matched route: its action and the path's parameters.
pub struct Matched<'r, 'p, A> {
    pub action: A,
    pub params: matchit::Params<'r, 'p>,
}

impl<A: Copy + 'static> Routes<A> {
    /// Builds the table. Panics on an invalid pattern: tables are fixed at compile time.
    pub fn new(table: &[(&str, Method, A)]) -> Self {
        let mut grouped: Vec<(&str, Vec<(Method, A)>)> = Vec::new();
        for (path, method, action) in table {
            match grouped.iter_mut().find(|(p, _)| p == path) {
                Some((_, methods)) => methods.push((method.clone(), *action)),
                None => grouped.push((path, vec![(method.clone(), *action)])),
            }
        }
        let mut router = matchit::Router::new();
        for (path, methods) in grouped {
            router.insert(path, methods).expect("route patterns are valid");
        }
        Self { router }
    }

    /// The action for a request, or the 404 (no such path), 405 (no such method, with an
    /// `Allow` header) or 400 (a body [`sanitize_event`] found undecodable) response. A
    /// trailing `/` is ignored.
    pub fn find<'r, 'p>(
        &'r self,
        request: &'p Request,
    ) -> Result<Matched<'r, 'p, A>, Box<Response<Body>>> {
        let (method, path) = (request.method(), request.uri().path());
        let trimmed = path.trim_end_matches('/');
        let Ok(matched) = self.router.at(if trimmed.is_empty() { "/" } else { trimmed }) else {
            return Err(Box::new(message_response(404, &format!("no route for {trimmed}"))));
        };
        if let Some((_, action)) = matched.value.iter().find(|(m, _)| m == method) {
            if request.headers().contains_key(UNDECODABLE_BODY) {
                return Err(Box::new(message_response(
                    400,
                    "the request body is marked isBase64Encoded but is not valid base64",
                )));
            }
            return Ok(Matched { action: *action, params: matched.params });
        }
        let allowed: Vec<&str> = matched.value.iter().map(|(m, _)| m.as_str()).collect();
        let allowed = allowed.join(", ");
        let mut response =
            message_response(405, &format!("{method} is not allowed on {trimmed}; use {allowed}"));
        if let Ok(value) = allowed.parse() {
            response.headers_mut().insert(header::ALLOW, value);
        }
        Err(Box::new(response))
    }
}

/// The size of `response` as the Lambda runtime sends it: the body as a JSON string (text
/// with its escapes, binary as base64) plus the status, headers and field names around it.
pub fn lambda_response_size(response: &Response<Body>) -> u64 {
    const ENVELOPE: u64 = 96;
    let body = match response.body() {
        Body::Empty => 0,
        Body::Text(text) => text.len() + text.bytes().filter(|b| json_escape_grows(*b)).count() * 5,
        Body::Binary(bytes) => bytes.len().div_ceil(3) * 4,
        _ => 0,
    };
    let headers: usize =
        response.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 6).sum();
    ENVELOPE + (body + headers) as u64
}

/// Whether a byte takes more than itself in a JSON string: at most 6 bytes (`\u0001`), so
/// counting 5 extra is an upper bound.
fn json_escape_grows(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// `response`, or a 413 naming its size when it would not fit in `limit` bytes as Lambda
/// sends it (API Gateway would answer an opaque 502).
pub fn limit_response(response: Response<Body>, limit: u64) -> Response<Body> {
    let size = lambda_response_size(&response);
    if size <= limit {
        return response;
    }
    error_response(&Error::ResponseTooLarge { size, limit })
}

/// Runs `handler` under the Lambda runtime (API Gateway HTTP API events) until the process
/// ends. lambda_http's own `run`, with every event passed through [`sanitize_event`] first.
pub async fn run_lambda<H, F>(handler: H) -> Result<(), lambda_http::Error>
where
    H: Fn(Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let handler = lambda_http::service_fn(move |request| {
        let response = handler(request);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let events = lambda_http::tower::ServiceBuilder::new()
        .map_request(|mut event: lambda_http::LambdaEvent<LambdaRequest>| {
            sanitize_event(&mut event.payload);
            event
        })
        .service(lambda_http::Adapter::from(handler));
    lambda_http::lambda_runtime::run(events).await
}

/// Serves `handler` on `addr` over plain HTTP until Ctrl-C, turning each request into the
/// same `lambda_http::Request` that API Gateway would produce. Bodies over `body_limit` get a
/// 413 before reaching the handler.
pub async fn serve_locally<H, F>(
    addr: SocketAddr,
    body_limit: usize,
    handler: H,
) -> std::io::Result<()>
where
    H: Fn(Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let handler = handler.clone();
        async move {
            let (mut parts, body) = request.into_parts();
            // Only sanitize_event may mark a request.
            parts.headers.remove(UNDECODABLE_BODY);
            let response = match axum::body::to_bytes(body, body_limit).await {
                Ok(bytes) => {
                    let body =
                        if bytes.is_empty() { Body::Empty } else { Body::Binary(bytes.to_vec()) };
                    handler(Request::from_parts(parts, body)).await
                }
                Err(_) => message_response(
                    413,
                    &format!("request body is over the limit of {body_limit} bytes"),
                ),
            };
            let (parts, body) = response.into_parts();
            axum::response::Response::from_parts(parts, axum::body::Body::from(body.to_vec()))
        }
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %listener.local_addr()?, "serving locally");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::StoreError;

    #[test]
    fn store_outages_say_when_to_retry_and_client_errors_do_not() {
        let down: Error =
            StoreError::Unavailable { key: "k".into(), source: Arc::new(std::fmt::Error) }.into();
        let response = error_response(&down);
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let missing = error_response(&Error::ModelNotFound { name: "m".into() });
        assert_eq!(missing.status(), 404);
        assert!(missing.headers().get(header::RETRY_AFTER).is_none());
    }
}
