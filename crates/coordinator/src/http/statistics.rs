//! Triton's statistics extension over REST: `GET /v2/models[/{m}[/versions/{v}]]/stats`, with
//! Triton's field names.

use super::App;
use crate::access::Caller;
use crate::infer::InferError;
use crate::stats::{ModelStatistics, StatDuration};
use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde_json::{Value, json};

/// Every model's statistics, less those the caller's key may not use.
pub async fn all(
    State(app): State<App>,
    caller: Option<Extension<Caller>>,
) -> Result<Json<Value>, InferError> {
    let caller = super::auth::caller_of(caller);
    let mut stats = app.statistics(None, None)?;
    stats.retain(|s| caller.may_use(&s.name));
    Ok(to_json(stats))
}

pub async fn model(
    State(app): State<App>,
    Path(model): Path<String>,
) -> Result<Json<Value>, InferError> {
    app.statistics(Some(&model), None).map(to_json)
}

pub async fn model_version(
    State(app): State<App>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, InferError> {
    app.statistics(Some(&model), Some(&version)).map(to_json)
}

fn duration(d: StatDuration) -> Value {
    json!({"count": d.count, "ns": d.ns})
}

fn to_json(stats: Vec<ModelStatistics>) -> Json<Value> {
    let models: Vec<Value> = stats
        .into_iter()
        .map(|s| {
            json!({
                "name": s.name,
                "version": s.version,
                "last_inference": s.last_inference_ms,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": duration(s.success),
                    "fail": duration(s.fail),
                    "queue": duration(s.queue),
                    "compute_input": duration(s.compute_input),
                    "compute_infer": duration(s.compute_infer),
                    "compute_output": duration(s.compute_output),
                    "cache_hit": duration(StatDuration::default()),
                    "cache_miss": duration(StatDuration::default()),
                },
                "batch_stats": [],
            })
        })
        .collect();
    Json(json!({ "model_stats": models }))
}
