//! The infer endpoint: parse, validate against the signature, run an ensemble or a single model
//! under a deadline, encode. Each request is counted, timed and traced here, in one place
//! ([`observed`]).

use super::request::{self, InferRequest};
use super::response::{self, InferResponse};
use super::{ApiError, App, read_body};
use crate::catalog::{Catalog, ENSEMBLE_VERSION, Signature};
use crate::ensemble::{self, MemberReport};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chorus_common::rpc::InferCall;
use chorus_common::validate::{validate_inputs, validate_requested_outputs};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{Instrument, debug, field};

/// The tracing target of the per-request span (see [`observed`]).
pub const REQUEST_SPAN_TARGET: &str = "chorus_request";

pub async fn infer(
    State(app): State<Arc<App>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    observed(&app, &model, None, headers, body).await
}

pub async fn infer_version(
    State(app): State<Arc<App>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    observed(&app, &model, Some(version), headers, body).await
}

/// Serves one infer request inside its `infer` span (`model`, and `request_id` once the body is
/// parsed), counting it in flight and recording its status and latency, rejected requests
/// included. Names the catalog does not know share one metrics label.
///
/// The span is at debug level under its own target, [`REQUEST_SPAN_TARGET`]: an enabled span
/// costs about 1.3 µs of formatting per request, so it is off by default, and
/// `RUST_LOG=info,chorus_request=debug` turns on just the span, so every warning logged while
/// serving a request names it. Member-call logs carry `request_id` as a field either way.
async fn observed(
    app: &App,
    name: &str,
    version: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let label = app.metrics.model_label(name, || app.catalog.knows(name));
    let timer = app.metrics.request_started(label);
    let span = tracing::debug_span!(target: REQUEST_SPAN_TARGET, "infer", model = %name, request_id = field::Empty);
    let result = async {
        let body = read_body(&headers, body, app.limits.max_body_bytes).await?;
        run(app, name, version, &headers, body).await
    }
    .instrument(span)
    .await;
    let response = result.unwrap_or_else(IntoResponse::into_response);
    timer.finish(response.status().as_u16());
    response
}

/// The client's request id, or a fresh one; recorded on the request's span.
fn request_id(app: &App, request: &InferRequest) -> String {
    let id = request.id.clone().unwrap_or_else(|| app.fresh_request_id());
    tracing::Span::current().record("request_id", field::display(&id));
    id
}

/// Parses the body and checks it against `signature` and the size of one worker call.
fn parse_and_validate(
    app: &App,
    name: &str,
    signature: &Signature,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<InferRequest, ApiError> {
    let single_input = match signature.inputs.as_slice() {
        [only] => Some(only),
        _ => None,
    };
    let request = request::parse(headers, body, single_input)?;
    validate_inputs(name, &signature.inputs, &request.inputs, &signature.policy)?;
    let requested: Vec<String> = request.outputs.iter().map(|o| o.name.clone()).collect();
    validate_requested_outputs(name, &signature.outputs, &requested)?;
    let input_bytes: usize = request.inputs.iter().map(|t| t.data.len()).sum();
    if input_bytes > app.limits.max_call_bytes {
        return Err(ApiError::CallTooLarge {
            bytes: input_bytes,
            limit: app.limits.max_call_bytes,
        });
    }
    Ok(request)
}

/// The request's deadline: the server's, shortened by the client's `timeout` if it is sooner.
fn deadline(server: Duration, client: Option<Duration>) -> Instant {
    Instant::now() + client.map_or(server, |c| c.min(server))
}

async fn run(
    app: &App,
    name: &str,
    version: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let catalog = &app.catalog;
    if let Some(spec) = catalog.ensemble(name) {
        if version.as_deref().is_some_and(|v| v != ENSEMBLE_VERSION) {
            return Err(ApiError::ModelNotFound {
                model: name.to_string(),
                version,
            });
        }
        let signature = catalog
            .ensemble_signature(&spec)
            .map_err(ApiError::Unavailable)?;
        let request = parse_and_validate(app, name, &signature, headers, body)?;
        let request_id = request_id(app, &request);
        debug!(ensemble = %name, request_id = %request_id, "ensemble request");
        let deadline = deadline(spec.deadline, request.timeout);
        let answer =
            ensemble::run(&app.router, &spec, request.inputs, deadline, &request_id).await?;
        let outputs = response::select_outputs(answer.outputs, &request.outputs)?;
        return response::encode(
            InferResponse {
                model_name: name,
                model_version: ENSEMBLE_VERSION,
                id: request.id.as_deref(),
                parameters: member_parameters(&answer.report),
                outputs,
            },
            &request.outputs,
            request.binary_output,
        );
    }
    run_model(app, catalog, name, version, headers, body).await
}

async fn run_model(
    app: &App,
    catalog: &Catalog,
    name: &str,
    version: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let info = catalog
        .model(name, version.as_deref())
        .ok_or_else(|| ApiError::ModelNotFound {
            model: name.to_string(),
            version: version.clone(),
        })?;
    let signature = Catalog::model_signature(&info);
    let request = parse_and_validate(app, name, &signature, headers, body)?;
    let request_id = request_id(app, &request);
    let call = InferCall {
        model: name.to_string(),
        version,
        inputs: request.inputs,
        outputs: request.outputs.iter().map(|o| o.name.clone()).collect(),
        request_id,
    };
    let deadline = deadline(app.limits.model_deadline, request.timeout);
    let reply = app.router.call(call, deadline).await.result?;
    let outputs = response::select_outputs(reply.outputs, &request.outputs)?;
    response::encode(
        InferResponse {
            model_name: name,
            model_version: &reply.version,
            id: request.id.as_deref(),
            parameters: Map::new(),
            outputs,
        },
        &request.outputs,
        request.binary_output,
    )
}

/// The response `parameters` that say which members an ensemble answer came from.
fn member_parameters(report: &MemberReport) -> Map<String, Value> {
    let mut p = Map::new();
    p.insert("degraded".into(), Value::Bool(report.degraded()));
    p.insert("members_used".into(), Value::String(report.used.join(",")));
    p.insert(
        "members_failed".into(),
        Value::String(report.failed.join(",")),
    );
    p.insert("members_late".into(), Value::String(report.late.join(",")));
    p.insert(
        "members_retried".into(),
        Value::String(report.retried.join(",")),
    );
    p.insert(
        "members_hedged".into(),
        Value::String(report.hedged.join(",")),
    );
    p
}
