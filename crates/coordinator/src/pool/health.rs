//! One worker's health as the data plane sees it: failures in a row (pings and calls) take it
//! out of rotation, a successful probe brings it back; draining takes it out until the worker
//! says otherwise. Decisions only; the handle does the logging.

use prometheus_client::metrics::counter::Counter;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

#[derive(Debug)]
pub struct Health {
    eject_after_failures: u32,
    consecutive_failures: AtomicU32,
    healthy: AtomicBool,
    draining: AtomicBool,
    /// At least one probe (connect or ping) has finished, whatever its outcome.
    probed: AtomicBool,
    /// Times this worker left rotation (`chorus_worker_ejections_total`).
    ejections: Counter,
}

impl Health {
    /// Starts unhealthy: a worker enters rotation when its first probe succeeds.
    pub fn new(eject_after_failures: u32, ejections: Counter) -> Self {
        Health {
            eject_after_failures: eject_after_failures.max(1),
            consecutive_failures: AtomicU32::new(0),
            healthy: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            probed: AtomicBool::new(false),
            ejections,
        }
    }

    /// In rotation: linked, answering probes and not draining.
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

    /// A call or ping succeeded: the failure streak ends.
    pub fn succeeded(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// A probe succeeded: back in rotation. Returns whether it was out.
    pub fn restored(&self) -> bool {
        self.succeeded();
        !self.healthy.swap(true, Ordering::Relaxed)
    }

    /// Counts a failed probe or call. Returns the streak's length when this failure took the
    /// worker out of rotation.
    pub fn failed(&self) -> Option<u32> {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        (failures >= self.eject_after_failures && self.eject()).then_some(failures)
    }

    /// Out of rotation at once (its link is dead). Returns whether it was in.
    pub fn eject(&self) -> bool {
        let was_healthy = self.healthy.swap(false, Ordering::Relaxed);
        if was_healthy {
            self.ejections.inc();
        }
        was_healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_eject_once_and_a_probe_restores() {
        let ejections = Counter::default();
        let health = Health::new(3, ejections.clone());
        assert!(!health.is_routable(), "out until first probed");
        assert!(health.restored());
        assert_eq!(health.failed(), None);
        health.succeeded();
        assert_eq!(health.failed(), None);
        assert_eq!(health.failed(), None);
        assert_eq!(health.failed(), Some(3));
        assert_eq!(health.failed(), None, "already out");
        assert_eq!(ejections.get(), 1);
        assert!(health.restored());
        assert!(health.is_routable());
        assert!(health.set_draining(true));
        assert!(!health.is_routable());
        assert!(!health.set_draining(true));
    }
}
