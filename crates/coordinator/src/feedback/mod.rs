//! Feedback and online member weights (docs/data.md): ground truth sent after the fact,
//! joined by request id to a bounded store of recent predictions ([`recent`]), measures each
//! member's accuracy over a sliding window and reports the ones below the spec's threshold
//! ([`accuracy`]), and moves the member weights of `weights = "online"` ensembles by a
//! multiplicative-weights rule ([`rule`]); the weights ([`weights`]) are shared through etcd or
//! a local file ([`store`]). Both front doors (REST, gRPC) call [`submit`]. With etcd, feedback
//! for another coordinator's answer is relayed to it ([`relay`]).
//!
//! Only ensembles that take feedback (`feedback = true`, implied by online weights and by
//! `min_member_accuracy`) pay anything: their answers are kept (the members' votes, compactly)
//! and online ones are served with the current weights; every other request passes through
//! untouched.

pub mod accuracy;
pub mod recent;
pub mod relay;
pub mod rule;
pub mod store;
pub mod weights;

use crate::ensemble::EnsembleAnswer;
use crate::infer::{Infer, InferError};
use crate::metrics::{FeedbackOutcome, Metrics};
use crate::spec::{EnsembleSpec, FeedbackPolicy};
use accuracy::{Crossing, Tracker};
use recent::{Bounds, Miss, Prediction, Recent, Votes};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{Backend, Store};
use tracing::{info, warn};
pub use weights::Record;
use weights::{Op, Table};

/// Most member values (probabilities or labels) the recent-prediction store holds, whatever
/// `--feedback-window` says: 32 Mi values, 128 MiB of f32, so a few huge batches cannot exhaust
/// memory.
const MAX_STORED_VALUES: usize = 32 << 20;

/// The feedback flags of `chorus coordinator`.
#[derive(Debug, Clone, clap::Args)]
pub struct FeedbackArgs {
    /// Recent predictions of ensembles that take feedback (`feedback = true`, `weights =
    /// "online"` or `min_member_accuracy`) kept for feedback to join against, by request id; the
    /// oldest go first. 0 keeps none (feedback then finds nothing).
    #[arg(
        long = "feedback-window",
        env = "CHORUS_FEEDBACK_WINDOW",
        default_value_t = 100_000
    )]
    pub feedback_window: usize,

    /// Seconds a prediction stays open to feedback; later feedback is answered "unknown".
    #[arg(
        long = "feedback-ttl-secs",
        env = "CHORUS_FEEDBACK_TTL_SECS",
        default_value_t = 600
    )]
    pub feedback_ttl_secs: u64,

    /// Without `--etcd`: the file online member weights are saved in (JSON, replaced
    /// atomically), so that they survive restarts; without it they live in memory only. With
    /// `--etcd` they are kept in etcd under /chorus/v1/weights/ and this is ignored.
    #[arg(long = "weights-file", env = "CHORUS_WEIGHTS_FILE")]
    pub weights_file: Option<PathBuf>,
}

impl FeedbackArgs {
    fn bounds(&self) -> Bounds {
        Bounds {
            entries: self.feedback_window,
            ttl: Duration::from_secs(self.feedback_ttl_secs.min(86_400 * 7)),
            values: MAX_STORED_VALUES,
        }
    }

    /// Where the weights live: etcd when the coordinator follows it, else the weights file.
    pub fn backend(
        &self,
        etcd: Option<(Vec<String>, crate::membership::etcd::EtcdSettings)>,
    ) -> Backend {
        match (etcd, &self.weights_file) {
            (Some((endpoints, settings)), _) => Backend::Etcd {
                endpoints,
                settings,
            },
            (None, Some(path)) => Backend::File(path.clone()),
            (None, None) => Backend::Memory,
        }
    }
}

/// One item of a feedback request: the request id and the true class of each of its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: String,
    pub labels: Vec<i64>,
}

/// What became of a feedback request's items.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Counts {
    pub accepted: u64,
    /// Ids never answered by this ensemble, or evicted from the window.
    pub unknown: u64,
    /// Ids whose feedback was applied before (not applied again).
    pub duplicate: u64,
    /// Labels that do not fit the prediction (row count, class range).
    pub invalid: u64,
    /// Ids another coordinator answered, written to etcd for it; the outcome is counted there
    /// (its `chorus_feedback_total`), not known here.
    pub relayed: u64,
    /// Ids another coordinator answered that could not be relayed (etcd unreachable or too
    /// slow): send them again, which is safe (an id is applied once).
    pub relay_failed: u64,
    /// Whether the weights are frozen (accepted feedback then moves nothing).
    pub frozen: bool,
}

