//! The REST infer endpoint: read the body, resolve the model, decode, run the core, encode, all
//! inside the core's [`Infer::observed`](crate::infer::Infer::observed).

use super::{App, read_body, request, response};
use crate::admission::Reserved;
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
    let credentials = super::credentials(&headers);
    let trace = super::auth::trace_context(&headers);
    let headers = &headers;
    let work = |caller| async move {
        // The model and the rate limits first: a refusal then costs no body read.
        let target = app.resolve_admissible(&caller, model, version)?;
        // Room in the in-flight byte budget before the body is read, and for what it
        // decompressed to after; held until the answer is sent.
        let mut reserved = Reserved::default();
        app.reserve_bytes(&mut reserved, super::body::expected_size(headers))
            .await?;
        let body = read_body(headers, body, app.limits().max_request_bytes).await?;
        app.reserve_bytes(&mut reserved, body.len()).await?;
        let (request, encoding) = request::parse(headers, body, target.single_input())?;
        let answer = app.infer(&target, request).await?;
        response::encode(answer, &encoding)
    };
    app.observed(Protocol::Http, model, credentials, trace, work)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}
