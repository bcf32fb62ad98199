//! The worker's small HTTP listener: Prometheus `/metrics`, a `/health` check for container
//! healthchecks and Kubernetes readiness probes, and the operator's `POST /admin/reload` (what
//! `chorus reload` sends; the same as SIGHUP). The binary binds it (`--metrics-addr`); it stops
//! with the worker. Like the coordinator's admin port it takes no key: bind it where only
//! operators and scrapers reach it (docs/security.md).

use crate::metrics::CONTENT_TYPE;
use crate::reload::{ReloadError, ReloadHandle, ReloadReport};
use crate::service::Shared;
use axum::Json;
use axum::Router;
use axum::extract::{FromRef, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// What the handlers see: the worker's shared state and, when it can reload, its reloader.
#[derive(Debug, Clone)]
pub struct HttpState {
    shared: Arc<Shared>,
    reload: Option<ReloadHandle>,
}

impl HttpState {
    pub fn new(shared: Arc<Shared>, reload: Option<ReloadHandle>) -> Self {
        HttpState { shared, reload }
    }
}

impl FromRef<HttpState> for Arc<Shared> {
    fn from_ref(state: &HttpState) -> Self {
        Arc::clone(&state.shared)
    }
}

impl FromRef<HttpState> for Option<ReloadHandle> {
    fn from_ref(state: &HttpState) -> Self {
        state.reload.clone()
    }
}

/// A refusal's body.
#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

/// A partial reload's body: the report, and what failed in one line.
#[derive(Serialize)]
struct PartialBody {
    #[serde(flatten)]
    report: ReloadReport,
    error: String,
}

/// `/metrics`, `/health` and `POST /admin/reload` over the worker's state.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/admin/reload", post(reload))
        .with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// How a reload answers: 200 with the report when everything in the repository now serves;
/// 422 with the report and an `error` naming each failure when some version could not be
/// loaded or model scanned (those serve as before); 422 with only `error` when the repository
/// was refused whole (nothing changed); 500 if the reload itself broke; 404 where this listener
/// has no reloader.
enum ReloadOutcome {
    Done(ReloadReport),
    Refused(ReloadError),
    Unavailable,
}

impl IntoResponse for ReloadOutcome {
    fn into_response(self) -> Response {
        match self {
            ReloadOutcome::Done(report) if report.is_complete() => {
                (StatusCode::OK, Json(report)).into_response()
            }
            ReloadOutcome::Done(report) => {
                let error = format!(
                    "some models could not be reloaded and serve as before: {}",
                    report.failure_summary()
                );
                let body = PartialBody { report, error };
                (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
            }
            ReloadOutcome::Refused(e) => {
                let status = match e {
                    ReloadError::Repository(_) | ReloadError::Empty { .. } => {
                        StatusCode::UNPROCESSABLE_ENTITY
                    }
                    ReloadError::Panicked => StatusCode::INTERNAL_SERVER_ERROR,
                };
                let error = e.to_string();
                (status, Json(ErrorBody { error })).into_response()
            }
            ReloadOutcome::Unavailable => (
                StatusCode::NOT_FOUND,
                Json(ErrorBody {
                    error: "this listener cannot reload models".into(),
                }),
            )
                .into_response(),
        }
    }
}

/// `POST /admin/reload`: rescans the model repository (see `reload.rs`) and answers when the
/// new versions serve (retired ones unload in the background as their calls end).
async fn reload(State(handle): State<Option<ReloadHandle>>) -> ReloadOutcome {
    let Some(handle) = handle else {
        return ReloadOutcome::Unavailable;
    };
    match handle.reload().await {
        Ok(report) => ReloadOutcome::Done(report),
        Err(e) => {
            tracing::warn!(error = %e, "model repository reload refused");
            ReloadOutcome::Refused(e)
        }
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        shared.metrics.encode(),
    )
}

/// 200 while the worker takes work (`serving`) or has been drained by an operator (`drained`:
/// alive, so a liveness probe must not restart it); 503 while it drains to shut down or has lost
/// its etcd lease.
async fn health(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    match shared.health() {
        Ok(()) if shared.is_drained() => (StatusCode::OK, "drained\n".to_string()),
        Ok(()) => (StatusCode::OK, "serving\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::registry::Registry;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn shared() -> Arc<Shared> {
        let metrics = Arc::new(Metrics::new());
        Arc::new(Shared::new(
            "w".into(),
            "127.0.0.1:1".into(),
            Registry::default(),
            metrics,
        ))
    }

    async fn get(shared: &Arc<Shared>, path: &str) -> (StatusCode, String, Option<String>) {
        let response = router(HttpState::new(Arc::clone(shared), None))
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            String::from_utf8(body.to_vec()).unwrap(),
            content_type,
        )
    }

    #[tokio::test]
    async fn health_follows_draining_and_the_lease() {
        let shared = shared();
        assert_eq!(get(&shared, "/health").await.0, StatusCode::OK);
        shared.set_lease_lost(true);
        let (status, body, _) = get(&shared, "/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("lease"), "{body}");
        shared.set_lease_lost(false);
        assert_eq!(get(&shared, "/health").await.0, StatusCode::OK);
        shared.start_draining();
        let (status, body, _) = get(&shared, "/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("draining"), "{body}");
    }

    #[tokio::test]
    async fn an_operator_drain_refuses_work_but_stays_healthy() {
        let shared = shared();
        shared.set_lease_lost(false);
        let reply = shared.drain().await;
        assert!(reply.started);
        assert_eq!(reply.state, chorus_common::WorkerState::Draining);
        assert_eq!(reply.record, chorus_common::DrainRecord::Static);
        assert!(!shared.takes_work());
        // Alive: a liveness probe must not restart it into serving again.
        let (status, body, _) = get(&shared, "/health").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "drained\n");
        assert!(
            !shared.drain().await.started,
            "a second drain changes nothing"
        );
        // A re-registration after a lost lease does not bring it back.
        shared.set_lease_lost(true);
        shared.set_lease_lost(false);
        assert!(!shared.takes_work());
        shared.start_draining();
        assert_eq!(
            get(&shared, "/health").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text_and_follow_the_registration() {
        let shared = shared();
        shared.set_lease_lost(false);
        let (status, body, content_type) = get(&shared, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some(CONTENT_TYPE));
        assert!(body.contains("\nchorus_worker_registered 1\n"), "{body}");
        shared.set_lease_lost(true);
        let (_, body, _) = get(&shared, "/metrics").await;
        assert!(body.contains("\nchorus_worker_registered 0\n"), "{body}");
        assert_eq!(get(&shared, "/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn reload_is_a_post_and_says_when_it_cannot() {
        let shared = shared();
        assert_eq!(
            get(&shared, "/admin/reload").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        let response = router(HttpState::new(Arc::clone(&shared), None))
            .oneshot(Request::post("/admin/reload").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
}
