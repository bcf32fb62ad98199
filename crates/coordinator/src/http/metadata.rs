//! Health, server and model metadata, readiness and the read-only repository index.

use super::{ApiError, App, read_body};
use crate::catalog::{ENSEMBLE_PLATFORM, ENSEMBLE_VERSION};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chorus_common::TensorSpec;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// Extensions of OIP v2 / Triton that Chorus implements.
/// Only the read-only repository index of Triton's model_repository extension is served, so
/// the extension itself is not claimed.
const EXTENSIONS: [&str; 1] = ["binary_tensor_data"];

pub async fn server() -> Json<Value> {
    Json(json!({
        "name": "chorus",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
}

pub async fn live() -> StatusCode {
    StatusCode::OK
}

/// Ready when every ensemble can reach quorum (or, with no ensembles, when some model can be
/// served). Not ready is 400, as Triton answers, since OIP v2 asks for a 4xx.
pub async fn ready(State(app): State<Arc<App>>) -> StatusCode {
    let catalog = &app.catalog;
    let ensembles = catalog.ensembles();
    let ready = if ensembles.is_empty() {
        catalog
            .pool()
            .models()
            .keys()
            .any(|name| catalog.model_ready(name, None))
    } else {
        ensembles
            .iter()
            .all(|spec| catalog.ensemble_unready_reason(spec).is_none())
    };
    if ready {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    }
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no such endpoint: {}; see docs/protocol.md for the routes Chorus serves",
        uri.path()
    ))
}

pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!(
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

fn model_metadata(app: &App, name: &str, version: Option<&str>) -> Result<Value, ApiError> {
    let catalog = &app.catalog;
    let not_found = || ApiError::ModelNotFound {
        model: name.to_string(),
        version: version.map(str::to_string),
    };
    if let Some(spec) = catalog.ensemble(name) {
        if version.is_some_and(|v| v != ENSEMBLE_VERSION) {
            return Err(not_found());
        }
        let signature = catalog
            .ensemble_signature(&spec)
            .map_err(ApiError::Unavailable)?;
        return Ok(json!({
            "name": spec.name,
            "versions": [ENSEMBLE_VERSION],
            "platform": ENSEMBLE_PLATFORM,
            "inputs": tensor_metadata(&signature.inputs),
            "outputs": tensor_metadata(&signature.outputs),
            "parameters": {
                "description": spec.description,
                "combiner": spec.combiner.as_str(),
                "members": spec.members.iter().map(|m| m.model.as_str()).collect::<Vec<_>>().join(","),
                "min_members": spec.min_members,
                "deadline_ms": spec.deadline.as_millis() as u64,
            },
        }));
    }
    let versions = catalog.model_versions(name).ok_or_else(not_found)?;
    let info = catalog.model(name, version).ok_or_else(not_found)?;
    Ok(json!({
        "name": info.name,
        "versions": versions.iter().map(|v| v.version.as_str()).collect::<Vec<_>>(),
        "platform": info.platform,
        "inputs": tensor_metadata(&info.inputs),
        "outputs": tensor_metadata(&info.outputs),
        "parameters": {
            "execution_provider": info.execution_provider.to_string(),
        },
    }))
}

pub async fn model(
    State(app): State<Arc<App>>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    model_metadata(&app, &model, None).map(Json)
}

pub async fn model_version(
    State(app): State<Arc<App>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    model_metadata(&app, &model, Some(&version)).map(Json)
}

fn is_model_ready(app: &App, name: &str, version: Option<&str>) -> Result<bool, ApiError> {
    let catalog = &app.catalog;
    if let Some(spec) = catalog.ensemble(name) {
        if version.is_some_and(|v| v != ENSEMBLE_VERSION) {
            return Err(ApiError::ModelNotFound {
                model: name.to_string(),
                version: version.map(str::to_string),
            });
        }
        return Ok(catalog.ensemble_unready_reason(&spec).is_none());
    }
    if catalog.model(name, version).is_none() {
        return Err(ApiError::ModelNotFound {
            model: name.to_string(),
            version: version.map(str::to_string),
        });
    }
    Ok(catalog.model_ready(name, version))
}

fn readiness(ready: bool) -> StatusCode {
    if ready {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    }
}

pub async fn model_ready(
    State(app): State<Arc<App>>,
    Path(model): Path<String>,
) -> Result<StatusCode, ApiError> {
    is_model_ready(&app, &model, None).map(readiness)
}

pub async fn model_version_ready(
    State(app): State<Arc<App>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    is_model_ready(&app, &model, Some(&version)).map(readiness)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IndexRequest {
    ready: Option<bool>,
}

/// Triton's repository index, read-only: every ensemble and model version with its state.
pub async fn repository_index(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let body = read_body(&headers, body, app.limits.max_body_bytes).await?;
    let request: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!(
                "repository index request must be {{\"ready\": bool}}: {e}"
            ))
        })?
    };
    let catalog = &app.catalog;
    let mut entries = Vec::new();
    for spec in catalog.ensembles() {
        let reason = catalog.ensemble_unready_reason(&spec);
        entries.push((spec.name.clone(), ENSEMBLE_VERSION.to_string(), reason));
    }
    for (name, versions) in catalog.pool().models().iter() {
        if catalog.ensemble(name).is_some() {
            continue;
        }
        for info in versions {
            let reason = (!catalog.model_ready(name, Some(&info.version)))
                .then(|| "no live worker serves this version".to_string());
            entries.push((name.clone(), info.version.clone(), reason));
        }
    }
    let index = entries
        .into_iter()
        .filter(|(_, _, reason)| request.ready != Some(true) || reason.is_none())
        .map(|(name, version, reason)| {
            json!({
                "name": name,
                "version": version,
                "state": if reason.is_none() { "READY" } else { "UNAVAILABLE" },
                "reason": reason.unwrap_or_default(),
            })
        })
        .collect();
    Ok(Json(Value::Array(index)))
}

/// Chorus's own operator view: every worker in this coordinator's membership with its health,
/// load and models.
pub async fn workers(State(app): State<Arc<App>>) -> Json<Value> {
    let workers: Vec<_> = app
        .catalog
        .pool()
        .workers()
        .iter()
        .map(|w| w.status())
        .collect();
    Json(json!({ "workers": workers, "routing": app.router.stats() }))
}

/// Prometheus text: every `chorus_*` metric (docs/operations.md).
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    match app.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => ApiError::Internal(format!("could not encode the metrics: {e}")).into_response(),
    }
}
