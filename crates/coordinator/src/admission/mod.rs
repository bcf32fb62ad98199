//! Admission control, once per request and before any fan-out, for both front doors: the
//! caller's rate, the ensemble's rate and concurrency, then the coordinator's concurrency. A
//! request over any of them gets a fast 429 / RESOURCE_EXHAUSTED with a time to retry after; a
//! request waits only for a concurrency slot, in a bounded priority queue, and never longer than
//! `--max-queue-wait-ms` or half of what is left of its deadline, so an admitted request keeps
//! time to be answered.

mod adaptive;
mod bytes;
mod gate;
mod rate;

pub use adaptive::{AdaptiveLimit, AdaptiveSettings};
pub use bytes::{ByteBudget, Reserved};
pub use gate::{Gate, Permit, Refusal};
pub use rate::RateLimit;

use crate::access::Caller;
use crate::infer::InferError;
use crate::metrics::{AdmissionCounters, RejectReason};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The priority level of a request that names none (the OIP `priority` parameter, 0 or absent):
/// levels below it (1 is the most urgent) go first, levels above it after.
pub const DEFAULT_PRIORITY: u32 = 10;

/// What a request over a concurrency limit is told to wait before retrying: the queue was full
/// or did not move within the wait it was given, so the backlog is more than a moment's.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The coordinator-wide limits (`--max-inflight`, `--max-queue`, `--max-queue-wait-ms`).
#[derive(Debug, Clone, Copy)]
pub struct AdmissionSettings {
    /// Requests served at once by this coordinator; 0 means no limit.
    pub max_inflight: usize,
    /// Requests waiting for a slot (per limit: the coordinator's and each ensemble's).
    pub max_queue: usize,
    /// Longest a request waits for a slot.
    pub max_queue_wait: Duration,
    /// Adapt the coordinator's limit to the latency it observes (at most `max_inflight`).
    pub adaptive: Option<AdaptiveSettings>,
    /// Request bytes held at once (bodies being read and requests being served).
    pub max_inflight_bytes: usize,
}

/// An ensemble's own limits, from its spec (`max_inflight`, `rate_limit`, `burst`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EnsembleLimits {
    pub max_inflight: Option<usize>,
    pub rate_limit: Option<f64>,
    pub burst: Option<u32>,
}

impl EnsembleLimits {
    pub fn is_none(&self) -> bool {
        *self == EnsembleLimits::default()
    }
}

/// The running state of one ensemble's limits.
#[derive(Debug)]
struct EnsembleAdmission {
    limits: EnsembleLimits,
    gate: Option<Arc<Gate>>,
    rate: Option<RateLimit>,
}

impl EnsembleAdmission {
    fn new(limits: EnsembleLimits, max_queue: usize) -> Self {
        EnsembleAdmission {
            limits,
            gate: limits.max_inflight.map(|n| Gate::new(n, max_queue)),
            // The spec was validated when it was read, so the limit is well formed.
            rate: limits
                .rate_limit
                .and_then(|rate| RateLimit::new(rate, limits.burst).ok()),
        }
    }
}

/// A request let through: holds its slots until dropped (the answer is sent).
#[derive(Debug)]
pub struct Admitted {
    _ensemble: Option<Permit>,
    global: Option<Permit>,
    started: Instant,
    adaptive: Option<Arc<AdaptiveLimit>>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let (Some(_), Some(adaptive)) = (&self.global, &self.adaptive) {
            adaptive.observe(self.started.elapsed());
        }
    }
}

/// The admission controller shared by both front doors.
#[derive(Debug)]
pub struct Admission {
    settings: AdmissionSettings,
    bytes: ByteBudget,
    global: Option<Arc<Gate>>,
    adaptive: Option<Arc<AdaptiveLimit>>,
    ensembles: Mutex<HashMap<String, Arc<EnsembleAdmission>>>,
    counters: AdmissionCounters,
}

impl Admission {
    pub fn new(settings: AdmissionSettings, counters: AdmissionCounters) -> Self {
        let global = (settings.max_inflight > 0)
            .then(|| Gate::new(settings.max_inflight, settings.max_queue));
        let adaptive = match (&global, settings.adaptive) {
            (Some(gate), Some(adaptive)) => Some(Arc::new(AdaptiveLimit::new(
                Arc::clone(gate),
                adaptive,
                settings.max_inflight,
                counters.limit.clone(),
            ))),
            _ => None,
        };
        counters
            .limit
            .set(global.as_ref().map_or(0, |g| g.limit() as i64));
        Admission {
            bytes: ByteBudget::new(settings.max_inflight_bytes),
            settings,
            global,
            adaptive,
            ensembles: Mutex::default(),
            counters,
        }
    }

