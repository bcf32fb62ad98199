//! The RPC server: accept loop, one tarpc channel per connection, graceful drain on shutdown.

use crate::closable::UntilClosed;
use crate::service::{Shared, WorkerServer};
use chorus_common::WorkerService;
use chorus_common::transport::framed;
use futures::StreamExt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tarpc::server::{BaseChannel, Channel};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long closing connections may take to write the answers they still owe.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Serves until `shutdown` resolves, then drains: new inference is refused with `Draining` while
/// calls already in flight finish (for up to `drain_timeout`); then every connection stops
/// reading, writes what it still owes and closes.
pub async fn run(
    shared: Arc<Shared>,
    listener: TcpListener,
    max_frame_bytes: usize,
    drain_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let mut connections = JoinSet::new();
    let (closing, closing_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    info!(
        worker_id = %shared.worker_id,
        addr = %shared.rpc_addr,
        capacity = shared.registry.capacity(),
        "worker serving"
    );
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(
                        Arc::clone(&shared),
                        stream,
                        peer,
                        max_frame_bytes,
                        closing_rx.clone(),
                    ));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reap finished connections so the set does not grow with every client ever seen.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    shared.start_draining();
    info!(in_flight = shared.in_flight(), "worker draining");
    if tokio::time::timeout(drain_timeout, shared.idle())
        .await
        .is_err()
    {
        warn!(
            in_flight = shared.in_flight(),
            timeout_s = drain_timeout.as_secs_f64(),
            "drain timed out, closing connections with calls in flight"
        );
    }
    // Connections stay open during the drain so that answers and "draining" refusals reach
    // their callers; now they stop reading and finish writing.
    let _ = closing.send(true);
    let closed = tokio::time::timeout(CLOSE_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if closed.is_err() {
        warn!(
            connections = connections.len(),
            "connections did not close in time, aborting them"
        );
    }
    connections.shutdown().await;
    info!(worker_id = %shared.worker_id, "worker stopped");
    Ok(())
}

async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    max_frame_bytes: usize,
    closing: watch::Receiver<bool>,
) {
    let transport = match framed(stream, max_frame_bytes) {
        Ok(transport) => UntilClosed::new(transport, closing),
        Err(e) => {
            warn!(peer = %peer, error = %e, "cannot set up connection");
            return;
        }
    };
    debug!(peer = %peer, "connection opened");
    BaseChannel::with_defaults(transport)
        .execute(WorkerServer(shared).serve())
        // Spawned, or the calls of one connection would run one after another.
        .for_each(|call| async {
            tokio::spawn(call);
        })
        .await;
    debug!(peer = %peer, "connection closed");
}
