//! Every coordinator metric, registered once under a `chorus_` name and served as Prometheus text
//! at `GET /metrics` (the list, with what each means, is in docs/operations.md).
//!
//! Hot-path updates are atomic adds and histogram observations on handles found by small label
//! structs. Model names are interned, so recording a request allocates nothing once its model has
//! been seen. What describes the cluster rather than traffic (outstanding calls per worker,
//! membership, execution providers) is read from the pool when scraped, so it is never stale and
//! the pool needs no bookkeeping for it.

mod access;
mod cluster;
mod feedback;
mod prediction_log;
mod versions;

pub use access::{AdmissionCounters, RejectReason};
pub use cluster::ClusterView;
pub use feedback::{FeedbackMetrics, FeedbackOutcome};
pub use prediction_log::PredictionLogCounters;
pub use versions::{ShadowOutcome, VersionMetrics};

use crate::combine::Agreement;
use crate::infer::{ErrorKind, Protocol};
use cluster::ClusterCollector;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::fmt::{self, Write};
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// The `Content-Type` of [`Metrics::encode`]'s output: Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The `model` label of requests for names the coordinator does not serve. Clients choose the
/// path, and a series per typo would grow without bound.
pub const UNKNOWN_MODEL: &str = "_unknown";

/// Latency buckets in seconds: 100 µs to 10 s in 1-2.5-5 steps.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// A model or ensemble name as a label value, interned by [`Metrics::model_label`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelLabel(Arc<str>);

impl ModelLabel {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl EncodeLabelValue for ModelLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        encoder.write_str(&self.0)
    }
}

/// How one routed model call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallOutcome {
    Ok,
    Failed,
    /// No answer by the deadline, or abandoned before it answered.
    Late,
}

/// Why an ensemble member did not contribute to an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberFailure {
    Failed,
    Late,
}

impl EncodeLabelValue for CallOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        encoder.write_str(match self {
            CallOutcome::Ok => "ok",
            CallOutcome::Failed => "failed",
            CallOutcome::Late => "late",
        })
    }
}

impl EncodeLabelValue for MemberFailure {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        encoder.write_str(match self {
            MemberFailure::Failed => "failed",
            MemberFailure::Late => "late",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModelLabels {
    model: ModelLabel,
}

/// How a request ended: `ok`, or the kind of error (`cancelled` when the client went away).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestOutcome(pub Option<ErrorKind>);

impl EncodeLabelValue for RequestOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        encoder.write_str(self.0.map_or("ok", ErrorKind::as_str))
    }
}

impl EncodeLabelValue for Protocol {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    model: ModelLabel,
    protocol: Protocol,
    outcome: RequestOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModelProtocolLabels {
    model: ModelLabel,
    protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallLabels {
    model: ModelLabel,
    outcome: CallOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FailureLabels {
    model: ModelLabel,
    kind: MemberFailure,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
}

type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;
type ShareFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// An ensemble answer's agreement: shares of its members' votes. Fine near 1, where a healthy
/// ensemble sits and where a drift first shows.
fn agreement_histogram() -> Histogram {
    Histogram::new([0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0])
}

/// Entropy in bits: up to log2(1024) = 10 for a thousand classes; fine below 1 bit, where a
/// confident classifier answers.
fn entropy_histogram() -> Histogram {
    Histogram::new([
        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 10.0,
    ])
}

/// An ensemble and one of its members.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MemberLabels {
    model: ModelLabel,
    member: ModelLabel,
}

/// Extra calls the router made or refused (the router's only counters: `/chorus/workers` reads
/// them from here too).
#[derive(Debug, Default)]
pub struct RoutingCounters {
    pub retries: Counter,
    pub retries_refused: Counter,
    pub hedges: Counter,
    pub hedges_refused: Counter,
    /// Hedges that answered before the attempt they duplicated.
    pub hedges_won: Counter,
    /// Hedges (counted in `hedges` too) of calls stuck on a replica that went silent: owed
    /// whatever the budget holds, since they are what hedging is for.
    pub hedges_off_stalled: Counter,
}

/// Every coordinator metric, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Interned model and ensemble names; only names the catalog knows get in.
    models: RwLock<HashSet<Arc<str>>>,
    unknown: ModelLabel,
    requests: Family<RequestLabels, Counter>,
    request_duration: LatencyFamily<ModelProtocolLabels>,
    member_calls: LatencyFamily<CallLabels>,
    degraded: Family<ModelLabels, Counter>,
    member_votes: Family<MemberLabels, Counter>,
    agreeing_votes: Family<MemberLabels, Counter>,
    agreement: ShareFamily<ModelLabels>,
    entropy: ShareFamily<ModelLabels>,
    member_failures: Family<FailureLabels, Counter>,
    ejections: Family<WorkerLabels, Counter>,
    inflight: Gauge,
    routing: RoutingCounters,
    admission: AdmissionCounters,
    prediction_log: PredictionLogCounters,
    feedback: FeedbackMetrics,
    versions: VersionMetrics,
    cluster: Arc<ClusterCollector>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let metrics = Metrics {
            registry: Registry::default(),
            models: RwLock::default(),
            unknown: ModelLabel(Arc::from(UNKNOWN_MODEL)),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            member_calls: Family::new_with_constructor(latency_histogram),
            degraded: Family::default(),
            member_votes: Family::default(),
            agreeing_votes: Family::default(),
            agreement: Family::new_with_constructor(agreement_histogram),
            entropy: Family::new_with_constructor(entropy_histogram),
            member_failures: Family::default(),
            ejections: Family::default(),
            inflight: Gauge::default(),
            routing: RoutingCounters::default(),
            admission: AdmissionCounters::default(),
            prediction_log: PredictionLogCounters::default(),
            feedback: FeedbackMetrics::default(),
            versions: VersionMetrics::default(),
            cluster: Arc::default(),
        };
        metrics.register()
    }

