//! The worker pool: every worker the membership source has told us about, each with its RPC
//! link, load and health ([`WorkerHandle`]) and a prober task; the models they serve; and
//! replica choice.
//!
//! One job per file: [`error`] (why a call failed), [`connector`] (address → RPC client, the
//! seam tests use), [`handle`] (one worker and calls on it), [`health`] (ejection and return),
//! [`load`] (outstanding calls, latency EWMA, stall detection), [`probe`] (pings and
//! reconnects), [`describe`] (a linked worker's models kept fresh), [`status`] (the operator
//! view), [`drain`] (an operator's drain), and here: membership, the model map, choice.

mod connector;
mod describe;
mod drain;
mod error;
mod handle;
mod health;
mod load;
mod probe;
mod stall;
mod status;

pub use connector::{Connector, SocketConnector};
pub use drain::DrainError;
pub use error::CallError;
pub use handle::WorkerHandle;
pub use status::WorkerStatus;

use crate::membership::MembershipChange;
use crate::metrics::Metrics;
use chorus_common::{ModelInfo, WorkerState};
use health::{Health, HealthPolicy};
use rand::Rng;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::info;

/// Tuning shared by every worker handle.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_frame_bytes: usize,
    pub ping_interval: Duration,
    pub eject_after_failures: u32,
    /// A worker that answers nothing for this long leaves rotation (health rule 1).
    pub silence_limit: Duration,
    pub connect_timeout: Duration,
}

/// Model versions by name, ascending, as workers describe them.
pub type ModelMap = BTreeMap<String, Vec<ModelInfo>>;

/// A worker in the pool and the task that probes it.
type Member = (Arc<WorkerHandle>, JoinHandle<()>);

pub struct Pool {
    workers: RwLock<HashMap<String, Member>>,
    settings: PoolSettings,
    metrics: Arc<Metrics>,
    connector: Arc<dyn Connector>,
    /// See [`Pool::generation`]; shared with every handle, which bumps it on (re)connecting.
    generation: Arc<AtomicU64>,
    models_cache: Mutex<Option<(u64, Arc<ModelMap>)>>,
}

impl Pool {
    /// A pool that dials workers over TCP, inside mutual TLS when `tls` is given.
    pub fn new(
        settings: PoolSettings,
        metrics: Arc<Metrics>,
        tls: Option<tokio_rustls::TlsConnector>,
    ) -> Arc<Self> {
        let connector = SocketConnector {
            max_frame_bytes: settings.max_frame_bytes,
            connect_timeout: settings.connect_timeout,
            tls,
        };
        Pool::with_connector(settings, metrics, Arc::new(connector))
    }

    /// A pool that reaches workers through `connector`.
    pub fn with_connector(
        settings: PoolSettings,
        metrics: Arc<Metrics>,
        connector: Arc<dyn Connector>,
    ) -> Arc<Self> {
        Arc::new(Pool {
            workers: RwLock::new(HashMap::new()),
            settings,
            metrics,
            connector,
            generation: Arc::new(AtomicU64::new(0)),
            models_cache: Mutex::new(None),
        })
    }

