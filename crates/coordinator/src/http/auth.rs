//! API keys on the REST routes other than inference (metadata, configuration, statistics, the
//! index): one middleware that authenticates the caller, checks the model named in the path, and
//! hands the [`Caller`] to handlers that list several models, so that they leave out the ones it
//! may not use. Inference authenticates inside the core's `observed`, where it is counted.

use super::App;
use crate::access::{Caller, Credentials};
use crate::infer::InferError;
use axum::extract::{RawPathParams, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// What a request presented: `Authorization` and `X-Api-Key`, when they are text.
pub fn credentials(headers: &HeaderMap) -> Credentials<'_> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    Credentials {
        authorization: text("authorization"),
        api_key: text("x-api-key"),
    }
}

/// The client's W3C trace context headers (`traceparent`, `tracestate`); looked up only when
/// traces are exported.
pub fn trace_context(headers: &HeaderMap) -> chorus_common::trace::Incoming<'_> {
    use chorus_common::trace::{self, Incoming};
    if !trace::enabled() {
        return Incoming::default();
    }
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    Incoming {
        traceparent: text(trace::TRACEPARENT),
        tracestate: text(trace::TRACESTATE),
    }
}

/// The path parameter that names a model: `{model}`, or KServe V1's `{target}`
/// (`<model>` or `<model>:predict`).
fn model_in_path(params: &RawPathParams) -> Option<&str> {
    params.iter().find_map(|(name, value)| match name {
        "model" => Some(value),
        "target" => Some(value.split(':').next().unwrap_or(value)),
        _ => None,
    })
}

/// Refuses (401/403) a request whose key is missing, unknown, or not allowed the model in its
/// path; otherwise passes the [`Caller`] on as a request extension.
pub async fn require_key(
    State(app): State<App>,
    params: RawPathParams,
    mut request: Request,
    next: Next,
) -> Response {
    let checked = app
        .authenticate(credentials(request.headers()))
        .and_then(|caller| {
            if let Some(model) = model_in_path(&params) {
                caller.authorize(model)?;
            }
            Ok::<_, InferError>(caller)
        });
    match checked {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}

/// The caller [`require_key`] let through (anyone, when the route is not behind it).
pub fn caller_of(extension: Option<axum::Extension<Caller>>) -> Caller {
    extension.map(|e| e.0).unwrap_or_default()
}
