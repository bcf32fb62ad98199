//! One worker as the coordinator sees it: its RPC link and self-description, its load and its
//! health, and inference calls on it.

use super::PoolSettings;
use super::connector::Connector;
use super::error::CallError;
use super::health::Health;
use super::load::Load;
use chorus_common::rpc::{InferCall, InferReply};
use chorus_common::{WorkerError, WorkerInfo, WorkerServiceClient};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tarpc::client::RpcError;
use tarpc::context;
use tokio::time::Instant;
use tracing::warn;

/// Longest deadline put on one RPC: tarpc's timer wheel panics on deadlines years away, which an
/// ensemble spec's `deadline_ms` could otherwise ask for.
const MAX_RPC_DEADLINE: Duration = Duration::from_secs(3600);

/// A tarpc context whose deadline is `deadline` (a tokio instant, so that tests on a paused
/// clock agree with it), at most [`MAX_RPC_DEADLINE`] away.
pub(super) fn rpc_context(deadline: Instant) -> context::Context {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let mut ctx = context::current();
    ctx.deadline = std::time::Instant::now() + remaining.min(MAX_RPC_DEADLINE);
    ctx
}

/// What the pool knows of one worker's link.
#[derive(Default)]
struct Link {
    client: Option<WorkerServiceClient>,
    info: Option<Arc<WorkerInfo>>,
}

pub struct WorkerHandle {
    pub worker_id: String,
    pub addr: String,
    /// The pool's metadata generation, bumped when this worker (re)describes itself.
    generation: Arc<AtomicU64>,
    link: Mutex<Link>,
    pub(super) load: Load,
    pub(super) health: Health,
    pub(super) settings: PoolSettings,
    pub(super) connector: Arc<dyn Connector>,
}

impl WorkerHandle {
    pub(super) fn new(
        worker_id: String,
        addr: String,
        settings: PoolSettings,
        health: Health,
        generation: Arc<AtomicU64>,
        connector: Arc<dyn Connector>,
    ) -> Self {
        WorkerHandle {
            worker_id,
            addr,
            generation,
            link: Mutex::default(),
            load: Load::default(),
            health,
            settings,
            connector,
        }
    }

    pub(super) fn client(&self) -> Option<WorkerServiceClient> {
        self.link.lock().expect("link lock").client.clone()
    }

    /// Installs a fresh link and the worker's self-description.
    pub(super) fn linked(&self, client: WorkerServiceClient, info: WorkerInfo) {
        let mut link = self.link.lock().expect("link lock");
        link.client = Some(client);
        link.info = Some(Arc::new(info));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The worker's last known self-description, kept across reconnects.
    pub fn info(&self) -> Option<Arc<WorkerInfo>> {
        self.link.lock().expect("link lock").info.clone()
    }

    /// In rotation: linked, answering probes and not draining.
    pub fn is_routable(&self) -> bool {
        self.health.is_routable()
    }

    pub fn serves(&self, model: &str, version: Option<&str>) -> bool {
        self.info().is_some_and(|info| {
            info.models
                .iter()
                .any(|m| m.name == model && version.is_none_or(|v| m.version == v))
        })
    }

    /// Counts a failed probe or call; enough in a row take the worker out of rotation.
    pub(super) fn record_failure(&self, reason: &str) {
        if let Some(failures) = self.health.failed() {
            warn!(worker = %self.worker_id, addr = %self.addr, failures, reason, "worker ejected");
        }
    }

    /// The link is dead for good (a tarpc client never recovers from shutdown): drop it so the
    /// prober reconnects, and stop routing at once.
    pub(super) fn drop_link(&self, reason: &str) {
        self.link.lock().expect("link lock").client = None;
        if self.health.eject() {
            warn!(worker = %self.worker_id, addr = %self.addr, reason, "worker link lost");
        }
    }

    /// Runs one inference call on this worker under `deadline`.
    pub async fn infer(&self, call: InferCall, deadline: Instant) -> Result<InferReply, CallError> {
        let worker = || self.worker_id.clone();
        let client = self.client().ok_or_else(|| CallError::Transport {
            worker: worker(),
            message: "not connected".into(),
        })?;
        let _outstanding = self.load.call_started();
        let started = Instant::now();
        let answer = client.infer(rpc_context(deadline), call).await;
        if answer.is_ok() {
            self.load.note_progress(Instant::now());
        }
        match answer {
            Ok(Ok(reply)) => {
                self.health.succeeded();
                self.load.call_succeeded(started.elapsed());
                Ok(reply)
            }
            Ok(Err(error)) => {
                if matches!(error, WorkerError::Draining) {
                    self.health.set_draining(true);
                }
                Err(CallError::Worker {
                    worker: worker(),
                    error,
                })
            }
            // A missed deadline is not held against the worker: the client may have asked for
            // a millisecond. Frozen workers are caught by the pings, whose deadline we choose.
            Err(RpcError::DeadlineExceeded) => {
                Err(CallError::DeadlineExceeded { worker: worker() })
            }
            Err(e @ (RpcError::Shutdown | RpcError::Channel(_))) => {
                self.drop_link(&e.to_string());
                Err(CallError::Transport {
                    worker: worker(),
                    message: e.to_string(),
                })
            }
            Err(e) => {
                self.record_failure(&e.to_string());
                Err(CallError::Transport {
                    worker: worker(),
                    message: e.to_string(),
                })
            }
        }
    }
}
