//! What an operator sees of one worker (`GET /chorus/workers`).

use super::handle::WorkerHandle;
use tokio::time::Instant;

/// A point-in-time view of one worker.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WorkerStatus {
    pub worker_id: String,
    pub addr: String,
    /// Receiving new calls: healthy and not draining.
    pub routable: bool,
    pub healthy: bool,
    pub draining: bool,
    pub outstanding: u32,
    /// Calls it answered successfully since it joined this coordinator's view.
    pub completed: u64,
    pub latency_ewma_us: u64,
    /// How long it has answered nothing since it was last asked something (0 when nothing is
    /// waiting); it leaves rotation when this reaches the silence limit.
    pub silent_ms: u64,
    /// Pings in a row it must still answer before it returns to rotation (0 when in rotation).
    pub probation_pings_left: u32,
    pub models: Vec<String>,
}

impl WorkerHandle {
    pub fn status(&self) -> WorkerStatus {
        WorkerStatus {
            worker_id: self.worker_id.clone(),
            addr: self.addr.clone(),
            routable: self.health.is_routable(),
            healthy: self.health.is_healthy(),
            draining: self.health.is_draining(),
            outstanding: self.load.outstanding(),
            completed: self.load.completed(),
            latency_ewma_us: self.load.latency_ewma_micros(),
            silent_ms: self.load.silence(Instant::now()).as_millis() as u64,
            probation_pings_left: self.health.probation_left(),
            models: self
                .info()
                .map(|i| {
                    i.models
                        .iter()
                        .map(|m| format!("{}@{}", m.name, m.version))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}
