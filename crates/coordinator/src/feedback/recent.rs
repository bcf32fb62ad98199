//! The recent predictions feedback joins against: by request id, what each member that answered
//! said about each row — only what the weight update and the accuracy windows need (a member's
//! probabilities, f32, or its labels, and the ensemble's class per row), not the inputs.
//!
//! Bounded three ways, oldest first out (a ring in insertion order): by entries
//! (`--feedback-window`), by age (`--feedback-ttl-secs`) and by stored values (so a few huge
//! batches cannot hold gigabytes). An entry stays after its feedback, marked, so that feedback
//! sent twice for one id is answered "duplicate" and applied once.

use chorus_common::{DataType, Tensor};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one member said about every row of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Votes {
    /// Class probabilities, row-major `[rows, classes]`.
    Probabilities { classes: usize, values: Box<[f32]> },
    /// One class label per row.
    Labels(Box<[i64]>),
    /// A binary classifier's P(class 1) per row (a one-column member, or any two-column one
    /// under an ensemble `threshold`): class 1 when above `threshold`, as the combiners decide.
    Binary { p1: Box<[f32]>, threshold: f64 },
}

/// The threshold a binary member is judged at when the ensemble sets none: the argmax of
/// `[1 − p, p]`, which is class 1 when p is above one half.
const DEFAULT_BINARY_THRESHOLD: f64 = 0.5;

impl Votes {
    /// Reads a member's `member_output` tensor: `[N, C]` floats, `[N]` or `[N, 1]` floats
    /// (P(class 1) of a binary classifier, as the combiners read them), or `[N]` integer
    /// labels; anything else (a shape a classifier does not produce) is not kept. With an
    /// ensemble `threshold`, binary rows are judged by it, as the combiners judge them.
    pub fn of(tensor: &Tensor, threshold: Option<f64>) -> Option<Votes> {
        let floats = || -> Option<Vec<f32>> {
            if tensor.datatype == DataType::Fp64 {
                Some(
                    tensor
                        .to_values::<f64>()
                        .ok()?
                        .into_iter()
                        .map(|v| v as f32)
                        .collect(),
                )
            } else {
                tensor.to_values::<f32>().ok()
            }
        };
        let threshold = threshold.unwrap_or(DEFAULT_BINARY_THRESHOLD);
        match (tensor.datatype, tensor.shape.as_slice()) {
            (DataType::Fp32 | DataType::Fp64, [_] | [_, 1]) => Some(Votes::Binary {
                p1: floats()?.into(),
                threshold,
            }),
            (DataType::Fp32 | DataType::Fp64, [_, 2]) if threshold != DEFAULT_BINARY_THRESHOLD => {
                Some(Votes::Binary {
                    p1: floats()?.chunks_exact(2).map(|row| row[1]).collect(),
                    threshold,
                })
            }
            (DataType::Fp32 | DataType::Fp64, [_, classes]) => Some(Votes::Probabilities {
                classes: usize::try_from(*classes).ok()?,
                values: floats()?.into(),
            }),
            (DataType::Int64, [_]) => Some(Votes::Labels(tensor.to_values::<i64>().ok()?.into())),
            (DataType::Int32, [_]) => Some(Votes::Labels(
                tensor
                    .to_values::<i32>()
                    .ok()?
                    .into_iter()
                    .map(i64::from)
                    .collect(),
            )),
            _ => None,
        }
    }

    pub fn rows(&self) -> usize {
        match self {
            Votes::Probabilities { classes, values } => values.len() / (*classes).max(1),
            Votes::Labels(labels) => labels.len(),
            Votes::Binary { p1, .. } => p1.len(),
        }
    }

    /// The class the member picked for `row`: its most probable class (the first of equals;
    /// NaN never wins), or its label. `None` for a row it has no vote for.
    pub fn class(&self, row: usize) -> Option<i64> {
        match self {
            Votes::Probabilities { classes, values } => {
                let scores = values.get(row * classes..(row + 1) * classes)?;
                let mut best: Option<(usize, f32)> = None;
                for (class, p) in scores.iter().enumerate() {
                    if !p.is_nan() && best.is_none_or(|(_, b)| *p > b) {
                        best = Some((class, *p));
                    }
                }
                best.and_then(|(class, _)| i64::try_from(class).ok())
            }
            Votes::Labels(labels) => labels.get(row).copied(),
            Votes::Binary { p1, threshold } => {
                // In f64, as the combiners compare (`0.3f32 > 0.3` is true there).
                let p = f64::from(*p1.get(row).filter(|p| !p.is_nan())?);
                Some(i64::from(p > *threshold))
            }
        }
    }

    /// Every row's class (see [`Votes::class`]), `-1` where there is none.
    pub fn classes(&self) -> Box<[i64]> {
        (0..self.rows())
            .map(|row| self.class(row).unwrap_or(-1))
            .collect()
    }

