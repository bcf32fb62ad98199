//! Feedback and online weights: `chorus_feedback_total{model, outcome}` and the gauge
//! `chorus_ensemble_member_weight{model, member}`.

use super::{MemberLabels, ModelLabel};
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
}

impl FeedbackOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackOutcome::Accepted => "accepted",
            FeedbackOutcome::Unknown => "unknown",
            FeedbackOutcome::Duplicate => "duplicate",
            FeedbackOutcome::Invalid => "invalid",
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
}

impl FeedbackMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "chorus_feedback",
            "Feedback items by ensemble and outcome (accepted, unknown: id unknown or expired, duplicate: applied before, invalid: label does not fit)",
            self.feedback.clone(),
        );
        r.register(
            "chorus_ensemble_member_weight",
            "Current member weight of ensembles with online weights (mean 1 over the members), by ensemble and member",
            self.weights.clone(),
        );
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
            .get_or_create(&MemberLabels {
                model: ModelLabel(Arc::from(ensemble)),
                member: ModelLabel(Arc::from(member)),
            })
            .set(weight);
    }
}
