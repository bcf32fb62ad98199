//! The Open Inference Protocol v2 REST front end (axum): routes, body limits, and the decoding
//! and encoding of requests and answers around the inference core.

mod auth;
mod body;
mod cluster;
mod dashboard;
mod drain;
mod error;
mod feedback;
mod infer;
mod json_data;
mod json_stream;
mod metadata;
mod model_config;
mod parameters;
mod request;
#[cfg(test)]
mod request_properties;
mod response;
mod serve;
mod statistics;
mod v1;

pub use auth::credentials;
pub use error::status;
pub use serve::{ClientLimits, serve};

use crate::infer::{Infer, InferError};
use axum::Router;
use axum::body::Body;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use bytes::Bytes;
use std::sync::Arc;
use tower_http::CompressionLevel;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::SizeAbove;

/// State every handler shares: the inference core.
pub type App = Arc<Infer>;

/// Responses smaller than this go out uncompressed whatever the client accepts: below a
/// kilobyte (a single-row answer is ~350 bytes) compressing costs more than it saves.
pub const COMPRESS_ABOVE_BYTES: u16 = 1024;

/// Compresses responses for clients that send `Accept-Encoding` (gzip, deflate, zstd), at the
/// fastest level: an inference answer is latency-bound, and the fastest level already takes a
/// JSON tensor to a fraction of its size.
fn compression() -> CompressionLayer<SizeAbove> {
    CompressionLayer::new()
        .quality(CompressionLevel::Fastest)
        .compress_when(SizeAbove::new(COMPRESS_ABOVE_BYTES))
}

/// The public port: OIP v2 inference, metadata and health, with Triton's model configuration
/// and statistics extensions and KServe V1. Health and readiness stay open for probes; with
/// `--api-keys` everything else needs a key (inference checks it in the core, the rest in
/// [`auth::require_key`]). Operator endpoints are on the admin port ([`admin_router`]).
pub fn router(app: App) -> Router {
    let keyed = Router::new()
        .route("/v2", get(metadata::server))
        .route("/v2/models/{model}", get(metadata::model))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(metadata::model_version),
        )
        .route("/v2/models/{model}/config", get(model_config::config))
        .route("/v2/models/{model}/feedback", post(feedback::feedback))
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
        .route("/v2/repository/index", post(metadata::repository_index))
        .route("/v1/models", get(v1::models))
        .route("/v1/models/{target}", get(v1::model))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            auth::require_key,
        ));
    Router::new()
        .route("/v2/health/live", get(metadata::live))
        .route("/v2/health/ready", get(metadata::ready))
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
        .route("/v1/models/{target}", post(v1::predict))
        .merge(keyed)
        .fallback(metadata::not_found)
        .method_not_allowed_fallback(metadata::method_not_allowed)
        .with_state(app)
        .layer(compression())
}

/// The admin port (`--admin-addr`, Triton's metrics port 8002): Prometheus metrics, the
/// coordinator's view of its workers and ensembles (what `chorus status` reads), and health, for operators and scrapers only. It has no
/// keys: bind it where only they can reach it (loopback by default; docs/security.md).
pub fn admin_router(app: App) -> Router {
    Router::new()
        .route("/metrics", get(metadata::metrics))
        .route("/chorus/workers", get(metadata::workers))
        .route("/chorus/ensembles", get(cluster::ensembles))
        .route(
            "/chorus/ensembles/{name}/weights/{action}",
            post(feedback::control),
        )
        .route(
            "/chorus/workers/{id}/drain",
            post(drain::start).get(drain::progress),
        )
        .merge(dashboard::routes(&app))
        .route("/v2/health/live", get(metadata::live))
        .route("/v2/health/ready", get(metadata::ready))
        .fallback(metadata::not_found)
        .method_not_allowed_fallback(metadata::method_not_allowed)
        .with_state(app)
        .layer(compression())
}

/// Reads a body up to `limit` bytes, decompressed; see [`body::read`].
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, InferError> {
    body::read(headers, body, limit).await
}