    /// The member's loss on `row` when the true class is `label`: `1 − p(label)` for
    /// probabilities, 0 or 1 for labels. `None` for a row or class it has no vote for.
    pub fn loss(&self, row: usize, label: i64) -> Option<f64> {
        match self {
            Votes::Probabilities { classes, values } => {
                let class = usize::try_from(label).ok().filter(|c| c < classes)?;
                let p = values.get(row * classes + class)?;
                Some(1.0 - f64::from(*p))
            }
            Votes::Labels(labels) => labels.get(row).map(|l| if *l == label { 0.0 } else { 1.0 }),
            Votes::Binary { p1, .. } => {
                let p = f64::from(*p1.get(row)?);
                match label {
                    0 => Some(p),
                    1 => Some(1.0 - p),
                    _ => None,
                }
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Votes::Probabilities { values, .. } => values.len(),
            Votes::Labels(labels) => labels.len(),
            Votes::Binary { p1, .. } => p1.len(),
        }
    }
}

/// One answered request.
#[derive(Debug, Clone)]
pub struct Prediction {
    pub ensemble: Arc<str>,
    pub rows: usize,
    /// The votes of the members that answered, by member index in the spec.
    pub votes: Vec<(usize, Votes)>,
    /// The member count of the spec when it was answered.
    pub members: usize,
    /// The ensemble's own class per row (what the accuracy of the ensemble is measured on);
    /// `None` when its answer named none.
    pub combined: Option<Box<[i64]>>,
}

impl Prediction {
    fn values(&self) -> usize {
        self.votes
            .iter()
            .map(|(_, v)| v.len())
            .sum::<usize>()
            .saturating_add(self.combined.as_ref().map_or(0, |c| c.len()))
            .max(1)
    }
}

/// Why feedback for an id was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// Never seen, already evicted, or answered by another ensemble.
    Unknown,
    /// Its feedback was applied before.
    Duplicate,
}

/// The store's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub entries: usize,
    pub ttl: Duration,
    pub values: usize,
}

struct Entry {
    prediction: Prediction,
    at: Instant,
    answered: bool,
}

/// Recent predictions by request id.
pub struct Recent {
    bounds: Bounds,
    entries: HashMap<String, Entry>,
    /// Ids in insertion order with their insertion time; an id re-inserted since appears twice,
    /// and only the occurrence matching its entry's time evicts it.
    order: VecDeque<(String, Instant)>,
    values: usize,
}

