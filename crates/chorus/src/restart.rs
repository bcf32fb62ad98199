//! When `chorus up` restarts a child that exited, and when it gives up: a plain state machine
//! driven with explicit instants, so the rules are tested without processes or clocks.
//!
//! Rules:
//! 1. The first restart waits [`FIRST_DELAY`]; each further one waits twice as long, up to
//!    [`MAX_DELAY`], so a child that cannot start does not spin the machine.
//! 2. A child that stayed up [`STABLE_AFTER`] before exiting starts again from [`FIRST_DELAY`]:
//!    an occasional crash is not a crash loop.
//! 3. More than [`CRASH_LOOP_RESTARTS`] exits within [`CRASH_LOOP_WINDOW`] is a crash loop:
//!    restarting again would only hide the fault, so the cluster stops and says so.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Delay before the first restart after a stable run.
pub(crate) const FIRST_DELAY: Duration = Duration::from_millis(500);
/// The longest delay between two restarts.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(10);
/// Uptime after which a child counts as healthy again (the delay resets).
pub(crate) const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Restarts allowed within [`CRASH_LOOP_WINDOW`]; the next exit stops the cluster.
pub(crate) const CRASH_LOOP_RESTARTS: usize = 5;
/// The window in which exits are counted for the crash-loop limit.
pub(crate) const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(60);

/// What to do about a child that just exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Start it again after this delay.
    RestartIn(Duration),
    /// It exited this many times within [`CRASH_LOOP_WINDOW`]: stop the cluster.
    GiveUp { exits: usize },
}

/// Restart bookkeeping of one child.
#[derive(Debug)]
pub(crate) struct RestartPolicy {
    /// When the running instance was started.
    started: Instant,
    next_delay: Duration,
    /// Exits within the last [`CRASH_LOOP_WINDOW`], oldest first.
    recent_exits: VecDeque<Instant>,
}

impl RestartPolicy {
    /// Bookkeeping for a child started at `started`.
    pub(crate) fn new(started: Instant) -> Self {
        RestartPolicy {
            started,
            next_delay: FIRST_DELAY,
            recent_exits: VecDeque::new(),
        }
    }

    /// The child exited at `now`.
    pub(crate) fn on_exit(&mut self, now: Instant) -> Decision {
        if now.saturating_duration_since(self.started) >= STABLE_AFTER {
            self.next_delay = FIRST_DELAY;
        }
        while self
            .recent_exits
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= CRASH_LOOP_WINDOW)
        {
            self.recent_exits.pop_front();
        }
        self.recent_exits.push_back(now);
        if self.recent_exits.len() > CRASH_LOOP_RESTARTS {
            return Decision::GiveUp {
                exits: self.recent_exits.len(),
            };
        }
        let delay = self.next_delay;
        self.next_delay = (delay * 2).min(MAX_DELAY);
        Decision::RestartIn(delay)
    }

    /// The child was started again at `now`.
    pub(crate) fn restarted(&mut self, now: Instant) {
        self.started = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exits of a child that dies `uptime` after each start, restarted after each delay.
    fn run(
        policy: &mut RestartPolicy,
        mut now: Instant,
        uptime: Duration,
        n: usize,
    ) -> Vec<Decision> {
        let mut decisions = Vec::new();
        for _ in 0..n {
            now += uptime;
            let decision = policy.on_exit(now);
            decisions.push(decision);
            if let Decision::RestartIn(delay) = decision {
                now += delay;
                policy.restarted(now);
            }
        }
        decisions
    }

    #[test]
    fn delays_double_up_to_the_cap_then_a_crash_loop_gives_up() {
        let start = Instant::now();
        let mut policy = RestartPolicy::new(start);
        let decisions = run(&mut policy, start, Duration::from_millis(100), 6);
        let ms = |ms| Decision::RestartIn(Duration::from_millis(ms));
        assert_eq!(
            decisions,
            [
                ms(500),
                ms(1000),
                ms(2000),
                ms(4000),
                ms(8000),
                Decision::GiveUp { exits: 6 }
            ]
        );
    }

    #[test]
    fn the_delay_is_capped() {
        let start = Instant::now();
        let mut policy = RestartPolicy::new(start);
        // Slow enough to stay under the crash-loop limit, too fast to count as stable.
        let decisions = run(&mut policy, start, Duration::from_secs(20), 8);
        assert_eq!(decisions.last(), Some(&Decision::RestartIn(MAX_DELAY)));
        assert!(
            decisions
                .iter()
                .all(|d| matches!(d, Decision::RestartIn(_)))
        );
    }

    #[test]
    fn a_stable_run_resets_the_delay() {
        let start = Instant::now();
        let mut policy = RestartPolicy::new(start);
        run(&mut policy, start, Duration::from_millis(100), 3);
        let later = start + Duration::from_secs(120);
        policy.restarted(later);
        assert_eq!(
            policy.on_exit(later + STABLE_AFTER),
            Decision::RestartIn(FIRST_DELAY)
        );
    }

    #[test]
    fn exits_older_than_the_window_do_not_count() {
        let start = Instant::now();
        let mut policy = RestartPolicy::new(start);
        for i in 0..CRASH_LOOP_RESTARTS as u64 {
            assert!(matches!(
                policy.on_exit(start + Duration::from_secs(i)),
                Decision::RestartIn(_)
            ));
        }
        // The first of those is now more than a window ago.
        let now = start + CRASH_LOOP_WINDOW + Duration::from_millis(500);
        assert!(matches!(policy.on_exit(now), Decision::RestartIn(_)));
        assert!(matches!(
            policy.on_exit(now + Duration::from_millis(1)),
            Decision::GiveUp { exits: 6 }
        ));
    }
}
