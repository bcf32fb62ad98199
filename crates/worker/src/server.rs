//! The RPC server: accept loop (TCP, and the `--local-socket` Unix socket when there is one), one
//! tarpc channel per connection (behind a mutual-TLS handshake on TCP when `--rpc-tls-*` is
//! given), graceful drain on shutdown, and the etcd registration's part in it (refuse work while
//! unregistered, draining, revoke).

use crate::closable::UntilClosed;
use crate::local_socket::LocalSocket;
use crate::registration::{Membership, RegistrationHandle};
use crate::service::{Shared, WorkerServer};
use chorus_common::WorkerService;
use chorus_common::rpc_tls;
use chorus_common::transport::{clamp_request_deadline, framed_over, tune};
use futures::{StreamExt, TryStreamExt};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tarpc::server::{BaseChannel, Channel};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long closing connections may take to write the answers they still owe.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How every RPC connection is set up.
#[derive(Clone)]
pub struct LinkSettings {
    /// Largest frame read or written.
    pub max_frame_bytes: usize,
    /// Mutual TLS: `None` serves plaintext.
    pub tls: Option<TlsAcceptor>,
}

impl LinkSettings {
    /// Plaintext links with frames up to `max_frame_bytes`.
    pub fn plaintext(max_frame_bytes: usize) -> Self {
        LinkSettings {
            max_frame_bytes,
            tls: None,
        }
    }
}

impl std::fmt::Debug for LinkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSettings")
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Where the worker accepts RPC connections: its TCP listener and, with `--local-socket`, a
/// Unix socket (plaintext; see [`crate::local_socket`]).
#[derive(Debug)]
pub struct Listeners {
    pub tcp: TcpListener,
    pub local: Option<LocalSocket>,
}

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
    run_registered(
        shared,
        Listeners {
            tcp: listener,
            local: None,
        },
        LinkSettings::plaintext(max_frame_bytes),
        drain_timeout,
        None,
        shutdown,
    )
    .await
}

/// [`run`] for a worker registered in etcd (when `registration` is given): it refuses new work
/// while etcd says its lease is lost (not while etcd is merely unreachable); on shutdown it marks
/// itself draining in etcd before the drain and revokes its lease after it, then returns `Ok`.
/// If the registration gives up (lease lost and no re-registration for too long), it stops
/// accepting, drains and returns the error, for the process to exit non-zero.
pub async fn run_registered(
    shared: Arc<Shared>,
    listeners: Listeners,
    links: LinkSettings,
    drain_timeout: Duration,
    mut registration: Option<RegistrationHandle>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let mut connections = JoinSet::new();
    let (closing, closing_rx) = watch::channel(false);
    let follower = registration
        .as_ref()
        .map(|r| tokio::spawn(follow_membership(Arc::clone(&shared), r.membership())));
    info!(
        worker_id = %shared.worker_id,
        addr = %shared.rpc_addr,
        local_socket = listeners.local.as_ref().map(|l| l.path().display().to_string()),
        capacity = shared.registry().capacity(),
        mtls = links.tls.is_some(),
        "worker serving"
    );
    let gave_up = async {
        match registration.as_mut() {
            Some(registration) => registration.failed().await,
            None => std::future::pending().await,
        }
    };
    let stopped = accept_until(
        &shared,
        &listeners,
        &mut connections,
        &closing_rx,
        &links,
        async {
            tokio::select! {
                () = shutdown => None,
                error = gave_up => Some(error),
            }
        },
    )
    .await;
    // New connections are refused from here on (the socket file goes with its listener).
    drop(listeners);
    shared.start_draining();
    if let Some(follower) = follower {
        follower.abort();
    }
    if let (None, Some(registration)) = (&stopped, &registration) {
        // Coordinators watching etcd stop routing here; pings already say draining.
        if let Err(e) = registration.set_draining().await {
            warn!(worker_id = %shared.worker_id, error = %e, "cannot mark the worker draining in etcd");
        }
    }
    drain(&shared, connections, closing, drain_timeout).await;
    if let Some(error) = stopped {
        shared.metrics.set_registered(false);
        error!(
            worker_id = %shared.worker_id,
            error = %error,
            "etcd registration lost for good, worker stopping"
        );
        return Err(error.into());
    }
    if let Some(registration) = registration {
        match registration.revoke().await {
            Ok(()) => shared.metrics.set_registered(false),
            Err(e) => warn!(
                worker_id = %shared.worker_id,
                error = %e,
                "cannot revoke the etcd lease; the registration disappears when it expires"
            ),
        }
    }
    info!(worker_id = %shared.worker_id, "worker stopped");
    Ok(())
}