    /// Applies membership changes until the source ends.
    pub fn follow(
        self: &Arc<Self>,
        mut changes: mpsc::Receiver<MembershipChange>,
    ) -> JoinHandle<()> {
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                pool.apply(change);
            }
        })
    }

    pub fn apply(self: &Arc<Self>, change: MembershipChange) {
        let mut workers = self.workers.write().expect("pool lock");
        match change {
            MembershipChange::Joined {
                worker_id,
                addr,
                state,
            } => {
                let draining = state == WorkerState::Draining;
                if let Some((known, _)) =
                    workers.get(&worker_id).filter(|(old, _)| old.addr == addr)
                {
                    if known.health.set_draining(draining) {
                        info!(worker = %worker_id, state = %state, "worker state changed");
                    }
                    // Its record changed: its models may have (a reload).
                    known.describe_soon();
                    return;
                }
                info!(worker = %worker_id, addr = %addr, "worker joined");
                let policy = HealthPolicy::new(
                    self.settings.eject_after_failures,
                    self.settings.silence_limit,
                );
                let health = Health::new(policy, self.metrics.worker_ejections(&worker_id));
                health.set_draining(draining);
                let handle = Arc::new(WorkerHandle::new(
                    worker_id.clone(),
                    addr,
                    self.settings.clone(),
                    health,
                    Arc::clone(&self.generation),
                    Arc::clone(&self.connector),
                ));
                let prober = tokio::spawn(probe::probe_forever(Arc::clone(&handle)));
                self.generation.fetch_add(1, Ordering::Release);
                if let Some((_, old_prober)) = workers.insert(worker_id, (handle, prober)) {
                    old_prober.abort();
                }
            }
            MembershipChange::Left { worker_id } => {
                if let Some((_, prober)) = workers.remove(&worker_id) {
                    self.generation.fetch_add(1, Ordering::Release);
                    prober.abort();
                    info!(worker = %worker_id, "worker left");
                }
            }
        }
    }

    /// Resolves once the pool knows at least one worker and has probed each one at least once
    /// (whatever the outcome).
    pub async fn probed_once(&self) {
        loop {
            let workers = self.workers();
            if !workers.is_empty() && workers.iter().all(|w| w.health.was_probed()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every known worker, in a stable order.
    pub fn workers(&self) -> Vec<Arc<WorkerHandle>> {
        let workers = self.workers.read().expect("pool lock");
        let mut all: Vec<_> = workers.values().map(|(h, _)| Arc::clone(h)).collect();
        all.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        all
    }

    /// Every model version any worker has described, by name, versions in ascending order.
    ///
    /// Built once per change of membership or worker metadata and shared after that: every
    /// request reads it.
    pub fn models(&self) -> Arc<ModelMap> {
        let generation = self.generation();
        let mut cache = self.models_cache.lock().expect("models cache lock");
        if let Some((built, models)) = cache.as_ref()
            && *built == generation
        {
            return Arc::clone(models);
        }
        let models = Arc::new(self.build_models());
        *cache = Some((generation, Arc::clone(&models)));
        models
    }

    /// Bumped whenever a worker joins, leaves or (re)describes itself; caches of anything
    /// derived from workers' metadata compare it.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn build_models(&self) -> ModelMap {
        let mut models: ModelMap = BTreeMap::new();
        for worker in self.workers() {
            let Some(info) = worker.info() else { continue };
            for model in &info.models {
                let versions = models.entry(model.name.clone()).or_default();
                if !versions.iter().any(|v| v.version == model.version) {
                    versions.push(model.clone());
                }
            }
        }
        for versions in models.values_mut() {
            versions.sort_by(|a, b| version_order(&a.version, &b.version));
        }
        models
    }

    /// The newest version of `model` that some worker has described.
    pub fn newest_version(&self, model: &str) -> Option<String> {
        self.models()
            .get(model)
            .and_then(|versions| versions.last())
            .map(|m| m.version.clone())
    }

    /// Whether some worker, in rotation or not, has described the model.
    pub fn describes(&self, model: &str) -> bool {
        self.workers().iter().any(|w| w.serves(model, None))
    }

    /// Whether some worker in rotation serves the model (and version).
    pub fn has_replica(&self, model: &str, version: Option<&str>) -> bool {
        self.workers()
            .iter()
            .any(|w| w.is_routable() && w.serves(model, version))
    }

    /// Power of two choices among routable replicas not yet tried: of two drawn at random, the
    /// one not stalled, with fewer calls outstanding, then the faster.
    pub fn pick(
        &self,
        model: &str,
        version: Option<&str>,
        tried: &[String],
    ) -> Option<Arc<WorkerHandle>> {
        // Read in place, under the read lock: this runs for every member call, and a sorted
        // copy of the pool (as `workers()` makes) would cost more than the choice.
        let workers = self.workers.read().expect("pool lock");
        let mut candidates: Vec<&Arc<WorkerHandle>> = Vec::with_capacity(workers.len());
        candidates.extend(workers.values().map(|(w, _)| w).filter(|w| {
            w.is_routable() && w.serves(model, version) && !tried.contains(&w.worker_id)
        }));
        let (first, second) = match candidates.len() {
            0 => return None,
            1 => return Some(Arc::clone(candidates[0])),
            n => {
                let mut rng = rand::rng();
                let first = rng.random_range(0..n);
                let second = (first + rng.random_range(1..n)) % n;
                (candidates[first], candidates[second])
            }
        };
        let now = Instant::now();
        let chosen = if second.load.choice_key(now) < first.load.choice_key(now) {
            second
        } else {
            first
        };
        Some(Arc::clone(chosen))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Ok(workers) = self.workers.read() {
            for (_, prober) in workers.values() {
                prober.abort();
            }
        }
    }
}

/// Orders versions numerically when both are numbers (Triton's layout), else as text.
pub fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v = vec!["10", "2", "1"];
        v.sort_by(|a, b| version_order(a, b));
        assert_eq!(v, vec!["1", "2", "10"]);
    }
}
