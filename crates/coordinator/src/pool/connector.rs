//! The seam between the pool and the network: how a worker's address becomes an RPC client.
//! The coordinator dials TCP; the core's in-process tests hand in tarpc's in-memory transport.

use chorus_common::WorkerServiceClient;
use futures::future::BoxFuture;
use std::net::SocketAddr;
use std::time::Duration;

/// Opens RPC links to workers.
pub trait Connector: Send + Sync + 'static {
    /// A client for the worker at `addr`, or why there is none.
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<WorkerServiceClient, String>>;
}

/// Chorus's TCP transport (see `chorus_common::transport`).
#[derive(Debug, Clone)]
pub struct TcpConnector {
    pub max_frame_bytes: usize,
    pub connect_timeout: Duration,
}

impl Connector for TcpConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<WorkerServiceClient, String>> {
        Box::pin(async move {
            let resolved: SocketAddr = tokio::net::lookup_host(addr)
                .await
                .map_err(|e| format!("cannot resolve {addr}: {e}"))?
                .next()
                .ok_or_else(|| format!("{addr} resolves to no address"))?;
            chorus_common::transport::connect_worker(
                resolved,
                self.max_frame_bytes,
                self.connect_timeout,
            )
            .await
            .map_err(|e| e.to_string())
        })
    }
}
