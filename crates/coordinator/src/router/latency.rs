//! Rolling per-model latency (HDR histograms) that sets each model's hedging delay.

use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one window collects samples before it becomes the previous window.
const WINDOW: Duration = Duration::from_secs(10);

/// New samples after which the current window's p95 is computed again: reading a quantile
/// walks the histogram's buckets, too slow to do for every member call.
const P95_REFRESH_SAMPLES: u64 = 32;

/// One model's current window and the p95 the last full window ended with.
struct ModelLatency {
    current: Histogram<u64>,
    started: Instant,
    previous_p95: Option<u64>,
    /// The current window's p95 as of `cached_len` samples.
    cached_p95: Option<u64>,
    cached_len: u64,
}

impl ModelLatency {
    fn new(now: Instant) -> Self {
        ModelLatency {
            // 1 µs to 60 s at 2 significant digits: a few KiB per model.
            current: Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid histogram bounds"),
            started: now,
            previous_p95: None,
            cached_p95: None,
            cached_len: 0,
        }
    }

    /// The current window's p95, recomputed once [`P95_REFRESH_SAMPLES`] samples arrived
    /// since the last computation.
    fn current_p95(&mut self) -> u64 {
        let len = self.current.len();
        match self.cached_p95 {
            Some(p95) if len < self.cached_len + P95_REFRESH_SAMPLES => p95,
            _ => {
                let p95 = self.current.value_at_quantile(0.95);
                self.cached_p95 = Some(p95);
                self.cached_len = len;
                p95
            }
        }
    }

    fn roll(&mut self, now: Instant, min_samples: u64) {
        if now.duration_since(self.started) >= WINDOW {
            if self.current.len() >= min_samples {
                self.previous_p95 = Some(self.current.value_at_quantile(0.95));
            }
            self.current.reset();
            self.cached_p95 = None;
            self.started = now;
        }
    }
}

/// Latency of successful member calls per model, for the hedging delay.
pub struct LatencyTracker {
    models: Mutex<HashMap<String, ModelLatency>>,
    min_samples: u64,
}

impl LatencyTracker {
    /// `min_samples`: how many calls a window needs before its p95 is trusted.
    pub fn new(min_samples: u64) -> Self {
        LatencyTracker {
            models: Mutex::new(HashMap::new()),
            min_samples: min_samples.max(1),
        }
    }

    pub fn record(&self, model: &str, latency: Duration) {
        self.record_at(model, latency, Instant::now());
    }

    fn record_at(&self, model: &str, latency: Duration, now: Instant) {
        let micros = latency.as_micros().clamp(1, 60_000_000) as u64;
        let mut models = self.models.lock().expect("latency lock");
        // Looked up before inserting, so that the name is copied once per model, not per call.
        if !models.contains_key(model) {
            models.insert(model.to_string(), ModelLatency::new(now));
        }
        let entry = models.get_mut(model).expect("inserted above");
        entry.roll(now, self.min_samples);
        // Values are clamped into the histogram's range, so recording cannot fail.
        let _ = entry.current.record(micros);
    }

    /// The model's rolling p95: the current window's once it has enough samples, else the last
    /// full window's; `None` until some window had enough.
    pub fn p95(&self, model: &str) -> Option<Duration> {
        self.p95_at(model, Instant::now())
    }

    fn p95_at(&self, model: &str, now: Instant) -> Option<Duration> {
        let mut models = self.models.lock().expect("latency lock");
        let entry = models.get_mut(model)?;
        entry.roll(now, self.min_samples);
        let micros = if entry.current.len() >= self.min_samples {
            Some(entry.current_p95())
        } else {
            entry.previous_p95
        };
        micros.map(Duration::from_micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_p95_until_enough_samples() {
        let t = LatencyTracker::new(20);
        let now = Instant::now();
        for _ in 0..19 {
            t.record_at("m", Duration::from_millis(1), now);
        }
        assert_eq!(t.p95_at("m", now), None);
        t.record_at("m", Duration::from_millis(1), now);
        let p95 = t.p95_at("m", now).unwrap();
        assert!(
            p95 >= Duration::from_micros(990) && p95 <= Duration::from_micros(1010),
            "{p95:?}"
        );
        assert_eq!(t.p95_at("other", now), None);
    }

    #[test]
    fn p95_sits_above_the_bulk_and_below_the_tail() {
        let t = LatencyTracker::new(10);
        let now = Instant::now();
        for i in 0..100u64 {
            let ms = if i < 96 { 1 } else { 50 };
            t.record_at("m", Duration::from_millis(ms), now);
        }
        let p95 = t.p95_at("m", now).unwrap();
        assert!(p95 < Duration::from_millis(2), "{p95:?}");
    }

    #[test]
    fn a_finished_window_carries_its_p95_into_the_next() {
        let t = LatencyTracker::new(5);
        let start = Instant::now();
        for _ in 0..10 {
            t.record_at("m", Duration::from_millis(4), start);
        }
        let later = start + WINDOW + Duration::from_millis(1);
        // The new window has too few samples of its own: the last window's p95 stands.
        t.record_at("m", Duration::from_millis(100), later);
        let p95 = t.p95_at("m", later).unwrap();
        assert!(
            p95 >= Duration::from_micros(3900) && p95 <= Duration::from_micros(4100),
            "{p95:?}"
        );
    }

    #[test]
    fn the_p95_follows_new_samples_within_the_refresh_count() {
        let t = LatencyTracker::new(1);
        let now = Instant::now();
        for _ in 0..100 {
            t.record_at("m", Duration::from_millis(1), now);
        }
        assert!(t.p95_at("m", now).unwrap() < Duration::from_millis(2));
        // The model slows down: after one refresh's worth of samples and more, the p95 says so.
        for _ in 0..(P95_REFRESH_SAMPLES * 4) {
            t.record_at("m", Duration::from_millis(20), now);
        }
        let p95 = t.p95_at("m", now).unwrap();
        assert!(p95 >= Duration::from_millis(19), "{p95:?}");
    }
}
