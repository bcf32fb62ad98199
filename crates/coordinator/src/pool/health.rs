//! One worker's health as the data plane sees it, and the rules that take it out of rotation and
//! bring it back (decisions only; the handle and the prober act and log):
//!
//! 1. **Silence ejects.** A worker that has answered nothing (no reply, no error, no pong) for
//!    [`HealthPolicy::silence_limit`] while something was waiting for an answer leaves rotation
//!    at once (`load.rs` keeps the clock: it starts with the first call or ping sent after the
//!    worker's last answer, or at that answer if calls are still waiting). This is what catches
//!    a partition, a hung process or a full socket buffer at any load: under load the silence
//!    starts with the first call that gets no answer, at idle with the first unanswered ping.
//! 2. **Failures in a row eject.** [`HealthPolicy::eject_after_failures`] failures in a row
//!    (a ping that errs or gets no pong within the ping interval, a failed reconnect, a call
//!    that fails in the transport) take it out too; any answer resets the streak. A dead link
//!    (the transport reports it shut) takes it out at once.
//! 3. **Abandoned calls are not failures.** A call whose deadline passed, that lost to a hedge,
//!    or whose client went away says nothing by itself: it only leaves the silence clock
//!    running. The prober pings a worker as soon as it looks stalled or has been silent for
//!    half the limit, so a worker that is alive (slow, or busy with long calls) answers a ping
//!    before the limit, and a dead one does not. A call that keeps losing hedges is counted as
//!    slow in the latency EWMA, which routes around it (`load.rs`).
//! 4. **Probation on return.** A worker that was ejected comes back only after
//!    [`HealthPolicy::probation_pings`] pings in a row succeed on a fresh link; if it is ejected
//!    again within [`HealthPolicy::flap_window`] of coming back, the next probation doubles (up
//!    to [`HealthPolicy::max_probation_pings`]), so a flapping worker stays out longer each
//!    time. A worker's first link needs no probation.
//!
//! Draining takes a worker out of rotation until it says otherwise; it is not an ejection.

use prometheus_client::metrics::counter::Counter;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// The knobs of the rules above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    pub eject_after_failures: u32,
    pub silence_limit: Duration,
    pub probation_pings: u32,
    pub max_probation_pings: u32,
    pub flap_window: Duration,
}

impl HealthPolicy {
    /// The defaults, with the coordinator's two health flags.
    pub fn new(eject_after_failures: u32, silence_limit: Duration) -> Self {
        HealthPolicy {
            eject_after_failures: eject_after_failures.max(1),
            silence_limit,
            probation_pings: 2,
            max_probation_pings: 16,
            flap_window: Duration::from_secs(30),
        }
    }
}

/// Why a worker left rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejected {
    /// No answer of any kind for this long.
    Silent(Duration),
    /// This many failed pings in a row.
    PingsFailed(u32),
    /// The link is dead.
    LinkLost,
}

#[derive(Debug, Default)]
struct Probation {
    /// Pings in a row that must succeed before the worker is back.
    needed: u32,
    succeeded: u32,
    /// When it last came back from an ejection (for the flap window).
    restored_at: Option<Instant>,
    /// It has been in rotation at least once (its first link needs no probation).
    ever_healthy: bool,
}

#[derive(Debug)]
pub struct Health {
    policy: HealthPolicy,
    consecutive_failures: AtomicU32,
    healthy: AtomicBool,
    draining: AtomicBool,
    /// At least one probe (connect or ping) has finished, whatever its outcome.
    probed: AtomicBool,
    probation: Mutex<Probation>,
    /// Times this worker left rotation (`chorus_worker_ejections_total`).
    ejections: Counter,
}

impl Health {
    /// Starts out of rotation: a worker enters it when its first link is up.
    pub fn new(policy: HealthPolicy, ejections: Counter) -> Self {
        Health {
            policy,
            consecutive_failures: AtomicU32::new(0),
            healthy: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            probed: AtomicBool::new(false),
            probation: Mutex::new(Probation {
                needed: policy.probation_pings,
                ..Probation::default()
            }),
            ejections,
        }
    }

