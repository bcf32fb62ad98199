//! The REST infer endpoint: read the body, resolve the model, decode, run the core, encode, all
//! inside the core's [`Infer::observed`](crate::infer::Infer::observed).

use super::{App, read_body, request, response};
use crate::infer::Protocol;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

pub async fn infer(
    State(app): State<App>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    serve(&app, &model, None, headers, body).await
}

pub async fn infer_version(
    State(app): State<App>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    serve(&app, &model, Some(&version), headers, body).await
}

async fn serve(
    app: &App,
    model: &str,
    version: Option<&str>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let work = async {
        let body = read_body(&headers, body, app.limits().max_request_bytes).await?;
        let target = app.resolve(model, version)?;
        let (request, encoding) = request::parse(&headers, body, target.single_input())?;
        let answer = app.infer(&target, request).await?;
        response::encode(answer, &encoding)
    };
    app.observed(Protocol::Http, model, work)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}
