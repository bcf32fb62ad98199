//! An operator's drain on the admin port (what `chorus drain` sends):
//! `POST /chorus/workers/{id}/drain` asks the worker, over its RPC link, to stop taking work
//! (it marks its etcd record `draining`, so every coordinator stops routing to it, and keeps
//! running); `GET` on the same path reports the drain's progress as the worker itself counts it.
//!
//! Statuses: 202 while the worker still has calls in flight, 200 once it has none; 404 for a
//! worker this coordinator does not know; 503 when it knows the worker but has no link to it;
//! 502 when the worker did not answer.

use super::App;
use crate::pool::{DrainError, WorkerHandle};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chorus_common::{DrainRecord, WorkerState};
use serde_json::{Value, json};

/// `POST /chorus/workers/{id}/drain`: drains the worker (idempotent).
pub async fn start(State(app): State<App>, Path(id): Path<String>) -> Result<Response, DrainError> {
    let worker = app.catalog().pool().worker(&id)?;
    let reply = worker.drain().await?;
    let mut body = progress_body(&worker, &reply.worker_id, reply.state, reply.in_flight);
    body["started"] = json!(reply.started);
    let (record, record_error) = match &reply.record {
        DrainRecord::Static => ("static", None),
        DrainRecord::Marked => ("marked", None),
        DrainRecord::Failed(why) => ("failed", Some(why.clone())),
    };
    body["record"] = json!(record);
    body["record_error"] = json!(record_error);
    let status = if reply.in_flight == 0 {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(body)).into_response())
}

/// `GET /chorus/workers/{id}/drain`: the worker's own state and calls in flight (from every
/// coordinator, not only this one), asked now.
pub async fn progress(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, DrainError> {
    let worker = app.catalog().pool().worker(&id)?;
    let pong = worker.drain_progress().await?;
    Ok(Json(progress_body(
        &worker,
        &pong.worker_id,
        pong.state,
        pong.in_flight,
    )))
}

/// `worker_id` and `addr` as `/chorus/workers` lists the worker; `worker` is the id it gives
/// itself (its `--worker-id`: the same with etcd, not with a static `--worker` list).
fn progress_body(worker: &WorkerHandle, own_id: &str, state: WorkerState, in_flight: u32) -> Value {
    json!({
        "worker_id": worker.worker_id,
        "addr": worker.addr,
        "worker": own_id,
        "state": state.to_string(),
        "in_flight": in_flight,
        "drained": state == WorkerState::Draining && in_flight == 0,
    })
}

/// The HTTP status of each drain failure.
fn status(error: &DrainError) -> StatusCode {
    match error {
        DrainError::UnknownWorker { .. } => StatusCode::NOT_FOUND,
        DrainError::NotConnected { .. } => StatusCode::SERVICE_UNAVAILABLE,
        DrainError::Unreachable { .. } => StatusCode::BAD_GATEWAY,
    }
}

impl IntoResponse for DrainError {
    fn into_response(self) -> Response {
        (status(&self), Json(json!({ "error": self.to_string() }))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use crate::http::admin_router;
    use crate::membership::MembershipChange;
    use crate::testing::{Behaviour, FakeWorker, Harness};
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use chorus_common::WorkerState;
    use http_body_util::BodyExt;
    use serde_json::Value;
    use std::sync::Arc;
    use tower::ServiceExt;

    use crate::testing::ONE_MEMBER_ENSEMBLE as SPECS;

    async fn send(app: axum::Router, method: &str, path: &str) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let reply = app.oneshot(request).await.unwrap();
        let status = reply.status();
        let body = reply.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_drained_worker_leaves_rotation_and_an_unknown_one_is_named() {
        let workers = [
            FakeWorker::new("w-1", &[("m", Behaviour::answer(&[0.2, 0.8]))]),
            FakeWorker::new("w-2", &[("m", Behaviour::answer(&[0.2, 0.8]))]),
        ];
        let harness = Harness::start(SPECS, &workers).await;
        let app = Arc::new(harness.infer);
        let admin = admin_router(Arc::clone(&app));
        let pool = Arc::clone(app.catalog().pool());
        assert!(pool.worker("w-1").unwrap().is_routable());

        let (status, body) = send(admin.clone(), "POST", "/chorus/workers/w-1/drain").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["state"], "draining");
        assert_eq!(body["drained"], true);
        assert_eq!(body["started"], true);
        assert_eq!(body["record"], "static");
        assert!(!pool.worker("w-1").unwrap().is_routable(), "out at once");
        assert!(pool.worker("w-2").unwrap().is_routable());
        let (status, body) = send(admin.clone(), "GET", "/chorus/workers/w-1/drain").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["in_flight"], 0);
        assert_eq!(body["state"], "draining");
        // Asking again changes nothing.
        let (status, body) = send(admin.clone(), "POST", "/chorus/workers/w-1/drain").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["started"], false);

        let (status, body) = send(admin.clone(), "POST", "/chorus/workers/w-9/drain").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let message = body["error"].as_str().unwrap();
        assert!(
            message.contains("no worker 'w-9'") && message.contains("chorus status"),
            "{message}"
        );

        // Known, but no link to it (nothing answers at its address): says so, drains nothing.
        pool.apply(MembershipChange::Joined {
            worker_id: "w-gone".into(),
            addr: "nowhere:1".into(),
            state: WorkerState::Serving,
        });
        let (status, body) = send(admin, "POST", "/chorus/workers/w-gone/drain").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let message = body["error"].as_str().unwrap();
        assert!(
            message.contains("'w-gone' at nowhere:1 is not connected"),
            "{message}"
        );
    }
}