/// Why feedback was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error(
        "ensemble '{0}' keeps nothing for feedback: set `feedback = true` (or `weights = \"online\"`) in its spec"
    )]
    NotKept(String),
    #[error("ensemble '{0}' does not learn from feedback: set `weights = \"online\"` in its spec")]
    NotOnline(String),
}

impl From<FeedbackError> for InferError {
    fn from(e: FeedbackError) -> Self {
        match e {
            FeedbackError::NotKept(_) | FeedbackError::NotOnline(_) => {
                InferError::BadRequest(e.to_string())
            }
        }
    }
}

/// Feedback for ensemble `name` from either front door, once the caller is authorized:
/// `items` is the decoded request, or why it could not be decoded (counted as one invalid item
/// of a served ensemble). An unknown ensemble is NOT_FOUND.
pub async fn submit(
    app: &Infer,
    name: &str,
    items: Result<Vec<Item>, InferError>,
) -> Result<Counts, InferError> {
    let spec = app
        .catalog()
        .ensemble(name)
        .ok_or_else(|| InferError::NotFound(format!("no ensemble '{name}' is served")))?;
    let feedback = app.feedback();
    let items = items.inspect_err(|_| feedback.malformed(&spec))?;
    let own = app.request_ids().prefix();
    // Only ids another coordinator generated relay; a client's own ids stay local.
    let relays = |id: &str| feedback.relay.is_some() && relay::owner(id).is_some_and(|p| p != own);
    let (mut counts, elsewhere) = feedback.join(&spec, &items, relays)?;
    if let Some(outbox) = &feedback.relay
        && !elsewhere.is_empty()
    {
        let sent = outbox.send(&spec.name, &elsewhere).await;
        counts.relayed = sent.relayed;
        counts.relay_failed = sent.failed;
        let metrics = feedback.metrics.feedback();
        metrics.feedback(&spec.name, FeedbackOutcome::Relayed, sent.relayed);
        metrics.feedback(&spec.name, FeedbackOutcome::RelayFailed, sent.failed);
    }
    Ok(counts)
}

/// Where an ensemble's accuracy against feedback stands (`/chorus/ensembles`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Standing {
    /// `accuracy_window`: rows each accuracy is measured over.
    pub window: usize,
    pub min_member_accuracy: Option<f64>,
    /// The ensemble's own accuracy; `None` before any feedback.
    pub accuracy: Option<f64>,
    pub samples: usize,
    /// By member, in spec order.
    pub members: Vec<MemberStanding>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberStanding {
    pub model: String,
    pub accuracy: Option<f64>,
    pub samples: usize,
    /// Judged (half a window of rows at least) and under `min_member_accuracy`.
    pub below_threshold: bool,
}

/// The feedback core, shared by the front ends and the admin port.
pub struct Feedback {
    recent: Mutex<Recent>,
    /// Accuracy windows by ensemble name, made on its first accepted feedback.
    accuracy: Mutex<HashMap<String, Tracker>>,
    table: Arc<Table>,
    metrics: Arc<Metrics>,
    _store: Option<Store>,
    /// With etcd: where feedback for other coordinators' answers goes.
    relay: Option<relay::outbox::Outbox>,
    /// With etcd: what [`Feedback::inbox`] follows.
    etcd: Option<(Vec<String>, crate::membership::etcd::EtcdSettings)>,
}

impl Feedback {
    /// Feedback with the weights kept in `backend` (spawns its tasks: needs a Tokio runtime).
    pub fn start(args: &FeedbackArgs, backend: Backend, metrics: Arc<Metrics>) -> Self {
        let table = Arc::new(Table::new(Arc::clone(&metrics)));
        let bounds = args.bounds();
        let etcd = match &backend {
            Backend::Etcd {
                endpoints,
                settings,
            } => Some((endpoints.clone(), settings.clone())),
            Backend::Memory | Backend::File(_) => None,
        };
        let relay = etcd.clone().map(|(endpoints, settings)| {
            relay::outbox::Outbox::new(endpoints, settings, bounds.ttl)
        });
        let store = Store::start(backend, Arc::clone(&table));
        Feedback {
            recent: Mutex::new(Recent::new(bounds)),
            accuracy: Mutex::default(),
            table,
            metrics,
            _store: Some(store),
            relay,
            etcd,
        }
    }

