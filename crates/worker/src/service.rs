//! The `WorkerService` implementation: validation, queueing with deadlines, drain state (at
//! shutdown, or an operator's `chorus drain`), pings, and each call's span and metrics.

use crate::metrics::{Metrics, Outcome};
use crate::pool::Job;
use crate::registration::DrainPublisher;
use crate::registry::{LoadedModel, Registry};
use chorus_common::rpc::MAX_CALLS_PER_FRAME;
use chorus_common::trace;
use chorus_common::validate::{validate_inputs, validate_requested_outputs};
use chorus_common::{
    DrainRecord, DrainReply, InferCall, InferReply, LocalLink, Pong, WorkerError, WorkerInfo,
    WorkerService, WorkerState,
};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Instant;
use tarpc::context::Context;
use tokio::sync::{Notify, oneshot};
use tracing::{Instrument, debug, debug_span, field, info, warn};

/// State shared by every connection and request.
#[derive(Debug)]
pub struct Shared {
    pub worker_id: String,
    pub rpc_addr: String,
    /// The models served, swapped whole by a reload (see [`Shared::swap_registry`]). Each call
    /// takes the read lock only to resolve its version and clone its `Arc`: a reload's write
    /// lock is held for a pointer swap, never while loading.
    registry: RwLock<Arc<Registry>>,
    pub metrics: Arc<Metrics>,
    /// Shutting down: no new work, and `/health` fails.
    draining: AtomicBool,
    /// Drained by an operator (`chorus drain`): no new work, but the process keeps running and
    /// `/health` passes (`drained`), so that a liveness probe does not restart it: a restarted
    /// worker would come back serving.
    drained: AtomicBool,
    /// Marks an operator's drain in etcd; set once registered, absent without etcd.
    drain_publisher: OnceLock<DrainPublisher>,
    /// Set while an etcd-registered worker has no live lease: it takes no new work then.
    lease_lost: AtomicBool,
    in_flight: AtomicU32,
    /// Woken whenever the in-flight count drops to zero, for the drain.
    idle: Notify,
    /// The Unix socket serving the same RPCs (`--local-socket`), as registered.
    local_link: Option<LocalLink>,
}

impl Shared {
    /// `metrics` should be the one the registry's pools were loaded with.
    pub fn new(
        worker_id: String,
        rpc_addr: String,
        registry: Registry,
        metrics: Arc<Metrics>,
    ) -> Self {
        Shared {
            worker_id,
            rpc_addr,
            registry: RwLock::new(Arc::new(registry)),
            metrics,
            draining: AtomicBool::new(false),
            drained: AtomicBool::new(false),
            drain_publisher: OnceLock::new(),
            lease_lost: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
            idle: Notify::new(),
            local_link: None,
        }
    }

    /// This worker, also serving on the Unix socket `link` describes.
    pub fn with_local_link(self, link: Option<LocalLink>) -> Self {
        Shared {
            local_link: link,
            ..self
        }
    }

    /// `Draining` while shutting down, and also while the etcd lease is lost, so that
    /// coordinators pinging this worker stop routing to it until it has registered again.
    pub fn state(&self) -> WorkerState {
        if !self.takes_work() {
            WorkerState::Draining
        } else {
            WorkerState::Serving
        }
    }

    /// What the worker says about itself: `metadata`'s answer and its etcd record.
    pub fn info(&self) -> WorkerInfo {
        let registry = self.registry();
        WorkerInfo {
            worker_id: self.worker_id.clone(),
            rpc_addr: self.rpc_addr.clone(),
            state: self.state(),
            capacity: registry.capacity(),
            models: registry.infos(),
            local_link: self.local_link.clone(),
        }
    }

