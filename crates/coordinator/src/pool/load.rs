//! One worker's load signals for replica choice: calls outstanding, the latency EWMA, and
//! whether it looks stalled (calls outstanding, no answer for far longer than usual).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Shortest silence (with calls outstanding) that makes a worker look stalled.
const STALL_FLOOR_MICROS: u64 = 100_000;

/// Microseconds from a process-wide zero point, so instants fit in atomics.
fn micros_since_start(t: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    t.saturating_duration_since(start).as_micros() as u64
}

#[derive(Debug, Default)]
pub struct Load {
    /// Member calls sent and not yet answered.
    outstanding: AtomicU32,
    /// Exponentially weighted mean of successful call latency, in microseconds.
    latency_ewma_micros: AtomicU64,
    /// Calls answered successfully since the worker joined.
    completed: AtomicU64,
    /// When the worker last showed progress (an answer, or a call sent while it was idle), in
    /// microseconds since [`micros_since_start`]'s zero point.
    progress_us: AtomicU64,
}

/// Decrements the outstanding count when a call ends, however it ends (drop included).
pub struct Outstanding<'a>(&'a AtomicU32);

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Load {
    /// Counts a call as outstanding until the guard drops.
    pub fn call_started(&self) -> Outstanding<'_> {
        if self.outstanding.fetch_add(1, Ordering::Relaxed) == 0 {
            // An idle worker starts its stall clock with this call, not at its last answer.
            self.note_progress(Instant::now());
        }
        Outstanding(&self.outstanding)
    }

    pub fn note_progress(&self, now: Instant) {
        self.progress_us
            .store(micros_since_start(now), Ordering::Relaxed);
    }

    /// Folds a successful call's latency into the EWMA (weight 1/5 for the newest sample).
    pub fn call_succeeded(&self, latency: Duration) {
        let sample = latency.as_micros().min(u64::MAX as u128) as u64;
        let _ =
            self.latency_ewma_micros
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                    Some(if old == 0 {
                        sample
                    } else {
                        (old * 4 + sample) / 5
                    })
                });
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    pub fn latency_ewma_micros(&self) -> u64 {
        self.latency_ewma_micros.load(Ordering::Relaxed)
    }

    /// Calls are outstanding but none has been answered for much longer than this worker
    /// usually takes: it may be frozen (SIGSTOP, a partition) long before pings can tell.
    pub fn is_stalled(&self, now: Instant) -> bool {
        if self.outstanding() == 0 {
            return false;
        }
        let quiet =
            micros_since_start(now).saturating_sub(self.progress_us.load(Ordering::Relaxed));
        let usual = self.latency_ewma_micros().saturating_mul(4);
        quiet > usual.max(STALL_FLOOR_MICROS)
    }

    /// The order replica choice prefers (smallest first): not stalled, fewest outstanding,
    /// fastest.
    pub fn choice_key(&self, now: Instant) -> (bool, u32, u64) {
        (
            self.is_stalled(now),
            self.outstanding(),
            self.latency_ewma_micros(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_stalled_only_with_calls_outstanding_and_no_progress() {
        let load = Load::default();
        let now = Instant::now();
        load.note_progress(now);
        assert!(
            !load.is_stalled(now + Duration::from_secs(5)),
            "idle is not stalled"
        );
        load.outstanding.store(2, Ordering::Relaxed);
        assert!(!load.is_stalled(now + Duration::from_millis(50)));
        assert!(load.is_stalled(now + Duration::from_millis(150)));
        // A slow model stretches the limit to four times its usual latency.
        load.latency_ewma_micros.store(200_000, Ordering::Relaxed);
        assert!(!load.is_stalled(now + Duration::from_millis(500)));
        assert!(load.is_stalled(now + Duration::from_millis(900)));
    }

    #[test]
    fn the_ewma_leans_on_history_and_outstanding_calls_are_released_on_drop() {
        let load = Load::default();
        load.call_succeeded(Duration::from_micros(100));
        load.call_succeeded(Duration::from_micros(600));
        assert_eq!(load.latency_ewma_micros(), 200);
        assert_eq!(load.completed(), 2);
        let a = load.call_started();
        let b = load.call_started();
        assert_eq!(load.outstanding(), 2);
        drop((a, b));
        assert_eq!(load.outstanding(), 0);
    }
}
