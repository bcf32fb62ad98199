//! Serving the REST router with the client limits: HTTP/1.1 (as Triton's HTTP port; gRPC has its
//! own), at most `max_connections` at once, and `client_timeout` for a client to send a
//! request's headers (which also bounds how long a connection may sit silent, new or idle
//! between requests; it is closed) and each piece of a body after the last (408).
//!
//! hyper's HTTP/1.1 connection is used directly: `axum::serve`'s version sniffing waits for a
//! first byte with no timeout, so a client that connects and sends nothing would hold its
//! connection for ever.

use crate::listen::{self, ListenTls};
use crate::tls::{Alpn, GatewayTls};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tracing::debug;

/// What the REST front door allows one client.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// Longest a client may take to send a request's headers, to send the next piece of its
    /// body, or to start its next request on a keep-alive connection.
    pub timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` completes, then drains.
pub async fn serve(
    front: &'static str,
    listener: TcpListener,
    router: Router,
    limits: ClientLimits,
    tls: Option<Arc<GatewayTls>>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let router = router.layer(RequestBodyTimeoutLayer::new(limits.timeout));
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.timeout);
    let tls = tls.map(|tls| ListenTls {
        tls,
        alpn: Alpn::Http1,
        handshake_timeout: limits.timeout,
    });
    listen::accept_loop(
        front,
        listener,
        limits.max_connections,
        tls,
        shutdown,
        Arc::new(move |io, watcher| {
            let connection =
                watcher.watch(http1.serve_connection(io, TowerToHyperService::new(router.clone())));
            Box::pin(async move {
                if let Err(error) = connection.await {
                    debug!(error = %error, "HTTP connection ended with an error");
                }
            })
        }),
    )
    .await
}