    /// The models served now.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Serves `registry` from the next call on and returns the one it replaces. Calls already
    /// routed keep the version they resolved.
    pub fn swap_registry(&self, registry: Arc<Registry>) -> Arc<Registry> {
        let mut slot = self
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *slot, registry)
    }

    /// The version a call names, held for the call's life.
    fn resolve(&self, model: &str, version: Option<&str>) -> Result<Arc<LoadedModel>, WorkerError> {
        let registry = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        registry.resolve(model, version).map(Arc::clone)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Whether new inference is accepted: not draining or drained, and not without an etcd
    /// lease.
    pub fn takes_work(&self) -> bool {
        !self.draining.load(Ordering::SeqCst)
            && !self.drained.load(Ordering::SeqCst)
            && !self.lease_lost.load(Ordering::SeqCst)
    }

    /// Whether an operator has drained the worker.
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::SeqCst)
    }

    /// Lets [`Shared::drain`] mark the etcd record (called once, after registering).
    pub fn set_drain_publisher(&self, publisher: DrainPublisher) {
        let _ = self.drain_publisher.set(publisher);
    }

    /// An operator's drain: refuses new inference from now on (the calls in flight finish) and
    /// marks the etcd record `draining`. Idempotent; asking again re-publishes the record, which
    /// is how an operator retries after etcd refused the update.
    pub async fn drain(&self) -> DrainReply {
        let started = !self.drained.swap(true, Ordering::SeqCst);
        let record = match self.drain_publisher.get() {
            None => DrainRecord::Static,
            Some(publisher) => match publisher.publish().await {
                Ok(()) => DrainRecord::Marked,
                Err(e) => {
                    warn!(worker_id = %self.worker_id, error = %e, "cannot mark the drained worker draining in etcd; pings still say so");
                    DrainRecord::Failed(e.to_string())
                }
            },
        };
        if started {
            info!(
                worker_id = %self.worker_id,
                in_flight = self.in_flight(),
                record = ?record,
                "worker drained by an operator: no new work, calls in flight finish, the process keeps running"
            );
        }
        DrainReply {
            worker_id: self.worker_id.clone(),
            state: self.state(),
            in_flight: self.in_flight(),
            started,
            record,
        }
    }

    /// Refuses new inference from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Refuses new inference (as `Draining`, which callers retry on another replica) while etcd
    /// says the lease is lost; takes work again once re-registered.
    pub fn set_lease_lost(&self, lost: bool) {
        self.lease_lost.store(lost, Ordering::SeqCst);
        self.metrics.set_registered(!lost);
    }

    /// Whether a health check should pass: serving and (with etcd) registered. `Err` says why
    /// not (draining, or the etcd lease is lost).
    pub fn health(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::SeqCst) {
            Err("draining")
        } else if self.lease_lost.load(Ordering::SeqCst) {
            Err("etcd lease lost")
        } else {
            Ok(())
        }
    }

    /// Resolves once no inference call is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a drop to zero in between is not missed.
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Runs one inference call to completion or to its deadline, and counts its outcome.
    ///
    /// The call runs in a debug-level span `infer{request_id, model, version}`: at the default
    /// `info` level it is disabled and costs nothing (an enabled span costs ~2.5 µs per call
    /// under the fmt subscriber, a few percent of a cheap model's call), and with `debug` every
    /// line about the call, on the instance thread too, carries those fields. Failures are logged
    /// at `warn` with the fields on the event itself, so they carry them at any level.
    pub async fn infer(
        &self,
        deadline: Instant,
        mut call: InferCall,
    ) -> Result<InferReply, WorkerError> {
        // Counted before the drain check: a drain that sees zero in flight has also set the flag
        // this call is about to read, so no call slips past an idle drain.
        let _guard = InFlight::enter(self);
        // Taken out of the call (the rest of it only needs the resolved model), not copied.
        let request_id = std::mem::take(&mut call.request_id);
        let asked_model = std::mem::take(&mut call.model);
        let asked_version = call.version.take();
        // Held until the call ends: a reload that takes this version out leaves it serving
        // this call.
        let model = self.resolve(&asked_model, asked_version.as_deref());
        let resolved = match &model {
            Ok(model) => Ok(&**model),
            Err(e) => Err(e.clone()),
        };
        let version = match &model {
            Ok(model) => model.info.version.as_str(),
            Err(_) => asked_version.as_deref().unwrap_or(""),
        };
        let span = debug_span!(
            "infer",
            request_id = %request_id,
            model = %asked_model,
            version = %version
        );
        // The call's span in the request's trace (exported with `--otlp-endpoint`; disabled,
        // a callsite check, otherwise), a child of the coordinator's attempt span.
        let traced = debug_span!(
            target: trace::TARGET,
            "worker.infer",
            request_id = %request_id,
            model = %asked_model,
            version = %version,
            worker_id = %self.worker_id,
            otel.kind = "server",
            error = field::Empty
        );
        trace::adopt_remote(&traced, call.trace_context.as_ref());
        // Resolved once: the hot path bumps the version's own counters, not a label lookup.
        let counters = model.as_ref().ok().map(|model| model.pool.metrics());
        let started = Instant::now();
        let result = self
            .run_call(deadline, call, resolved, &request_id)
            .instrument(span.clone())
            .instrument(traced.clone())
            .await;
        if let Err(e) = &result {
            traced.record("error", field::display(e));
        }
        match &result {
            Ok(reply) => span.in_scope(|| {
                debug!(
                    outputs = reply.outputs.len(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "inference answered"
                )
            }),
            Err(e @ WorkerError::Internal(_)) if span.is_disabled() => warn!(
                request_id = %request_id,
                model = %asked_model,
                version = %version,
                error = %e,
                "inference failed"
            ),
            Err(e @ WorkerError::Internal(_)) => {
                span.in_scope(|| warn!(error = %e, "inference failed"))
            }
            Err(e) => span.in_scope(|| debug!(error = %e, "inference refused")),
        }
        match counters {
            Some(counters) => counters.count(Outcome::of(&result)),
            None => self.metrics.count_unknown_model(Outcome::of(&result)),
        }
        result
    }

    /// Runs the calls of one `infer_many` frame, each as [`Shared::infer`] does, concurrently on
    /// this task: short models run inline one after the other as the calls are first polled,
    /// the others wait on their instance threads together.
    pub async fn infer_many(
        &self,
        deadline: Instant,
        calls: Vec<InferCall>,
    ) -> Vec<Result<InferReply, WorkerError>> {
        if calls.len() > MAX_CALLS_PER_FRAME {
            let refusal = WorkerError::InvalidInput(format!(
                "one frame carried {} calls; at most {MAX_CALLS_PER_FRAME} are accepted",
                calls.len()
            ));
            return vec![Err(refusal); calls.len()];
        }
        futures::future::join_all(calls.into_iter().map(|call| self.infer(deadline, call))).await
    }

    async fn run_call(
        &self,
        deadline: Instant,
        mut call: InferCall,
        model: Result<&LoadedModel, WorkerError>,
        request_id: &str,
    ) -> Result<InferReply, WorkerError> {
        if !self.takes_work() {
            return Err(WorkerError::Draining);
        }
        // tarpc does not refuse a call whose deadline has already passed; do it here so that no
        // work is queued for nobody.
        if Instant::now() >= deadline {
            return Err(WorkerError::DeadlineExceeded);
        }
        let model = model?;
        let info = &model.info;
        validate_inputs(&info.name, &info.inputs, &call.inputs, &model.policy)
            .map_err(|e| WorkerError::InvalidInput(e.to_string()))?;
        validate_requested_outputs(&info.name, &info.outputs, &call.outputs)
            .map_err(|e| WorkerError::InvalidInput(e.to_string()))?;
        if call.inputs.len() > 1 {
            // In declared order, so that requests naming inputs in different orders can batch.
            call.inputs
                .sort_by_key(|t| info.inputs.iter().position(|spec| spec.name == t.name));
        }
        // A short model with nothing queued runs here, on this task's thread: the hand-off to an
        // instance thread would cost more than the run.
        if let Some(result) = model.pool.try_run_inline(&call.inputs, &call.outputs) {
            return Ok(InferReply {
                model: info.name.clone(),
                version: info.version.clone(),
                outputs: result?,
            });
        }
        let (reply, answer) = oneshot::channel();
        model
            .pool
            .submit(Job::new(call.inputs, call.outputs, deadline, reply).traced(request_id))?;
        let outputs =
            match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), answer).await {
                Err(_elapsed) => return Err(WorkerError::DeadlineExceeded),
                Ok(Err(_dropped)) => {
                    return Err(WorkerError::Internal(format!(
                        "model '{}' version {} stopped before answering",
                        info.name, info.version
                    )));
                }
                Ok(Ok(result)) => result?,
            };
        Ok(InferReply {
            model: info.name.clone(),
            version: info.version.clone(),
            outputs,
        })
    }
}

/// Counts one inference call in flight for as long as it lives, including when tarpc drops the
/// call's future at its deadline or on cancellation.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        shared.metrics.inflight().inc();
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.metrics.inflight().dec();
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The tarpc server: cloned per request, so it is only a handle on the shared state.
#[derive(Debug, Clone)]
pub struct WorkerServer(pub Arc<Shared>);

impl WorkerService for WorkerServer {
    async fn metadata(self, _: Context) -> WorkerInfo {
        self.0.info()
    }

    async fn infer(self, ctx: Context, call: InferCall) -> Result<InferReply, WorkerError> {
        self.0.infer(ctx.deadline, call).await
    }

    async fn infer_many(
        self,
        ctx: Context,
        calls: Vec<InferCall>,
    ) -> Vec<Result<InferReply, WorkerError>> {
        self.0.infer_many(ctx.deadline, calls).await
    }

    async fn ping(self, _: Context) -> Pong {
        Pong {
            worker_id: self.0.worker_id.clone(),
            state: self.0.state(),
            in_flight: self.0.in_flight(),
        }
    }

    async fn drain(self, _: Context) -> DrainReply {
        self.0.drain().await
    }
}
