//! Health, server and model metadata, readiness, the read-only repository index, and Chorus's
//! own operator endpoints (`/chorus/workers`, `/metrics`).

use super::{App, read_body};
use crate::infer::{InferError, ModelMetadata, SERVER_EXTENSIONS, SERVER_NAME};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chorus_common::TensorSpec;
use serde::Deserialize;
use serde_json::{Value, json};

pub async fn server() -> Json<Value> {
    Json(json!({
        "name": SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": SERVER_EXTENSIONS,
    }))
}

pub async fn live() -> StatusCode {
    StatusCode::OK
}

/// Not ready is 400, as Triton answers, since OIP v2 asks for a 4xx.
fn readiness(ready: bool) -> StatusCode {
    if ready {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    }
}

pub async fn ready(State(app): State<App>) -> StatusCode {
    readiness(app.server_ready())
}

pub async fn not_found(uri: axum::http::Uri) -> InferError {
    InferError::NotFound(format!(
        "no such endpoint: {}; see docs/protocol.md for the routes Chorus serves",
        uri.path()
    ))
}

pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> InferError {
    InferError::MethodNotAllowed(format!(
        "{method} is not allowed on {}; see docs/protocol.md for each route's method",
        uri.path()
    ))
}

fn tensor_metadata(specs: &[TensorSpec]) -> Vec<Value> {
    specs
        .iter()
        .map(|s| json!({"name": s.name, "datatype": s.datatype.as_str(), "shape": s.shape}))
        .collect()
}

fn metadata_json(m: ModelMetadata) -> Value {
    let parameters = match (&m.ensemble, &m.execution_provider) {
        (Some(e), _) => json!({
            "description": e.description,
            "combiner": e.combiner,
            "members": e.members.join(","),
            "min_members": e.min_members,
            "deadline_ms": e.deadline_ms,
        }),
        (None, Some(provider)) => json!({ "execution_provider": provider }),
        (None, None) => json!({}),
    };
    json!({
        "name": m.name,
        "versions": m.versions,
        "platform": m.platform,
        "inputs": tensor_metadata(&m.inputs),
        "outputs": tensor_metadata(&m.outputs),
        "parameters": parameters,
    })
}

pub async fn model(
    State(app): State<App>,
    Path(model): Path<String>,
) -> Result<Json<Value>, InferError> {
    app.model_metadata(&model, None).map(|m| {
        let mut metadata = metadata_json(m);
        super::feedback::annotate(&app, &model, &mut metadata);
        Json(metadata)
    })
}

pub async fn model_version(
    State(app): State<App>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, InferError> {
    app.model_metadata(&model, Some(&version))
        .map(|m| Json(metadata_json(m)))
}

pub async fn model_ready(
    State(app): State<App>,
    Path(model): Path<String>,
) -> Result<StatusCode, InferError> {
    app.model_ready(&model, None).map(readiness)
}

pub async fn model_version_ready(
    State(app): State<App>,
    Path((model, version)): Path<(String, String)>,
) -> Result<StatusCode, InferError> {
    app.model_ready(&model, Some(&version)).map(readiness)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IndexRequest {
    ready: Option<bool>,
}

/// Triton's repository index, read-only: every ensemble and model version with its state.
pub async fn repository_index(
    State(app): State<App>,
    caller: Option<axum::Extension<crate::access::Caller>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, InferError> {
    let caller = super::auth::caller_of(caller);
    let body = read_body(&headers, body, app.limits().max_request_bytes).await?;
    let request: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            InferError::bad_request(format!(
                "repository index request must be {{\"ready\": bool}}: {e}"
            ))
        })?
    };
    let index = app
        .repository_index(request.ready == Some(true))
        .into_iter()
        .filter(|entry| caller.may_use(&entry.name))
        .map(|entry| {
            json!({
                "name": entry.name,
                "version": entry.version,
                "state": entry.state(),
                "reason": entry.unready_reason.unwrap_or_default(),
            })
        })
        .collect();
    Ok(Json(Value::Array(index)))
}

/// Chorus's own operator view: every worker in this coordinator's membership with its health,
/// load and models.
pub async fn workers(State(app): State<App>) -> Json<Value> {
    let workers: Vec<_> = app
        .catalog()
        .pool()
        .workers()
        .iter()
        .map(|w| w.status())
        .collect();
    Json(json!({ "workers": workers, "routing": app.router().routing_stats() }))
}

/// Prometheus text: every `chorus_*` metric (docs/operations.md).
pub async fn metrics(State(app): State<App>) -> Response {
    match app.metrics().encode() {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            InferError::Internal(format!("could not encode the metrics: {e}")).into_response()
        }
    }
}
