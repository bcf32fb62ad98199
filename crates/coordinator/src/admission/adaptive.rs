//! An adaptive concurrency limit for the coordinator (`--adaptive-inflight`), in the manner of
//! Netflix's gradient limiter and Envoy's adaptive concurrency filter: the limit follows the
//! ratio of the baseline latency (the best recent window, drifting up slowly) to the latest
//! window's. While requests are served near the baseline the limit grows by about its square
//! root per window; once queues build up below the coordinator (the workers') and latency passes
//! `tolerance` × the baseline, it shrinks, so the excess waits in the coordinator's bounded
//! queue and is turned away with a fast 429 instead of queueing in the workers until deadlines
//! pass.
//!
//! The latency observed is an admitted request's time from admission to answer: queueing in the
//! coordinator's own gate is not part of it, so a shrinking limit does bring it back down.

use super::gate::Gate;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How the limit adapts.
#[derive(Debug, Clone, Copy)]
pub struct AdaptiveSettings {
    /// The limit never goes below this.
    pub min_limit: usize,
    /// Latency up to this multiple of the baseline counts as healthy.
    pub tolerance: f64,
}

impl Default for AdaptiveSettings {
    fn default() -> Self {
        AdaptiveSettings {
            min_limit: 8,
            tolerance: 2.0,
        }
    }
}

/// Samples per window, and the longest a window lasts when traffic is light.
const WINDOW_SAMPLES: u32 = 50;
const WINDOW_TIME: Duration = Duration::from_millis(250);
/// How fast the baseline forgets a better past when latency stays higher: 0.2 % of the gap per
/// window, so a lasting change in the work (a slower model) is accepted within a few hundred
/// windows (a minute or so under load) while an overload, which the shrinking limit itself
/// ends, barely moves it.
const BASELINE_DRIFT: f64 = 0.002;
/// Weight of each window's proposal in the limit (smooths noise).
const SMOOTHING: f64 = 0.2;

#[derive(Debug)]
struct Window {
    limit: f64,
    sum: Duration,
    samples: u32,
    started: Instant,
    /// Baseline latency in seconds; `None` until the first window.
    baseline: Option<f64>,
}

#[derive(Debug)]
pub struct AdaptiveLimit {
    gate: Arc<Gate>,
    settings: AdaptiveSettings,
    max_limit: usize,
    window: Mutex<Window>,
    gauge: Gauge,
}

impl AdaptiveLimit {
    /// Starts at `max_limit`, the static limit, and adapts below it.
    pub fn new(
        gate: Arc<Gate>,
        settings: AdaptiveSettings,
        max_limit: usize,
        gauge: Gauge,
    ) -> Self {
        AdaptiveLimit {
            gate,
            settings,
            max_limit: max_limit.max(settings.min_limit.max(1)),
            window: Mutex::new(Window {
                limit: max_limit as f64,
                sum: Duration::ZERO,
                samples: 0,
                started: Instant::now(),
                baseline: None,
            }),
            gauge,
        }
    }

    /// One admitted request took `latency`; at the end of a window the limit moves.
    pub fn observe(&self, latency: Duration) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.sum += latency;
        w.samples += 1;
        if w.samples < WINDOW_SAMPLES && w.started.elapsed() < WINDOW_TIME {
            return;
        }
        let latest = w.sum.as_secs_f64() / f64::from(w.samples);
        w.sum = Duration::ZERO;
        w.samples = 0;
        w.started = Instant::now();
        let baseline = match w.baseline {
            Some(b) if latest >= b => b + (latest - b) * BASELINE_DRIFT,
            _ => latest,
        };
        w.baseline = Some(baseline);
        let (inflight, _) = self.gate.load();
        let limit = next_limit(w.limit, baseline, latest, inflight, self.settings);
        w.limit = limit.clamp(self.settings.min_limit as f64, self.max_limit as f64);
        let rounded = w.limit.round() as usize;
        drop(w);
        self.gate.set_limit(rounded);
        self.gauge.set(rounded as i64);
    }
}

/// The gradient step: shrink in proportion to how far `latest` is past `tolerance` × the
/// baseline (at most halving per window), grow by √limit while healthy and actually used.
fn next_limit(
    limit: f64,
    baseline: f64,
    latest: f64,
    inflight: usize,
    settings: AdaptiveSettings,
) -> f64 {
    let gradient = if latest > 0.0 {
        (settings.tolerance * baseline / latest).clamp(0.5, 1.0)
    } else {
        1.0
    };
    let mut proposed = limit * gradient + limit.sqrt();
    // A limit that traffic does not reach says nothing about a higher one: do not grow it.
    if (inflight as f64) < limit / 2.0 {
        proposed = proposed.min(limit);
    }
    limit * (1.0 - SMOOTHING) + proposed * SMOOTHING
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_shrinks_when_latency_passes_the_tolerance_and_grows_back_when_healthy() {
        let settings = AdaptiveSettings::default();
        // Healthy and busy: grows.
        assert!(next_limit(100.0, 0.002, 0.002, 100, settings) > 100.0);
        // Healthy but idle: holds.
        assert!(next_limit(100.0, 0.002, 0.002, 10, settings) <= 100.0);
        // Four times the baseline: shrinks, by at most a tenth per window after smoothing.
        let shrunk = next_limit(100.0, 0.002, 0.008, 100, settings);
        assert!((90.0..100.0).contains(&shrunk), "{shrunk}");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_answers_bring_the_gate_limit_down_to_the_floor_and_no_lower() {
        let gate = Gate::new(64, 10);
        let adaptive = AdaptiveLimit::new(
            Arc::clone(&gate),
            AdaptiveSettings::default(),
            64,
            Gauge::default(),
        );
        let _held: Vec<_> =
            futures::future::join_all((0..64).map(|_| gate.acquire(1, Duration::ZERO)))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        for _ in 0..WINDOW_SAMPLES {
            adaptive.observe(Duration::from_millis(2));
        }
        assert_eq!(gate.limit(), 64);
        for _ in 0..40 * WINDOW_SAMPLES {
            adaptive.observe(Duration::from_millis(20));
        }
        assert_eq!(gate.limit(), AdaptiveSettings::default().min_limit);
    }
}
