//! One worker's load signals for replica choice, and its silence: calls outstanding, the latency
//! EWMA, and how long it has answered nothing since it was last asked something (see
//! `health.rs`, rule 1). A worker silent for longer than it usually takes is *stalled*: replica
//! choice avoids it while another is available, and the prober pings it at once.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Shortest silence that makes a worker look stalled.
const STALL_FLOOR_MICROS: u64 = 100_000;

/// Microseconds from a process-wide zero point (never 0, which means "nothing waiting"), so
/// instants fit in atomics.
fn micros_since_start(t: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    t.saturating_duration_since(start).as_micros() as u64 + 1
}

#[derive(Debug, Default)]
pub struct Load {
    /// Member calls sent and not yet answered.
    outstanding: AtomicU32,
    /// Exponentially weighted mean of successful call latency, in microseconds.
    latency_ewma_micros: AtomicU64,
    /// Calls answered successfully since the worker joined.
    completed: AtomicU64,
    /// When the first call or ping sent since the worker's last answer went out, in
    /// [`micros_since_start`] units; 0 while nothing is waiting for an answer.
    waiting_since_us: AtomicU64,
}

/// Decrements the outstanding count when a call ends, however it ends (drop included).
pub struct Outstanding<'a>(&'a AtomicU32);

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Load {
    /// Counts a call as outstanding until the guard drops, and as waiting for an answer.
    pub fn call_started(&self, now: Instant) -> Outstanding<'_> {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        self.asked(now);
        Outstanding(&self.outstanding)
    }

    /// Something (a call, a ping) was sent: the silence clock starts unless it already runs.
    pub fn asked(&self, now: Instant) {
        let _ = self.waiting_since_us.compare_exchange(
            0,
            micros_since_start(now),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The worker answered something (a reply, an error, a pong) at `now`, and `still_waiting`
    /// other calls have no answer yet: the silence ends, and starts again from `now` if any
    /// call is still waiting (a worker that answers one call and then dies is as silent as one
    /// that answers nothing).
    pub fn answered(&self, now: Instant, still_waiting: u32) {
        let since = if still_waiting > 0 {
            micros_since_start(now)
        } else {
            0
        };
        self.waiting_since_us.store(since, Ordering::Relaxed);
    }

    /// [`Load::answered`] for a call counted in `outstanding` (its guard still held).
    pub fn call_answered(&self, now: Instant) {
        self.answered(now, self.outstanding().saturating_sub(1));
    }

    /// [`Load::answered`] for a pong or a fresh link (not counted in `outstanding`).
    pub fn pong(&self, now: Instant) {
        self.answered(now, self.outstanding());
    }

    /// How long the worker has answered nothing since it was first asked something after its
    /// last answer; zero while nothing is waiting.
    pub fn silence(&self, now: Instant) -> Duration {
        match self.waiting_since_us.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_micros(micros_since_start(now).saturating_sub(since)),
        }
    }

    /// Folds a latency sample into the EWMA (weight 1/5 for the newest sample).
    fn record_latency(&self, latency: Duration) {
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
    }

    /// A call answered successfully after `latency`.
    pub fn call_succeeded(&self, latency: Duration) {
        self.record_latency(latency);
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    /// A call to this worker was still unanswered after `waited` when a hedge to another replica
    /// answered first: its latency is at least that, and the EWMA says so, so that replica
    /// choice routes around a replica that keeps losing hedges.
    pub fn lost_to_hedge(&self, waited: Duration) {
        self.record_latency(waited);
    }

    /// Drops the latency EWMA: the next successful call sets it afresh.
    pub fn forget_latency(&self) {
        self.latency_ewma_micros.store(0, Ordering::Relaxed);
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

    /// Silent for much longer than this worker usually takes to answer: it may be frozen (a
    /// partition, SIGSTOP) long before the health rules can tell.
    pub fn is_stalled(&self, now: Instant) -> bool {
        self.silence(now) > self.stall_limit()
    }

    /// The silence beyond which the worker looks stalled: four times its usual latency, at
    /// least [`STALL_FLOOR_MICROS`].
    fn stall_limit(&self) -> Duration {
        let usual = self.latency_ewma_micros().saturating_mul(4);
        Duration::from_micros(usual.max(STALL_FLOOR_MICROS))
    }

    /// When the worker will look stalled if it answers nothing before then (from `now` if
    /// nothing is waiting for an answer yet).
    pub fn stalls_at(&self, now: Instant) -> Instant {
        now + self.stall_limit().saturating_sub(self.silence(now))
    }

    /// The order replica choice prefers (smallest first): not stalled, then the least expected
    /// wait, the latency EWMA times the calls it would queue behind (Finagle's "peak EWMA"
    /// cost): a replica that is slow, or keeps losing hedges, gets fewer calls even when its
    /// queue is as short as the others'.
    pub fn choice_key(&self, now: Instant) -> (bool, u64) {
        let cost = self
            .latency_ewma_micros()
            .max(1)
            .saturating_mul(u64::from(self.outstanding()) + 1);
        (self.is_stalled(now), cost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_runs_from_the_first_unanswered_request_until_any_answer() {
        let load = Load::default();
        let t = Instant::now();
        assert_eq!(
            load.silence(t + Duration::from_secs(5)),
            Duration::ZERO,
            "nothing asked"
        );
        load.asked(t);
        load.asked(t + Duration::from_millis(300));
        assert_eq!(
            load.silence(t + Duration::from_millis(500)),
            Duration::from_millis(500)
        );
        // A call that was cancelled (a hedge won) leaves the clock running: no answer came.
        drop(load.call_started(t + Duration::from_millis(600)));
        assert_eq!(
            load.silence(t + Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        load.pong(t + Duration::from_secs(2));
        assert_eq!(load.silence(t + Duration::from_secs(3)), Duration::ZERO);
        // Two calls out; one answered: the other keeps the clock running, from the answer.
        let a = load.call_started(t + Duration::from_secs(4));
        let _b = load.call_started(t + Duration::from_secs(4));
        load.call_answered(t + Duration::from_secs(5));
        drop(a);
        assert_eq!(
            load.silence(t + Duration::from_secs(6)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn a_worker_is_stalled_when_silent_far_beyond_its_usual_latency() {
        let load = Load::default();
        // The process-wide zero point is set on first use; an instant taken before it would
        // saturate to it, and this test may be the process's first user.
        micros_since_start(Instant::now());
        let now = Instant::now();
        load.asked(now);
        assert!(!load.is_stalled(now + Duration::from_millis(50)));
        assert!(load.is_stalled(now + Duration::from_millis(150)));
        assert_eq!(
            load.stalls_at(now + Duration::from_millis(30)),
            now + Duration::from_millis(100)
        );
        // A slow model stretches the limit to four times its usual latency.
        load.latency_ewma_micros.store(200_000, Ordering::Relaxed);
        assert!(!load.is_stalled(now + Duration::from_millis(500)));
        assert!(load.is_stalled(now + Duration::from_millis(900)));
    }

    #[test]
    fn the_ewma_leans_on_history_and_losing_hedges_raises_it() {
        let load = Load::default();
        load.call_succeeded(Duration::from_micros(100));
        load.call_succeeded(Duration::from_micros(600));
        assert_eq!(load.latency_ewma_micros(), 200);
        assert_eq!(load.completed(), 2);
        load.lost_to_hedge(Duration::from_micros(5_200));
        assert_eq!(load.latency_ewma_micros(), 1_200);
        assert_eq!(load.completed(), 2, "a lost call is not a completed one");
        let now = Instant::now();
        let a = load.call_started(now);
        let b = load.call_started(now);
        assert_eq!(load.outstanding(), 2);
        drop((a, b));
        assert_eq!(load.outstanding(), 0);
    }

    #[test]
    fn choice_prefers_the_shorter_expected_wait_and_avoids_stalled_replicas() {
        let now = Instant::now();
        let fast_busy = Load::default();
        fast_busy.call_succeeded(Duration::from_micros(1_000));
        let _calls = [fast_busy.call_started(now), fast_busy.call_started(now)];
        fast_busy.answered(now, 0);
        let slow_idle = Load::default();
        slow_idle.call_succeeded(Duration::from_micros(5_000));
        // Three calls' worth of 1 ms beats one call's worth of 5 ms.
        assert!(fast_busy.choice_key(now) < slow_idle.choice_key(now));
        // Silent for 200 ms with calls waiting: stalled, so last whatever its cost.
        fast_busy.asked(now);
        let later = now + Duration::from_millis(200);
        assert!(fast_busy.choice_key(later) > slow_idle.choice_key(later));
    }
}
