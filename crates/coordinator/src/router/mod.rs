//! Routing one model call: pick a replica (power of two choices), hedge a slow call to another
//! replica after the model's rolling p95, retry a failed call once on a different replica — the
//! extra calls each under their own budget — and cancel whichever attempt loses.

mod budget;
mod frames;
mod latency;

pub use budget::Budget;
pub use latency::LatencyTracker;

use crate::metrics::{CallOutcome, Metrics};
use crate::pool::{CallError, Pool, WorkerHandle};
use crate::stats::{self, InferenceStats};
use chorus_common::rpc::{InferCall, InferReply};
use chorus_common::trace;
use futures::future::{Either, join_all, select};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{Instrument, debug, debug_span, field};

/// Where a member call's first attempt goes, as planned before it starts.
enum First {
    /// To the replica that replica choice picks when the call starts.
    Pick,
    /// To this replica, already picked, alone.
    Picked(Arc<WorkerHandle>),
    /// To this replica, in one frame with the request's other members there; the frame's
    /// answer for this call arrives on the receiver.
    Shared(
        Arc<WorkerHandle>,
        oneshot::Receiver<Result<InferReply, CallError>>,
    ),
}

/// Which attempt of a member call a worker call is (the attempt span's `attempt` field).
#[derive(Debug, Clone, Copy)]
enum Attempt {
    First,
    Retry,
    Hedge,
}

impl Attempt {
    fn as_str(self) -> &'static str {
        match self {
            Attempt::First => "first",
            Attempt::Retry => "retry",
            Attempt::Hedge => "hedge",
        }
    }
}

/// Tuning of retries and hedging.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    /// Retries allowed per first attempt, on average (the retry budget's refill ratio).
    pub retry_ratio: f64,
    /// Hedges allowed per first attempt, on average; 0 disables hedging.
    pub hedge_ratio: f64,
    /// Extra calls a budget can hold for a burst.
    pub budget_burst: f64,
    /// Never hedge sooner than this, however fast the model usually is.
    pub hedge_min_delay: Duration,
    /// Calls a latency window needs before its p95 sets the hedging delay.
    pub hedge_min_samples: u64,
}

/// What happened to one routed call.
#[derive(Debug)]
pub struct Routed {
    pub result: Result<InferReply, CallError>,
    /// A failed attempt was retried on another replica.
    pub retried: bool,
    /// A slow attempt was duplicated to another replica.
    pub hedged: bool,
}

/// Extra calls made and refused since start: a point-in-time copy of the routing counters in
/// [`Metrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RouterStats {
    pub retries: u64,
    pub retries_refused: u64,
    pub hedges: u64,
    pub hedges_refused: u64,
    pub hedges_won: u64,
    pub hedges_off_stalled: u64,
}

/// Routes calls over the pool's replicas.
pub struct Router {
    pool: Arc<Pool>,
    metrics: Arc<Metrics>,
    /// Triton-style statistics of every model called (the core adds the ensembles').
    stats: Arc<InferenceStats>,
    retries: Budget,
    hedges: Budget,
    latency: LatencyTracker,
    settings: RouterSettings,
}

