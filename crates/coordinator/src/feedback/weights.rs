//! Online member weights per ensemble: the stored [`Record`], the operations feedback and
//! operators queue on it ([`Op`]), and the table that keeps, per ensemble, the last record the
//! store confirmed with this coordinator's not yet flushed operations applied on top.
//!
//! Operations compose: a flush re-reads the stored record, applies the pending operations to
//! it and writes it back only if nobody wrote in between (see `store.rs`), so two coordinators'
//! feedback both count. What every coordinator serves converges on the stored record.

use super::rule;
use crate::metrics::Metrics;
use crate::spec::{EnsembleSpec, OnlineWeights};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One ensemble's weights as stored (etcd value or weights file entry), JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Member identities (`model` or `model@version`) in spec order: weights stored for another
    /// member list are not used.
    pub members: Vec<String>,
    /// Mean-1 weights, by member.
    pub weights: Vec<f64>,
    /// While frozen, feedback is accepted but moves no weight.
    #[serde(default)]
    pub frozen: bool,
    /// Feedback rows applied since the last reset.
    #[serde(default)]
    pub rows: u64,
    /// Commits of this record so far; orders what a watch delivers against what was written.
    #[serde(default)]
    pub generation: u64,
}

impl Record {
    /// The spec's starting weights (its static `weight`s, at mean 1).
    pub fn fresh(spec: &EnsembleSpec) -> Record {
        Record {
            members: identities(spec),
            weights: initial_weights(spec),
            frozen: false,
            rows: 0,
            generation: 0,
        }
    }

    /// Whether it holds weights for `spec`'s members.
    pub fn fits(&self, spec: &EnsembleSpec) -> bool {
        self.weights.len() == self.members.len() && self.members == identities(spec)
    }
}

fn identities(spec: &EnsembleSpec) -> Vec<String> {
    spec.members
        .iter()
        .map(|m| match &m.version {
            Some(v) => format!("{}@{v}", m.model),
            None => m.model.clone(),
        })
        .collect()
}

fn initial_weights(spec: &EnsembleSpec) -> Vec<f64> {
    let mut weights: Vec<f64> = spec.members.iter().map(|m| m.weight).collect();
    rule::normalise(&mut weights);
    weights
}

/// A change queued on an ensemble's weights.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// One feedback row: each member's loss (`None`: it did not answer that request).
    Row {
        losses: Vec<Option<f64>>,
        rule: OnlineWeights,
    },
    Freeze(bool),
    /// Back to the given starting weights; the row count restarts.
    Reset(Vec<f64>),
}

/// `record` after `ops`, in order.
pub fn apply(mut record: Record, ops: &[Op]) -> Record {
    for op in ops {
        match op {
            Op::Row { losses, rule } => {
                if record.frozen || losses.len() != record.weights.len() {
                    continue;
                }
                rule::hedge_step(&mut record.weights, losses, rule.learning_rate, rule.floor);
                record.rows += 1;
            }
            Op::Freeze(frozen) => record.frozen = *frozen,
            Op::Reset(weights) => {
                record.weights = weights.clone();
                record.rows = 0;
            }
        }
    }
    record
}

/// One ensemble's weights on this coordinator.
#[derive(Debug)]
struct Learner {
    /// The last record the store confirmed (or the spec's start).
    base: Record,
    /// Operations not yet flushed, in order.
    pending: Vec<Op>,
    /// `base` with `pending` applied: what requests use.
    current: Record,
    /// The spec last served with `current`'s weights, and the spec it was made from.
    weighted: Option<(Arc<EnsembleSpec>, Arc<EnsembleSpec>)>,
}

impl Learner {
    fn new(base: Record) -> Self {
        Learner {
            current: base.clone(),
            base,
            pending: Vec::new(),
            weighted: None,
        }
    }

    fn rebase(&mut self, base: Record) {
        self.current = apply(base.clone(), &self.pending);
        self.base = base;
        self.weighted = None;
    }
}

/// Weights of every online ensemble this coordinator has seen, by name.
pub struct Table {
    learners: Mutex<HashMap<String, Learner>>,
    metrics: Arc<Metrics>,
}

/// What a flush writes for one ensemble: the operations to apply on the stored record, and
/// the record to start from when none is stored (or the stored one is for other members).
pub struct Flush {
    pub ensemble: String,
    pub ops: Vec<Op>,
    pub fresh: Record,
    /// The local base with `ops` applied, taken with them (for stores with no other writer).
    pub current: Record,
}

