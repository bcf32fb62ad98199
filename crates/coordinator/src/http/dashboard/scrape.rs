//! Reads the few series the dashboard needs out of the coordinator's own Prometheus text: the
//! request counters, the request latency histogram, degraded answers and member calls, per
//! model. Only ever fed [`crate::metrics::Metrics::encode`]'s output, once a second.
//!
//! Parsing our own text rather than reading the metric handles keeps the hot path untouched:
//! prometheus-client does not let a histogram's buckets be read back, and a second set of
//! counters beside it would be a second thing to keep in step on every request.

use std::collections::BTreeMap;

/// The per-model series read; every other line is skipped.
const WANTED: [&str; 6] = [
    "chorus_requests_total",
    "chorus_request_duration_seconds_bucket",
    "chorus_degraded_responses_total",
    "chorus_member_call_duration_seconds_count",
    "chorus_ensemble_member_votes_total",
    "chorus_ensemble_agreeing_votes_total",
];

/// Cumulative counts since the coordinator started, for one model or ensemble.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelCounts {
    /// Infer requests that named this model, whatever their outcome.
    pub requests: u64,
    /// Of those, the ones that did not end `ok` (client errors, rejections and cancellations
    /// included: the dashboard shows what callers got).
    pub errors: u64,
    /// Ensemble answers some member did not contribute to.
    pub degraded: u64,
    /// Class votes of the members that answered this ensemble, one per member and row.
    pub votes: u64,
    /// Of those, votes for the class the ensemble answered.
    pub agreeing: u64,
    /// Routed calls to this model (as an ensemble member or asked for directly).
    pub calls: u64,
    /// Of those, calls that failed or were late.
    pub calls_failed: u64,
    /// The request latency histogram: `(upper bound in seconds, cumulative count)`, ascending,
    /// ending with `+Inf`.
    pub latency: Buckets,
}

/// A cumulative histogram as Prometheus encodes it: `(le, count of observations <= le)`.
pub type Buckets = Vec<(f64, u64)>;

/// Everything the dashboard samples at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub models: BTreeMap<String, ModelCounts>,
    /// Infer requests being served at that instant.
    pub inflight: u64,
}

impl Counts {
    /// Reads `text` (Prometheus text format); lines it does not need are skipped.
    pub fn parse(text: &str) -> Counts {
        let mut counts = Counts::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, labels, value)) = split_sample(line) else {
                continue;
            };
            let label = |key: &str| {
                labels
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.as_str())
            };
            if name == "chorus_inflight_requests" {
                counts.inflight = value as u64;
                continue;
            }
            let Some(model) = label("model").filter(|_| WANTED.contains(&name)) else {
                continue;
            };
            let m = counts.models.entry(model.to_string()).or_default();
            let n = value as u64;
            match name {
                "chorus_requests_total" => {
                    m.requests += n;
                    if label("outcome") != Some("ok") {
                        m.errors += n;
                    }
                }
                "chorus_request_duration_seconds_bucket" => {
                    if let Some(le) = label("le").and_then(parse_le) {
                        add_bucket(&mut m.latency, le, n);
                    }
                }
                "chorus_degraded_responses_total" => m.degraded += n,
                "chorus_ensemble_member_votes_total" => m.votes += n,
                "chorus_ensemble_agreeing_votes_total" => m.agreeing += n,
                _ => {
                    m.calls += n;
                    if label("outcome") != Some("ok") {
                        m.calls_failed += n;
                    }
                }
            }
        }
        counts
    }
}

/// Adds `count` to the bucket `le`, summing the series of different protocols.
fn add_bucket(buckets: &mut Buckets, le: f64, count: u64) {
    match buckets.iter().position(|(bound, _)| *bound >= le) {
        Some(i) if buckets[i].0 == le => buckets[i].1 += count,
        Some(i) => buckets.insert(i, (le, count)),
        None => buckets.push((le, count)),
    }
}

fn parse_le(le: &str) -> Option<f64> {
    match le {
        "+Inf" => Some(f64::INFINITY),
        _ => le.parse().ok(),
    }
}

/// A sample's labels, values unescaped.
type Labels<'a> = Vec<(&'a str, String)>;

/// `name{k="v",...} value` into its parts; `None` for anything else.
fn split_sample(line: &str) -> Option<(&str, Labels<'_>, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, rest)) = series.split_once('{') else {
        return Some((series, Vec::new(), value));
    };
    let mut labels = Vec::new();
    let mut rest = rest.strip_suffix('}')?;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let (label, after) = unquote(after)?;
        labels.push((key, label));
        rest = after.strip_prefix(',').unwrap_or(after);
    }
    Some((name, labels, value))
}

/// A label value up to its closing quote (escapes undone), and what follows the quote.
fn unquote(s: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::{ErrorKind, Protocol};
    use crate::metrics::{CallOutcome, Metrics};

    #[test]
    fn reads_requests_latency_degraded_and_calls_from_real_metrics() {
        let metrics = Metrics::new();
        let soft = metrics.model_label("digits_soft", || true);
        metrics
            .request_started(soft.clone(), Protocol::Http)
            .finish(None);
        metrics
            .request_started(soft.clone(), Protocol::Grpc)
            .finish(None);
        metrics
            .request_started(soft, Protocol::Http)
            .finish(Some(ErrorKind::Unavailable));
        metrics.degraded_response("digits_soft");
        metrics.call_started("mlp").finish(CallOutcome::Ok);
        metrics.call_started("mlp").finish(CallOutcome::Failed);
        drop(metrics.call_started("mlp"));
        let inflight = metrics.request_started(metrics.model_label("x", || true), Protocol::Http);

        let counts = Counts::parse(&metrics.encode().unwrap());
        assert_eq!(counts.inflight, 1);
        let soft = &counts.models["digits_soft"];
        assert_eq!((soft.requests, soft.errors, soft.degraded), (3, 1, 1));
        let last = soft.latency.last().unwrap();
        assert_eq!(*last, (f64::INFINITY, 3), "both protocols summed");
        assert!(soft.latency.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(soft.latency.len(), 17);
        let mlp = &counts.models["mlp"];
        assert_eq!((mlp.calls, mlp.calls_failed, mlp.requests), (3, 2, 0));
        drop(inflight);
    }

    #[test]
    fn label_values_are_unescaped_and_odd_lines_skipped() {
        let text = "chorus_requests_total{model=\"a\\\"b\",protocol=\"http\",outcome=\"ok\"} 4\n\
                    garbage\n\
                    chorus_requests_total{model=\"a\\\"b\"} not-a-number\n";
        let counts = Counts::parse(text);
        assert_eq!(counts.models["a\"b"].requests, 4);
        assert_eq!(counts.models.len(), 1);
    }
}