impl Router {
    pub fn new(pool: Arc<Pool>, settings: RouterSettings, metrics: Arc<Metrics>) -> Self {
        Router {
            retries: Budget::new(settings.retry_ratio, settings.budget_burst),
            hedges: Budget::new(settings.hedge_ratio, settings.budget_burst),
            latency: LatencyTracker::new(settings.hedge_min_samples),
            metrics,
            stats: Arc::default(),
            pool,
            settings,
        }
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn inference_stats(&self) -> &Arc<InferenceStats> {
        &self.stats
    }

    pub fn routing_stats(&self) -> RouterStats {
        let c = self.metrics.routing();
        RouterStats {
            retries: c.retries.get(),
            retries_refused: c.retries_refused.get(),
            hedges: c.hedges.get(),
            hedges_refused: c.hedges_refused.get(),
            hedges_won: c.hedges_won.get(),
            hedges_off_stalled: c.hedges_off_stalled.get(),
        }
    }

    /// Calls `call.model` under `deadline`: one attempt, maybe hedged, maybe retried once. The
    /// whole routed call is one `chorus_member_call_duration_seconds` observation; dropped
    /// before it ends (the caller's deadline passed), it counts as late. Answered or failed, it
    /// counts in the model's statistics.
    pub async fn call(&self, call: InferCall, deadline: Instant) -> Routed {
        self.call_planned(call, deadline, First::Pick).await
    }

    /// Calls every one of one request's `calls` under `deadline`, as [`Router::call`] does
    /// each, except that calls whose first attempts go to the same worker travel in one frame
    /// each way (`infer_many`): replica choice picks every call's replica first, then each
    /// worker picked by two calls or more gets one frame, for the calls whose models answer in
    /// about the same time (see `frames.rs`). Hedges and retries stay per call.
    /// Without `share_frames` every call goes alone. `None` for a call that had no answer by
    /// `deadline`.
    pub async fn call_all(
        &self,
        calls: Vec<InferCall>,
        deadline: Instant,
        share_frames: bool,
    ) -> Vec<Option<Routed>> {
        let mut firsts: Vec<First> = calls.iter().map(|_| First::Pick).collect();
        let mut sends = Vec::new();
        let picked = if share_frames {
            self.replicas_picked(&calls)
        } else {
            Vec::new()
        };
        for (worker, members) in picked {
            let p95s: Vec<Option<Duration>> = members
                .iter()
                .map(|&i| self.latency.p95(&calls[i].model))
                .collect();
            let (members, alone) = frames::split(members, &p95s);
            for index in alone {
                firsts[index] = First::Picked(Arc::clone(&worker));
            }
            match members[..] {
                [] => continue,
                [only] => {
                    firsts[only] = First::Picked(worker);
                    continue;
                }
                _ => {}
            }
            let mut answers = Vec::with_capacity(members.len());
            let mut framed = Vec::with_capacity(members.len());
            for index in members {
                let (answer, receiver) = oneshot::channel();
                firsts[index] = First::Shared(Arc::clone(&worker), receiver);
                answers.push(answer);
                framed.push(calls[index].clone());
            }
            sends.push(self.frame(worker, framed, answers, deadline));
        }
        // Boxed: a member call's future is kilobytes, and `join_all` moves each one into its
        // list and its output out of it by copying the whole slot.
        let members = join_all(calls.into_iter().zip(firsts).map(|(call, first)| {
            Box::pin(tokio::time::timeout_at(
                deadline,
                self.call_planned(call, deadline, first),
            ))
        }));
        let members = async { members.await.into_iter().map(Result::ok).collect() };
        if sends.is_empty() {
            return members.await;
        }
        // The frames run beside the members. Once every member has its outcome (a hedge may win
        // before a frame answers), what is left of the frames is dropped, which cancels their
        // RPCs.
        let (members, sends) = (std::pin::pin!(members), std::pin::pin!(join_all(sends)));
        match select(members, sends).await {
            Either::Left((outcomes, _)) => outcomes,
            Either::Right((_, members)) => members.await,
        }
    }

    /// The replicas that replica choice picks for the calls, each with its calls' indices; a
    /// call with no replica is in none (its route says so).
    fn replicas_picked(&self, calls: &[InferCall]) -> Vec<(Arc<WorkerHandle>, Vec<usize>)> {
        let mut picked: Vec<(Arc<WorkerHandle>, Vec<usize>)> = Vec::new();
        for (index, call) in calls.iter().enumerate() {
            let Some(worker) = self.pick(call, &[]) else {
                continue;
            };
            match picked
                .iter_mut()
                .find(|(w, _)| w.worker_id == worker.worker_id)
            {
                Some((_, members)) => members.push(index),
                None => picked.push((worker, vec![index])),
            }
        }
        picked
    }

    /// One `infer_many` frame to `worker`, each answer sent to its call's receiver.
    async fn frame(
        &self,
        worker: Arc<WorkerHandle>,
        mut calls: Vec<InferCall>,
        answers: Vec<oneshot::Sender<Result<InferReply, CallError>>>,
        deadline: Instant,
    ) {
        let span = debug_span!(target: trace::TARGET, "member.attempt", attempt = Attempt::First.as_str(), members = calls.len(), worker = %worker.worker_id, otel.kind = "client");
        let context = span.in_scope(trace::current);
        for call in &mut calls {
            call.trace_context.clone_from(&context);
        }
        let results = worker.infer_many(calls, deadline).instrument(span).await;
        for (answer, result) in answers.into_iter().zip(results) {
            // A member whose hedge already won has stopped listening.
            let _ = answer.send(result);
        }
    }

    async fn call_planned(&self, call: InferCall, deadline: Instant, first: First) -> Routed {
        let timer = self.metrics.call_started(&call.model);
        let started = Instant::now();
        // One span per member call, with one child per attempt (first, retry, hedge): exported
        // with `--otlp-endpoint`, disabled (a callsite check) otherwise.
        let span = debug_span!(target: trace::TARGET, "member", member = %call.model, request_id = %call.request_id);
        let routed = self.route(&call, deadline, first).instrument(span).await;
        timer.finish(match &routed.result {
            Ok(_) => CallOutcome::Ok,
            Err(error) if error.is_late() => CallOutcome::Late,
            Err(_) => CallOutcome::Failed,
        });
        let elapsed = started.elapsed();
        let model = &call.model;
        match &routed.result {
            Ok(reply) => {
                let rows = stats::rows_of(&call.inputs);
                let finished = started + elapsed;
                self.stats
                    .record_success(model, &reply.version, rows, elapsed, finished);
            }
            Err(_) => {
                let version = call
                    .version
                    .clone()
                    .or_else(|| self.pool.newest_version(model));
                if let Some(version) = version {
                    self.stats.record_failure(model, &version, elapsed);
                }
            }
        }
        routed
    }

    async fn route(&self, call: &InferCall, deadline: Instant, first: First) -> Routed {
        let mut tried: Vec<String> = Vec::new();
        let mut routed = Routed {
            result: Err(no_replica(call)),
            retried: false,
            hedged: false,
        };
        let (first, shared) = match first {
            First::Shared(worker, answer) => (worker, Some(answer)),
            First::Picked(worker) => (worker, None),
            First::Pick => match self.pick(call, &tried) {
                Some(worker) => (worker, None),
                None => return routed,
            },
        };
        self.retries.deposit();
        self.hedges.deposit();
        tried.push(first.worker_id.clone());
        let (result, hedged) = self
            .attempt(call, deadline, first, &mut tried, Attempt::First, shared)
            .await;
        routed.hedged = hedged;
        routed.result = result;
        let worth_retrying = matches!(&routed.result, Err(e) if e.worth_retrying());
        if !worth_retrying || Instant::now() >= deadline {
            return routed;
        }
        let Some(second) = self.pick(call, &tried) else {
            return routed;
        };
        let counters = self.metrics.routing();
        if !self.retries.try_spend() {
            counters.retries_refused.inc();
            debug!(member = %call.model, request_id = %call.request_id, "retry budget spent; not retrying");
            return routed;
        }
        counters.retries.inc();
        if let Err(error) = &routed.result {
            debug!(member = %call.model, worker = %second.worker_id, request_id = %call.request_id, error = %error, "retrying on another replica");
        }
        tried.push(second.worker_id.clone());
        routed.retried = true;
        // The retry may land on a replica that is frozen too: it is hedged like a first try.
        let (result, hedged) = self
            .attempt(call, deadline, second, &mut tried, Attempt::Retry, None)
            .await;
        routed.hedged |= hedged;
        routed.result = result;
        routed
    }

    fn pick(&self, call: &InferCall, tried: &[String]) -> Option<Arc<WorkerHandle>> {
        self.pool.pick(&call.model, call.version.as_deref(), tried)
    }

    /// One call on `worker`, its latency recorded when it succeeds. It runs in its own span,
    /// whose trace context the call carries to the worker.
    async fn timed(
        &self,
        call: &InferCall,
        deadline: Instant,
        worker: &WorkerHandle,
        attempt: Attempt,
    ) -> Result<InferReply, CallError> {
        let span = debug_span!(target: trace::TARGET, "member.attempt", attempt = attempt.as_str(), member = %call.model, worker = %worker.worker_id, request_id = %call.request_id, otel.kind = "client", error = field::Empty);
        let mut sent = call.clone();
        sent.trace_context = span.in_scope(trace::current);
        let started = Instant::now();
        let result = worker.infer(sent, deadline).instrument(span.clone()).await;
        if let Err(error) = &result {
            span.record("error", field::display(error));
        }
        self.observe_attempt(call, worker, started.elapsed(), &result);
        result
    }

    /// A call's first attempt when it travels in a frame with other calls (see
    /// [`Router::call_all`]): its answer, as the frame delivers it.
    async fn framed(
        &self,
        call: &InferCall,
        worker: &WorkerHandle,
        answer: oneshot::Receiver<Result<InferReply, CallError>>,
    ) -> Result<InferReply, CallError> {
        let started = Instant::now();
        let result = answer.await.unwrap_or_else(|_| {
            Err(CallError::Transport {
                worker: worker.worker_id.clone(),
                message: "the call's frame was dropped before it answered".into(),
            })
        });
        self.observe_attempt(call, worker, started.elapsed(), &result);
        result
    }

    /// Records an attempt's latency when it succeeded, and logs how it ended.
    fn observe_attempt(
        &self,
        call: &InferCall,
        worker: &WorkerHandle,
        elapsed: Duration,
        result: &Result<InferReply, CallError>,
    ) {
        match result {
            Ok(_) => {
                self.latency.record(&call.model, elapsed);
                debug!(member = %call.model, worker = %worker.worker_id, request_id = %call.request_id, elapsed_us = elapsed.as_micros() as u64, "member call answered");
            }
            Err(error) => {
                debug!(member = %call.model, worker = %worker.worker_id, request_id = %call.request_id, elapsed_us = elapsed.as_micros() as u64, error = %error, "member call attempt failed");
            }
        }
    }

    /// The hedging delay for a model: its rolling p95, floored; `None` while hedging is off or
    /// the model has no trusted p95 yet.
    fn hedge_delay(&self, model: &str) -> Option<Duration> {
        if self.settings.hedge_ratio <= 0.0 {
            return None;
        }
        self.latency
            .p95(model)
            .map(|p95| p95.max(self.settings.hedge_min_delay))
    }

    /// The first attempt, hedged: once it has gone unanswered for the hedging delay, a duplicate
    /// goes to another replica (see [`Router::hedge_target`]); the first success wins and the
    /// other future is dropped, which cancels its RPC. `shared` is the answer of the frame the
    /// first attempt travels in, when it shares one ([`Router::call_all`]). Returns the result
    /// and whether a hedge was sent.
    async fn attempt(
        &self,
        call: &InferCall,
        deadline: Instant,
        first: Arc<WorkerHandle>,
        tried: &mut Vec<String>,
        kind: Attempt,
        shared: Option<oneshot::Receiver<Result<InferReply, CallError>>>,
    ) -> (Result<InferReply, CallError>, bool) {
        let primary_started = Instant::now();
        let primary = match shared {
            None => Either::Left(self.timed(call, deadline, &first, kind)),
            Some(answer) => Either::Right(self.framed(call, &first, answer)),
        };
        tokio::pin!(primary);
        // No timer when there is nothing to hedge by, or when a hedge would only be sent after
        // the deadline (a model whose p95 is past the time the request has left).
        let Some(delay) = self
            .hedge_delay(&call.model)
            .filter(|delay| primary_started + *delay < deadline)
        else {
            return (primary.await, false);
        };
        tokio::select! {
            result = &mut primary => return (result, false),
            _ = tokio::time::sleep(delay) => {}
        }
        let counters = self.metrics.routing();
        let mut budget_refused = false;
        let second = loop {
            let now = Instant::now();
            match self.hedge_target(call, tried, &first, now) {
                HedgeTarget::Nowhere => return (primary.await, false),
                HedgeTarget::Owed(second) => {
                    counters.hedges_off_stalled.inc();
                    break second;
                }
                HedgeTarget::Sooner(second) if !budget_refused => {
                    if self.hedges.try_spend() {
                        break second;
                    }
                    counters.hedges_refused.inc();
                    budget_refused = true;
                }
                HedgeTarget::Sooner(_) | HedgeTarget::NotSooner => {}
            }
            // Not now: wait for the answer, or until the first replica would look stalled.
            let recheck = first.stalls_at(now).max(now + HEDGE_RECHECK);
            tokio::select! {
                result = &mut primary => return (result, false),
                _ = tokio::time::sleep_until(recheck) => {}
            }
        };
        counters.hedges.inc();
        debug!(member = %call.model, worker = %first.worker_id, hedge = %second.worker_id, request_id = %call.request_id, waited_us = primary_started.elapsed().as_micros() as u64, "hedging");
        tried.push(second.worker_id.clone());
        let hedge = self.timed(call, deadline, &second, Attempt::Hedge);
        tokio::pin!(hedge);
        let result = tokio::select! {
            result = &mut primary => match result {
                Ok(reply) => Ok(reply),
                Err(_) => hedge.await,
            },
            result = &mut hedge => match result {
                Ok(reply) => {
                    counters.hedges_won.inc();
                    // The first replica was slower than a whole hedge: it is slow, and replica
                    // choice should route around it.
                    first.lost_to_hedge(primary_started.elapsed());
                    Ok(reply)
                }
                Err(_) => primary.await,
            },
        };
        (result, true)
    }

    /// Where a hedge of a call waiting on `first` should go, if anywhere: replica choice's pick
    /// among the replicas not yet tried, and only if it is expected to answer in at most half
    /// the time `first` is (a hedge to a replica as busy as the first adds load and wins
    /// nothing, which is what happens when the whole cluster is slow at once). When `first` has gone silent, the
    /// hedge is owed whatever the budget holds: a stalled replica gets no new calls, so such
    /// hedges are bounded by the calls already stuck on it.
    fn hedge_target(
        &self,
        call: &InferCall,
        tried: &[String],
        first: &WorkerHandle,
        now: Instant,
    ) -> HedgeTarget {
        let Some(second) = self.pick(call, tried) else {
            return HedgeTarget::Nowhere;
        };
        match hedge_verdict(first.choice_key(now), second.choice_key(now)) {
            Verdict::Owed => HedgeTarget::Owed(second),
            Verdict::Sooner => HedgeTarget::Sooner(second),
            Verdict::NotSooner => HedgeTarget::NotSooner,
        }
    }
}

/// What [`Router::hedge_target`] decides from the two replicas' choice keys (stalled, expected
/// wait).
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Owed,
    Sooner,
    NotSooner,
}