impl Recent {
    pub fn new(bounds: Bounds) -> Self {
        Recent {
            bounds,
            entries: HashMap::new(),
            order: VecDeque::new(),
            values: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keeps `prediction` under `id` (a client reusing an id replaces the older one).
    pub fn insert(&mut self, id: String, prediction: Prediction, now: Instant) {
        if self.bounds.entries == 0 {
            return;
        }
        self.values += prediction.values();
        if let Some(old) = self.entries.insert(
            id.clone(),
            Entry {
                prediction,
                at: now,
                answered: false,
            },
        ) {
            self.values -= old.prediction.values();
        }
        self.order.push_back((id, now));
        self.evict(now);
    }

    /// The prediction `id` names for `ensemble`, marked answered; a miss says why not.
    pub fn answer(&mut self, id: &str, ensemble: &str, now: Instant) -> Result<&Prediction, Miss> {
        self.evict(now);
        let entry = self.entries.get_mut(id).ok_or(Miss::Unknown)?;
        if &*entry.prediction.ensemble != ensemble {
            return Err(Miss::Unknown);
        }
        if entry.answered {
            return Err(Miss::Duplicate);
        }
        entry.answered = true;
        Ok(&entry.prediction)
    }

    /// Whether `id` is held for `ensemble` and not yet answered (nothing is marked).
    pub fn peek(&self, id: &str, ensemble: &str) -> Result<&Prediction, Miss> {
        let entry = self.entries.get(id).ok_or(Miss::Unknown)?;
        if &*entry.prediction.ensemble != ensemble {
            return Err(Miss::Unknown);
        }
        if entry.answered {
            return Err(Miss::Duplicate);
        }
        Ok(&entry.prediction)
    }

    fn evict(&mut self, now: Instant) {
        while let Some((id, at)) = self.order.front() {
            let over = self.entries.len() > self.bounds.entries || self.values > self.bounds.values;
            let expired = now.saturating_duration_since(*at) > self.bounds.ttl;
            if !over && !expired {
                return;
            }
            let current = self.entries.get(id).is_some_and(|e| e.at == *at);
            if current && let Some(entry) = self.entries.remove(id) {
                self.values -= entry.prediction.values();
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(ensemble: &str) -> Prediction {
        Prediction {
            ensemble: Arc::from(ensemble),
            rows: 1,
            votes: vec![(0, Votes::Labels(vec![3].into()))],
            members: 1,
            combined: None,
        }
    }

    fn bounds(entries: usize) -> Bounds {
        Bounds {
            entries,
            ttl: Duration::from_secs(60),
            values: 1_000,
        }
    }

    #[test]
    fn feedback_is_applied_once_and_only_to_its_ensemble() {
        let now = Instant::now();
        let mut recent = Recent::new(bounds(10));
        recent.insert("a".into(), prediction("e"), now);
        assert_eq!(recent.answer("a", "other", now).err(), Some(Miss::Unknown));
        assert!(recent.answer("a", "e", now).is_ok());
        assert_eq!(recent.answer("a", "e", now).err(), Some(Miss::Duplicate));
        assert_eq!(recent.answer("b", "e", now).err(), Some(Miss::Unknown));
    }

    #[test]
    fn the_oldest_go_first_by_count_age_and_values() {
        let t0 = Instant::now();
        let mut recent = Recent::new(bounds(2));
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            recent.insert(
                id.to_string(),
                prediction("e"),
                t0 + Duration::from_secs(i as u64),
            );
        }
        assert_eq!(recent.len(), 2);
        assert_eq!(recent.peek("a", "e").err(), Some(Miss::Unknown));
        assert!(recent.peek("b", "e").is_ok());
        // Past the age bound everything goes.
        let later = t0 + Duration::from_secs(100);
        assert_eq!(recent.answer("c", "e", later).err(), Some(Miss::Unknown));
        assert_eq!(recent.len(), 0);
        // A prediction larger than the value budget does not stay.
        let mut recent = Recent::new(Bounds {
            values: 2,
            ..bounds(10)
        });
        let mut big = prediction("e");
        big.votes = vec![(0, Votes::Labels(vec![1, 2, 3].into()))];
        recent.insert("big".into(), big, t0);
        assert_eq!(recent.len(), 0);
    }

    #[test]
    fn a_reused_id_replaces_the_older_prediction() {
        let t0 = Instant::now();
        let mut recent = Recent::new(bounds(2));
        recent.insert("a".into(), prediction("e"), t0);
        recent.answer("a", "e", t0).unwrap();
        recent.insert("a".into(), prediction("e"), t0 + Duration::from_secs(1));
        recent.insert("b".into(), prediction("e"), t0 + Duration::from_secs(2));
        // The stale queue slot of the first "a" must not evict the second.
        assert!(recent.peek("a", "e").is_ok());
        assert_eq!(recent.len(), 2);
    }

    #[test]
    fn votes_read_probabilities_and_labels() {
        let probs = Tensor::from_values("p", vec![2, 3], &[0.7f32, 0.2, 0.1, 0.0, 0.5, 0.5]);
        let votes = Votes::of(&probs, None).unwrap();
        assert_eq!(votes.rows(), 2);
        assert!((votes.loss(0, 0).unwrap() - 0.3).abs() < 1e-6);
        assert_eq!(votes.loss(1, 0), Some(1.0));
        assert_eq!(votes.loss(0, 3), None, "no such class");
        assert_eq!(votes.loss(2, 0), None, "no such row");
        let labels = Votes::of(&Tensor::from_values("l", vec![2], &[4i64, 1]), None).unwrap();
        assert_eq!(labels.loss(0, 4), Some(0.0));
        assert_eq!(labels.loss(1, 4), Some(1.0));
        assert_eq!(votes.classes(), vec![0, 1].into());
        assert_eq!(labels.classes(), vec![4, 1].into());
        let nan = Votes::Probabilities {
            classes: 2,
            values: vec![f32::NAN, 0.1].into(),
        };
        assert_eq!(nan.class(0), Some(1));
        assert_eq!(
            Votes::of(&Tensor::from_values("x", vec![1, 2, 3], &[0f32; 6]), None),
            None
        );
    }

    #[test]
    fn binary_members_vote_as_the_combiners_read_them() {
        // One column (P(class 1)), judged at one half without a threshold.
        let column = Tensor::from_values("p", vec![3, 1], &[0.9f32, 0.2, 0.6]);
        let votes = Votes::of(&column, None).unwrap();
        assert_eq!(votes.rows(), 3);
        assert_eq!(votes.classes(), vec![1, 0, 1].into());
        assert!((votes.loss(0, 1).unwrap() - 0.1).abs() < 1e-6);
        assert!((votes.loss(1, 1).unwrap() - 0.8).abs() < 1e-6);
        assert!((votes.loss(1, 0).unwrap() - 0.2).abs() < 1e-6);
        assert_eq!(votes.loss(0, 2), None, "a binary member has no class 2");
        // A threshold moves the one-column and the two-column members alike.
        let flat = Tensor::from_values("p", vec![3], &[0.9f32, 0.2, 0.6]);
        assert_eq!(
            Votes::of(&flat, Some(0.7)).unwrap().classes(),
            vec![1, 0, 0].into()
        );
        let two = Tensor::from_values("p", vec![3, 2], &[0.1f32, 0.9, 0.8, 0.2, 0.4, 0.6]);
        assert_eq!(
            Votes::of(&two, None).unwrap().classes(),
            vec![1, 0, 1].into()
        );
        assert_eq!(
            Votes::of(&two, Some(0.7)).unwrap().classes(),
            vec![1, 0, 0].into()
        );
    }
}
