//! Triton's statistics extension: per model version, how many inferences and executions it
//! served and how long they took, cumulatively since the coordinator started.
//!
//! Counted where each thing is run: every routed model call (a member of an ensemble, or a model
//! asked for directly) by the router, every ensemble request by the inference core. A model
//! called by an ensemble counts in its own statistics too, as Triton's composing models do.
//!
//! Durations are what the coordinator sees. `success`/`fail`: from the call's start to its end
//! (retries and hedges included); `compute_infer`: the same time for a successful execution.
//! The coordinator cannot split a worker's time into queue and compute (the workers' own metrics
//! do: `chorus_worker_queue_seconds`), so `queue`, `compute_input` and `compute_output` count
//! every successful execution with 0 ns. Triton's tools rely on those counts: perf_analyzer
//! finds the version it measured by its `queue.count` going up, and insists the three compute
//! counts stay equal.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// A count and a cumulative duration, as Triton's `StatisticDuration`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatDuration {
    pub count: u64,
    pub ns: u64,
}

/// One model version's statistics at a point in time, in Triton's terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelStatistics {
    pub name: String,
    pub version: String,
    /// Milliseconds since the Unix epoch of the last successful inference; 0 if none.
    pub last_inference_ms: u64,
    /// Inferences (rows: the batch dimension of the first input) answered successfully.
    pub inference_count: u64,
    /// Requests or calls answered successfully.
    pub execution_count: u64,
    pub success: StatDuration,
    pub fail: StatDuration,
    pub queue: StatDuration,
    pub compute_input: StatDuration,
    pub compute_infer: StatDuration,
    pub compute_output: StatDuration,
}

#[derive(Debug, Default)]
struct DurationCounter {
    count: AtomicU64,
    ns: AtomicU64,
}

impl DurationCounter {
    fn add(&self, elapsed: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(
            elapsed.as_nanos().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    fn get(&self) -> StatDuration {
        StatDuration {
            count: self.count.load(Ordering::Relaxed),
            ns: self.ns.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    last_inference_ms: AtomicU64,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    success: DurationCounter,
    fail: DurationCounter,
}

/// Statistics of every model version that has been asked for, by name then version.
#[derive(Debug, Default)]
pub struct InferenceStats {
    models: RwLock<HashMap<String, HashMap<String, Arc<Counters>>>>,
}

impl InferenceStats {
    pub fn new() -> Self {
        InferenceStats::default()
    }

    fn counters(&self, model: &str, version: &str) -> Arc<Counters> {
        if let Some(counters) = self
            .models
            .read()
            .expect("stats lock")
            .get(model)
            .and_then(|versions| versions.get(version))
        {
            return Arc::clone(counters);
        }
        let mut models = self.models.write().expect("stats lock");
        Arc::clone(
            models
                .entry(model.to_string())
                .or_default()
                .entry(version.to_string())
                .or_default(),
        )
    }

    /// Counts one successful execution of `rows` inferences that took `elapsed` and ended at
    /// `finished` (which the caller has at hand: one clock read less per call).
    pub fn record_success(
        &self,
        model: &str,
        version: &str,
        rows: u64,
        elapsed: Duration,
        finished: Instant,
    ) {
        let counters = self.counters(model, version);
        counters.success.add(elapsed);
        counters.execution_count.fetch_add(1, Ordering::Relaxed);
        counters.inference_count.fetch_add(rows, Ordering::Relaxed);
        counters
            .last_inference_ms
            .fetch_max(epoch_ms(finished), Ordering::Relaxed);
    }

    /// Counts one failed execution that took `elapsed`.
    pub fn record_failure(&self, model: &str, version: &str, elapsed: Duration) {
        self.counters(model, version).fail.add(elapsed);
    }

    /// The statistics of one model version (all zero if it was never asked for).
    pub fn snapshot(&self, model: &str, version: &str) -> ModelStatistics {
        let models = self.models.read().expect("stats lock");
        let mut stats = ModelStatistics {
            name: model.to_string(),
            version: version.to_string(),
            ..ModelStatistics::default()
        };
        if let Some(c) = models.get(model).and_then(|versions| versions.get(version)) {
            stats.last_inference_ms = c.last_inference_ms.load(Ordering::Relaxed);
            stats.inference_count = c.inference_count.load(Ordering::Relaxed);
            stats.execution_count = c.execution_count.load(Ordering::Relaxed);
            stats.success = c.success.get();
            stats.fail = c.fail.get();
            stats.compute_infer = stats.success;
            let executions = StatDuration {
                count: stats.success.count,
                ns: 0,
            };
            stats.queue = executions;
            stats.compute_input = executions;
            stats.compute_output = executions;
        }
        stats
    }
}

/// Milliseconds since the Unix epoch at monotonic instant `at`, from one wall-clock reading
/// taken the first time it is needed (Triton's `last_inference` is wall-clock milliseconds).
fn epoch_ms(at: Instant) -> u64 {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    let (anchor, anchor_ms) = *ANCHOR.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        (Instant::now(), wall)
    });
    let since = at.saturating_duration_since(anchor).as_millis() as u64;
    let before = anchor.saturating_duration_since(at).as_millis() as u64;
    (anchor_ms + since).saturating_sub(before)
}

/// The rows of a request: the batch (first) dimension of its first input, 1 for scalars.
pub fn rows_of(inputs: &[chorus_common::Tensor]) -> u64 {
    inputs
        .first()
        .and_then(|t| t.shape.first())
        .map_or(1, |&d| d.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_durations_add_up_per_version() {
        let stats = InferenceStats::new();
        let now = Instant::now();
        stats.record_success("m", "1", 3, Duration::from_micros(10), now);
        stats.record_success("m", "1", 1, Duration::from_micros(30), now);
        stats.record_failure("m", "1", Duration::from_micros(5));
        let m = stats.snapshot("m", "1");
        assert_eq!(m.inference_count, 4);
        assert_eq!(m.execution_count, 2);
        assert_eq!(
            m.success,
            StatDuration {
                count: 2,
                ns: 40_000
            }
        );
        assert_eq!(m.compute_infer, m.success);
        assert_eq!(
            m.fail,
            StatDuration {
                count: 1,
                ns: 5_000
            }
        );
        assert!(m.last_inference_ms > 0);
        // Triton's tools need these counts to move with every execution, and to agree.
        assert_eq!(m.queue.count, 2);
        assert_eq!(m.compute_input.count, m.compute_output.count);
        assert_eq!(m.compute_input.count, m.compute_infer.count);
        let untouched = stats.snapshot("m", "2");
        assert_eq!(untouched.execution_count, 0);
        assert_eq!(untouched.last_inference_ms, 0);
    }

    #[test]
    fn last_inference_is_wall_clock_milliseconds() {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let at = epoch_ms(Instant::now());
        assert!(at.abs_diff(wall) < 1000, "{at} vs {wall}");
        let later = epoch_ms(Instant::now() + Duration::from_secs(5));
        assert!(later.abs_diff(at + 5000) < 1000, "{later} vs {at}");
    }

    #[test]
    fn rows_come_from_the_first_inputs_batch_dimension() {
        use chorus_common::Tensor;
        assert_eq!(
            rows_of(&[Tensor::from_values("x", vec![5, 2], &[0f32; 10])]),
            5
        );
        assert_eq!(rows_of(&[Tensor::from_values("x", vec![], &[0f32])]), 1);
        assert_eq!(rows_of(&[]), 1);
    }
}
