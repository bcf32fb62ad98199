//! Probing one worker about every ping interval: a ping on a live link, a (re)connect and a
//! fresh self-description otherwise. Probes are what bring a worker into rotation.

use super::handle::{WorkerHandle, rpc_context};
use chorus_common::WorkerState;
use std::sync::Arc;
use tarpc::client::RpcError;
use tokio::time::Instant;
use tracing::{debug, info};

/// Probes `handle` forever (the pool aborts the task when the worker leaves).
pub(super) async fn probe_forever(handle: Arc<WorkerHandle>) {
    let mut ticker = tokio::time::interval(handle.settings.ping_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        probe(&handle).await;
        handle.health.mark_probed();
    }
}

async fn probe(handle: &WorkerHandle) {
    let Some(client) = handle.client() else {
        if let Err(reason) = connect(handle).await {
            handle.record_failure(&reason);
            debug!(worker = %handle.worker_id, addr = %handle.addr, reason, "worker not reachable");
        }
        return;
    };
    let deadline = Instant::now() + handle.settings.ping_interval;
    match client.ping(rpc_context(deadline)).await {
        Ok(pong) => {
            handle
                .health
                .set_draining(pong.state == WorkerState::Draining);
            if handle.health.restored() {
                info!(worker = %handle.worker_id, addr = %handle.addr, "worker back in rotation");
            }
        }
        Err(e @ (RpcError::Shutdown | RpcError::Channel(_))) => handle.drop_link(&e.to_string()),
        Err(e) => handle.record_failure(&format!("ping failed: {e}")),
    }
}

/// Connects (or reconnects) and fetches the worker's self-description.
async fn connect(handle: &WorkerHandle) -> Result<(), String> {
    let client = handle.connector.connect(&handle.addr).await?;
    let deadline = Instant::now() + handle.settings.connect_timeout;
    let info = client
        .metadata(rpc_context(deadline))
        .await
        .map_err(|e| format!("metadata call failed: {e}"))?;
    let models = info
        .models
        .iter()
        .map(|m| format!("{}@{}", m.name, m.version))
        .collect::<Vec<_>>();
    info!(worker = %handle.worker_id, addr = %handle.addr, remote_id = %info.worker_id, models = ?models, "worker connected");
    handle
        .health
        .set_draining(info.state == WorkerState::Draining);
    handle.linked(client, info);
    handle.health.restored();
    Ok(())
}