    /// Weights in memory with no flushing task, for cores built without a server (tests).
    pub fn unsaved(metrics: Arc<Metrics>) -> Self {
        Feedback {
            recent: Mutex::new(Recent::new(Bounds {
                entries: 10_000,
                ttl: Duration::from_secs(600),
                values: MAX_STORED_VALUES,
            })),
            accuracy: Mutex::default(),
            table: Arc::new(Table::new(Arc::clone(&metrics))),
            metrics,
            _store: None,
            relay: None,
            etcd: None,
        }
    }

    /// With etcd, starts taking in the feedback other coordinators relay for `app`'s answers
    /// (keep it for as long as the coordinator serves); `None` without etcd.
    pub fn inbox(&self, app: &Arc<Infer>) -> Option<relay::inbox::Inbox> {
        let (endpoints, settings) = self.etcd.clone()?;
        Some(relay::inbox::Inbox::start(
            Arc::clone(app),
            endpoints,
            settings,
        ))
    }

    /// The spec to run: for an online ensemble, `spec` with the current weights.
    pub fn weighted(&self, spec: &Arc<EnsembleSpec>) -> Arc<EnsembleSpec> {
        if spec.online.is_none() {
            return Arc::clone(spec);
        }
        self.table.weighted(spec)
    }

    /// Keeps what the members of an ensemble that takes feedback said about request `id`.
    pub fn record(&self, spec: &EnsembleSpec, id: &str, answer: &EnsembleAnswer) {
        if spec.feedback.is_none() {
            return;
        }
        let votes: Vec<(usize, Votes)> = answer
            .members
            .iter()
            .filter_map(|(index, tensor)| Votes::of(tensor, spec.threshold).map(|v| (*index, v)))
            .collect();
        let Some(rows) = votes.first().map(|(_, v)| v.rows()) else {
            return;
        };
        let prediction = Prediction {
            ensemble: Arc::from(spec.name.as_str()),
            rows,
            votes,
            members: spec.members.len(),
            combined: combined_classes(spec, answer, rows),
        };
        self.recent
            .lock()
            .expect("recent lock")
            .insert(id.to_string(), prediction, Instant::now());
    }

    /// Joins `items` to the predictions `spec` answered here, records each row in the accuracy
    /// windows and, for online weights, updates them.
    pub fn apply(&self, spec: &EnsembleSpec, items: &[Item]) -> Result<Counts, FeedbackError> {
        self.join(spec, items, |_| false).map(|(counts, _)| counts)
    }

    /// [`apply`](Self::apply), except that items unknown here whose id `elsewhere` accepts
    /// (another coordinator's) are not counted but returned, to be relayed.
    fn join(
        &self,
        spec: &EnsembleSpec,
        items: &[Item],
        elsewhere: impl Fn(&str) -> bool,
    ) -> Result<(Counts, Vec<Item>), FeedbackError> {
        let Some(policy) = spec.feedback else {
            return Err(FeedbackError::NotKept(spec.name.clone()));
        };
        let now = Instant::now();
        let mut counts = Counts::default();
        let mut ops = Vec::new();
        let mut outcomes = Vec::new();
        let mut relay = Vec::new();
        {
            let mut recent = self.recent.lock().expect("recent lock");
            for item in items {
                match recent.peek(&item.id, &spec.name) {
                    Err(Miss::Unknown) if elsewhere(&item.id) => relay.push(item.clone()),
                    Err(Miss::Unknown) => counts.unknown += 1,
                    Err(Miss::Duplicate) => counts.duplicate += 1,
                    Ok(prediction) if !fits(prediction, &item.labels) => counts.invalid += 1,
                    Ok(_) => {
                        let prediction = recent
                            .answer(&item.id, &spec.name, now)
                            .expect("peeked just now");
                        counts.accepted += 1;
                        // A spec whose members changed since cannot take these votes.
                        if prediction.members == spec.members.len() {
                            if let Some(rule) = spec.online {
                                ops.extend(row_ops(prediction, &item.labels, rule));
                            }
                            outcomes.extend(row_outcomes(prediction, &item.labels));
                        }
                    }
                }
            }
        }
        if spec.online.is_some() {
            self.table.queue(spec, ops);
            counts.frozen = self.table.current(spec).frozen;
        }
        if !outcomes.is_empty() {
            self.track(spec, policy, &outcomes);
        }
        let metrics = self.metrics.feedback();
        metrics.feedback(&spec.name, FeedbackOutcome::Accepted, counts.accepted);
        metrics.feedback(&spec.name, FeedbackOutcome::Unknown, counts.unknown);
        metrics.feedback(&spec.name, FeedbackOutcome::Duplicate, counts.duplicate);
        metrics.feedback(&spec.name, FeedbackOutcome::Invalid, counts.invalid);
        Ok((counts, relay))
    }