/// Accepts connections until `stop` resolves, and returns its output.
async fn accept_until<T>(
    shared: &Arc<Shared>,
    listeners: &Listeners,
    connections: &mut JoinSet<()>,
    closing: &watch::Receiver<bool>,
    links: &LinkSettings,
    stop: impl Future<Output = T>,
) -> T {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            output = &mut stop => return output,
            accepted = accept_local(listeners.local.as_ref()) => match accepted {
                Ok(stream) => {
                    connections.spawn(serve_stream(
                        Arc::clone(shared),
                        stream,
                        "local socket",
                        links.max_frame_bytes,
                        closing.clone(),
                    ));
                }
                Err(e) => {
                    warn!(error = %e, "accept on the local socket failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            accepted = listeners.tcp.accept() => match accepted {
                Ok((stream, peer)) => {
                    // The TLS handshake runs on the connection's task: a slow peer must not
                    // hold up the accept loop.
                    connections.spawn(serve_connection(
                        Arc::clone(shared),
                        stream,
                        peer,
                        links.clone(),
                        closing.clone(),
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
}

/// The next connection on the local socket; never, without one.
async fn accept_local(local: Option<&LocalSocket>) -> std::io::Result<UnixStream> {
    match local {
        Some(local) => local.listener().accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}

/// Waits (up to `drain_timeout`) for in-flight calls to finish, then closes every connection.
/// New inference must already be refused (`Shared::start_draining`).
async fn drain(
    shared: &Shared,
    mut connections: JoinSet<()>,
    closing: watch::Sender<bool>,
    drain_timeout: Duration,
) {
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
}

/// Mirrors the registration's membership into the service: no new work while the lease is lost.
async fn follow_membership(shared: Arc<Shared>, mut membership: watch::Receiver<Membership>) {
    loop {
        let lost = *membership.borrow_and_update() == Membership::Lost;
        shared.set_lease_lost(lost);
        if membership.changed().await.is_err() {
            return;
        }
    }
}

/// Sets up one connection (socket options, then the TLS handshake when on) and serves it.
async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    links: LinkSettings,
    closing: watch::Receiver<bool>,
) {
    if let Err(e) = tune(&stream) {
        warn!(peer = %peer, error = %e, "cannot set up connection");
        return;
    }
    let Some(acceptor) = &links.tls else {
        return serve_stream(shared, stream, peer, links.max_frame_bytes, closing).await;
    };
    match rpc_tls::accept(acceptor, stream).await {
        Ok(stream) => serve_stream(shared, stream, peer, links.max_frame_bytes, closing).await,
        // A refused certificate is a misconfigured or unwelcome coordinator: worth an operator's
        // attention. A peer that closed or went quiet (a port scan, a TCP health probe) is not.
        Err(e) if rpc_tls::is_refusal(&e) => {
            warn!(peer = %peer, error = %e, "rpc tls handshake refused");
        }
        Err(e) => debug!(peer = %peer, error = %e, "rpc tls handshake not completed"),
    }
}

async fn serve_stream<S>(
    shared: Arc<Shared>,
    stream: S,
    peer: impl std::fmt::Display,
    max_frame_bytes: usize,
    closing: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Every request's deadline clamped before tarpc's timer wheel sees it: a peer's absurd
    // deadline must not panic this connection's task.
    let transport = framed_over(stream, max_frame_bytes).map_ok(clamp_request_deadline);
    let transport = UntilClosed::new(transport, closing);
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