fn hedge_verdict(
    (first_stalled, first_cost): (bool, u64),
    (second_stalled, second_cost): (bool, u64),
) -> Verdict {
    if second_stalled {
        Verdict::NotSooner
    } else if first_stalled {
        Verdict::Owed
    } else if second_cost.saturating_mul(2) <= first_cost {
        // Sooner means in at most half the expected wait: when every replica is about as busy
        // (the whole cluster slow at once, or near its capacity), hedges only add load.
        Verdict::Sooner
    } else {
        Verdict::NotSooner
    }
}

/// Shortest wait before a refused or pointless hedge is considered again.
const HEDGE_RECHECK: Duration = Duration::from_millis(5);

/// See [`Router::hedge_target`].
enum HedgeTarget {
    /// No other replica serves the model.
    Nowhere,
    /// Another replica serves it, but it is not expected to answer in half the time.
    NotSooner,
    /// A replica expected to answer in half the time, if the budget allows.
    Sooner(Arc<WorkerHandle>),
    /// The first replica has gone silent: this hedge does not wait for the budget.
    Owed(Arc<WorkerHandle>),
}

fn no_replica(call: &InferCall) -> CallError {
    CallError::NoReplica {
        model: call.model.clone(),
        version: call.version.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hedge_goes_only_where_it_is_expected_to_answer_in_half_the_time() {
        // As busy as the first: no hedge, whatever the budget holds.
        assert_eq!(
            hedge_verdict((false, 400), (false, 300)),
            Verdict::NotSooner
        );
        assert_eq!(hedge_verdict((false, 400), (false, 200)), Verdict::Sooner);
        // The first has gone silent: owed, if the other is not silent too.
        assert_eq!(hedge_verdict((true, 400), (false, 900)), Verdict::Owed);
        assert_eq!(hedge_verdict((true, 400), (true, 1)), Verdict::NotSooner);
        assert_eq!(hedge_verdict((false, 400), (true, 1)), Verdict::NotSooner);
    }
}