    /// Records feedback rows in `spec`'s accuracy windows, sets the gauges and reports the
    /// members that crossed `min_member_accuracy`.
    fn track(&self, spec: &EnsembleSpec, policy: FeedbackPolicy, rows: &[RowOutcomes]) {
        let metrics = self.metrics.feedback();
        let mut trackers = self.accuracy.lock().expect("accuracy lock");
        let members = spec.members.len();
        let (window, threshold) = (policy.accuracy_window, policy.min_member_accuracy);
        let tracker = trackers
            .entry(spec.name.clone())
            .or_insert_with(|| Tracker::new(members, window, threshold));
        if !tracker.fits(members, window, threshold) {
            *tracker = Tracker::new(members, window, threshold);
        }
        let mut crossings = Vec::new();
        for (members, ensemble) in rows {
            crossings.extend(tracker.row(members, *ensemble));
        }
        for (index, member) in spec.members.iter().enumerate() {
            if let Some(accuracy) = tracker.member(index).and_then(|w| w.accuracy()) {
                metrics.member_accuracy(&spec.name, &member.model, accuracy);
            }
            if threshold.is_some() {
                // Created at 0 before any crossing, so the first one is an increase.
                metrics.accuracy_alerts(&spec.name, &member.model, 0);
            }
        }
        if let Some(accuracy) = tracker.ensemble().accuracy() {
            metrics.ensemble_accuracy(&spec.name, accuracy);
        }
        drop(trackers);
        let threshold = threshold.unwrap_or_default();
        for crossing in crossings {
            match crossing {
                Crossing::Below { member, accuracy } => {
                    let member = &spec.members[member].model;
                    metrics.accuracy_alerts(&spec.name, member, 1);
                    warn!(
                        ensemble = %spec.name,
                        member = %member,
                        accuracy,
                        threshold,
                        window,
                        "member accuracy against feedback fell below min_member_accuracy"
                    );
                }
                Crossing::Recovered { member, accuracy } => {
                    info!(
                        ensemble = %spec.name,
                        member = %spec.members[member].model,
                        accuracy,
                        threshold,
                        window,
                        "member accuracy against feedback is back above min_member_accuracy"
                    );
                }
            }
        }
    }

    /// Where `spec`'s accuracy against feedback stands; `None` when it takes no feedback.
    pub fn standing(&self, spec: &EnsembleSpec) -> Option<Standing> {
        let policy = spec.feedback?;
        let trackers = self.accuracy.lock().expect("accuracy lock");
        let tracker = trackers.get(&spec.name).filter(|t| {
            t.fits(
                spec.members.len(),
                policy.accuracy_window,
                policy.min_member_accuracy,
            )
        });
        let members = spec
            .members
            .iter()
            .enumerate()
            .map(|(index, member)| {
                let window = tracker.and_then(|t| t.member(index));
                MemberStanding {
                    model: member.model.clone(),
                    accuracy: window.and_then(|w| w.accuracy()),
                    samples: window.map_or(0, |w| w.samples()),
                    below_threshold: tracker.is_some_and(|t| t.is_below(index)),
                }
            })
            .collect();
        Some(Standing {
            window: policy.accuracy_window,
            min_member_accuracy: policy.min_member_accuracy,
            accuracy: tracker.and_then(|t| t.ensemble().accuracy()),
            samples: tracker.map_or(0, |t| t.ensemble().samples()),
            members,
        })
    }

