//! The worker pool: one handle per member worker with its RPC link, its models and its health,
//! a prober per worker, replica choice (power of two choices) and calls with one retry.

use crate::membership::MembershipChange;
use crate::metrics::Metrics;
use chorus_common::rpc::{InferCall, InferReply};
use chorus_common::{ModelInfo, WorkerError, WorkerInfo, WorkerServiceClient, WorkerState};
use prometheus_client::metrics::counter::Counter;
use rand::seq::IndexedRandom;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tarpc::client::RpcError;
use tarpc::context;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Shortest silence (with calls outstanding) that makes a worker look stalled.
const STALL_FLOOR_MICROS: u64 = 100_000;

/// Microseconds from a process-wide zero point, so instants fit in atomics.
fn micros_since_start(t: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    t.saturating_duration_since(start).as_micros() as u64
}

/// Tuning shared by every worker handle.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_frame_bytes: usize,
    pub ping_interval: Duration,
    pub eject_after_failures: u32,
    pub connect_timeout: Duration,
}

/// Why a call to a model did not produce an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("worker {worker}: {error}")]
    Worker { worker: String, error: WorkerError },
    #[error("worker {worker} unreachable: {message}")]
    Transport { worker: String, message: String },
    #[error("no answer from worker {worker} before the deadline")]
    DeadlineExceeded { worker: String },
    #[error("no live worker serves model '{model}'{}", version.as_ref().map(|v| format!(" version {v}")).unwrap_or_default())]
    NoReplica {
        model: String,
        version: Option<String>,
    },
}

impl CallError {
    /// Whether another replica might answer where this one did not.
    pub fn worth_retrying(&self) -> bool {
        match self {
            CallError::Worker { error, .. } => error.is_retryable(),
            CallError::Transport { .. } => true,
            CallError::DeadlineExceeded { .. } | CallError::NoReplica { .. } => false,
        }
    }

    /// Whether the call ran out of time (at the coordinator or at the worker) rather than failed.
    pub fn is_late(&self) -> bool {
        matches!(
            self,
            CallError::DeadlineExceeded { .. }
                | CallError::Worker {
                    error: WorkerError::DeadlineExceeded,
                    ..
                }
        )
    }

    /// The worker that answered or failed, if the call reached one.
    pub fn worker(&self) -> Option<&str> {
        match self {
            CallError::Worker { worker, .. }
            | CallError::Transport { worker, .. }
            | CallError::DeadlineExceeded { worker } => Some(worker),
            CallError::NoReplica { .. } => None,
        }
    }
}

/// What an operator sees of one worker (`GET /chorus/workers`).
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
    pub models: Vec<String>,
}

/// What the pool knows of one worker's link.
#[derive(Default)]
struct Link {
    client: Option<WorkerServiceClient>,
    info: Option<Arc<WorkerInfo>>,
}

/// One worker as the coordinator sees it.
pub struct WorkerHandle {
    pub worker_id: String,
    pub addr: String,
    /// The pool's metadata generation, bumped when this worker (re)describes itself.
    generation: Arc<AtomicU64>,
    link: Mutex<Link>,
    /// Member calls sent and not yet answered: the load signal for replica choice.
    outstanding: AtomicU32,
    /// Exponentially weighted mean of successful call latency, in microseconds.
    latency_ewma_micros: AtomicU64,
    /// Calls this worker answered successfully since it joined.
    completed: AtomicU64,
    /// When the worker last showed progress (an answer, or a call sent while it was idle), in
    /// microseconds since [`micros_since_start`]'s zero point.
    progress_us: AtomicU64,
    consecutive_failures: AtomicU32,
    healthy: AtomicBool,
    draining: AtomicBool,
    /// At least one probe (connect or ping) has finished, whatever its outcome.
    probed: AtomicBool,
    /// Times this worker left rotation (`chorus_worker_ejections_total`).
    ejections: Counter,
    settings: PoolSettings,
}

