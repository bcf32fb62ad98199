//! Keeping a worker's self-description fresh while it stays linked: a worker may reload its
//! models (SIGHUP, `chorus reload`) without reconnecting, so its prober asks for its metadata
//! again every [`REFRESH_PINGS`] ping intervals, and at once when the pool hears that the worker
//! changed (its etcd record did, or it answered `ModelNotFound` for a model it was thought to
//! serve). A changed model list or capacity replaces the cached one and bumps the pool's
//! generation, so that model maps and ensemble signatures are rebuilt.

use super::handle::{WorkerHandle, rpc_context};
use chorus_common::WorkerServiceClient;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info};

/// Ping intervals between two metadata calls to a linked worker: a static `--worker` list sees
/// a worker's reloaded models within this many intervals (5 s at the default 1 s pings).
pub(super) const REFRESH_PINGS: u32 = 5;

/// The prober's metadata refresh: when the next is due, and the one running.
pub(super) struct Refresh {
    every: Duration,
    next: Instant,
    running: Option<JoinHandle<()>>,
}

impl Refresh {
    pub(super) fn new(now: Instant, ping_interval: Duration) -> Self {
        let every = ping_interval * REFRESH_PINGS;
        Refresh {
            every,
            next: now + every,
            running: None,
        }
    }

    /// Starts a metadata call on `client` when one is due (or asked for) and none is running.
    pub(super) fn tick(
        &mut self,
        handle: &Arc<WorkerHandle>,
        client: &WorkerServiceClient,
        now: Instant,
    ) {
        if self
            .running
            .as_ref()
            .is_some_and(|task| !task.is_finished())
        {
            return;
        }
        if now < self.next && !handle.take_describe_wanted() {
            return;
        }
        self.next = now + self.every;
        let (handle, client) = (Arc::clone(handle), client.clone());
        self.running = Some(tokio::spawn(async move { describe(&handle, client).await }));
    }
}

impl Drop for Refresh {
    fn drop(&mut self) {
        if let Some(task) = &self.running {
            task.abort();
        }
    }
}

/// One metadata call; a failure changes nothing (pings judge the worker's health).
async fn describe(handle: &WorkerHandle, client: WorkerServiceClient) {
    let deadline = Instant::now() + handle.settings.connect_timeout;
    match tokio::time::timeout_at(deadline, client.metadata(rpc_context(deadline))).await {
        Ok(Ok(info)) => {
            let models: Vec<String> = info
                .models
                .iter()
                .map(|m| format!("{}@{}", m.name, m.version))
                .collect();
            if handle.redescribed(info) {
                info!(worker = %handle.worker_id, addr = %handle.addr, models = ?models, "worker models changed");
            }
        }
        Ok(Err(e)) => {
            debug!(worker = %handle.worker_id, error = %e, "metadata refresh failed")
        }
        Err(_) => debug!(worker = %handle.worker_id, "metadata refresh got no answer in time"),
    }
}
