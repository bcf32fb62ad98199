//! An operator's drain (`chorus drain`) as the pool carries it out: the `drain` RPC to one
//! worker, which then refuses new work and marks its etcd record `draining` (so every
//! coordinator stops routing to it), and that worker out of this coordinator's rotation at once
//! rather than at its next pong. Also the drain's progress: the worker's own state and calls in
//! flight, from every coordinator, asked with a ping.

use super::Pool;
use super::handle::{WorkerHandle, rpc_context};
use chorus_common::{DrainReply, Pong, WorkerState};
use std::sync::Arc;
use std::time::Duration;
use tarpc::client::RpcError;
use tokio::time::Instant;
use tracing::info;

/// How long the worker may take to answer: it waits for etcd to take the record's update
/// (bounded by its lease TTL), which is slower than a ping.
pub const DRAIN_RPC_DEADLINE: Duration = Duration::from_secs(15);

/// How long a progress ping may take.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(5);

/// Why a worker could not be asked to drain (or how its drain goes). Each message says what to
/// check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrainError {
    #[error(
        "no worker '{worker}' is known to this coordinator; `chorus status` lists the worker ids it knows"
    )]
    UnknownWorker { worker: String },
    /// Known, but with no RPC link now (down, restarting, ejected, or not yet connected).
    #[error(
        "worker '{worker}' at {addr} is not connected to this coordinator (it may be down or restarting); nothing was drained, try again once `chorus status` shows it"
    )]
    NotConnected { worker: String, addr: String },
    /// The link is up but the call failed or got no answer in time.
    #[error("worker '{worker}' at {addr} did not answer: {message}")]
    Unreachable {
        worker: String,
        addr: String,
        message: String,
    },
}

impl Pool {
    /// The worker known by `name`: its id in this pool (from etcd, or its address in a static
    /// `--worker` list), else its address, else the id it describes itself with (its
    /// `--worker-id`, so that one name works against either kind of coordinator).
    pub fn worker(&self, name: &str) -> Result<Arc<WorkerHandle>, DrainError> {
        let workers = self.workers();
        let by_id = workers.iter().find(|w| w.worker_id == name);
        let by_addr = || workers.iter().find(|w| w.addr == name);
        let by_own_id = || {
            workers
                .iter()
                .find(|w| w.info().is_some_and(|info| info.worker_id == name))
        };
        by_id
            .or_else(by_addr)
            .or_else(by_own_id)
            .cloned()
            .ok_or_else(|| DrainError::UnknownWorker {
                worker: name.to_string(),
            })
    }
}

impl WorkerHandle {
    /// Asks the worker to drain, and takes it out of this coordinator's rotation once it has
    /// said yes.
    pub async fn drain(&self) -> Result<DrainReply, DrainError> {
        let client = self.client().ok_or_else(|| self.not_connected())?;
        let deadline = Instant::now() + DRAIN_RPC_DEADLINE;
        let reply = client
            .drain(rpc_context(deadline))
            .await
            .map_err(|e| self.unreachable(e))?;
        if self
            .health
            .set_draining(reply.state == WorkerState::Draining)
            || reply.started
        {
            info!(worker = %self.worker_id, addr = %self.addr, in_flight = reply.in_flight, record = ?reply.record, "worker drained on an operator's request");
        }
        Ok(reply)
    }

    /// The worker's own state and calls in flight (from every coordinator), asked now.
    pub async fn drain_progress(&self) -> Result<Pong, DrainError> {
        let client = self.client().ok_or_else(|| self.not_connected())?;
        let deadline = Instant::now() + PROGRESS_DEADLINE;
        client
            .ping(rpc_context(deadline))
            .await
            .map_err(|e| self.unreachable(e))
    }

    fn not_connected(&self) -> DrainError {
        DrainError::NotConnected {
            worker: self.worker_id.clone(),
            addr: self.addr.clone(),
        }
    }

    fn unreachable(&self, e: RpcError) -> DrainError {
        DrainError::Unreachable {
            worker: self.worker_id.clone(),
            addr: self.addr.clone(),
            message: e.to_string(),
        }
    }
}
