//! Accepting connections for both front doors: at most `max_connections` served at once per
//! listener (further clients wait in the kernel's listen backlog, costing nothing here),
//! TCP_NODELAY on each, and on shutdown a drain that lets requests in flight finish.

use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

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
    shutdown: impl Future<Output = ()> + Send,
    serve: impl Fn(TokioIo<TcpStream>, Watcher) -> Served,
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
        let connection = serve(TokioIo::new(stream), graceful.watcher());
        tokio::spawn(async move {
            connection.await;
            drop(slot);
        });
    }
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
    Ok(())
}