    /// In rotation: linked, answering and not draining.
    pub fn is_routable(&self) -> bool {
        self.is_healthy() && !self.is_draining()
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Records the worker's own word on draining; returns whether that changed.
    pub fn set_draining(&self, draining: bool) -> bool {
        self.draining.swap(draining, Ordering::Relaxed) != draining
    }

    pub fn was_probed(&self) -> bool {
        self.probed.load(Ordering::Relaxed)
    }

    pub fn mark_probed(&self) {
        self.probed.store(true, Ordering::Relaxed);
    }

    /// A call was answered: the ping-failure streak ends.
    pub fn succeeded(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// A link is up: the first one puts the worker in rotation at once; after an ejection the
    /// worker waits for its probation pings. Returns whether it entered rotation.
    pub fn linked(&self) -> bool {
        self.succeeded();
        let mut probation = self.probation.lock().expect("probation lock");
        if probation.ever_healthy {
            return false;
        }
        probation.ever_healthy = true;
        !self.healthy.swap(true, Ordering::Relaxed)
    }

    /// A ping was answered. Returns whether this ended the worker's probation.
    pub fn ping_succeeded(&self, now: Instant) -> bool {
        self.succeeded();
        if self.is_healthy() {
            return false;
        }
        let mut probation = self.probation.lock().expect("probation lock");
        probation.succeeded += 1;
        if probation.succeeded < probation.needed {
            return false;
        }
        probation.ever_healthy = true;
        probation.restored_at = Some(now);
        !self.healthy.swap(true, Ordering::Relaxed)
    }

    /// A ping failed (an error, or no pong in time). Returns the ejection it caused, if any.
    pub fn failed(&self, now: Instant) -> Option<Ejected> {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        (failures >= self.policy.eject_after_failures && self.eject(now))
            .then_some(Ejected::PingsFailed(failures))
    }

    /// Rule 1: ejects a worker silent for the limit or longer.
    pub fn check_silence(&self, silence: Duration, now: Instant) -> Option<Ejected> {
        (silence >= self.policy.silence_limit && self.eject(now))
            .then_some(Ejected::Silent(silence))
    }

    /// Out of rotation at once (its link is dead). Returns whether it was in.
    pub fn link_lost(&self, now: Instant) -> Option<Ejected> {
        self.eject(now).then_some(Ejected::LinkLost)
    }

    /// Takes the worker out of rotation and sets its next probation. Returns whether it was in.
    fn eject(&self, now: Instant) -> bool {
        if !self.healthy.swap(false, Ordering::Relaxed) {
            return false;
        }
        self.ejections.inc();
        let mut probation = self.probation.lock().expect("probation lock");
        let flapping = probation
            .restored_at
            .is_some_and(|at| now.saturating_duration_since(at) < self.policy.flap_window);
        probation.needed = if flapping {
            (probation.needed * 2).min(self.policy.max_probation_pings)
        } else {
            self.policy.probation_pings
        };
        probation.succeeded = 0;
        true
    }

    /// Pings the worker still has to answer before it is back (0 when in rotation).
    pub fn probation_left(&self) -> u32 {
        if self.is_healthy() {
            return 0;
        }
        let probation = self.probation.lock().expect("probation lock");
        probation.needed.saturating_sub(probation.succeeded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HealthPolicy {
        HealthPolicy::new(3, Duration::from_secs(1))
    }

    #[test]
    fn the_first_link_enters_rotation_at_once() {
        let health = Health::new(policy(), Counter::default());
        assert!(!health.is_routable(), "out until linked");
        assert!(health.linked());
        assert!(health.is_routable());
        assert!(health.set_draining(true));
        assert!(!health.is_routable());
        assert!(!health.set_draining(true));
    }

    #[test]
    fn silence_ejects_and_probation_brings_back() {
        let ejections = Counter::default();
        let health = Health::new(policy(), ejections.clone());
        let t = Instant::now();
        health.linked();
        assert_eq!(health.check_silence(Duration::from_millis(999), t), None);
        let out = t + Duration::from_secs(1);
        assert_eq!(
            health.check_silence(Duration::from_secs(1), out),
            Some(Ejected::Silent(Duration::from_secs(1)))
        );
        assert_eq!(
            health.check_silence(Duration::from_secs(5), out),
            None,
            "already out"
        );
        assert_eq!(ejections.get(), 1);
        // A new link is not enough after an ejection: two pings in a row must succeed.
        assert!(!health.linked());
        assert_eq!(health.probation_left(), 2);
        assert!(!health.ping_succeeded(out + Duration::from_secs(1)));
        assert!(health.ping_succeeded(out + Duration::from_secs(2)));
        assert!(health.is_routable());
    }

    #[test]
    fn failed_pings_in_a_row_eject_and_an_answer_resets_the_streak() {
        let health = Health::new(policy(), Counter::default());
        let t = Instant::now();
        health.linked();
        assert_eq!(health.failed(t), None);
        assert_eq!(health.failed(t), None);
        health.succeeded();
        assert_eq!(health.failed(t), None);
        assert_eq!(health.failed(t), None);
        assert_eq!(health.failed(t), Some(Ejected::PingsFailed(3)));
        assert_eq!(health.link_lost(t), None, "already out");
    }

    #[test]
    fn a_flapping_worker_waits_longer_each_time() {
        let health = Health::new(policy(), Counter::default());
        let mut t = Instant::now();
        health.linked();
        let mut probations = Vec::new();
        for _ in 0..5 {
            // Back in rotation, then out again within the flap window.
            t += Duration::from_secs(2);
            health.link_lost(t).expect("ejected");
            probations.push(health.probation_left());
            while !health.ping_succeeded(t) {
                t += Duration::from_secs(1);
            }
        }
        assert_eq!(probations, [2, 4, 8, 16, 16]);
        // Stable for longer than the window: the next probation is the base one again.
        t += Duration::from_secs(60);
        health.link_lost(t).expect("ejected");
        assert_eq!(health.probation_left(), 2);
    }
}