    /// Registers every metric once; counters get their `_total` suffix from the encoder.
    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "chorus_requests",
            "Infer requests by model, protocol (http, grpc) and outcome (ok, or the error kind; cancelled: the client went away)",
            self.requests.clone(),
        );
        r.register(
            "chorus_request_duration_seconds",
            "Infer request latency, from the front end's start (body read and decoding included) to the encoded answer, by model and protocol",
            self.request_duration.clone(),
        );
        r.register(
            "chorus_member_call_duration_seconds",
            "Latency of each routed model call (retry and hedge included) by model and outcome",
            self.member_calls.clone(),
        );
        r.register(
            "chorus_degraded_responses",
            "Ensemble answers that some member did not contribute to, by ensemble",
            self.degraded.clone(),
        );
        r.register(
            "chorus_ensemble_member_votes",
            "Class votes of the members that answered, one per member and row, by ensemble and member (classifying combiners only)",
            self.member_votes.clone(),
        );
        r.register(
            "chorus_ensemble_agreeing_votes",
            "Of chorus_ensemble_member_votes, those that named the class the ensemble answered, by ensemble and member",
            self.agreeing_votes.clone(),
        );
        r.register(
            "chorus_ensemble_agreement",
            "Per ensemble answer, the share of its members' votes that named the class it answered, by ensemble",
            self.agreement.clone(),
        );
        r.register(
            "chorus_ensemble_entropy_bits",
            "Per ensemble answer, the mean entropy of its combined class probabilities in bits (0: certain; log2 of the classes: uniform), by ensemble",
            self.entropy.clone(),
        );
        r.register(
            "chorus_member_failures",
            "Ensemble members that did not contribute to a request, by member model and kind",
            self.member_failures.clone(),
        );
        r.register(
            "chorus_retries",
            "Failed member calls retried on another replica",
            self.routing.retries.clone(),
        );
        r.register(
            "chorus_retries_refused",
            "Retries not made because the retry budget was spent",
            self.routing.retries_refused.clone(),
        );
        r.register(
            "chorus_hedges",
            "Slow member calls duplicated to another replica",
            self.routing.hedges.clone(),
        );
        r.register(
            "chorus_hedges_refused",
            "Hedges not made because the hedging budget was spent",
            self.routing.hedges_refused.clone(),
        );
        r.register(
            "chorus_hedges_won",
            "Hedges that answered before the call they duplicated",
            self.routing.hedges_won.clone(),
        );
        r.register(
            "chorus_hedges_off_stalled",
            "Hedges of calls stuck on a silent replica, sent whatever the hedging budget held",
            self.routing.hedges_off_stalled.clone(),
        );
        r.register(
            "chorus_worker_ejections",
            "Times a worker was taken out of rotation (failures in a row, or its link lost), by worker",
            self.ejections.clone(),
        );
        r.register(
            "chorus_inflight_requests",
            "Infer requests being served, both protocols",
            self.inflight.clone(),
        );
        self.admission.register(r);
        self.prediction_log.register(r);
        self.feedback.register(r);
        self.versions.register(r);
        r.register_collector(Box::new(Arc::clone(&self.cluster)));
        self
    }

    /// Reads the cluster gauges from `source` on each scrape (the first source given wins).
    pub fn observe_cluster(&self, source: impl Fn() -> ClusterView + Send + Sync + 'static) {
        self.cluster.set_source(Box::new(source));
    }

    /// Every metric in the Prometheus text format.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// The label for `name`: the name itself once `known` has said it is served, else
    /// [`UNKNOWN_MODEL`]. `known` runs only for names not seen yet.
    pub fn model_label(&self, name: &str, known: impl FnOnce() -> bool) -> ModelLabel {
        if let Some(interned) = self.models.read().expect("metrics lock").get(name) {
            return ModelLabel(Arc::clone(interned));
        }
        if !known() {
            return self.unknown.clone();
        }
        let mut models = self.models.write().expect("metrics lock");
        if let Some(interned) = models.get(name) {
            return ModelLabel(Arc::clone(interned));
        }
        let interned: Arc<str> = Arc::from(name);
        models.insert(Arc::clone(&interned));
        ModelLabel(interned)
    }

    /// Starts timing one infer request for `model`; it counts as in flight until the timer is
    /// finished or dropped.
    pub fn request_started(&self, model: ModelLabel, protocol: Protocol) -> RequestTimer<'_> {
        self.inflight.inc();
        RequestTimer {
            metrics: self,
            model,
            protocol,
            started: Instant::now(),
            outcome: None,
        }
    }

    /// Starts timing one routed call to `model` (a name the catalog serves).
    pub fn call_started(&self, model: &str) -> CallTimer<'_> {
        CallTimer {
            metrics: self,
            model: self.model_label(model, || true),
            started: Instant::now(),
            outcome: None,
        }
    }

    /// Counts an ensemble answer that some member did not contribute to.
    pub fn degraded_response(&self, ensemble: &str) {
        let model = self.model_label(ensemble, || true);
        self.degraded.get_or_create(&ModelLabels { model }).inc();
    }

    /// Records how one ensemble answer's members voted (`tallies`: member name and its votes)
    /// and how sure the answer was (`entropy_bits`, when it has class probabilities).
    pub fn answer_health<'a>(
        &self,
        ensemble: &str,
        tallies: impl IntoIterator<Item = (&'a str, Agreement)>,
        entropy_bits: Option<f64>,
    ) {
        let model = self.model_label(ensemble, || true);
        let mut total = Agreement::default();
        for (member, tally) in tallies {
            let labels = MemberLabels {
                model: model.clone(),
                member: self.model_label(member, || true),
            };
            self.member_votes.get_or_create(&labels).inc_by(tally.votes);
            self.agreeing_votes
                .get_or_create(&labels)
                .inc_by(tally.agreeing);
            total.votes += tally.votes;
            total.agreeing += tally.agreeing;
        }
        let labels = ModelLabels { model };
        if let Some(share) = total.share() {
            self.agreement.get_or_create(&labels).observe(share);
        }
        if let Some(bits) = entropy_bits {
            self.entropy.get_or_create(&labels).observe(bits);
        }
    }

    /// Counts a member that did not contribute to an ensemble request.
    pub fn member_failed(&self, member: &str, kind: MemberFailure) {
        let model = self.model_label(member, || true);
        self.member_failures
            .get_or_create(&FailureLabels { model, kind })
            .inc();
    }

    /// The ejection counter of one worker, for its handle to keep.
    pub fn worker_ejections(&self, worker: &str) -> Counter {
        self.ejections.get_or_create_owned(&WorkerLabels {
            worker: worker.to_string(),
        })
    }

    pub fn admission(&self) -> &AdmissionCounters {
        &self.admission
    }

    /// Ensemble versions answering and shadow agreement.
    pub fn versions(&self) -> &VersionMetrics {
        &self.versions
    }

    /// Feedback counters and online weight gauges.
    pub fn feedback(&self) -> &FeedbackMetrics {
        &self.feedback
    }

    /// The prediction log's counters (registered whether or not the log is on).
    pub fn prediction_log(&self) -> &PredictionLogCounters {
        &self.prediction_log
    }

    pub fn routing(&self) -> &RoutingCounters {
        &self.routing
    }
}