    /// Counts a feedback request refused as malformed.
    pub fn malformed(&self, spec: &EnsembleSpec) {
        self.metrics
            .feedback()
            .feedback(&spec.name, FeedbackOutcome::Invalid, 1);
    }

    /// The weights an online ensemble answers with now; `None` for static weights.
    pub fn weights(&self, spec: &EnsembleSpec) -> Option<Record> {
        spec.online?;
        let record = self.table.current(spec);
        self.table.refresh_gauges(spec);
        Some(record)
    }

    /// Freezes (or unfreezes) an online ensemble's weights, on every coordinator.
    pub fn freeze(&self, spec: &EnsembleSpec, frozen: bool) -> Result<Record, FeedbackError> {
        self.operate(spec, Op::Freeze(frozen))
    }

    /// Puts an online ensemble's weights back to its spec's, on every coordinator.
    pub fn reset(&self, spec: &EnsembleSpec) -> Result<Record, FeedbackError> {
        self.operate(spec, Op::Reset(Record::fresh(spec).weights))
    }

    fn operate(&self, spec: &EnsembleSpec, op: Op) -> Result<Record, FeedbackError> {
        if spec.online.is_none() {
            return Err(FeedbackError::NotOnline(spec.name.clone()));
        }
        self.table.queue(spec, vec![op]);
        Ok(self.table.current(spec))
    }
}

/// Whether `labels` give one class per row of `prediction`, each one its members can score.
fn fits(prediction: &Prediction, labels: &[i64]) -> bool {
    labels.len() == prediction.rows
        && labels.iter().all(|label| {
            *label >= 0
                && prediction.votes.iter().all(|(_, votes)| match votes {
                    Votes::Probabilities { classes, .. } => (*label as u64) < *classes as u64,
                    Votes::Binary { .. } => *label <= 1,
                    Votes::Labels(_) => true,
                })
        })
}

/// The ensemble's class per row, from its combined answer: the argmax of `probabilities`
/// (class indices, as soft votes and feedback labels use), else its `label`s. Fusion answers
/// with its meta-model's outputs, whatever their names: failing those two, the first output
/// that reads as a class per row.
fn combined_classes(
    spec: &EnsembleSpec,
    answer: &EnsembleAnswer,
    rows: usize,
) -> Option<Box<[i64]>> {
    let output = |name: &str| answer.outputs.iter().find(|t| t.name == name);
    // Under a `threshold` the combined label, not the argmax of the probabilities, is the
    // ensemble's class.
    let order = if spec.threshold.is_some() {
        [crate::combine::LABEL, crate::combine::PROBABILITIES]
    } else {
        [crate::combine::PROBABILITIES, crate::combine::LABEL]
    };
    let named = order.into_iter().filter_map(output);
    let fused = answer
        .outputs
        .iter()
        .filter(|_| spec.combiner == crate::spec::CombinerKind::Fusion);
    named
        .chain(fused)
        .filter_map(|tensor| Votes::of(tensor, spec.threshold))
        .find(|votes| votes.rows() == rows)
        .map(|votes| votes.classes())
}

/// Each member's outcome on a feedback row (`None`: it did not answer), and the ensemble's.
type RowOutcomes = (Vec<Option<bool>>, Option<bool>);

/// Right or wrong, per row, for each member that answered and for the ensemble.
fn row_outcomes(prediction: &Prediction, labels: &[i64]) -> Vec<RowOutcomes> {
    labels
        .iter()
        .enumerate()
        .map(|(row, label)| {
            let mut members = vec![None; prediction.members];
            for (index, votes) in &prediction.votes {
                if let Some(slot) = members.get_mut(*index) {
                    *slot = votes.class(row).map(|class| class == *label);
                }
            }
            let ensemble = prediction
                .combined
                .as_ref()
                .and_then(|classes| classes.get(row))
                .map(|class| class == label);
            (members, ensemble)
        })
        .collect()
}

