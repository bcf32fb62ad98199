//! The lease's decisions, without etcd or a clock: when to renew, when the lease must be taken
//! as lost, how long to back off between attempts, and when to give up.
//!
//! Times are passed in (`now`) and randomness too (`jitter` in [0, 1)), so that unit tests drive
//! every transition directly.

use std::time::{Duration, Instant};

/// First delay between failed etcd attempts; it doubles up to the cap.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// Exponential backoff with "equal jitter": the n-th delay is drawn from [d/2, d] where
/// d = min(initial × 2ⁿ, max), so that workers that lost etcd together do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The delay before the next attempt; `jitter` is a uniform draw from [0, 1).
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32.checked_shl(self.attempt).unwrap_or(u32::MAX))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// After a success: the next failure starts again from the initial delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Where the worker's registration stands, as the lease keeper sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The record is in etcd under `lease_id`; etcd keeps it until about `expires_at` unless
    /// renewed. `expires_at` is counted from when the last successful renewal was *sent*, so it
    /// is never later than etcd's own deadline.
    Registered { lease_id: i64, expires_at: Instant },
    /// No lease is known to be alive: the worker takes no work and re-registers.
    Lost,
}

/// The keeper's plain state: phase, give-up deadline and backoff.
#[derive(Debug, Clone)]
pub struct LeaseSchedule {
    ttl: Duration,
    give_up_after: Duration,
    phase: Phase,
    /// When the lease was last known good (registration or renewal sent); give-up counts from it.
    last_confirmed: Instant,
    /// When the last renewal that etcd confirmed was sent.
    last_renewal: Instant,
    backoff: Backoff,
}

impl LeaseSchedule {
    /// A schedule for a lease of `ttl`, giving up after `give_up_ttls` TTLs without a live lease.
    /// Starts `Lost` (nothing registered yet) with the give-up clock running from `now`.
    pub fn new(ttl: Duration, give_up_ttls: u32, now: Instant) -> Self {
        LeaseSchedule {
            ttl,
            give_up_after: ttl.saturating_mul(give_up_ttls.max(1)),
            phase: Phase::Lost,
            last_confirmed: now,
            last_renewal: now,
            backoff: Backoff::new(INITIAL_BACKOFF, Self::retry_cap(ttl)),
        }
    }

    /// Renewals are sent every TTL/3, so two can fail before the lease lapses.
    pub fn renew_interval(ttl: Duration) -> Duration {
        ttl / 3
    }

