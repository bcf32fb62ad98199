//! The Open Inference Protocol v2 gRPC front end (tonic): `inference.GRPCInferenceService` with
//! Triton's streaming, model configuration, statistics and repository index additions, on the
//! same inference core as REST.

pub mod codec;
mod decode;
#[cfg(test)]
mod decode_properties;
mod encode;
pub mod feedback;
mod service;
mod status;
mod stream;

pub use status::code;

/// Messages and service generated from `proto/inference.proto` (client too: `chorus bench`
/// and the tests speak gRPC with it).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("inference");
}

/// Chorus's own service from `proto/feedback.proto` (`chorus.v1.Feedback`), client included.
pub mod feedback_proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("chorus.v1");
}

use crate::http::ClientLimits;
use crate::infer::Infer;
use crate::listen::{self, ListenTls};
use crate::tls::{Alpn, GatewayTls};
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::service::TowerToHyperService;
use proto::grpc_inference_service_server::GrpcInferenceServiceServer;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tracing::debug;

/// Serves gRPC on `listener`, at most `max_connections` at once, until `shutdown` completes,
/// then lets calls in flight finish (at most [`listen::DRAIN_GRACE`]). Request messages are
/// limited to the core's request limit (the REST body limit); larger ones get
/// RESOURCE_EXHAUSTED.
///
/// tonic's generated service runs on hyper's HTTP/2 connections directly, not under tonic's
/// `transport::Server`: that server's per-call layers (a router, a `grpc-timeout` timer that
/// answers CANCELLED when it fires) cost time on every call and race the core's own deadline,
/// which answers an ensemble's partial result instead (decisions.md).
pub async fn serve(
    listener: TcpListener,
    app: Arc<Infer>,
    limits: ClientLimits,
    tls: Option<Arc<GatewayTls>>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let limit = app.limits().max_request_bytes;
    // Compressed messages are read and, for clients that accept them, answers sent compressed;
    // the decompressed size counts against the same limit.
    let inference = GrpcInferenceServiceServer::new(service::Service::new(Arc::clone(&app)))
        .max_decoding_message_size(limit)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Deflate)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Deflate)
        .send_compressed(CompressionEncoding::Zstd);
    let grpc = feedback::Dispatch::new(inference, feedback::server(app, limit));
    let service = tower::util::MapResponse::new(grpc, move |response| {
        status::remap_decode_error_response(response, limit)
    });
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new());
    let tls = tls.map(|tls| ListenTls {
        tls,
        alpn: Alpn::H2,
        handshake_timeout: limits.timeout,
    });
    listen::accept_loop(
        "grpc",
        listener,
        limits.max_connections,
        tls,
        shutdown,
        Arc::new(move |io, watcher| {
            let connection = watcher
                .watch(http2.serve_connection(io, TowerToHyperService::new(service.clone())));
            Box::pin(async move {
                if let Err(error) = connection.await {
                    debug!(error = %error, "gRPC connection ended with an error");
                }
            })
        }),
    )
    .await
}
