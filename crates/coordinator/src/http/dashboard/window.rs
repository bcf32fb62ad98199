//! The last few minutes of traffic: a ring of per-second [`Counts`] samples, and what the
//! dashboard asks of it — rates and latency percentiles over a span, and a per-second series.
//!
//! Rules:
//! 1. A sample holds cumulative counters; everything shown is the difference between two
//!    samples, so a missed tick only widens one interval, it loses nothing.
//! 2. A span reaches back to the oldest sample inside it (or the oldest kept, if the
//!    coordinator is younger than the span); its rates divide by the time actually covered.
//! 3. Percentiles interpolate linearly inside the histogram bucket holding the rank, as
//!    Prometheus' `histogram_quantile` does; a rank in the `+Inf` bucket reports the largest
//!    finite bound. With 1-2.5-5 buckets that is coarse, and it agrees with Grafana.

use super::scrape::{Buckets, Counts, ModelCounts};
use serde::Serialize;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One sample: when it was taken (monotonic, and as Unix milliseconds for the page's clock).
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    unix_ms: u64,
    counts: Counts,
}

/// The ring of samples, oldest first, at most `capacity` long.
#[derive(Debug)]
pub struct Window {
    samples: VecDeque<Sample>,
    capacity: usize,
}

/// Rates and percentiles over one span.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Seconds the span actually covers (rule 2).
    pub seconds: f64,
    pub requests: u64,
    pub requests_per_s: f64,
    pub errors: u64,
    pub errors_per_s: f64,
    pub degraded: u64,
    /// Degraded answers per request (0 with no requests).
    pub degraded_ratio: f64,
    /// Members' votes for the class the ensemble answered, per vote (`None` with no votes:
    /// not an ensemble, a combiner without classes, or no traffic).
    pub agreement: Option<f64>,
    pub calls: u64,
    pub calls_failed: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One second of the series: what happened between two consecutive samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub unix_ms: u64,
    pub requests_per_s: f64,
    pub errors_per_s: f64,
    pub p99_ms: Option<f64>,
}

/// Totals since start and the span's summary for one model or ensemble.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelTraffic {
    pub name: String,
    pub requests_total: u64,
    pub errors_total: u64,
    pub degraded_total: u64,
    pub last: Summary,
}

impl Window {
    pub fn new(capacity: usize) -> Self {
        Window {
            samples: VecDeque::with_capacity(capacity),
            capacity: capacity.max(2),
        }
    }

    pub fn push(&mut self, at: Instant, unix_ms: u64, counts: Counts) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            at,
            unix_ms,
            counts,
        });
    }

    pub fn newest(&self) -> Option<(u64, &Counts)> {
        self.samples.back().map(|s| (s.unix_ms, &s.counts))
    }

    /// The oldest sample no older than `span` before the newest, and the newest (rule 2).
    fn span(&self, span: Duration) -> Option<(&Sample, &Sample)> {
        let newest = self.samples.back()?;
        let oldest = self
            .samples
            .iter()
            .find(|s| newest.at.duration_since(s.at) <= span)
            .unwrap_or(newest);
        Some((oldest, newest))
    }

    /// Every model together over the last `span`.
    pub fn summary(&self, span: Duration) -> Summary {
        self.span(span)
            .map(|(old, new)| {
                let total = |c: &Counts| {
                    c.models.values().fold(ModelCounts::default(), |mut t, m| {
                        add(&mut t, m);
                        t
                    })
                };
                summarize(&total(&old.counts), &total(&new.counts), seconds(old, new))
            })
            .unwrap_or_default()
    }

    /// Each model or ensemble seen since start, with its summary over the last `span`.
    pub fn models(&self, span: Duration) -> Vec<ModelTraffic> {
        let Some((old, new)) = self.span(span) else {
            return Vec::new();
        };
        let empty = ModelCounts::default();
        new.counts
            .models
            .iter()
            .map(|(name, now)| {
                let before = old.counts.models.get(name).unwrap_or(&empty);
                ModelTraffic {
                    name: name.clone(),
                    requests_total: now.requests,
                    errors_total: now.errors,
                    degraded_total: now.degraded,
                    last: summarize(before, now, seconds(old, new)),
                }
            })
            .collect()
    }

    /// One point per interval between consecutive samples, oldest first.
    pub fn series(&self) -> Vec<Point> {
        let all = |c: &Counts| {
            c.models.values().fold(ModelCounts::default(), |mut t, m| {
                add(&mut t, m);
                t
            })
        };
        let totals: Vec<ModelCounts> = self.samples.iter().map(|s| all(&s.counts)).collect();
        self.samples
            .iter()
            .zip(&totals)
            .zip(self.samples.iter().zip(&totals).skip(1))
            .map(|((old, before), (new, now))| {
                let s = summarize(before, now, seconds(old, new));
                Point {
                    unix_ms: new.unix_ms,
                    requests_per_s: s.requests_per_s,
                    errors_per_s: s.errors_per_s,
                    p99_ms: s.p99_ms,
                }
            })
            .collect()
    }
}

fn seconds(old: &Sample, new: &Sample) -> f64 {
    new.at.duration_since(old.at).as_secs_f64()
}

