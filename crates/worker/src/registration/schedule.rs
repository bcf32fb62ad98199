//! The lease's decisions, without etcd or a clock: when to renew, when a renewal is overdue, how
//! long to back off between attempts, when to wake, and when to give up.
//!
//! Times are passed in (`now`) and randomness too (`jitter` in [0, 1)), so that unit tests drive
//! every transition directly.
//!
//! The lease is lost only when etcd says so. A renewal that cannot reach etcd before the local
//! expiry makes the lease *overdue*, not lost: the worker keeps serving and keeps retrying (see
//! [`Phase::Registered`]). The give-up clock runs only while no lease is held: from the start
//! until the first registration, and from the moment etcd said the lease was gone until the
//! worker is registered again.

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
    /// The record is in etcd under `lease_id`, and etcd has not said otherwise. A reachable etcd
    /// keeps it until about `expires_at` unless renewed; `expires_at` is counted from when the
    /// last successful renewal was *sent*, so it is never later than etcd's own deadline.
    ///
    /// Past `expires_at` the renewal is overdue, and the worker still counts as registered:
    /// an etcd that is down cannot expire the lease (on restart it renews every lease for a full
    /// TTL), coordinators keep their last view while etcd is down, and a worker cut off from a
    /// healthy etcd is dropped by the coordinators anyway when its key expires. Refusing work
    /// would add no safety and turn an etcd outage into a full outage.
    Registered { lease_id: i64, expires_at: Instant },
    /// No lease: not registered yet, or etcd said the lease is gone (not found, TTL 0, or the
    /// key under another lease). The worker takes no work and re-registers.
    Lost,
}

/// The keeper's plain state: phase, give-up clock and backoff.
#[derive(Debug, Clone)]
pub struct LeaseSchedule {
    ttl: Duration,
    give_up_after: Duration,
    phase: Phase,
    /// Since when no lease has been held: the start, then the moment etcd said the lease was
    /// gone. Give-up counts from it while `Lost`; it means nothing while registered.
    lost_since: Instant,
    /// When the last renewal that etcd confirmed (or the registration) was sent.
    last_renewal: Instant,
    backoff: Backoff,
}

impl LeaseSchedule {
    /// A schedule for a lease of `ttl`, giving up after `give_up_ttls` TTLs without a lease.
    /// Starts `Lost` (nothing registered yet) with the give-up clock running from `now`.
    pub fn new(ttl: Duration, give_up_ttls: u32, now: Instant) -> Self {
        LeaseSchedule {
            ttl,
            give_up_after: ttl.saturating_mul(give_up_ttls.max(1)),
            phase: Phase::Lost,
            lost_since: now,
            last_renewal: now,
            backoff: Backoff::new(INITIAL_BACKOFF, Self::retry_cap(ttl)),
        }
    }

    /// Renewals are sent every TTL/3, so two can fail before the lease is overdue.
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