/// One infer request in flight. Finished with its error kind (`None`: answered), or, if dropped
/// unfinished (the client went away and the handler was cancelled), recorded as cancelled.
pub struct RequestTimer<'a> {
    metrics: &'a Metrics,
    model: ModelLabel,
    protocol: Protocol,
    started: Instant,
    outcome: Option<RequestOutcome>,
}

impl RequestTimer<'_> {
    pub fn finish(mut self, error: Option<ErrorKind>) {
        self.outcome = Some(RequestOutcome(error));
    }
}

impl Drop for RequestTimer<'_> {
    fn drop(&mut self) {
        let m = self.metrics;
        m.inflight.dec();
        let protocol = self.protocol;
        m.request_duration
            .get_or_create(&ModelProtocolLabels {
                model: self.model.clone(),
                protocol,
            })
            .observe(self.started.elapsed().as_secs_f64());
        let outcome = self
            .outcome
            .unwrap_or(RequestOutcome(Some(ErrorKind::Cancelled)));
        m.requests
            .get_or_create(&RequestLabels {
                model: self.model.clone(),
                protocol,
                outcome,
            })
            .inc();
    }
}

/// One routed model call. Finished with its outcome, or, if dropped unfinished (the request's
/// deadline passed, or its client went away), recorded as late.
pub struct CallTimer<'a> {
    metrics: &'a Metrics,
    model: ModelLabel,
    started: Instant,
    outcome: Option<CallOutcome>,
}

