//! Telling the coordinator's own stalls from a worker's silence. The prober wakes every tick; when
//! a wake-up comes much later than asked, the coordinator's runtime was not polling (CPU
//! starvation, a long synchronous stretch on every runtime thread), and answers may be sitting
//! unread in its sockets. A worker's silence measured across such a stall is the coordinator's,
//! not the worker's, so the silence rule and ping timeouts wait for a grace period as long as the
//! stall before they count again: a healthy worker is not ejected because its coordinator was
//! busy, and a dead one is still caught, at most one stall's length later.

use std::time::Duration;
use tokio::time::Instant;

/// Lateness of a wake-up below which it is scheduling noise, not a stall.
const STALL_THRESHOLD: Duration = Duration::from_millis(50);

/// Longest stretch of grace in a row. A coordinator late on every tick (sustained overload) would
/// otherwise extend its grace forever, and a worker that died without closing its connection
/// would never be ejected — exactly while the cluster is busiest. Past this, silence counts
/// again even while wake-ups stay late.
const MAX_CONTINUOUS_GRACE: Duration = Duration::from_secs(3);

/// One prober's view of how punctually its runtime wakes it.
#[derive(Debug)]
pub(super) struct StallWatch {
    /// When the prober asked to be woken next.
    expected_wake: Instant,
    /// Until when silence and ping timeouts are not held against the worker.
    grace_until: Instant,
    /// Since when no wake-up has been trusted (`None`: the last one was).
    untrusted_since: Option<Instant>,
}

impl StallWatch {
    pub(super) fn new(now: Instant) -> Self {
        StallWatch {
            expected_wake: now,
            grace_until: now,
            untrusted_since: None,
        }
    }

    /// The prober woke at `now`; it will sleep at most `tick` before it wakes again. Returns
    /// whether the worker's silence can be trusted now (no stall of ours is in the way).
    pub(super) fn woke(&mut self, now: Instant, tick: Duration) -> bool {
        let late = now.saturating_duration_since(self.expected_wake);
        self.expected_wake = now + tick;
        if late > STALL_THRESHOLD {
            // Answers that arrived during the stall are read once the runtime polls the links
            // again; give them as long as the stall lasted (and at least one tick).
            self.grace_until = self.grace_until.max(now + late.max(tick));
        }
        let since = *self.untrusted_since.get_or_insert(now);
        let trusted =
            now >= self.grace_until || now.saturating_duration_since(since) >= MAX_CONTINUOUS_GRACE;
        if trusted {
            self.untrusted_since = None;
        }
        trusted
    }

    /// The prober was busy awaiting something of its own (a connect) until `now`: its next
    /// wake-up is judged from here, not from before.
    pub(super) fn rearm(&mut self, now: Instant, tick: Duration) {
        self.expected_wake = now + tick;
    }

    /// Whether the worker's silence can be trusted at `now` (outside any grace period).
    pub(super) fn trusted(&self, now: Instant) -> bool {
        now >= self.grace_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(100);

    #[test]
    fn punctual_wake_ups_are_trusted() {
        let t0 = Instant::now();
        let mut watch = StallWatch::new(t0);
        for i in 0..10 {
            let now = t0 + TICK * i + Duration::from_millis(3);
            assert!(watch.woke(now, TICK), "tick {i} was on time");
        }
    }

    #[test]
    fn a_late_wake_up_opens_a_grace_as_long_as_the_stall() {
        let t0 = Instant::now();
        let mut watch = StallWatch::new(t0);
        assert!(watch.woke(t0, TICK));
        // Asked for t0+100ms, woken at t0+1.1s: a one-second stall.
        let woke = t0 + Duration::from_millis(1100);
        assert!(!watch.woke(woke, TICK));
        assert!(!watch.trusted(woke + Duration::from_millis(900)));
        assert!(watch.trusted(woke + Duration::from_millis(1000)));
        // Punctual ticks inside the grace stay untrusted until it ends, then are trusted again.
        for i in 1..10 {
            assert!(
                !watch.woke(woke + TICK * i, TICK),
                "tick {i} is inside the grace"
            );
        }
        assert!(watch.woke(woke + TICK * 10, TICK));
    }

    #[test]
    fn sustained_lateness_cannot_hold_off_the_silence_rule_for_ever() {
        let t0 = Instant::now();
        let mut watch = StallWatch::new(t0);
        assert!(watch.woke(t0, TICK));
        // Every wake-up 200 ms late, for ten seconds.
        let mut now = t0;
        let mut trusted_at = None;
        for _ in 0..34 {
            now += TICK + Duration::from_millis(200);
            if watch.woke(now, TICK) && trusted_at.is_none() {
                trusted_at = Some(now);
            }
        }
        let trusted_at = trusted_at.expect("silence counts again within the cap");
        assert!(trusted_at - t0 <= MAX_CONTINUOUS_GRACE + Duration::from_millis(600));
        assert!(trusted_at - t0 >= MAX_CONTINUOUS_GRACE);
    }

    #[test]
    fn scheduling_noise_is_not_a_stall() {
        let t0 = Instant::now();
        let mut watch = StallWatch::new(t0);
        assert!(watch.woke(t0, TICK));
        assert!(watch.woke(t0 + TICK + Duration::from_millis(40), TICK));
    }
}
