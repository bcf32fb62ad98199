//! When a call may run its model on the receiving task's own thread instead of handing the job to
//! an instance thread.
//!
//! The hand-off (queue, wake the instance thread, run, wake the caller) costs two context
//! switches and tens of microseconds, more than a small model's whole run (the digits members run
//! in 5–30 µs). So a model whose recent runs are short enough runs inline, on the tokio thread
//! that received the call, whenever nothing waits in its queue and one of its sessions is idle;
//! everything else (long runs, batching, a busy model) keeps the hand-off, so that the runtime is
//! never blocked for longer than the limit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Default longest recent run time, in microseconds, that still runs inline: the ~100 µs a tokio
/// task should run at most between yields.
pub const DEFAULT_INLINE_MAX_RUN_US: u64 = 100;
/// Largest accepted inline limit (10 ms): past it, other calls on the thread wait too long.
pub const MAX_INLINE_MAX_RUN_US: u64 = 10_000;

/// Weight of the newest run in the recent run time (1/8): a few long runs in a row are enough
/// to send the model back to its instance threads.
const NEWEST_RUN_SHIFT: u32 = 3;

/// A model version's recent run time and its inline limit.
#[derive(Debug)]
pub struct InlineGate {
    /// Longest recent run time allowed inline; zero turns inline runs off.
    max_run: Duration,
    /// Exponentially weighted mean of recent single-job run times in nanoseconds; 0 until the
    /// first run (the warm-up run at load, usually), so an unmeasured model never runs inline.
    recent_run_ns: AtomicU64,
}

impl InlineGate {
    pub fn new(max_run: Duration) -> Self {
        InlineGate {
            max_run,
            recent_run_ns: AtomicU64::new(0),
        }
    }

    /// Folds one single-job run into the recent run time. Racing updates may lose one
    /// observation; the mean is a hint, not an account.
    pub fn observe(&self, elapsed: Duration) {
        let newest = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).max(1);
        let old = self.recent_run_ns.load(Ordering::Relaxed);
        let mean = if old == 0 {
            newest
        } else {
            old - (old >> NEWEST_RUN_SHIFT) + (newest >> NEWEST_RUN_SHIFT)
        };
        self.recent_run_ns.store(mean.max(1), Ordering::Relaxed);
    }

    /// Whether the model's recent runs are short enough to run on the caller's thread.
    pub fn allows(&self) -> bool {
        let recent = self.recent_run_ns.load(Ordering::Relaxed);
        recent != 0 && u128::from(recent) <= self.max_run.as_nanos()
    }

    /// The recent run time, if any run has been observed.
    pub fn recent_run(&self) -> Option<Duration> {
        match self.recent_run_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unmeasured_model_never_runs_inline() {
        let gate = InlineGate::new(Duration::from_micros(100));
        assert!(!gate.allows());
        gate.observe(Duration::from_micros(20));
        assert!(gate.allows());
    }

    #[test]
    fn a_zero_limit_turns_inline_runs_off() {
        let gate = InlineGate::new(Duration::ZERO);
        gate.observe(Duration::from_nanos(1));
        assert!(!gate.allows());
    }

    #[test]
    fn long_runs_in_a_row_send_the_model_back_to_its_threads_and_short_ones_bring_it_back() {
        let gate = InlineGate::new(Duration::from_micros(100));
        gate.observe(Duration::from_micros(20));
        let mut long_runs = 0;
        while gate.allows() {
            gate.observe(Duration::from_millis(2));
            long_runs += 1;
        }
        // One 2 ms run adds 250 µs to the mean: a single outlier is enough.
        assert_eq!(long_runs, 1);
        let mut short_runs = 0;
        while !gate.allows() {
            gate.observe(Duration::from_micros(20));
            short_runs += 1;
        }
        assert!((5..=40).contains(&short_runs), "{short_runs}");
        assert!(gate.recent_run().unwrap() <= Duration::from_micros(100));
    }
}
