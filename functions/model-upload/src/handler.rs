//! Routes of the model-upload API, mapped to [`maas::Publisher`] calls.

use std::sync::LazyLock;

use lambda_http::http::Method;
use lambda_http::{Body, Request, Response};
use maas::http::{error_response, json_response, Routes};
use maas::Publisher;
use serde_json::json;

#[derive(Debug, Clone, Copy)]
enum Action {
    ListModels,
    Detail,
    PutVersion,
    PostVersion,
    DeleteVersion,
    StartUpload,
    CommitUpload,
    SetAlias,
    DeleteAlias,
}

static ROUTES: LazyLock<Routes<Action>> = LazyLock::new(|| {
    Routes::new(&[
        ("/models", Method::GET, Action::ListModels),
        ("/models/{name}", Method::GET, Action::Detail),
        ("/models/{name}/versions", Method::POST, Action::PostVersion),
        ("/models/{name}/versions/{version}", Method::PUT, Action::PutVersion),
        ("/models/{name}/versions/{version}", Method::DELETE, Action::DeleteVersion),
        ("/models/{name}/uploads", Method::POST, Action::StartUpload),
        ("/models/{name}/uploads/{upload}/commit", Method::POST, Action::CommitUpload),
        ("/models/{name}/aliases/{alias}", Method::PUT, Action::SetAlias),
        ("/models/{name}/aliases/{alias}", Method::DELETE, Action::DeleteAlias),
    ])
});

/// Answers one request. Never fails: every error becomes a JSON error response.
pub async fn handle(publisher: &Publisher, request: Request) -> Response<Body> {
    let matched = match ROUTES.find(&request) {
        Ok(matched) => matched,
        Err(response) => return *response,
    };
    let param = |key| matched.params.get(key).unwrap_or_default();
    let body = request.body().as_ref();
    let result = match matched.action {
        Action::ListModels => {
            publisher.models().await.map(|models| json_response(200, &json!({ "models": models })))
        }
        Action::Detail => {
            publisher.detail(param("name")).await.map(|detail| json_response(200, &detail))
        }
        Action::PutVersion => publisher
            .put_version(param("name"), param("version"), body)
            .await
            .map(|m| json_response(201, &m)),
        Action::PostVersion => {
            publisher.post_version(param("name"), body).await.map(|m| json_response(201, &m))
        }
        Action::DeleteVersion => {
            publisher.delete_version(param("name"), param("version")).await.map(|()| {
                json_response(
                    200,
                    &json!({ "deleted": { "name": param("name"), "version": param("version") } }),
                )
            })
        }
        Action::StartUpload => {
            publisher.start_upload(param("name")).await.map(|ticket| json_response(201, &ticket))
        }
        Action::CommitUpload => publisher
            .commit_upload(param("name"), param("upload"), body)
            .await
            .map(|m| json_response(201, &m)),
        Action::SetAlias => publisher
            .set_alias(param("name"), param("alias"), body)
            .await
            .map(|alias| json_response(200, &alias)),
        Action::DeleteAlias => {
            publisher.delete_alias(param("name"), param("alias")).await.map(|()| {
                json_response(
                    200,
                    &json!({ "deleted": { "name": param("name"), "alias": param("alias") } }),
                )
            })
        }
    };
    result.unwrap_or_else(|err| error_response(&err))
}
