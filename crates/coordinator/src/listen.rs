//! Accepting connections for both front doors: at most `max_connections` served at once per
//! listener (further clients wait in the kernel's listen backlog, costing nothing here),
//! TCP_NODELAY on each, the TLS handshake (when TLS is on) on the connection's own task within
//! the client timeout, and on shutdown a drain that lets requests in flight finish.

use crate::tls::{Alpn, GatewayTls};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tracing::{debug, info, warn};

/// An accepted connection: plain TCP, or TLS over it.
pub type Conn = Either<TcpStream, TlsStream<TcpStream>>;

/// Serves one connection (after its TLS handshake, if any).
pub type ServeConnection = Arc<dyn Fn(TokioIo<Conn>, Watcher) -> Served + Send + Sync>;

/// TLS for a listener: the gateway's certificates, what its front door offers in ALPN, and how
/// long a client may take to finish the handshake.
#[derive(Clone)]
pub struct ListenTls {
    pub tls: Arc<GatewayTls>,
    pub alpn: Alpn,
    pub handshake_timeout: Duration,
}

/// How long a stopping coordinator lets requests in flight finish.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Pause after a failed accept (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// One accepted connection's serving future, which hands its connection to the [`Watcher`] so
/// that a shutdown can drain it.
pub type Served = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Accepts on `listener` until `shutdown` completes, serving each connection with `serve` on its
/// own task while at most `max_connections` are open, then drains (at most [`DRAIN_GRACE`]).
/// `front` names the front door in logs.
pub async fn accept_loop(
    front: &'static str,
    listener: TcpListener,
    max_connections: usize,
    tls: Option<ListenTls>,
    shutdown: impl Future<Output = ()> + Send,
    serve: ServeConnection,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // A free slot first, so that a full coordinator leaves new clients in the backlog.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(front, error = %error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        if let Err(error) = stream.set_nodelay(true) {
            debug!(front, error = %error, "cannot set TCP_NODELAY");
        }
        let watcher = graceful.watcher();
        let (tls, serve) = (tls.clone(), Arc::clone(&serve));
        tokio::spawn(async move {
            let conn = match tls {
                None => Either::Left(stream),
                Some(tls) => match handshake(&tls, stream).await {
                    Some(conn) => Either::Right(conn),
                    None => return,
                },
            };
            serve(TokioIo::new(conn), watcher).await;
            drop(slot);
        });
    }
    drain(front, graceful).await;
    Ok(())
}

/// The server side of a TLS handshake, within the client timeout; failures are the client's
/// (a plain-HTTP client, an untrusted certificate under mTLS, a client that went quiet) and
/// logged at debug.
async fn handshake(tls: &ListenTls, stream: TcpStream) -> Option<TlsStream<TcpStream>> {
    let peer = stream.peer_addr().ok();
    let accepting = tls.tls.acceptor(tls.alpn).accept(stream);
    match tokio::time::timeout(tls.handshake_timeout, accepting).await {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(error)) => {
            debug!(peer = ?peer, error = %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            debug!(peer = ?peer, "TLS handshake timed out");
            None
        }
    }
}

async fn drain(front: &'static str, graceful: GracefulShutdown) {
    if tokio::time::timeout(DRAIN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        info!(
            front,
            grace_s = DRAIN_GRACE.as_secs(),
            "requests still running after the drain grace; closing"
        );
    }
}