impl Flush {
    /// `current` as the next generation.
    pub fn next(&self) -> Record {
        Record {
            generation: self.current.generation + 1,
            ..self.current.clone()
        }
    }
}

impl Table {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Table {
            learners: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Runs `f` on `spec`'s learner, made (or remade, if the spec's members changed) first.
    fn with<T>(&self, spec: &EnsembleSpec, f: impl FnOnce(&mut Learner) -> T) -> T {
        let mut learners = self.learners.lock().expect("weights lock");
        let learner = learners
            .entry(spec.name.clone())
            .or_insert_with(|| Learner::new(Record::fresh(spec)));
        if !learner.base.fits(spec) {
            let generation = learner.base.generation;
            *learner = Learner::new(Record {
                generation,
                ..Record::fresh(spec)
            });
            self.publish(spec, &learner.current);
        }
        f(learner)
    }

    /// The weights `spec` answers with now.
    pub fn current(&self, spec: &EnsembleSpec) -> Record {
        self.with(spec, |l| l.current.clone())
    }

    /// `spec` with its members' current weights in place of the static ones; cached until the
    /// weights or the spec change.
    pub fn weighted(&self, spec: &Arc<EnsembleSpec>) -> Arc<EnsembleSpec> {
        self.with(spec, |learner| {
            if let Some((source, weighted)) = &learner.weighted
                && Arc::ptr_eq(source, spec)
            {
                return Arc::clone(weighted);
            }
            let mut copy = EnsembleSpec::clone(spec);
            for (member, weight) in copy.members.iter_mut().zip(&learner.current.weights) {
                *member = crate::spec::Member {
                    weight: *weight,
                    ..member.clone()
                };
            }
            let copy = Arc::new(copy);
            learner.weighted = Some((Arc::clone(spec), Arc::clone(&copy)));
            copy
        })
    }

    /// Queues `ops` on `spec`'s weights and applies them locally at once.
    pub fn queue(&self, spec: &EnsembleSpec, ops: Vec<Op>) {
        if ops.is_empty() {
            return;
        }
        self.with(spec, |learner| {
            learner.current = apply(learner.current.clone(), &ops);
            learner.pending.extend(ops);
            learner.weighted = None;
            self.publish(spec, &learner.current);
        });
    }

    /// What needs writing: per ensemble, its pending operations (left queued until
    /// [`committed`](Self::committed)).
    pub fn to_flush(&self) -> Vec<Flush> {
        let learners = self.learners.lock().expect("weights lock");
        learners
            .iter()
            .filter(|(_, l)| !l.pending.is_empty())
            .map(|(name, l)| Flush {
                ensemble: name.clone(),
                ops: l.pending.clone(),
                fresh: Record {
                    generation: 0,
                    rows: 0,
                    frozen: false,
                    ..l.base.clone()
                },
                current: l.current.clone(),
            })
            .collect()
    }

    /// The store took the first `flushed` pending operations of `ensemble`, giving `record`.
    pub fn committed(&self, ensemble: &str, flushed: usize, record: Record) {
        let mut learners = self.learners.lock().expect("weights lock");
        if let Some(learner) = learners.get_mut(ensemble) {
            let flushed = flushed.min(learner.pending.len());
            learner.pending.drain(..flushed);
            if record.generation >= learner.base.generation {
                learner.rebase(record);
            } else {
                let base = learner.base.clone();
                learner.rebase(base);
            }
        }
    }

    /// The store holds `record` for `ensemble` (a watch event, a listing, the weights file);
    /// older than what is held, it is ignored. `None`: the stored weights were deleted, so the
    /// ensemble starts again from its spec.
    pub fn stored(&self, ensemble: &str, record: Option<Record>) {
        let mut learners = self.learners.lock().expect("weights lock");
        match (learners.get_mut(ensemble), record) {
            (Some(learner), Some(record)) if record.generation > learner.base.generation => {
                learner.rebase(record);
            }
            (Some(_), Some(_)) => {}
            (Some(learner), None) => {
                let fresh = Record {
                    generation: 0,
                    rows: 0,
                    frozen: false,
                    weights: rule::equal(learner.base.weights.len()),
                    ..learner.base.clone()
                };
                learner.pending.clear();
                learner.rebase(fresh);
            }
            (None, Some(record)) => {
                learners.insert(ensemble.to_string(), Learner::new(record));
            }
            (None, None) => {}
        }
    }

