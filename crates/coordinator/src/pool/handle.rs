//! One worker as the coordinator sees it: its RPC link and self-description, its load and its
//! health, and inference calls on it.

use super::PoolSettings;
use super::connector::Connector;
use super::error::CallError;
use super::health::{Ejected, Health};
use super::load::Load;
use chorus_common::rpc::{InferCall, InferReply};
use chorus_common::transport::MAX_RPC_DEADLINE;
use chorus_common::{WorkerError, WorkerInfo, WorkerServiceClient};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tarpc::client::RpcError;
use tarpc::context;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

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
    /// Cancelled when the link is dropped: calls still waiting on it give up at once and are
    /// retried elsewhere instead of waiting out their deadline on a worker that left rotation.
    severed: CancellationToken,
    info: Option<Arc<WorkerInfo>>,
}

impl Link {
    fn sever(&mut self) {
        self.client = None;
        self.severed.cancel();
    }
}

pub struct WorkerHandle {
    pub worker_id: String,
    pub addr: String,
    /// The pool's metadata generation, bumped when this worker (re)describes itself.
    generation: Arc<AtomicU64>,
    link: Mutex<Link>,
    /// Set when the worker may have changed its models: its prober asks for its
    /// self-description at once (see `describe.rs`).
    describe_wanted: AtomicBool,
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
            describe_wanted: AtomicBool::new(false),
            load: Load::default(),
            health,
            settings,
            connector,
        }
    }

    pub(super) fn client(&self) -> Option<WorkerServiceClient> {
        self.link.lock().expect("link lock").client.clone()
    }

    /// The current client with the token that is cancelled when its link is dropped.
    fn live_link(&self) -> Option<(WorkerServiceClient, CancellationToken)> {
        let link = self.link.lock().expect("link lock");
        Some((link.client.clone()?, link.severed.clone()))
    }

    /// Installs a fresh link and the worker's self-description.
    pub(super) fn linked(&self, client: WorkerServiceClient, info: WorkerInfo) {
        let mut link = self.link.lock().expect("link lock");
        link.client = Some(client);
        link.severed = CancellationToken::new();
        link.info = Some(Arc::new(info));
        self.generation.fetch_add(1, Ordering::Release);
        // What the old link's calls cost (hedges it lost while silent above all) says nothing
        // about the new one, and replica choice would otherwise avoid the worker for ever at
        // light load: it only learns a new latency from calls it is given.
        self.load.forget_latency();
    }

    /// Replaces the self-description when its models or capacity changed (a reload on the
    /// worker), bumping the pool's generation; returns whether they did.
    pub(super) fn redescribed(&self, info: WorkerInfo) -> bool {
        let mut link = self.link.lock().expect("link lock");
        let changed = link
            .info
            .as_ref()
            .is_none_or(|old| old.models != info.models || old.capacity != info.capacity);
        if changed {
            link.info = Some(Arc::new(info));
            self.generation.fetch_add(1, Ordering::Release);
        }
        changed
    }

    /// Has the prober fetch the worker's self-description at its next tick.
    pub(super) fn describe_soon(&self) {
        self.describe_wanted.store(true, Ordering::Release);
    }

    pub(super) fn take_describe_wanted(&self) -> bool {
        self.describe_wanted.swap(false, Ordering::AcqRel)
    }

    /// The worker's last known self-description, kept across reconnects.
    pub fn info(&self) -> Option<Arc<WorkerInfo>> {
        self.link.lock().expect("link lock").info.clone()
    }

    /// In rotation: linked, answering probes and not draining.
    pub fn is_routable(&self) -> bool {
        self.health.is_routable()
    }

    /// A call to this worker was still unanswered after `waited` when a hedge to another
    /// replica answered: counted as that slow, so replica choice routes around it.
    pub fn lost_to_hedge(&self, waited: Duration) {
        self.load.lost_to_hedge(waited);
    }

    /// Whether the prober should ping now rather than at the next interval: the worker looks
    /// stalled, or has been silent for half the silence limit, so that a worker that is alive
    /// (merely slow, or busy with long calls) answers a ping before the limit ejects it.
    pub(super) fn wants_ping(&self, now: Instant) -> bool {
        self.load.is_stalled(now) || self.load.silence(now) >= self.settings.silence_limit / 2
    }

    /// Silent for much longer than it usually takes (see `load.rs`).
    pub fn is_stalled(&self, now: Instant) -> bool {
        self.load.is_stalled(now)
    }

    /// When it will look stalled if it answers nothing before then.
    pub fn stalls_at(&self, now: Instant) -> Instant {
        self.load.stalls_at(now)
    }

    /// Replica choice's order, smallest first (see `Load::choice_key`).
    pub fn choice_key(&self, now: Instant) -> (bool, u64) {
        self.load.choice_key(now)
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
        if let Some(ejected) = self.health.failed(Instant::now()) {
            self.ejected(ejected, reason);
        }
    }

    /// The link is dead for good (a tarpc client never recovers from shutdown): drop it so the
    /// prober reconnects, and stop routing at once.
    pub(super) fn drop_link(&self, reason: &str) {
        self.link.lock().expect("link lock").sever();
        if let Some(ejected) = self.health.link_lost(Instant::now()) {
            self.ejected(ejected, reason);
        }
    }

    /// Takes a worker that has been silent too long out of rotation (health rule 1).
    pub(super) fn eject_if_silent(&self, now: Instant) {
        if let Some(ejected) = self.health.check_silence(self.load.silence(now), now) {
            self.ejected(ejected, "no answer of any kind");
        }
    }

    /// After an ejection, whatever its cause: the link goes too, so that the worker comes back
    /// (after its probation) on a fresh connection rather than behind calls that are stuck.
    fn ejected(&self, why: Ejected, reason: &str) {
        self.link.lock().expect("link lock").sever();
        let probation = self.health.probation_left();
        match why {
            Ejected::Silent(silence) => {
                warn!(worker = %self.worker_id, addr = %self.addr, silent_ms = silence.as_millis() as u64, probation, "worker ejected: silent")
            }
            Ejected::PingsFailed(failures) => {
                warn!(worker = %self.worker_id, addr = %self.addr, failures, reason, probation, "worker ejected: failures in a row")
            }
            Ejected::LinkLost => {
                warn!(worker = %self.worker_id, addr = %self.addr, reason, probation, "worker link lost")
            }
        }
    }

    /// Runs one inference call on this worker under `deadline`.
    pub async fn infer(&self, call: InferCall, deadline: Instant) -> Result<InferReply, CallError> {
        let (client, severed) = self.link_or_error()?;
        let started = Instant::now();
        let _outstanding = self.load.call_started(started);
        let answer = tokio::select! {
            answer = client.infer(rpc_context(deadline), call) => answer,
            _ = severed.cancelled() => return Err(self.left_rotation()),
        };
        let result = self
            .delivered(answer)
            .and_then(|answer| self.judged(answer));
        if result.is_ok() {
            self.load.call_succeeded(started.elapsed());
        }
        result
    }

    /// Runs several calls of one request in one frame (`infer_many`), one answer per call in
    /// their order. The frame counts as one call in the worker's load and latency.
    pub async fn infer_many(
        &self,
        calls: Vec<InferCall>,
        deadline: Instant,
    ) -> Vec<Result<InferReply, CallError>> {
        let count = calls.len();
        let (client, severed) = match self.link_or_error() {
            Ok(link) => link,
            Err(error) => return vec![Err(error); count],
        };
        let started = Instant::now();
        let _outstanding = self.load.call_started(started);
        let answer = tokio::select! {
            answer = client.infer_many(rpc_context(deadline), calls) => answer,
            _ = severed.cancelled() => return vec![Err(self.left_rotation()); count],
        };
        match self.delivered(answer) {
            Ok(answers) if answers.len() == count => {
                if answers.iter().any(Result::is_ok) {
                    self.load.call_succeeded(started.elapsed());
                }
                answers.into_iter().map(|a| self.judged(a)).collect()
            }
            Ok(answers) => {
                let error = CallError::Transport {
                    worker: self.worker_id.clone(),
                    message: format!("answered {} of {count} calls in one frame", answers.len()),
                };
                vec![Err(error); count]
            }
            Err(error) => vec![Err(error); count],
        }
    }

    fn link_or_error(&self) -> Result<(WorkerServiceClient, CancellationToken), CallError> {
        self.live_link().ok_or_else(|| CallError::Transport {
            worker: self.worker_id.clone(),
            message: "not connected".into(),
        })
    }

    fn left_rotation(&self) -> CallError {
        CallError::Transport {
            worker: self.worker_id.clone(),
            message: "left rotation while the call waited".into(),
        }
    }

    /// What the transport made of a call: the worker's answer (a sign of life), or the
    /// transport's failure, judged against the worker's health.
    fn delivered<T>(&self, answer: Result<T, RpcError>) -> Result<T, CallError> {
        let worker = || self.worker_id.clone();
        match answer {
            Ok(answer) => {
                // A reply or an error: either way the worker answered.
                self.load.call_answered(Instant::now());
                self.health.succeeded();
                Ok(answer)
            }
            // A missed deadline is not held against the worker: the client may have asked for
            // a millisecond. It leaves the silence clock running, and a frozen worker is caught
            // by that (health rule 1), not by this call.
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

    /// One call's answer from the worker, with what a refusal says about the worker.
    fn judged(&self, answer: Result<InferReply, WorkerError>) -> Result<InferReply, CallError> {
        answer.map_err(|error| {
            if matches!(error, WorkerError::Draining) {
                self.health.set_draining(true);
            }
            // It was routed here because its description lists the model: the worker has
            // reloaded without it since.
            if matches!(error, WorkerError::ModelNotFound { .. }) {
                self.describe_soon();
            }
            CallError::Worker {
                worker: self.worker_id.clone(),
                error,
            }
        })
    }
}
