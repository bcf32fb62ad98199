//! Watching one worker: every [`WATCH_TICK`] the prober applies the silence rule (`health.rs`,
//! rule 1), and it pings the worker every ping interval, or at once when the worker looks
//! stalled (silent beyond its usual latency) or has been silent for half the silence limit, so
//! that a slow-but-alive worker answers before the limit and a dead one does not. Without a
//! link it reconnects every ping interval and fetches a fresh self-description; with one, it
//! refreshes that description now and then (`describe.rs`). Pongs and failed pings feed the
//! health rules.

use super::describe::Refresh;
use super::handle::{WorkerHandle, rpc_context};
use super::stall::StallWatch;
use chorus_common::{Pong, WorkerState};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tarpc::client::RpcError;
use tokio::time::Instant;
use tracing::{debug, info};

/// How often the prober looks at its worker's silence (at most the ping interval).
const WATCH_TICK: Duration = Duration::from_millis(100);

/// How a ping ended.
enum PingResult {
    Pong(Pong),
    /// The link is dead (the transport says it shut).
    LinkDown(String),
    /// An error, or no pong within the ping interval (a ping stuck behind a full link counts).
    Failed(String),
}

/// Watches `handle` forever (the pool aborts the task when the worker leaves).
pub(super) async fn probe_forever(handle: Arc<WorkerHandle>) {
    let interval = handle.settings.ping_interval;
    let tick = WATCH_TICK.min(interval);
    let mut next_ping = Instant::now();
    let mut ping: Option<BoxFuture<'static, PingResult>> = None;
    let mut refresh = Refresh::new(Instant::now(), interval);
    let mut stalls = StallWatch::new(Instant::now());
    loop {
        let now = Instant::now();
        if stalls.woke(now, tick) {
            handle.eject_if_silent(now);
        }
        match handle.client() {
            None => {
                ping = None;
                if now >= next_ping {
                    next_ping = now + interval;
                    if let Err(reason) = connect(&handle).await {
                        handle.record_failure(&reason);
                        debug!(worker = %handle.worker_id, addr = %handle.addr, reason, "worker not reachable");
                    }
                    handle.health.mark_probed();
                    stalls.rearm(Instant::now(), tick);
                }
            }
            Some(client) => {
                refresh.tick(&handle, &client, now);
                if ping.is_none() && (now >= next_ping || handle.wants_ping(now)) {
                    next_ping = now + interval;
                    handle.load.asked(now);
                    ping = Some(Box::pin(ping_once(client, interval)));
                }
            }
        }
        match ping.as_mut() {
            Some(in_flight) => {
                tokio::select! {
                    result = in_flight => {
                        ping = None;
                        on_ping(&handle, result, stalls.trusted(Instant::now()));
                        handle.health.mark_probed();
                    }
                    _ = tokio::time::sleep(tick) => {}
                }
            }
            None => tokio::time::sleep(tick).await,
        }
    }
}

async fn ping_once(client: chorus_common::WorkerServiceClient, limit: Duration) -> PingResult {
    let deadline = Instant::now() + limit;
    match tokio::time::timeout_at(deadline, client.ping(rpc_context(deadline))).await {
        Ok(Ok(pong)) => PingResult::Pong(pong),
        Ok(Err(e @ (RpcError::Shutdown | RpcError::Channel(_)))) => {
            PingResult::LinkDown(e.to_string())
        }
        Ok(Err(e)) => PingResult::Failed(format!("ping failed: {e}")),
        Err(_) => PingResult::Failed(format!("no pong within {} ms", limit.as_millis())),
    }
}

/// `trusted`: no stall of the coordinator's own is in the way (see `stall.rs`); a ping that timed
/// out across one says nothing about the worker.
fn on_ping(handle: &WorkerHandle, result: PingResult, trusted: bool) {
    match result {
        PingResult::Pong(pong) => {
            handle.load.pong(Instant::now());
            handle
                .health
                .set_draining(pong.state == WorkerState::Draining);
            if handle.health.ping_succeeded(Instant::now()) {
                info!(worker = %handle.worker_id, addr = %handle.addr, "worker back in rotation");
            }
        }
        PingResult::LinkDown(reason) => handle.drop_link(&reason),
        PingResult::Failed(reason) if trusted => handle.record_failure(&reason),
        PingResult::Failed(reason) => {
            debug!(worker = %handle.worker_id, addr = %handle.addr, reason, "ping failed while the coordinator itself was stalled; not counted")
        }
    }
}

/// Connects (or reconnects) and fetches the worker's self-description.
async fn connect(handle: &WorkerHandle) -> Result<(), String> {
    let client = handle.connector.connect(&handle.addr).await?;
    let deadline = Instant::now() + handle.settings.connect_timeout;
    let info = tokio::time::timeout_at(deadline, client.metadata(rpc_context(deadline)))
        .await
        .map_err(|_| "no self-description before the connect timeout".to_string())?
        .map_err(|e| format!("metadata call failed: {e}"))?;
    let models = info
        .models
        .iter()
        .map(|m| format!("{}@{}", m.name, m.version))
        .collect::<Vec<_>>();
    handle
        .health
        .set_draining(info.state == WorkerState::Draining);
    handle.linked(client, info);
    handle.load.pong(Instant::now());
    if handle.health.linked() {
        info!(worker = %handle.worker_id, addr = %handle.addr, models = ?models, "worker connected");
    } else {
        info!(worker = %handle.worker_id, addr = %handle.addr, probation = handle.health.probation_left(), "worker reconnected; on probation");
    }
    Ok(())
}
