//! Feedback and online weights: `chorus_feedback_total{model, outcome}`, the gauge
//! `chorus_ensemble_member_weight{model, member}`, and accuracy against feedback:
//! `chorus_member_accuracy{model, member}`, `chorus_ensemble_accuracy{model}` and
//! `chorus_member_accuracy_alerts_total{model, member}`.

use super::{MemberLabels, ModelLabel, ModelLabels};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// What became of one feedback item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FeedbackOutcome {
    Accepted,
    /// Its request id is unknown or expired.
    Unknown,
    /// Feedback for its id was applied before.
    Duplicate,
    /// Its label does not fit the prediction (wrong row count, a class out of range).
    Invalid,
    /// Another coordinator answered it: written to etcd for that one, which counts the outcome.
    Relayed,
    /// Another coordinator answered it, and etcd did not take it (unreachable, too slow).
    RelayFailed,
}

impl FeedbackOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackOutcome::Accepted => "accepted",
            FeedbackOutcome::Unknown => "unknown",
            FeedbackOutcome::Duplicate => "duplicate",
            FeedbackOutcome::Invalid => "invalid",
            FeedbackOutcome::Relayed => "relayed",
            FeedbackOutcome::RelayFailed => "relay_failed",
        }
    }
}

impl prometheus_client::encoding::EncodeLabelValue for FeedbackOutcome {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FeedbackLabels {
    model: ModelLabel,
    outcome: FeedbackOutcome,
}

/// The feedback counters and weight gauges. Labels are ensemble names the catalog serves and
/// their members, so the series stay bounded.
#[derive(Debug, Default)]
pub struct FeedbackMetrics {
    feedback: Family<FeedbackLabels, Counter>,
    weights: Family<MemberLabels, Gauge<f64, AtomicU64>>,
    member_accuracy: Family<MemberLabels, Gauge<f64, AtomicU64>>,
    ensemble_accuracy: Family<ModelLabels, Gauge<f64, AtomicU64>>,
    accuracy_alerts: Family<MemberLabels, Counter>,
}

fn member_labels(ensemble: &str, member: &str) -> MemberLabels {
    MemberLabels {
        model: ModelLabel(Arc::from(ensemble)),
        member: ModelLabel(Arc::from(member)),
    }
}

impl FeedbackMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "chorus_feedback",
            "Feedback items by ensemble and outcome (accepted, unknown: id unknown or expired, duplicate: applied before, invalid: label does not fit; relayed / relay_failed: another coordinator's answer, passed on through etcd or not, its outcome counted by that coordinator)",
            self.feedback.clone(),
        );
        r.register(
            "chorus_ensemble_member_weight",
            "Current member weight of ensembles with online weights (mean 1 over the members), by ensemble and member",
            self.weights.clone(),
        );
        r.register(
            "chorus_member_accuracy",
            "Share of the newest feedback rows (the ensemble's accuracy_window) each member answered right, by ensemble and member",
            self.member_accuracy.clone(),
        );
        r.register(
            "chorus_ensemble_accuracy",
            "Share of the newest feedback rows (accuracy_window) the ensemble answered right",
            self.ensemble_accuracy.clone(),
        );
        r.register(
            "chorus_member_accuracy_alerts",
            "Times a member's windowed accuracy fell below the ensemble's min_member_accuracy (once per crossing)",
            self.accuracy_alerts.clone(),
        );
    }

    pub fn member_accuracy(&self, ensemble: &str, member: &str, accuracy: f64) {
        self.member_accuracy
            .get_or_create(&member_labels(ensemble, member))
            .set(accuracy);
    }

    pub fn ensemble_accuracy(&self, ensemble: &str, accuracy: f64) {
        self.ensemble_accuracy
            .get_or_create(&ModelLabels {
                model: ModelLabel(Arc::from(ensemble)),
            })
            .set(accuracy);
    }

    /// Counts `count` crossings below the threshold (0 creates the series, so that the first
    /// crossing is an increase Prometheus sees).
    pub fn accuracy_alerts(&self, ensemble: &str, member: &str, count: u64) {
        self.accuracy_alerts
            .get_or_create(&member_labels(ensemble, member))
            .inc_by(count);
    }

    pub fn feedback(&self, ensemble: &str, outcome: FeedbackOutcome, count: u64) {
        if count > 0 {
            self.feedback
                .get_or_create(&FeedbackLabels {
                    model: ModelLabel(Arc::from(ensemble)),
                    outcome,
                })
                .inc_by(count);
        }
    }

    pub fn member_weight(&self, ensemble: &str, member: &str, weight: f64) {
        self.weights
            .get_or_create(&member_labels(ensemble, member))
            .set(weight);
    }
}
