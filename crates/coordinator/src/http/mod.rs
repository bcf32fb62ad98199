//! The Open Inference Protocol v2 HTTP gateway: routes, shared state, body limits.

mod error;
mod infer;
mod json_data;
mod metadata;
mod request;
mod response;

pub use error::ApiError;

use crate::catalog::Catalog;
use crate::metrics::Metrics;
use crate::router::Router as MemberRouter;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, header};
use axum::routing::{get, post};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Request limits and defaults, from the coordinator's config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Largest total of input bytes one worker call may carry (the RPC frame limit, less room
    /// for the call's other fields).
    pub max_call_bytes: usize,
    /// Deadline of single-model requests (ensembles carry their own).
    pub model_deadline: Duration,
}

impl Limits {
    /// Room left in an RPC frame for everything but the tensors' bytes.
    const FRAME_OVERHEAD: usize = 64 * 1024;

    pub fn new(max_body_bytes: usize, max_frame_bytes: usize, model_deadline: Duration) -> Self {
        Limits {
            max_body_bytes,
            max_call_bytes: max_frame_bytes.saturating_sub(Self::FRAME_OVERHEAD),
            model_deadline,
        }
    }
}

/// State every handler shares.
pub struct App {
    pub catalog: Catalog,
    pub router: Arc<MemberRouter>,
    pub limits: Limits,
    /// The router's metrics, which `GET /metrics` encodes.
    pub metrics: Arc<Metrics>,
    next_request_id: AtomicU64,
}

impl App {
    pub fn new(catalog: Catalog, router: Arc<MemberRouter>, limits: Limits) -> Self {
        App {
            catalog,
            metrics: Arc::clone(router.metrics()),
            router,
            limits,
            next_request_id: AtomicU64::new(1),
        }
    }

    /// An id for logs when the client sent none.
    fn fresh_request_id(&self) -> String {
        format!(
            "chorus-{}",
            self.next_request_id.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// All OIP v2 routes Chorus serves.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v2", get(metadata::server))
        .route("/v2/health/live", get(metadata::live))
        .route("/v2/health/ready", get(metadata::ready))
        .route("/v2/models/{model}", get(metadata::model))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(metadata::model_version),
        )
        .route("/v2/models/{model}/ready", get(metadata::model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(metadata::model_version_ready),
        )
        .route("/v2/models/{model}/infer", post(infer::infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer::infer_version),
        )
        .route("/v2/repository/index", post(metadata::repository_index))
        .route("/chorus/workers", get(metadata::workers))
        .route("/metrics", get(metadata::metrics))
        .fallback(metadata::not_found)
        .method_not_allowed_fallback(metadata::method_not_allowed)
        .with_state(app)
}

/// Reads a body up to `limit` bytes; larger bodies (declared or streamed) are refused with 413.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::BadRequest(format!("could not read the request body: {e}"))
        }
    })
}