    /// The lease the record is under, if any (overdue or not).
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
        self.last_renewal = sent;
        self.backoff.reset();
    }

    /// etcd confirmed a renewal sent at `sent`, granting `granted` more.
    pub fn renewed(&mut self, sent: Instant, granted: Duration) {
        if let Phase::Registered { lease_id, .. } = self.phase {
            self.registered(lease_id, sent, granted);
        }
    }

    /// etcd said at `now` that the lease is gone; returns the lease that was lost (`None` if
    /// none was held). The give-up clock starts now, and retries start from the initial delay.
    pub fn lose(&mut self, now: Instant) -> Option<i64> {
        let lost = self.lease_id();
        if lost.is_some() {
            self.phase = Phase::Lost;
            self.lost_since = now;
            self.backoff.reset();
        }
        lost
    }

    /// Whether the renewal is overdue at `now`: a reachable etcd may have expired the lease.
    /// Only worth a warning; the lease is lost only when etcd says so.
    pub fn overdue(&self, now: Instant) -> bool {
        match self.phase {
            Phase::Registered { expires_at, .. } => now >= expires_at,
            Phase::Lost => false,
        }
    }

    /// When the next regular renewal is due (after a success).
    pub fn next_renewal(&self) -> Instant {
        self.last_renewal + Self::renew_interval(self.ttl)
    }

    /// When the last renewal that etcd confirmed (or the registration) was sent.
    pub fn last_renewal(&self) -> Instant {
        self.last_renewal
    }

    /// The moment to stop trying to (re-)register: `give_up_ttls` TTLs after the lease was lost
    /// (or the start). `None` while registered: an overdue renewal never gives up.
    pub fn give_up_at(&self) -> Option<Instant> {
        match self.phase {
            Phase::Registered { .. } => None,
            Phase::Lost => Some(self.lost_since + self.give_up_after),
        }
    }

    /// Since when no lease has been held (the start, or when etcd said it was gone).
    pub fn lost_since(&self) -> Instant {
        self.lost_since
    }

    /// How long the worker may go without a lease: `give_up_ttls` × TTL.
    pub fn give_up_after(&self) -> Duration {
        self.give_up_after
    }

    pub fn should_give_up(&self, now: Instant) -> bool {
        self.give_up_at().is_some_and(|at| now >= at)
    }

    /// How long to wait after a failed attempt at `now`: jittered backoff, and, while lost,
    /// never past the give-up deadline.
    pub fn retry_delay(&mut self, now: Instant, jitter: f64) -> Duration {
        let delay = self.backoff.next_delay(jitter);
        match self.give_up_at() {
            Some(give_up_at) => delay.min(give_up_at.saturating_duration_since(now)),
            None => delay,
        }
    }

    /// When the keeper must wake, at `now`, given its next attempt at `next_attempt`: at that
    /// attempt, or earlier at a deadline still ahead: the local expiry while registered (to
    /// report an overdue renewal in time), the give-up deadline while lost. A deadline already
    /// past is not a reason to wake again, so an overdue lease never makes the keeper spin.
    pub fn wake_at(&self, now: Instant, next_attempt: Instant) -> Instant {
        let deadline = match self.phase {
            Phase::Registered { expires_at, .. } => expires_at,
            Phase::Lost => self.lost_since + self.give_up_after,
        };
        if deadline > now {
            next_attempt.min(deadline)
        } else {
            next_attempt
        }
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
    fn a_renewed_lease_is_due_one_ttl_after_the_renewal_was_sent() {
        let t0 = Instant::now();
        let mut s = LeaseSchedule::new(TTL, 3, t0);
        assert_eq!(s.phase(), Phase::Lost);
        s.registered(7, t0, TTL);
        assert_eq!(s.lease_id(), Some(7));
        assert_eq!(s.next_renewal(), t0 + ms(1000));
        assert!(!s.overdue(t0 + ms(2999)));
        assert!(s.overdue(t0 + TTL));
        s.renewed(t0 + ms(1000), TTL);
        assert_eq!(s.last_renewal(), t0 + ms(1000));
        assert!(!s.overdue(t0 + ms(3999)));
        assert!(s.overdue(t0 + ms(4000)));
        assert_eq!(s.next_renewal(), t0 + ms(2000));
    }

    #[test]
    fn an_overdue_renewal_keeps_the_lease_and_never_gives_up() {
        let t0 = Instant::now();
        let mut s = LeaseSchedule::new(TTL, 2, t0);
        s.registered(7, t0, TTL);
        // Renewals fail for many TTLs (etcd unreachable): overdue, still registered, no
        // give-up deadline.
        let much_later = t0 + TTL * 100;
        assert!(s.overdue(much_later));
        assert_eq!(s.lease_id(), Some(7));
        assert_eq!(
            s.phase(),
            Phase::Registered {
                lease_id: 7,
                expires_at: t0 + TTL
            }
        );
        assert_eq!(s.give_up_at(), None);
        assert!(!s.should_give_up(much_later));
        // etcd answers again: renewed under the same lease, no longer overdue.
        s.renewed(much_later, TTL);
        assert_eq!(s.lease_id(), Some(7));
        assert!(!s.overdue(much_later + ms(2999)));
        assert_eq!(s.next_renewal(), much_later + ms(1000));
    }

    #[test]
    fn losing_the_lease_reports_it_once_and_ends_overdue_checks() {
        let t0 = Instant::now();
        let mut s = LeaseSchedule::new(TTL, 3, t0);
        s.registered(7, t0, TTL);
        assert_eq!(s.lose(t0 + ms(500)), Some(7));
        assert_eq!(s.lose(t0 + ms(600)), None);
        assert_eq!(s.phase(), Phase::Lost);
        assert!(!s.overdue(t0 + TTL * 10));
        // A renewal answer arriving after the loss does not resurrect the lease.
        s.renewed(t0 + ms(10), TTL);
        assert_eq!(s.phase(), Phase::Lost);
        // The second `lose` did not restart the give-up clock.
        assert_eq!(s.lost_since(), t0 + ms(500));
    }

    #[test]
    fn give_up_counts_from_the_start_and_then_from_a_confirmed_loss() {
        let t0 = Instant::now();
        let mut s = LeaseSchedule::new(TTL, 2, t0);
        assert_eq!(s.give_up_after(), ms(6000));
        // At start-up the clock runs from the start.
        assert_eq!(s.give_up_at(), Some(t0 + ms(6000)));
        assert!(!s.should_give_up(t0 + ms(5999)));
        assert!(s.should_give_up(t0 + ms(6000)));
        // Registered: no clock, however long renewals fail.
        s.registered(1, t0 + ms(5000), TTL);
        assert!(!s.should_give_up(t0 + ms(60_000)));
        // etcd says the lease is gone at 20 s: the clock runs from then, not from the last
        // renewal (5 s) nor from the local expiry (8 s).
        assert_eq!(s.lose(t0 + ms(20_000)), Some(1));
        assert_eq!(s.give_up_at(), Some(t0 + ms(26_000)));
        assert!(!s.should_give_up(t0 + ms(25_999)));
        assert!(s.should_give_up(t0 + ms(26_000)));
        // Registering again stops it; the next loss starts it afresh.
        s.registered(2, t0 + ms(25_000), TTL);
        assert!(!s.should_give_up(t0 + ms(40_000)));
        s.lose(t0 + ms(40_000));
        assert!(!s.should_give_up(t0 + ms(45_999)));
        assert!(s.should_give_up(t0 + ms(46_000)));
    }

    #[test]
    fn retries_are_capped_at_a_third_of_the_ttl_and_while_lost_by_the_give_up_deadline() {
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
        // While registered, retries go on at the cap however overdue the renewal is.
        s.registered(2, t0, TTL);
        for _ in 0..5 {
            s.retry_delay(t0, 1.0);
        }
        assert_eq!(s.retry_delay(t0 + ms(2500), 1.0), ms(1000));
        assert_eq!(s.retry_delay(t0 + TTL * 50, 1.0), ms(1000));
        // A success resets the backoff.
        s.renewed(t0 + ms(2600), TTL);
        assert_eq!(s.retry_delay(t0 + ms(2600), 1.0), ms(100));
        // So does a loss: re-registration starts from the initial delay.
        for _ in 0..5 {
            s.retry_delay(t0, 1.0);
        }
        s.lose(t0 + ms(3000));
        assert_eq!(s.retry_delay(t0 + ms(3000), 1.0), ms(100));
    }

    #[test]
    fn the_keeper_wakes_at_deadlines_ahead_only() {
        let t0 = Instant::now();
        let mut s = LeaseSchedule::new(TTL, 2, t0);
        // Lost at start-up: the next attempt, or the give-up deadline if sooner.
        assert_eq!(s.wake_at(t0, t0 + ms(500)), t0 + ms(500));
        assert_eq!(s.wake_at(t0 + ms(5900), t0 + ms(6500)), t0 + ms(6000));
        s.registered(1, t0, TTL);
        // Registered: the next attempt, or the local expiry if sooner (to report it).
        assert_eq!(s.wake_at(t0, t0 + ms(1000)), t0 + ms(1000));
        assert_eq!(s.wake_at(t0 + ms(2900), t0 + ms(3500)), t0 + TTL);
        // Overdue: the expiry is past, so only the next attempt wakes the keeper; it never
        // wakes at a moment already gone (which would spin).
        for late in [ms(3000), ms(3001), ms(60_000)] {
            let now = t0 + late;
            let next_attempt = now + ms(700);
            assert_eq!(s.wake_at(now, next_attempt), next_attempt);
        }
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
        s.registered(1, Instant::now(), ttl);
        let max = (0..20).map(|_| s.retry_delay(Instant::now(), 1.0)).max();
        assert!(max <= Some(ttl / 3));
    }
}
