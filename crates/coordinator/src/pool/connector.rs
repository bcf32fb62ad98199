//! The seam between the pool and the network: how a worker's address becomes an RPC client.
//! The coordinator dials TCP (inside mutual TLS with `--rpc-tls-*`), or a `unix:` address's
//! socket on this host; the core's in-process tests hand in tarpc's in-memory transport.

use chorus_common::WorkerServiceClient;
use chorus_common::local_link::unix_path;
use chorus_common::rpc_tls;
use chorus_common::transport::{connect_worker, connect_worker_tls, connect_worker_unix};
use futures::future::BoxFuture;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio_rustls::TlsConnector;
use tracing::warn;

/// Opens RPC links to workers.
pub trait Connector: Send + Sync + 'static {
    /// A client for the worker at `addr`, or why there is none.
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<WorkerServiceClient, String>>;
}

/// Chorus's transport (see `chorus_common::transport`): TCP, or Unix sockets for `unix:`
/// addresses.
#[derive(Clone)]
pub struct SocketConnector {
    pub max_frame_bytes: usize,
    /// Bounds the TCP connect and, with TLS, the handshake too.
    pub connect_timeout: Duration,
    /// Mutual TLS: the worker's certificate must name the host part of `addr`.
    pub tls: Option<TlsConnector>,
}

impl std::fmt::Debug for SocketConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketConnector")
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Connector for SocketConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<WorkerServiceClient, String>> {
        Box::pin(async move {
            if let Some(path) = unix_path(addr) {
                if self.tls.is_some() {
                    // A worker only serves a local socket without TLS (its flags refuse both).
                    return Err(format!(
                        "{addr} is a local socket, which serves plaintext: with --rpc-tls-* list \
                         workers by host:port and start them without --local-socket"
                    ));
                }
                return connect_worker_unix(
                    Path::new(path),
                    self.max_frame_bytes,
                    self.connect_timeout,
                )
                .await
                .map_err(|e| format!("local socket {path}: {e}"));
            }
            let resolved: SocketAddr = tokio::net::lookup_host(addr)
                .await
                .map_err(|e| format!("cannot resolve {addr}: {e}"))?
                .next()
                .ok_or_else(|| format!("{addr} resolves to no address"))?;
            let Some(tls) = &self.tls else {
                return connect_worker(resolved, self.max_frame_bytes, self.connect_timeout)
                    .await
                    .map_err(|e| e.to_string());
            };
            let name = rpc_tls::server_name(addr)?;
            connect_worker_tls(
                resolved,
                name,
                tls,
                self.max_frame_bytes,
                self.connect_timeout,
            )
            .await
            .map_err(|e| {
                // The pool logs failed connects at debug (a worker restarting is routine); a
                // certificate that does not match is not routine: a misconfiguration, or an
                // etcd record pointing at something that is not our worker.
                if rpc_tls::is_refusal(&e) {
                    warn!(addr, error = %e, "worker refused: its TLS certificate is not trusted for this address");
                }
                format!("TLS link to {addr}: {e}")
            })
        })
    }
}