    /// Every held record with its pending operations applied, by ensemble (the weights file).
    pub fn snapshot(&self) -> HashMap<String, Record> {
        let learners = self.learners.lock().expect("weights lock");
        learners
            .iter()
            .map(|(name, l)| (name.clone(), l.current.clone()))
            .collect()
    }

    /// Sets the `chorus_ensemble_member_weight` gauges of `spec`.
    fn publish(&self, spec: &EnsembleSpec, record: &Record) {
        for (member, weight) in spec.members.iter().zip(&record.weights) {
            self.metrics
                .feedback()
                .member_weight(&spec.name, &member.model, *weight);
        }
    }

    /// Sets the gauges of `spec` from what it uses now (after a stored change arrived).
    pub fn refresh_gauges(&self, spec: &EnsembleSpec) {
        let record = self.current(spec);
        self.publish(spec, &record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Arc<EnsembleSpec> {
        let text = "version = 1\n[[ensemble]]\nname = \"e\"\ncombiner = \"soft_vote\"\ndeadline_ms = 5\nweights = \"online\"\n[[ensemble.member]]\nmodel = \"a\"\n[[ensemble.member]]\nmodel = \"b\"\nweight = 3.0\n";
        Arc::new(crate::spec::parse(text, "t").unwrap().remove(0))
    }

    fn row(losses: [f64; 2]) -> Op {
        Op::Row {
            losses: losses.iter().map(|l| Some(*l)).collect(),
            rule: spec().online.unwrap(),
        }
    }

    #[test]
    fn starts_from_the_spec_weights_at_mean_one() {
        let table = Table::new(Arc::new(Metrics::new()));
        assert_eq!(table.current(&spec()).weights, vec![0.5, 1.5]);
    }

    #[test]
    fn frozen_weights_ignore_rows_and_reset_restores_the_start() {
        let start = Record::fresh(&spec());
        let moved = apply(start.clone(), &[row([0.0, 1.0])]);
        assert!(moved.weights[0] > 0.5 && moved.rows == 1);
        let frozen = apply(moved.clone(), &[Op::Freeze(true), row([0.0, 1.0])]);
        assert_eq!(frozen.weights, moved.weights);
        let reset = apply(frozen, &[Op::Reset(start.weights.clone())]);
        assert_eq!(reset.weights, start.weights);
        assert!(reset.frozen, "a reset keeps the freeze");
    }

    #[test]
    fn pending_ops_apply_on_top_of_what_the_store_sends() {
        let table = Table::new(Arc::new(Metrics::new()));
        let spec = spec();
        table.queue(&spec, vec![row([0.0, 1.0])]);
        let weighted = table.weighted(&spec);
        assert!(weighted.members[0].weight > 0.5);
        assert!(Arc::ptr_eq(&weighted, &table.weighted(&spec)), "cached");
        // Another coordinator's commit arrives: ours stays pending on top of it.
        let remote = Record {
            weights: vec![1.0, 1.0],
            generation: 3,
            ..Record::fresh(&spec)
        };
        table.stored("e", Some(remote.clone()));
        let expected = apply(remote.clone(), &[row([0.0, 1.0])]);
        assert_eq!(table.current(&spec).weights, expected.weights);
        // An older record is ignored.
        table.stored(
            "e",
            Some(Record {
                generation: 2,
                ..remote
            }),
        );
        assert_eq!(table.current(&spec).weights, expected.weights);
        let flush = table.to_flush();
        assert_eq!(flush.len(), 1);
        table.committed(
            "e",
            flush[0].ops.len(),
            Record {
                generation: 4,
                ..expected.clone()
            },
        );
        assert!(table.to_flush().is_empty());
        assert_eq!(table.current(&spec).generation, 4);
    }

    #[test]
    fn weights_stored_for_other_members_are_not_used() {
        let table = Table::new(Arc::new(Metrics::new()));
        table.stored(
            "e",
            Some(Record {
                members: vec!["x".into(), "y".into()],
                weights: vec![0.1, 1.9],
                frozen: false,
                rows: 9,
                generation: 7,
            }),
        );
        assert_eq!(table.current(&spec()).weights, vec![0.5, 1.5]);
    }
}
