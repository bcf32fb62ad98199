//! Accuracy against feedback over a sliding window (docs/data.md#accuracy-against-feedback):
//! per ensemble, a ring of the newest `accuracy_window` outcomes (right or wrong) for each member
//! and for the ensemble's own answer, and the anomaly signal on top of it.
//!
//! Rules of the signal, for a member of an ensemble with `min_member_accuracy = t`:
//! 1. a member is judged only once its window holds at least half of `accuracy_window` rows
//!    (rounded up): a handful of rows says nothing;
//! 2. it is *below* when judged and its windowed accuracy is under `t`;
//! 3. going from not below to below is one crossing (one alert, one warning); staying below
//!    adds nothing, however much feedback comes; going back to `t` or above is one recovery.
//!
//! Pure state driven row by row, so the tests need no clock and no server.

use std::collections::VecDeque;

/// The newest outcomes of one member (or of the ensemble), oldest first out.
#[derive(Debug, Clone)]
pub struct Window {
    outcomes: VecDeque<bool>,
    capacity: usize,
    right: usize,
}

impl Window {
    pub fn new(capacity: usize) -> Self {
        Window {
            outcomes: VecDeque::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
            right: 0,
        }
    }

    pub fn push(&mut self, right: bool) {
        if self.outcomes.len() == self.capacity
            && let Some(oldest) = self.outcomes.pop_front()
        {
            self.right -= usize::from(oldest);
        }
        self.outcomes.push_back(right);
        self.right += usize::from(right);
    }

    /// Rows in the window.
    pub fn samples(&self) -> usize {
        self.outcomes.len()
    }

    /// The share of rows right; `None` while empty.
    pub fn accuracy(&self) -> Option<f64> {
        (!self.outcomes.is_empty()).then(|| self.right as f64 / self.outcomes.len() as f64)
    }
}

/// A change of a member's standing against the threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Crossing {
    /// Fell below: count an alert and warn.
    Below { member: usize, accuracy: f64 },
    /// Back at or above the threshold.
    Recovered { member: usize, accuracy: f64 },
}

/// One ensemble's windows and standings.
#[derive(Debug, Clone)]
pub struct Tracker {
    members: Vec<Window>,
    below: Vec<bool>,
    ensemble: Window,
    capacity: usize,
    threshold: Option<f64>,
}

impl Tracker {
    pub fn new(members: usize, capacity: usize, threshold: Option<f64>) -> Self {
        Tracker {
            members: vec![Window::new(capacity); members],
            below: vec![false; members],
            ensemble: Window::new(capacity),
            capacity,
            threshold,
        }
    }

    /// Whether this tracker was made for a spec of this shape (a changed spec starts afresh).
    pub fn fits(&self, members: usize, capacity: usize, threshold: Option<f64>) -> bool {
        self.members.len() == members && self.capacity == capacity && self.threshold == threshold
    }

    /// Records one feedback row: each member's outcome (`None`: it did not answer) and the
    /// ensemble's (`None`: its answer named no class). Returns the crossings it caused.
    pub fn row(&mut self, members: &[Option<bool>], ensemble: Option<bool>) -> Vec<Crossing> {
        if let Some(right) = ensemble {
            self.ensemble.push(right);
        }
        let mut crossings = Vec::new();
        for (member, outcome) in members.iter().enumerate() {
            let (Some(right), Some(window)) = (outcome, self.members.get_mut(member)) else {
                continue;
            };
            window.push(*right);
            if let Some(crossing) = self.judge(member) {
                crossings.push(crossing);
            }
        }
        crossings
    }

    /// Rows a member needs in its window before it is judged (rule 1).
    pub fn quorum(&self) -> usize {
        self.capacity.div_ceil(2)
    }

    fn judge(&mut self, member: usize) -> Option<Crossing> {
        let threshold = self.threshold?;
        let window = &self.members[member];
        if window.samples() < self.quorum() {
            return None;
        }
        let accuracy = window.accuracy()?;
        let below = accuracy < threshold;
        if below == self.below[member] {
            return None;
        }
        self.below[member] = below;
        Some(if below {
            Crossing::Below { member, accuracy }
        } else {
            Crossing::Recovered { member, accuracy }
        })
    }

    pub fn member(&self, member: usize) -> Option<&Window> {
        self.members.get(member)
    }

    pub fn is_below(&self, member: usize) -> bool {
        self.below.get(member).copied().unwrap_or(false)
    }

    pub fn ensemble(&self) -> &Window {
        &self.ensemble
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn threshold(&self) -> Option<f64> {
        self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_the_newest_outcomes() {
        let mut window = Window::new(4);
        assert_eq!(window.accuracy(), None);
        for right in [false, false, true, true] {
            window.push(right);
        }
        assert_eq!(window.accuracy(), Some(0.5));
        window.push(true);
        window.push(true);
        // The two wrong ones are out.
        assert_eq!((window.samples(), window.accuracy()), (4, Some(1.0)));
        window.push(false);
        assert_eq!(window.accuracy(), Some(0.75));
    }

    #[test]
    fn a_member_is_judged_only_with_half_a_window() {
        let mut tracker = Tracker::new(1, 10, Some(0.5));
        assert_eq!(tracker.quorum(), 5);
        for _ in 0..4 {
            assert!(tracker.row(&[Some(false)], None).is_empty());
        }
        assert_eq!(
            tracker.row(&[Some(false)], None),
            vec![Crossing::Below {
                member: 0,
                accuracy: 0.0
            }]
        );
        assert!(tracker.is_below(0));
    }

    #[test]
    fn one_crossing_per_fall_and_one_per_recovery() {
        let mut tracker = Tracker::new(2, 4, Some(0.5));
        let mut crossings = Vec::new();
        // Member 0 always right, member 1 always wrong, for many rows: one alert.
        for _ in 0..50 {
            crossings.extend(tracker.row(&[Some(true), Some(false)], Some(true)));
        }
        assert_eq!(
            crossings,
            vec![Crossing::Below {
                member: 1,
                accuracy: 0.0
            }]
        );
        // Member 1 recovers: 2 of 4 right is at the threshold, not below.
        crossings.clear();
        for _ in 0..2 {
            crossings.extend(tracker.row(&[Some(true), Some(true)], Some(true)));
        }
        assert_eq!(
            crossings,
            vec![Crossing::Recovered {
                member: 1,
                accuracy: 0.5
            }]
        );
        // And falls again: a second crossing.
        crossings.clear();
        for _ in 0..4 {
            crossings.extend(tracker.row(&[Some(true), Some(false)], Some(true)));
        }
        assert_eq!(crossings.len(), 1);
        assert!(matches!(crossings[0], Crossing::Below { member: 1, .. }));
        assert_eq!(tracker.ensemble().accuracy(), Some(1.0));
    }

    #[test]
    fn members_that_did_not_answer_are_not_counted() {
        let mut tracker = Tracker::new(2, 4, Some(0.9));
        for _ in 0..10 {
            assert!(tracker.row(&[Some(true), None], None).is_empty());
        }
        assert_eq!(tracker.member(1).unwrap().samples(), 0);
        assert_eq!(tracker.ensemble().samples(), 0);
        assert!(!tracker.is_below(1));
    }

    #[test]
    fn without_a_threshold_nothing_crosses() {
        let mut tracker = Tracker::new(1, 2, None);
        for _ in 0..10 {
            assert!(tracker.row(&[Some(false)], Some(false)).is_empty());
        }
        assert_eq!(tracker.member(0).unwrap().accuracy(), Some(0.0));
    }
}
