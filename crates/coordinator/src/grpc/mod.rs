//! The Open Inference Protocol v2 gRPC front end (tonic): `inference.GRPCInferenceService` with
//! Triton's streaming, model configuration, statistics and repository index additions, on the
//! same inference core as REST.

pub mod codec;
mod decode;
mod encode;
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

use crate::infer::Infer;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use proto::grpc_inference_service_server::GrpcInferenceServiceServer;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tracing::{debug, info, warn};

/// How long a stopping coordinator lets gRPC calls in flight finish.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Pause after a failed accept (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves gRPC on `listener` until `shutdown` completes, then lets calls in flight finish (at
/// most [`DRAIN_GRACE`]). Request messages are limited to the core's request limit (the REST
/// body limit); larger ones get RESOURCE_EXHAUSTED.
///
/// tonic's generated service runs on hyper's HTTP/2 connections directly, not under tonic's
/// `transport::Server`: that server's per-call layers (a router, a `grpc-timeout` timer that
/// answers CANCELLED when it fires) cost time on every call and race the core's own deadline,
/// which answers an ensemble's partial result instead (decisions.md).
pub async fn serve(
    listener: TcpListener,
    app: Arc<Infer>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let limit = app.limits().max_request_bytes;
    // Compressed messages are read and, for clients that accept them, answers sent compressed;
    // the decompressed size counts against the same limit.
    let grpc = GrpcInferenceServiceServer::new(service::Service::new(app))
        .max_decoding_message_size(limit)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Deflate)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Deflate)
        .send_compressed(CompressionEncoding::Zstd);
    let service = tower::util::MapResponse::new(grpc, move |response| {
        status::remap_decode_error_response(response, limit)
    });
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(error = %error, "gRPC accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        if let Err(error) = stream.set_nodelay(true) {
            debug!(error = %error, "cannot set TCP_NODELAY on a gRPC connection");
        }
        let connection = http2.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(service.clone()),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(error = %error, "gRPC connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(DRAIN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        info!(
            grace_s = DRAIN_GRACE.as_secs(),
            "gRPC calls still running after the drain grace; closing"
        );
    }
    Ok(())
}