    /// No retry waits longer than TTL/3, so there are a few attempts in every TTL.
    fn retry_cap(ttl: Duration) -> Duration {
        (ttl / 3).max(INITIAL_BACKOFF)
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The live lease, if any.
    pub fn lease_id(&self) -> Option<i64> {
        match self.phase {
            Phase::Registered { lease_id, .. } => Some(lease_id),
            Phase::Lost => None,
        }
    }

    /// The record was created under `lease_id` by a request sent at `sent`, with `granted` TTL.
    pub fn registered(&mut self, lease_id: i64, sent: Instant, granted: Duration) {
        self.phase = Phase::Registered {
            lease_id,
            expires_at: sent + granted,
        };
        self.last_confirmed = sent;
        self.last_renewal = sent;
        self.backoff.reset();
    }

    /// etcd confirmed a renewal sent at `sent`, granting `granted` more.
    pub fn renewed(&mut self, sent: Instant, granted: Duration) {
        if let Phase::Registered { lease_id, .. } = self.phase {
            self.registered(lease_id, sent, granted);
        }
    }

    /// The lease is gone (etcd said so, or it expired unrenewed); returns the lease that was lost.
    pub fn lose(&mut self) -> Option<i64> {
        let lost = self.lease_id();
        self.phase = Phase::Lost;
        lost
    }

    /// Whether the lease may have expired in etcd by `now` without a renewal.
    pub fn expired(&self, now: Instant) -> bool {
        match self.phase {
            Phase::Registered { expires_at, .. } => now >= expires_at,
            Phase::Lost => false,
        }
    }

    /// When the next regular renewal is due (after a success).
    pub fn next_renewal(&self) -> Instant {
        self.last_renewal + Self::renew_interval(self.ttl)
    }

    /// The moment to stop trying: `give_up_ttls` TTLs after the lease was last known good.
    pub fn give_up_at(&self) -> Instant {
        self.last_confirmed + self.give_up_after
    }

    /// When the lease was last known good (or, before the first registration, the start).
    pub fn last_confirmed(&self) -> Instant {
        self.last_confirmed
    }

    /// How long the worker may go without a live lease: `give_up_ttls` × TTL.
    pub fn give_up_after(&self) -> Duration {
        self.give_up_after
    }

    pub fn should_give_up(&self, now: Instant) -> bool {
        now >= self.give_up_at()
    }

    /// How long to wait after a failed attempt at `now`: jittered backoff, never past the lease's
    /// expiry (while registered, so that it is noticed in time) nor the give-up deadline.
    pub fn retry_delay(&mut self, now: Instant, jitter: f64) -> Duration {
        let mut deadline = self.give_up_at();
        if let Phase::Registered { expires_at, .. } = self.phase {
            deadline = deadline.min(expires_at);
        }
        self.backoff
            .next_delay(jitter)
            .min(deadline.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_within_jitter_bounds_up_to_the_cap() {
        let mut b = Backoff::new(ms(100), ms(1000));
        let lows: Vec<_> = (0..6).map(|_| b.next_delay(0.0)).collect();
        assert_eq!(lows, [ms(50), ms(100), ms(200), ms(400), ms(500), ms(500)]);
        b.reset();
        let highs: Vec<_> = (0..6).map(|_| b.next_delay(1.0)).collect();
        assert_eq!(
            highs,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        b.reset();
        assert_eq!(b.next_delay(0.5), ms(75));
    }

    #[test]
    fn backoff_never_overflows() {
        let mut b = Backoff::new(ms(100), Duration::from_secs(10));
        for _ in 0..200 {
            assert!(b.next_delay(0.99) <= Duration::from_secs(10));
        }
    }

    #[test]
    fn a_renewed_lease_expires_one_ttl_after_the_renewal_was_sent() {
        let t0 = Instant::now();
        let mut s = LeaseSchedule::new(TTL, 3, t0);
        assert_eq!(s.phase(), Phase::Lost);
        s.registered(7, t0, TTL);
        assert_eq!(s.lease_id(), Some(7));
        assert_eq!(s.next_renewal(), t0 + ms(1000));
        assert!(!s.expired(t0 + ms(2999)));
        assert!(s.expired(t0 + TTL));
        s.renewed(t0 + ms(1000), TTL);
        assert!(!s.expired(t0 + ms(3999)));
        assert!(s.expired(t0 + ms(4000)));
        assert_eq!(s.next_renewal(), t0 + ms(2000));
        assert_eq!(s.give_up_at(), t0 + ms(1000) + TTL * 3);
    }

    #[test]
    fn losing_the_lease_reports_it_and_stops_expiry_checks() {
        let t0 = Instant::now();
        let mut s = LeaseSchedule::new(TTL, 3, t0);
        s.registered(7, t0, TTL);
        assert_eq!(s.lose(), Some(7));
        assert_eq!(s.lose(), None);
        assert_eq!(s.phase(), Phase::Lost);
        assert!(!s.expired(t0 + TTL * 10));
        // A renewal answer arriving after the loss does not resurrect the lease.
        s.renewed(t0 + ms(10), TTL);
        assert_eq!(s.phase(), Phase::Lost);
    }

    #[test]
    fn give_up_counts_from_the_last_good_moment() {
        let t0 = Instant::now();
        let mut s = LeaseSchedule::new(TTL, 2, t0);
        // At start-up the clock runs from the start.
        assert!(!s.should_give_up(t0 + ms(5999)));
        assert!(s.should_give_up(t0 + ms(6000)));
        // Registering restarts it; losing the lease does not.
        s.registered(1, t0 + ms(5000), TTL);
        s.lose();
        assert!(!s.should_give_up(t0 + ms(10_999)));
        assert!(s.should_give_up(t0 + ms(11_000)));
    }

    #[test]
    fn retries_are_capped_at_a_third_of_the_ttl_and_by_the_deadlines() {
        let t0 = Instant::now();
        let mut s = LeaseSchedule::new(TTL, 3, t0);
        let delays: Vec<_> = (0..8).map(|_| s.retry_delay(t0, 1.0)).collect();
        assert_eq!(
            delays,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1000),
                ms(1000),
                ms(1000),
                ms(1000)
            ]
        );
        // Close to giving up, the delay ends at the deadline.
        assert_eq!(s.retry_delay(t0 + ms(8700), 1.0), ms(300));
        assert_eq!(s.retry_delay(t0 + ms(9500), 1.0), Duration::ZERO);
        // While registered, a retry never sleeps past the lease's expiry.
        s.registered(2, t0, TTL);
        for _ in 0..5 {
            s.retry_delay(t0, 1.0);
        }
        assert_eq!(s.retry_delay(t0 + ms(2500), 1.0), ms(500));
        // A success resets the backoff.
        s.renewed(t0 + ms(2600), TTL);
        assert_eq!(s.retry_delay(t0 + ms(2600), 1.0), ms(100));
    }

    #[test]
    fn the_shortest_ttl_still_renews_several_times_per_ttl() {
        let ttl = Duration::from_secs(2);
        assert_eq!(
            LeaseSchedule::renew_interval(ttl),
            Duration::from_nanos(666_666_666)
        );
        let mut s = LeaseSchedule::new(ttl, 3, Instant::now());
        let max = (0..20).map(|_| s.retry_delay(Instant::now(), 1.0)).max();
        assert!(max <= Some(ttl / 3));
    }
}