/// One update per row: each member's loss on it (`None` for members that did not answer).
fn row_ops(prediction: &Prediction, labels: &[i64], rule: crate::spec::OnlineWeights) -> Vec<Op> {
    labels
        .iter()
        .enumerate()
        .map(|(row, label)| {
            let mut losses = vec![None; prediction.members];
            for (index, votes) in &prediction.votes {
                if let Some(slot) = losses.get_mut(*index) {
                    *slot = votes.loss(row, *label);
                }
            }
            Op::Row { losses, rule }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ensemble::MemberReport;
    use chorus_common::Tensor;

    fn spec(online: bool) -> Arc<EnsembleSpec> {
        spec_with(if online { "weights = \"online\"\n" } else { "" })
    }

    fn spec_with(weights: &str) -> Arc<EnsembleSpec> {
        let text = format!(
            "version = 1\n[[ensemble]]\nname = \"e\"\ncombiner = \"soft_vote\"\ndeadline_ms = 5\n{weights}[[ensemble.member]]\nmodel = \"good\"\n[[ensemble.member]]\nmodel = \"bad\"\n"
        );
        Arc::new(crate::spec::parse(&text, "t").unwrap().remove(0))
    }

    /// Two rows of two classes: `good` is right (class 0 then 1), `bad` wrong.
    fn answer() -> EnsembleAnswer {
        let probs = |values: [f32; 4]| Tensor::from_values("probabilities", vec![2, 2], &values);
        EnsembleAnswer {
            outputs: vec![],
            report: MemberReport::default(),
            members: vec![
                (0, probs([0.9, 0.1, 0.2, 0.8])),
                (1, probs([0.1, 0.9, 0.8, 0.2])),
            ],
        }
    }

    fn item(id: &str, labels: &[i64]) -> Item {
        Item {
            id: id.into(),
            labels: labels.to_vec(),
        }
    }

    #[test]
    fn feedback_moves_weight_from_the_wrong_member_once() {
        let feedback = Feedback::unsaved(Arc::new(Metrics::new()));
        let spec = spec(true);
        feedback.record(&spec, "r1", &answer());
        let counts = feedback
            .apply(
                &spec,
                &[item("r1", &[0, 1]), item("r1", &[0, 1]), item("nope", &[0])],
            )
            .unwrap();
        assert_eq!(
            (counts.accepted, counts.duplicate, counts.unknown),
            (1, 1, 1)
        );
        let weights = feedback.weights(&spec).unwrap().weights;
        assert!(weights[0] > 1.0 && weights[1] < 1.0, "{weights:?}");
        assert_eq!(feedback.weighted(&spec).members[1].weight, weights[1]);
        // Reset puts them back.
        assert_eq!(feedback.reset(&spec).unwrap().weights, vec![1.0, 1.0]);
    }

    #[test]
    fn labels_that_do_not_fit_are_invalid_and_can_be_corrected() {
        let feedback = Feedback::unsaved(Arc::new(Metrics::new()));
        let spec = spec(true);
        feedback.record(&spec, "r1", &answer());
        let counts = feedback
            .apply(&spec, &[item("r1", &[0]), item("r1", &[0, 2])])
            .unwrap();
        assert_eq!(counts.invalid, 2);
        assert_eq!(
            feedback
                .apply(&spec, &[item("r1", &[0, 1])])
                .unwrap()
                .accepted,
            1
        );
    }

    #[test]
    fn static_ensembles_keep_nothing_and_refuse_feedback() {
        let feedback = Feedback::unsaved(Arc::new(Metrics::new()));
        let spec = spec(false);
        feedback.record(&spec, "r1", &answer());
        assert!(matches!(
            feedback.apply(&spec, &[item("r1", &[0, 1])]),
            Err(FeedbackError::NotKept(_))
        ));
        assert!(Arc::ptr_eq(&feedback.weighted(&spec), &spec));
        assert_eq!(feedback.weights(&spec), None);
        assert_eq!(feedback.standing(&spec), None);
    }

    #[test]
    fn accuracy_is_measured_for_static_ensembles_that_take_feedback() {
        let metrics = Arc::new(Metrics::new());
        let feedback = Feedback::unsaved(Arc::clone(&metrics));
        let spec = spec_with("feedback = true\naccuracy_window = 4\nmin_member_accuracy = 0.5\n");
        let mut answer = answer();
        // The ensemble answered class 0 then 1: right on both rows.
        answer.outputs = vec![Tensor::from_values(
            "probabilities",
            vec![2, 2],
            &[0.6f32, 0.4, 0.4, 0.6],
        )];
        feedback.record(&spec, "r1", &answer);
        feedback.record(&spec, "r2", &answer);
        let counts = feedback
            .apply(&spec, &[item("r1", &[0, 1]), item("r2", &[0, 1])])
            .unwrap();
        assert_eq!(counts.accepted, 2);
        assert_eq!(feedback.weights(&spec), None, "static weights stay static");
        let standing = feedback.standing(&spec).unwrap();
        assert_eq!((standing.accuracy, standing.samples), (Some(1.0), 4));
        assert_eq!(standing.members[0].accuracy, Some(1.0));
        assert_eq!(standing.members[1].accuracy, Some(0.0));
        assert!(standing.members[1].below_threshold && !standing.members[0].below_threshold);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains("chorus_member_accuracy{model=\"e\",member=\"bad\"} 0.0"),
            "{text}"
        );
        assert!(text.contains("chorus_member_accuracy_alerts_total{model=\"e\",member=\"bad\"} 1"));
        assert!(
            text.contains("chorus_member_accuracy_alerts_total{model=\"e\",member=\"good\"} 0")
        );
        assert!(text.contains("chorus_ensemble_accuracy{model=\"e\"} 1.0"));
    }

    #[test]
    fn fusion_ensembles_take_feedback_on_their_meta_models_answer() {
        let text = "version = 1\n[[ensemble]]\nname = \"f\"\ncombiner = \"fusion\"\nmeta_model = \"meta\"\ndeadline_ms = 5\nfeedback = true\n[[ensemble.member]]\nmodel = \"good\"\n[[ensemble.member]]\nmodel = \"bad\"\n";
        let spec = Arc::new(crate::spec::parse(text, "t").unwrap().remove(0));
        let feedback = Feedback::unsaved(Arc::new(Metrics::new()));
        let mut answer = answer();
        // A meta-model whose outputs are not named `label` / `probabilities`: it says 0, 0.
        answer.outputs = vec![Tensor::from_values("output_label", vec![2], &[0i64, 0])];
        feedback.record(&spec, "r1", &answer);
        let counts = feedback.apply(&spec, &[item("r1", &[0, 1])]).unwrap();
        assert_eq!((counts.accepted, counts.frozen), (1, false));
        let standing = feedback.standing(&spec).unwrap();
        assert_eq!((standing.accuracy, standing.samples), (Some(0.5), 2));
        assert_eq!(standing.members[0].accuracy, Some(1.0));
        assert_eq!(standing.members[1].accuracy, Some(0.0));
        assert_eq!(
            feedback.weights(&spec),
            None,
            "online weights stay voting-only"
        );
    }

    #[test]
    fn unknown_ids_of_other_coordinators_are_set_aside_for_the_relay() {
        let metrics = Arc::new(Metrics::new());
        let feedback = Feedback::unsaved(Arc::clone(&metrics));
        let spec = spec(true);
        let own = "aaaaaaaaaaaaaaaa";
        feedback.record(&spec, "aaaaaaaaaaaaaaaa-1", &answer());
        let elsewhere = |id: &str| relay::owner(id).is_some_and(|p| p != own);
        let items = [
            item("aaaaaaaaaaaaaaaa-1", &[0, 1]),
            item("bbbbbbbbbbbbbbbb-1", &[0]),
            // Ours but unknown (expired), and a client's own id: unknown, not relayed.
            item("aaaaaaaaaaaaaaaa-2", &[0]),
            item("client-id", &[0]),
        ];
        let (counts, relay) = feedback.join(&spec, &items, elsewhere).unwrap();
        assert_eq!((counts.accepted, counts.unknown), (1, 2));
        assert_eq!(relay, vec![item("bbbbbbbbbbbbbbbb-1", &[0])]);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains("chorus_feedback_total{model=\"e\",outcome=\"unknown\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn frozen_weights_accept_feedback_but_do_not_move() {
        let feedback = Feedback::unsaved(Arc::new(Metrics::new()));
        let spec = spec(true);
        feedback.freeze(&spec, true).unwrap();
        feedback.record(&spec, "r1", &answer());
        let counts = feedback.apply(&spec, &[item("r1", &[0, 1])]).unwrap();
        assert!(counts.frozen && counts.accepted == 1);
        assert_eq!(feedback.weights(&spec).unwrap().weights, vec![1.0, 1.0]);
    }
}
