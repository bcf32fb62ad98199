//! Per-client recording (an HDR histogram of microseconds plus error counts) and the summary a
//! run reports. Each client records into its own `Recorder`; they are merged once at the end, so
//! the hot path takes no lock.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Highest latency the histogram holds (larger values are clamped): one minute, in µs.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Why a request did not count as answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// An HTTP status other than 2xx.
    Status(u16),
    /// Connecting, sending or reading failed.
    Transport,
    /// No answer within `--timeout`.
    Timeout,
    /// A 2xx answer whose labels differ from the fixture's.
    WrongAnswer,
    /// Open loop: due while every connection was busy, so never sent.
    Dropped,
}

/// Failures by kind, as reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Errors {
    /// Answers by HTTP status code (non-2xx only).
    pub by_status: BTreeMap<u16, u64>,
    pub transport: u64,
    pub timeout: u64,
    pub wrong_answer: u64,
    /// Open loop only: requests not sent because `--max-outstanding` were already in flight.
    pub dropped: u64,
}

impl Errors {
    /// Every failed request except dropped ones (which were never sent).
    pub fn failed(&self) -> u64 {
        self.by_status.values().sum::<u64>() + self.transport + self.timeout + self.wrong_answer
    }

    pub fn is_empty(&self) -> bool {
        self.failed() == 0 && self.dropped == 0
    }

    fn add(&mut self, failure: Failure) {
        match failure {
            Failure::Status(code) => *self.by_status.entry(code).or_default() += 1,
            Failure::Transport => self.transport += 1,
            Failure::Timeout => self.timeout += 1,
            Failure::WrongAnswer => self.wrong_answer += 1,
            Failure::Dropped => self.dropped += 1,
        }
    }

    fn merge(&mut self, other: &Errors) {
        for (code, n) in &other.by_status {
            *self.by_status.entry(*code).or_default() += n;
        }
        self.transport += other.transport;
        self.timeout += other.timeout;
        self.wrong_answer += other.wrong_answer;
        self.dropped += other.dropped;
    }

    /// `none`, or e.g. `503×12 timeout×1`.
    pub fn describe(&self) -> String {
        if self.is_empty() {
            return "none".into();
        }
        let mut parts: Vec<String> = self
            .by_status
            .iter()
            .map(|(code, n)| format!("{code}×{n}"))
            .collect();
        for (name, n) in [
            ("transport", self.transport),
            ("timeout", self.timeout),
            ("wrong", self.wrong_answer),
            ("dropped", self.dropped),
        ] {
            if n > 0 {
                parts.push(format!("{name}×{n}"));
            }
        }
        parts.join(" ")
    }
}

/// One client's measurements.
#[derive(Debug, Clone)]
pub struct Recorder {
    latency_us: Histogram<u64>,
    /// How fast refusals (429: admission or a full worker queue) came back.
    refused_us: Histogram<u64>,
    rows: u64,
    errors: Errors,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("static histogram bounds are valid"),
            refused_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("static histogram bounds are valid"),
            rows: 0,
            errors: Errors::default(),
        }
    }

    /// An answered request of `rows` rows that took `latency`.
    pub fn answered(&mut self, latency: Duration, rows: usize) {
        let us = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        self.latency_us.saturating_record(us);
        self.rows += rows as u64;
    }

    pub fn failed(&mut self, failure: Failure) {
        self.errors.add(failure);
    }

    /// A failed request that took `latency`: refusals (429) also record how fast they came.
    pub fn failed_after(&mut self, failure: Failure, latency: Duration) {
        if failure == Failure::Status(429) {
            let us = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
            self.refused_us.saturating_record(us);
        }
        self.failed(failure);
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms with the same bounds merge");
        self.refused_us
            .add(&other.refused_us)
            .expect("histograms with the same bounds merge");
        self.rows += other.rows;
        self.errors.merge(&other.errors);
    }

    /// The run's figures over `window` (the measured time).
    pub fn summary(&self, window: Duration) -> (Summary, Errors) {
        let requests = self.latency_us.len();
        let seconds = window.as_secs_f64().max(f64::MIN_POSITIVE);
        let summary = Summary {
            requests,
            rows: self.rows,
            measured_s: window.as_secs_f64(),
            requests_per_s: requests as f64 / seconds,
            rows_per_s: self.rows as f64 / seconds,
            latency_us: Percentiles::of(&self.latency_us),
            refused_latency_us: (!self.refused_us.is_empty())
                .then(|| Percentiles::of(&self.refused_us)),
        };
        (summary, self.errors.clone())
    }
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let empty = h.is_empty();
        let pct = |q: f64| if empty { 0 } else { h.value_at_quantile(q) };
        Percentiles {
            p50: pct(0.50),
            p90: pct(0.90),
            p99: pct(0.99),
            p999: pct(0.999),
            max: if empty { 0 } else { h.max() },
            mean: if empty { 0.0 } else { h.mean() },
        }
    }
}