impl CallTimer<'_> {
    pub fn finish(mut self, outcome: CallOutcome) {
        self.outcome = Some(outcome);
    }
}

impl Drop for CallTimer<'_> {
    fn drop(&mut self) {
        let labels = CallLabels {
            model: self.model.clone(),
            outcome: self.outcome.unwrap_or(CallOutcome::Late),
        };
        self.metrics
            .member_calls
            .get_or_create(&labels)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_model_and_status_with_their_latency() {
        let metrics = Metrics::new();
        let digits = metrics.model_label("digits", || true);
        let http = Protocol::Http;
        metrics.request_started(digits.clone(), http).finish(None);
        metrics.request_started(digits.clone(), http).finish(None);
        metrics
            .request_started(digits.clone(), Protocol::Grpc)
            .finish(Some(ErrorKind::InvalidArgument));
        let inflight = metrics.request_started(digits.clone(), http);
        let text = metrics.encode().unwrap();
        assert!(text.contains("chorus_inflight_requests 1\n"), "{text}");
        drop(inflight);

        let text = metrics.encode().unwrap();
        assert!(
            text.contains("# TYPE chorus_requests_total counter\n"),
            "{text}"
        );
        assert!(text.contains(
            "chorus_requests_total{model=\"digits\",protocol=\"http\",outcome=\"ok\"} 2\n"
        ));
        assert!(text.contains(
            "chorus_requests_total{model=\"digits\",protocol=\"grpc\",outcome=\"invalid_argument\"} 1\n"
        ));
        assert!(
            text.contains(
                "chorus_requests_total{model=\"digits\",protocol=\"http\",outcome=\"cancelled\"} 1\n"
            ),
            "an unfinished request counts as cancelled: {text}"
        );
        assert!(text.contains("chorus_inflight_requests 0\n"));
        assert!(text.contains("# TYPE chorus_request_duration_seconds histogram\n"));
        assert!(text.contains(
            "chorus_request_duration_seconds_count{model=\"digits\",protocol=\"http\"} 3\n"
        ));
        for bucket in ["0.0001", "0.00025", "0.001", "1", "10", "+Inf"] {
            let line = format!(
                "chorus_request_duration_seconds_bucket{{model=\"digits\",protocol=\"http\",le=\"{bucket}\"}} "
            );
            assert!(text.contains(&line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn unknown_names_share_one_label_and_known_ones_are_interned_once() {
        let metrics = Metrics::new();
        let typo = metrics.model_label("no-such-model", || false);
        assert_eq!(typo.as_str(), UNKNOWN_MODEL);
        metrics
            .request_started(typo, Protocol::Http)
            .finish(Some(ErrorKind::NotFound));
        let first = metrics.model_label("logreg", || true);
        let mut asked = false;
        let second = metrics.model_label("logreg", || {
            asked = true;
            false
        });
        assert!(!asked, "a known name is not looked up again");
        assert!(Arc::ptr_eq(&first.0, &second.0));
        let text = metrics.encode().unwrap();
        assert!(text.contains(
            "chorus_requests_total{model=\"_unknown\",protocol=\"http\",outcome=\"not_found\"} 1\n"
        ));
        assert!(!text.contains("no-such-model"));
    }

    #[test]
    fn member_calls_failures_and_routing_are_encoded() {
        let metrics = Metrics::new();
        metrics.call_started("logreg").finish(CallOutcome::Ok);
        metrics.call_started("mlp").finish(CallOutcome::Failed);
        drop(metrics.call_started("forest"));
        metrics.member_failed("mlp", MemberFailure::Failed);
        metrics.member_failed("forest", MemberFailure::Late);
        metrics.degraded_response("digits");
        metrics.routing().retries.inc();
        metrics.routing().hedges_won.inc();
        metrics.worker_ejections("w-1").inc();
        let text = metrics.encode().unwrap();
        for expected in [
            "chorus_member_call_duration_seconds_count{model=\"logreg\",outcome=\"ok\"} 1\n",
            "chorus_member_call_duration_seconds_count{model=\"mlp\",outcome=\"failed\"} 1\n",
            "chorus_member_call_duration_seconds_count{model=\"forest\",outcome=\"late\"} 1\n",
            "chorus_member_failures_total{model=\"mlp\",kind=\"failed\"} 1\n",
            "chorus_member_failures_total{model=\"forest\",kind=\"late\"} 1\n",
            "chorus_degraded_responses_total{model=\"digits\"} 1\n",
            "chorus_retries_total 1\n",
            "chorus_retries_refused_total 0\n",
            "chorus_hedges_total 0\n",
            "chorus_hedges_refused_total 0\n",
            "chorus_hedges_won_total 1\n",
            "chorus_hedges_off_stalled_total 0\n",
            "chorus_worker_ejections_total{worker=\"w-1\"} 1\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }

    #[test]
    fn every_metric_is_chorus_prefixed() {
        let metrics = Metrics::new();
        metrics
            .request_started(metrics.model_label("m", || true), Protocol::Grpc)
            .finish(None);
        let text = metrics.encode().unwrap();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let name = line
                .trim_start_matches("# HELP ")
                .trim_start_matches("# TYPE ");
            assert!(name.starts_with("chorus_"), "{line}");
        }
    }
}
