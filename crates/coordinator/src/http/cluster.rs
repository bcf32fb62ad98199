//! `GET /chorus/ensembles` on the admin port: what `chorus status` and `chorus models` show —
//! each ensemble with its members, weights, quorum, limits, readiness and accuracy against
//! feedback, and each model with its versions and how many replicas are in rotation.

use super::App;
use crate::pool::Pool;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

/// Replicas in rotation that serve `model` (any version when `version` is `None`).
fn replicas(pool: &Pool, model: &str, version: Option<&str>) -> usize {
    pool.workers()
        .iter()
        .filter(|w| w.is_routable() && w.serves(model, version))
        .count()
}

pub async fn ensembles(State(app): State<App>) -> Json<Value> {
    let catalog = app.catalog();
    let pool = catalog.pool();
    let ensembles: Vec<Value> = catalog
        .ensembles()
        .iter()
        .map(|spec| {
            let unready = catalog.ensemble_unready_reason(spec);
            let members: Vec<Value> = spec
                .members
                .iter()
                .map(|m| {
                    json!({
                        "model": m.model,
                        "version": m.version,
                        "weight": m.weight,
                        "replicas": replicas(pool, &m.model, m.version.as_deref()),
                    })
                })
                .collect();
            json!({
                "name": spec.name,
                "version": spec.version,
                "combiner": spec.combiner.as_str(),
                "deadline_ms": spec.deadline.as_millis() as u64,
                "min_members": spec.min_members,
                "members": members,
                "meta_model": spec.meta_model.as_ref().map(|(model, version)| json!({
                    "model": model,
                    "version": version,
                    "replicas": replicas(pool, model, version.as_deref()),
                })),
                "limits": {
                    "max_inflight": spec.limits.max_inflight,
                    "rate_limit": spec.limits.rate_limit,
                    "burst": spec.limits.burst,
                },
                "ready": unready.is_none(),
                "unready_reason": unready,
                "online_weights": app.feedback().weights(spec).map(|r| super::feedback::weights_json(spec, &r)),
                "accuracy": app.feedback().standing(spec),
            })
        })
        .collect();
    let models: Vec<Value> = pool
        .models()
        .iter()
        .map(|(name, versions)| {
            let versions: Vec<&str> = versions.iter().map(|m| m.version.as_str()).collect();
            let replicas = replicas(pool, name, None);
            json!({
                "name": name,
                "versions": versions,
                "replicas": replicas,
                "ready": replicas > 0,
            })
        })
        .collect();
    Json(json!({
        "ready": app.server_ready(),
        "ensembles": ensembles,
        "models": models,
    }))
}