/// Latency percentiles in microseconds (HDR histogram, 3 significant digits).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

/// What a run achieved. Only answered requests count; failures are in [`Errors`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Requests answered (2xx, and correct where checked) in the measured time.
    pub requests: u64,
    pub rows: u64,
    pub measured_s: f64,
    pub requests_per_s: f64,
    pub rows_per_s: f64,
    pub latency_us: Percentiles,
    /// How fast 429s came back, when there were any.
    pub refused_latency_us: Option<Percentiles>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_throughput_and_rows() {
        let mut r = Recorder::new();
        for us in 1..=1000u64 {
            r.answered(Duration::from_micros(us), 2);
        }
        let (s, e) = r.summary(Duration::from_secs(2));
        assert_eq!(s.requests, 1000);
        assert_eq!(s.rows, 2000);
        assert_eq!(s.requests_per_s, 500.0);
        assert_eq!(s.rows_per_s, 1000.0);
        assert_eq!(s.latency_us.p50, 500);
        assert_eq!(s.latency_us.p90, 900);
        assert_eq!(s.latency_us.p99, 990);
        assert_eq!(s.latency_us.p999, 999);
        assert_eq!(s.latency_us.max, 1000);
        assert!((s.latency_us.mean - 500.5).abs() < 1.0);
        assert!(e.is_empty());
        assert_eq!(e.describe(), "none");
    }

    #[test]
    fn sub_microsecond_and_huge_latencies_are_clamped() {
        let mut r = Recorder::new();
        r.answered(Duration::from_nanos(10), 1);
        r.answered(Duration::from_secs(3600), 1);
        let (s, _) = r.summary(Duration::from_secs(1));
        assert_eq!(s.requests, 2);
        assert_eq!(s.latency_us.p50, 1);
        assert!(s.latency_us.max >= MAX_LATENCY_US * 999 / 1000);
    }

    #[test]
    fn empty_run_reports_zeros() {
        let (s, e) = Recorder::new().summary(Duration::ZERO);
        assert_eq!(s.requests, 0);
        assert_eq!(s.latency_us.p99, 0);
        assert_eq!(s.requests_per_s, 0.0);
        assert!(e.is_empty());
    }

    #[test]
    fn merging_adds_counts_and_errors() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        a.answered(Duration::from_micros(100), 1);
        b.answered(Duration::from_micros(300), 1);
        a.failed(Failure::Status(503));
        b.failed(Failure::Status(503));
        b.failed(Failure::Status(429));
        b.failed(Failure::Timeout);
        b.failed(Failure::Dropped);
        b.failed(Failure::WrongAnswer);
        a.merge(&b);
        let (s, e) = a.summary(Duration::from_secs(1));
        assert_eq!(s.requests, 2);
        assert_eq!(s.latency_us.max, 300);
        assert_eq!(e.by_status, BTreeMap::from([(429, 1), (503, 2)]));
        assert_eq!(e.failed(), 5);
        assert_eq!(e.dropped, 1);
        assert_eq!(e.describe(), "429×1 503×2 timeout×1 wrong×1 dropped×1");
    }

    #[test]
    fn errors_serialise_with_status_codes_as_keys() {
        let mut e = Errors::default();
        e.add(Failure::Status(500));
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["by_status"]["500"], 1);
        assert_eq!(json["transport"], 0);
        assert_eq!(json["dropped"], 0);
    }

    #[test]
    fn refusals_record_how_fast_they_came_and_other_failures_do_not() {
        let mut r = Recorder::new();
        r.answered(Duration::from_millis(5), 1);
        r.failed_after(Failure::Status(503), Duration::from_millis(900));
        let (summary, _) = r.summary(Duration::from_secs(1));
        assert_eq!(summary.refused_latency_us, None);
        r.failed_after(Failure::Status(429), Duration::from_micros(300));
        let (summary, errors) = r.summary(Duration::from_secs(1));
        let refused = summary.refused_latency_us.expect("a 429 was recorded");
        assert!((299..=301).contains(&refused.p99), "{refused:?}");
        assert_eq!(errors.by_status[&429], 1);
        assert_eq!(summary.requests, 1);
    }
}