    /// The rate limits of `caller`'s key and of the ensemble (`limits`): checked once per request
    /// as soon as the model is known, before its body is read, so that a refusal costs little.
    pub fn check_rates(
        &self,
        caller: &Caller,
        model: &str,
        limits: Option<&EnsembleLimits>,
    ) -> Result<(), InferError> {
        if let Some(rate) = caller.key().and_then(|key| key.rate_limit.as_ref()) {
            rate.check().map_err(|wait| {
                self.refuse(
                    RejectReason::KeyRate,
                    wait,
                    format!(
                        "API key '{}' is over its rate limit; retry after {} ms",
                        caller.id(),
                        wait.as_millis().max(1)
                    ),
                )
            })?;
        }
        let Some(limits) = limits.filter(|l| l.rate_limit.is_some()) else {
            return Ok(());
        };
        if let Some(rate) = &self.ensemble(model, *limits).rate {
            rate.check().map_err(|wait| {
                self.refuse(
                    RejectReason::ModelRate,
                    wait,
                    format!(
                        "ensemble '{model}' is over its rate limit; retry after {} ms",
                        wait.as_millis().max(1)
                    ),
                )
            })?;
        }
        Ok(())
    }

    /// Admits a request for `model` (with the ensemble's `limits`, if it is one) that passed
    /// [`check_rates`](Self::check_rates): a slot under the ensemble's `max_inflight`, then one
    /// under the coordinator's limit, at `priority` (0: the default), with `time_left` until its
    /// deadline.
    pub async fn admit(
        &self,
        model: &str,
        limits: Option<&EnsembleLimits>,
        priority: u32,
        time_left: Duration,
    ) -> Result<Admitted, InferError> {
        let level = if priority == 0 {
            DEFAULT_PRIORITY
        } else {
            priority
        };
        let give_up = Instant::now() + self.settings.max_queue_wait.min(time_left / 2);
        let ensemble = limits
            .filter(|l| l.max_inflight.is_some())
            .map(|limits| self.ensemble(model, *limits));
        let mut ensemble_permit = None;
        if let Some(gate) = ensemble.as_ref().and_then(|e| e.gate.as_ref()) {
            let permit = self.wait_for(gate, level, give_up).await;
            ensemble_permit = Some(permit.map_err(|refusal| {
                self.busy(
                    RejectReason::ModelInflight,
                    refusal,
                    &format!("ensemble '{model}' is serving its `max_inflight` requests"),
                )
            })?);
        }
        let mut global = None;
        if let Some(gate) = &self.global {
            let permit = self.wait_for(gate, level, give_up).await;
            global = Some(permit.map_err(|refusal| {
                self.busy(
                    RejectReason::Inflight,
                    refusal,
                    "the coordinator is serving as many requests as it admits (--max-inflight)",
                )
            })?);
        }
        Ok(Admitted {
            _ensemble: ensemble_permit,
            global,
            started: Instant::now(),
            adaptive: self.adaptive.clone(),
        })
    }

    /// Grows `reserved` to `bytes` of the in-flight byte budget, waiting at most the queue
    /// wait; refused with 429 when the budget stays full.
    pub async fn reserve_bytes(
        &self,
        reserved: &mut Reserved,
        bytes: usize,
    ) -> Result<(), InferError> {
        self.bytes
            .reserve(reserved, bytes, self.settings.max_queue_wait)
            .await
            .map_err(|_| {
                self.refuse(
                    RejectReason::Bytes,
                    BUSY_RETRY_AFTER,
                    format!(
                        "the coordinator holds as many request bytes as it admits (--max-inflight-body-bytes {}); retry later",
                        self.settings.max_inflight_bytes
                    ),
                )
            })
    }

    async fn wait_for(
        &self,
        gate: &Arc<Gate>,
        level: u32,
        give_up: Instant,
    ) -> Result<Permit, Refusal> {
        let wait = give_up.saturating_duration_since(Instant::now());
        self.counters.waiting.inc();
        let permit = gate.acquire(level, wait).await;
        self.counters.waiting.dec();
        permit
    }

    /// The running limits of ensemble `name`, rebuilt when its spec's limits changed.
    fn ensemble(&self, name: &str, limits: EnsembleLimits) -> Arc<EnsembleAdmission> {
        let mut ensembles = self.ensembles.lock().unwrap_or_else(|p| p.into_inner());
        match ensembles.get(name) {
            Some(running) if running.limits == limits => Arc::clone(running),
            _ => {
                let running = Arc::new(EnsembleAdmission::new(limits, self.settings.max_queue));
                ensembles.insert(name.to_string(), Arc::clone(&running));
                running
            }
        }
    }

    fn refuse(&self, reason: RejectReason, retry_after: Duration, message: String) -> InferError {
        self.counters.rejected(reason);
        InferError::Throttled {
            message,
            retry_after,
        }
    }

    fn busy(&self, reason: RejectReason, refusal: Refusal, what: &str) -> InferError {
        let why = match refusal {
            Refusal::QueueFull => "and its queue is full",
            Refusal::TimedOut => "and no slot came free in time",
            Refusal::Displaced => "and more urgent requests took the queue",
        };
        self.refuse(
            reason,
            BUSY_RETRY_AFTER,
            format!("{what} {why}; retry later or lower the request rate"),
        )
    }
}

#[cfg(test)]
mod tests;
