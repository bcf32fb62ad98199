//! The Open Inference Protocol v2 REST front end (axum): routes, body limits, and the decoding
//! and encoding of requests and answers around the inference core.

mod error;
mod infer;
mod json_data;
mod metadata;
mod model_config;
mod request;
mod response;
mod statistics;

pub use error::status;

use crate::infer::{Infer, InferError};
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, header};
use axum::routing::{get, post};
use bytes::Bytes;
use std::sync::Arc;

/// State every handler shares: the inference core.
pub type App = Arc<Infer>;

/// All OIP v2 routes Chorus serves, with Triton's model configuration and statistics extensions.
pub fn router(app: App) -> Router {
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
        .route("/v2/models/{model}/config", get(model_config::config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(model_config::config_version),
        )
        .route("/v2/models/stats", get(statistics::all))
        .route("/v2/models/{model}/stats", get(statistics::model))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(statistics::model_version),
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
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, InferError> {
    let too_large = || InferError::PayloadTooLarge {
        what: "request body",
        limit,
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let over_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over_limit {
            too_large()
        } else {
            InferError::bad_request(format!("could not read the request body: {e}"))
        }
    })
}