/// Adds `m` into `total`, histogram buckets matched by bound.
fn add(total: &mut ModelCounts, m: &ModelCounts) {
    total.requests += m.requests;
    total.errors += m.errors;
    total.degraded += m.degraded;
    total.votes += m.votes;
    total.agreeing += m.agreeing;
    total.calls += m.calls;
    total.calls_failed += m.calls_failed;
    for &(le, count) in &m.latency {
        match total.latency.iter_mut().find(|(bound, _)| *bound == le) {
            Some(bucket) => bucket.1 += count,
            None => {
                total.latency.push((le, count));
                total.latency.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
        }
    }
}

/// What happened between `before` and `now`, `seconds` apart (rule 1).
fn summarize(before: &ModelCounts, now: &ModelCounts, seconds: f64) -> Summary {
    let requests = now.requests.saturating_sub(before.requests);
    let errors = now.errors.saturating_sub(before.errors);
    let degraded = now.degraded.saturating_sub(before.degraded);
    let per_s = |n: u64| {
        if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        }
    };
    let latency: Buckets = now
        .latency
        .iter()
        .map(|&(le, count)| {
            let earlier = before
                .latency
                .iter()
                .find(|(bound, _)| *bound == le)
                .map_or(0, |b| b.1);
            (le, count.saturating_sub(earlier))
        })
        .collect();
    let ms = |q: f64| quantile(&latency, q).map(|s| s * 1000.0);
    Summary {
        seconds,
        requests,
        requests_per_s: per_s(requests),
        errors,
        errors_per_s: per_s(errors),
        degraded,
        degraded_ratio: if requests > 0 {
            degraded as f64 / requests as f64
        } else {
            0.0
        },
        agreement: {
            let votes = now.votes.saturating_sub(before.votes);
            let agreeing = now.agreeing.saturating_sub(before.agreeing);
            (votes > 0).then(|| agreeing as f64 / votes as f64)
        },
        calls: now.calls.saturating_sub(before.calls),
        calls_failed: now.calls_failed.saturating_sub(before.calls_failed),
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
    }
}

/// The `q` quantile (0..=1) of a cumulative histogram, in its unit (rule 3); `None` if empty.
pub fn quantile(buckets: &Buckets, q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(le, count) in buckets {
        if count as f64 >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let inside = (count - lower.1) as f64;
            let fraction = if inside > 0.0 {
                (rank - lower.1 as f64) / inside
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * fraction);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(model: &str, requests: u64, errors: u64, latency: &[(f64, u64)]) -> Counts {
        let mut c = Counts::default();
        c.models.insert(
            model.into(),
            ModelCounts {
                requests,
                errors,
                latency: latency.to_vec(),
                ..ModelCounts::default()
            },
        );
        c
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let inf = f64::INFINITY;
        // 10 observations <= 1, 90 more <= 2, none above.
        let b = vec![(1.0, 10), (2.0, 100), (inf, 100)];
        assert_eq!(quantile(&b, 0.05), Some(0.5));
        assert_eq!(quantile(&b, 0.55), Some(1.5));
        assert_eq!(quantile(&b, 1.0), Some(2.0));
        // A rank in +Inf reports the largest finite bound.
        assert_eq!(quantile(&[(1.0, 1), (inf, 10)].to_vec(), 0.99), Some(1.0));
        assert_eq!(quantile(&[(1.0, 0), (inf, 0)].to_vec(), 0.5), None);
        assert_eq!(quantile(&Vec::new(), 0.5), None);
    }

    #[test]
    fn summaries_are_differences_over_the_time_covered() {
        let t0 = Instant::now();
        let inf = f64::INFINITY;
        let mut w = Window::new(300);
        assert_eq!(w.summary(Duration::from_secs(60)), Summary::default());
        w.push(t0, 0, counts("a", 100, 0, &[(0.01, 100), (inf, 100)]));
        w.push(
            t0 + Duration::from_secs(1),
            1000,
            counts("a", 100, 0, &[(0.01, 100), (inf, 100)]),
        );
        // 50 requests in the next 4 s, 10 of them errors, all between 10 and 20 ms.
        w.push(
            t0 + Duration::from_secs(5),
            5000,
            counts("a", 150, 10, &[(0.01, 100), (0.02, 50), (inf, 150)]),
        );
        let s = w.summary(Duration::from_secs(60));
        assert_eq!(s.seconds, 5.0, "reaches back to the oldest sample kept");
        assert_eq!((s.requests, s.errors), (50, 10));
        assert_eq!(s.requests_per_s, 10.0);
        assert_eq!(s.p50_ms, Some(15.0));
        let recent = w.summary(Duration::from_secs(4));
        assert_eq!(recent.seconds, 4.0);
        assert_eq!(recent.requests_per_s, 12.5);

        let series = w.series();
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].requests_per_s, 0.0);
        assert_eq!(series[0].p99_ms, None);
        assert_eq!(series[1].requests_per_s, 12.5);
        assert_eq!(series[1].unix_ms, 5000);

        let models = w.models(Duration::from_secs(60));
        assert_eq!(models.len(), 1);
        assert_eq!(
            (models[0].requests_total, models[0].last.requests),
            (150, 50)
        );
    }

    #[test]
    fn the_ring_keeps_only_its_capacity_and_models_appear_when_seen() {
        let t0 = Instant::now();
        let mut w = Window::new(3);
        for i in 0..5u64 {
            let mut c = counts("a", i * 10, 0, &[]);
            if i == 4 {
                c.models.insert(
                    "b".into(),
                    ModelCounts {
                        requests: 2,
                        degraded: 1,
                        ..ModelCounts::default()
                    },
                );
            }
            w.push(t0 + Duration::from_secs(i), i * 1000, c);
        }
        assert_eq!(w.series().len(), 2, "three samples, two intervals");
        let s = w.summary(Duration::from_secs(600));
        assert_eq!((s.seconds, s.requests), (2.0, 22));
        let b = w
            .models(Duration::from_secs(60))
            .into_iter()
            .find(|m| m.name == "b")
            .unwrap();
        assert_eq!(b.last.requests, 2, "a model absent before counts from zero");
        assert_eq!(b.last.degraded_ratio, 0.5);
    }
}
