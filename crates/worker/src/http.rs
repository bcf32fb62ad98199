//! The worker's small HTTP listener: Prometheus `/metrics` and a `/health` check for container
//! healthchecks and Kubernetes readiness probes. The binary binds it (`--metrics-addr`); it
//! stops with the worker.

use crate::metrics::CONTENT_TYPE;
use crate::service::Shared;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// `/metrics` and `/health` over the worker's shared state.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(shared)
}

/// Serves [`router`] on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(shutdown)
        .await
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
        let response = router(Arc::clone(shared))
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
}
