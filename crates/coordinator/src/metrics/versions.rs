//! Ensemble versions: `chorus_ensemble_version_requests_total{model, version}` (which version
//! answered each ensemble request: the traffic split as it happens) and
//! `chorus_shadow_agreement_total{model, version, outcome}` (shadow answers compared with the
//! primary's; `version` is the shadow's).

use super::ModelLabel;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::fmt::Write;
use std::sync::Arc;

/// What became of one shadow call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShadowOutcome {
    /// Its answer equals the primary's.
    Agree,
    Disagree,
    /// It gave no answer (its quorum, its deadline, a bad input for its members).
    Failed,
    /// Not made: the shadow calls in flight were at their cap.
    Dropped,
}

impl ShadowOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ShadowOutcome::Agree => "agree",
            ShadowOutcome::Disagree => "disagree",
            ShadowOutcome::Failed => "failed",
            ShadowOutcome::Dropped => "dropped",
        }
    }
}

impl EncodeLabelValue for ShadowOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabels {
    model: ModelLabel,
    version: ModelLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ShadowLabels {
    model: ModelLabel,
    version: ModelLabel,
    outcome: ShadowOutcome,
}

/// The version counters. Labels are ensemble names and versions from the specs served, so the
/// series stay bounded.
#[derive(Debug, Default)]
pub struct VersionMetrics {
    requests: Family<VersionLabels, Counter>,
    shadow: Family<ShadowLabels, Counter>,
}

fn label(text: &str) -> ModelLabel {
    ModelLabel(Arc::from(text))
}

impl VersionMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "chorus_ensemble_version_requests",
            "Ensemble requests answered, by ensemble and the version that answered (pinned or drawn by the traffic split)",
            self.requests.clone(),
        );
        r.register(
            "chorus_shadow_agreement",
            "Shadow calls by ensemble, shadow version and outcome (agree, disagree: its label differs from the primary's, failed: no answer, dropped: shadow calls at their cap)",
            self.shadow.clone(),
        );
    }

    /// Counts one ensemble answer from `version`.
    pub fn answered(&self, ensemble: &str, version: &str) {
        let labels = VersionLabels {
            model: label(ensemble),
            version: label(version),
        };
        self.requests.get_or_create(&labels).inc();
    }

    /// Counts one shadow call of `ensemble`'s `version`.
    pub fn shadow(&self, ensemble: &str, version: &str, outcome: ShadowOutcome) {
        self.shadow
            .get_or_create(&ShadowLabels {
                model: label(ensemble),
                version: label(version),
                outcome,
            })
            .inc();
    }
}