/// Decrements the outstanding count when a call ends, however it ends (drop included).
struct Outstanding<'a>(&'a AtomicU32);

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl WorkerHandle {
    fn new(
        worker_id: String,
        addr: String,
        settings: PoolSettings,
        ejections: Counter,
        generation: Arc<AtomicU64>,
    ) -> Self {
        WorkerHandle {
            worker_id,
            addr,
            generation,
            link: Mutex::default(),
            outstanding: AtomicU32::new(0),
            latency_ewma_micros: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            progress_us: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            healthy: AtomicBool::new(false),
            probed: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            ejections,
            settings,
        }
    }

    fn client(&self) -> Option<WorkerServiceClient> {
        self.link.lock().expect("link lock").client.clone()
    }

    /// The worker's last known self-description, kept across reconnects.
    pub fn info(&self) -> Option<Arc<WorkerInfo>> {
        self.link.lock().expect("link lock").info.clone()
    }

    /// A point-in-time view of this worker for operators.
    pub fn status(&self) -> WorkerStatus {
        let info = self.info();
        WorkerStatus {
            worker_id: self.worker_id.clone(),
            addr: self.addr.clone(),
            routable: self.is_routable(),
            healthy: self.healthy.load(Ordering::Relaxed),
            draining: self.draining.load(Ordering::Relaxed),
            outstanding: self.outstanding.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            latency_ewma_us: self.latency_ewma_micros.load(Ordering::Relaxed),
            models: info
                .map(|i| {
                    i.models
                        .iter()
                        .map(|m| format!("{}@{}", m.name, m.version))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// In rotation: linked, answering probes and not draining.
    pub fn is_routable(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }

    fn serves(&self, model: &str, version: Option<&str>) -> bool {
        self.info().is_some_and(|info| {
            info.models
                .iter()
                .any(|m| m.name == model && version.is_none_or(|v| m.version == v))
        })
    }

    fn note_progress(&self) {
        self.progress_us
            .store(micros_since_start(Instant::now()), Ordering::Relaxed);
    }

    /// Calls are outstanding but none has been answered for much longer than this worker
    /// usually takes: it may be frozen (SIGSTOP, a partition) long before pings can tell.
    /// Replica choice avoids a stalled worker while another is available.
    pub fn is_stalled(&self, now: Instant) -> bool {
        if self.outstanding.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let quiet =
            micros_since_start(now).saturating_sub(self.progress_us.load(Ordering::Relaxed));
        let usual = self
            .latency_ewma_micros
            .load(Ordering::Relaxed)
            .saturating_mul(4);
        quiet > usual.max(STALL_FLOOR_MICROS)
    }

    /// Folds a call's latency into the EWMA (weight 1/5 for the newest sample).
    fn record_latency(&self, latency: Duration) {
        let sample = latency.as_micros().min(u64::MAX as u128) as u64;
        let _ =
            self.latency_ewma_micros
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                    Some(if old == 0 {
                        sample
                    } else {
                        (old * 4 + sample) / 5
                    })
                });
    }

    fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Counts a failed probe or call; enough in a row take the worker out of rotation.
    fn record_failure(&self, reason: &str) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.settings.eject_after_failures
            && self.healthy.swap(false, Ordering::Relaxed)
        {
            self.ejections.inc();
            warn!(worker = %self.worker_id, addr = %self.addr, failures, reason, "worker ejected");
        }
    }

    /// The link is dead for good (a tarpc client never recovers from shutdown): drop it so the
    /// prober reconnects, and stop routing at once.
    fn drop_link(&self, reason: &str) {
        self.link.lock().expect("link lock").client = None;
        if self.healthy.swap(false, Ordering::Relaxed) {
            self.ejections.inc();
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
        if self.outstanding.fetch_add(1, Ordering::Relaxed) == 0 {
            // An idle worker starts its stall clock with this call, not at its last answer.
            self.note_progress();
        }
        let _outstanding = Outstanding(&self.outstanding);
        let mut ctx = context::current();
        ctx.deadline = deadline;
        let started = Instant::now();
        let answer = client.infer(ctx, call).await;
        if answer.is_ok() {
            self.note_progress();
        }
        match answer {
            Ok(Ok(reply)) => {
                self.record_success();
                self.record_latency(started.elapsed());
                self.completed.fetch_add(1, Ordering::Relaxed);
                Ok(reply)
            }
            Ok(Err(error)) => {
                if matches!(error, WorkerError::Draining) {
                    self.draining.store(true, Ordering::Relaxed);
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

    /// Connects (or reconnects) and fetches the worker's self-description.
    async fn connect(&self) -> Result<(), String> {
        let addr: SocketAddr = tokio::net::lookup_host(&self.addr)
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", self.addr))?
            .next()
            .ok_or_else(|| format!("{} resolves to no address", self.addr))?;
        let client = chorus_common::transport::connect_worker(
            addr,
            self.settings.max_frame_bytes,
            self.settings.connect_timeout,
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut ctx = context::current();
        ctx.deadline = Instant::now() + self.settings.connect_timeout;
        let info = client
            .metadata(ctx)
            .await
            .map_err(|e| format!("metadata call failed: {e}"))?;
        let models = info
            .models
            .iter()
            .map(|m| format!("{}@{}", m.name, m.version))
            .collect::<Vec<_>>();
        info!(worker = %self.worker_id, addr = %self.addr, remote_id = %info.worker_id, models = ?models, "worker connected");
        self.draining
            .store(info.state == WorkerState::Draining, Ordering::Relaxed);
        {
            let mut link = self.link.lock().expect("link lock");
            link.client = Some(client);
            link.info = Some(Arc::new(info));
            self.generation.fetch_add(1, Ordering::Release);
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.healthy.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// One probe: a ping on a live link, a reconnect otherwise.
    async fn probe(&self) {
        self.probe_link().await;
        self.probed.store(true, Ordering::Relaxed);
    }

    async fn probe_link(&self) {
        let Some(client) = self.client() else {
            if let Err(reason) = self.connect().await {
                self.record_failure(&reason);
                debug!(worker = %self.worker_id, addr = %self.addr, reason, "worker not reachable");
            }
            return;
        };
        let mut ctx = context::current();
        ctx.deadline = Instant::now() + self.settings.ping_interval;
        match client.ping(ctx).await {
            Ok(pong) => {
                self.record_success();
                self.draining
                    .store(pong.state == WorkerState::Draining, Ordering::Relaxed);
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    info!(worker = %self.worker_id, addr = %self.addr, "worker back in rotation");
                }
            }
            Err(e @ (RpcError::Shutdown | RpcError::Channel(_))) => self.drop_link(&e.to_string()),
            Err(e) => self.record_failure(&format!("ping failed: {e}")),
        }
    }
}

/// Model versions by name, ascending, as workers describe them.
pub type ModelMap = BTreeMap<String, Vec<ModelInfo>>;

/// A worker in the pool and the task that probes it.
type Member = (Arc<WorkerHandle>, JoinHandle<()>);

/// Every worker the membership source has told us about.
pub struct Pool {
    workers: RwLock<HashMap<String, Member>>,
    settings: PoolSettings,
    metrics: Arc<Metrics>,
    /// See [`Pool::generation`]; shared with every handle, which bumps it on (re)connecting.
    generation: Arc<AtomicU64>,
    models_cache: Mutex<Option<(u64, Arc<ModelMap>)>>,
}

impl Pool {
    pub fn new(settings: PoolSettings, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Pool {
            workers: RwLock::new(HashMap::new()),
            settings,
            metrics,
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
                    if known.draining.swap(draining, Ordering::Relaxed) != draining {
                        info!(worker = %worker_id, state = %state, "worker state changed");
                    }
                    return;
                }
                info!(worker = %worker_id, addr = %addr, "worker joined");
                let handle = Arc::new(WorkerHandle::new(
                    worker_id.clone(),
                    addr,
                    self.settings.clone(),
                    self.metrics.worker_ejections(&worker_id),
                    Arc::clone(&self.generation),
                ));
                handle.draining.store(draining, Ordering::Relaxed);
                let prober = tokio::spawn(probe_forever(Arc::clone(&handle)));
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
            if !workers.is_empty() && workers.iter().all(|w| w.probed.load(Ordering::Relaxed)) {
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

    /// Power of two choices on outstanding calls (latency EWMA breaks ties) among routable
    /// replicas not yet tried.
    pub fn pick(
        &self,
        model: &str,
        version: Option<&str>,
        tried: &[String],
    ) -> Option<Arc<WorkerHandle>> {
        let candidates: Vec<_> = self
            .workers()
            .into_iter()
            .filter(|w| {
                w.is_routable() && w.serves(model, version) && !tried.contains(&w.worker_id)
            })
            .collect();
        let mut rng = rand::rng();
        let two: Vec<_> = candidates.choose_multiple(&mut rng, 2).collect();
        let now = Instant::now();
        two.into_iter()
            .min_by_key(|w| {
                (
                    w.is_stalled(now),
                    w.outstanding.load(Ordering::Relaxed),
                    w.latency_ewma_micros.load(Ordering::Relaxed),
                )
            })
            .cloned()
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

async fn probe_forever(handle: Arc<WorkerHandle>) {
    let mut ticker = tokio::time::interval(handle.settings.ping_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        handle.probe().await;
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

    fn handle() -> WorkerHandle {
        WorkerHandle::new(
            "w".into(),
            "127.0.0.1:1".into(),
            PoolSettings {
                max_frame_bytes: 1024,
                ping_interval: Duration::from_secs(1),
                eject_after_failures: 3,
                connect_timeout: Duration::from_secs(1),
            },
            Default::default(),
            Default::default(),
        )
    }

    #[test]
    fn a_worker_is_stalled_only_with_calls_outstanding_and_no_progress() {
        let w = handle();
        let now = Instant::now();
        w.note_progress();
        assert!(
            !w.is_stalled(now + Duration::from_secs(5)),
            "idle is not stalled"
        );
        w.outstanding.store(2, Ordering::Relaxed);
        assert!(!w.is_stalled(now + Duration::from_millis(50)));
        assert!(w.is_stalled(now + Duration::from_millis(150)));
        // A slow model stretches the limit to four times its usual latency.
        w.latency_ewma_micros.store(200_000, Ordering::Relaxed);
        assert!(!w.is_stalled(now + Duration::from_millis(500)));
        assert!(w.is_stalled(now + Duration::from_millis(900)));
    }

    #[test]
    fn versions_sort_numerically() {
        let mut v = vec!["10", "2", "1"];
        v.sort_by(|a, b| version_order(a, b));
        assert_eq!(v, vec!["1", "2", "10"]);
    }

    #[test]
    fn only_transport_and_retryable_worker_errors_are_retried() {
        let w = || "w".to_string();
        assert!(
            CallError::Transport {
                worker: w(),
                message: "x".into()
            }
            .worth_retrying()
        );
        assert!(
            CallError::Worker {
                worker: w(),
                error: WorkerError::Overloaded("q".into())
            }
            .worth_retrying()
        );
        assert!(
            !CallError::Worker {
                worker: w(),
                error: WorkerError::InvalidInput("bad".into())
            }
            .worth_retrying()
        );
        assert!(!CallError::DeadlineExceeded { worker: w() }.worth_retrying());
    }
}
