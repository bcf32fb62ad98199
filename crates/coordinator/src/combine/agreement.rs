//! Agreement: how often the members that answered picked the class the ensemble answered.
//!
//! It is the drift signal of an ensemble: members trained apart disagree at a steady rate, and a
//! member whose model changed or broke (a bad rollout, skewed inputs) shows up as a drop long
//! before accuracy can be measured. It is counted per member vote and row, for the classifying
//! combiners only; an average or a median has no class to agree with.

use super::check::{FLOATS, argmax, decide, float_values, read_probabilities};
use super::{LABEL, PROBABILITIES};
use chorus_common::{DataType, Tensor};

/// Votes counted over every row of one answer, and how many of them named the class the
/// ensemble answered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    pub votes: u64,
    pub agreeing: u64,
}

impl Agreement {
    /// The agreeing share of the votes (`None` without votes).
    pub fn share(self) -> Option<f64> {
        (self.votes > 0).then(|| self.agreeing as f64 / self.votes as f64)
    }
}

/// Compares each member's class per row with the ensemble's:
/// - a member's `[N, C]` float output votes for its argmax, compared with the argmax of the
///   ensemble's `probabilities` (class indices on both sides); a binary member's single column
///   (`[N]` or `[N, 1]`) counts as `[1 − p, p]`, as the combiners read it;
/// - a member's `[N]` integer output votes for that label, compared with the ensemble's
///   `label` (class labels on both sides).
///
/// With an ensemble `threshold`, binary rows are decided by it on both sides, as the combiners
/// decide them: a member's row is class 1 when P(1) is above it, and the ensemble's class is its
/// `label` (the argmax of its probabilities would ignore the threshold).
///
/// Returns each voting member's tally, keyed as given (the spec's member index). A member whose
/// output is neither, or whose row count differs, casts no vote; the answer has nothing to
/// compare with for an average or a median, and then nobody votes.
pub fn agreement<K: Copy>(
    members: &[(K, &Tensor)],
    outputs: &[Tensor],
    threshold: Option<f64>,
) -> Vec<(K, Agreement)> {
    let by_name = |name: &str| outputs.iter().find(|t| t.name == name);
    let answer_classes = match threshold {
        Some(_) => by_name(LABEL).and_then(labels),
        None => by_name(PROBABILITIES).and_then(row_argmax),
    };
    let answer_labels = by_name(LABEL).and_then(labels);
    let mut tallies = Vec::with_capacity(members.len());
    for &(key, member) in members {
        let (mine, answer) = match (member.datatype, member.shape.len()) {
            (DataType::Fp32 | DataType::Fp64, 1 | 2) => {
                (member_classes(member, threshold), answer_classes.as_ref())
            }
            (_, 1) => (labels(member), answer_labels.as_ref()),
            _ => continue,
        };
        let (Some(mine), Some(answer)) = (mine, answer) else {
            continue;
        };
        if mine.len() != answer.len() {
            continue;
        }
        let agreeing = mine.iter().zip(answer).filter(|(a, b)| a == b).count();
        tallies.push((
            key,
            Agreement {
                votes: mine.len() as u64,
                agreeing: agreeing as u64,
            },
        ));
    }
    tallies
}

/// The argmax of each row of a finite `[N, C]` float tensor.
fn row_argmax(tensor: &Tensor) -> Option<Vec<i64>> {
    let [rows, cols] = tensor.shape[..] else {
        return None;
    };
    let values = float_values("", tensor, FLOATS).ok()?;
    let cols = usize::try_from(cols).ok().filter(|&c| c > 0)?;
    if usize::try_from(rows).ok()? * cols != values.len() {
        return None;
    }
    Some(
        values
            .chunks_exact(cols)
            .map(|row| argmax(row) as i64)
            .collect(),
    )
}

/// The class of each row of a member's probabilities, one-column binary members expanded: the
/// argmax, or for binary rows under a threshold, whether P(1) is above it.
fn member_classes(tensor: &Tensor, threshold: Option<f64>) -> Option<Vec<i64>> {
    let matrix = read_probabilities("", tensor, FLOATS).ok()?;
    (0..matrix.rows)
        .map(|row| {
            decide("", matrix.row(row), threshold)
                .ok()
                .map(|c| c as i64)
        })
        .collect()
}

/// The values of an `[N]` integer tensor.
fn labels(tensor: &Tensor) -> Option<Vec<i64>> {
    match tensor.datatype {
        DataType::Int64 => tensor.to_values::<i64>().ok(),
        DataType::Int32 => tensor
            .to_values::<i32>()
            .ok()
            .map(|v| v.into_iter().map(i64::from).collect()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::combine::{Vote, hard_vote, soft_vote};

    fn probs(rows: &[&[f32]]) -> Tensor {
        let values: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_values(
            PROBABILITIES,
            vec![rows.len() as i64, rows[0].len() as i64],
            &values,
        )
    }

    fn label_tensor(values: &[i64]) -> Tensor {
        Tensor::from_values(LABEL, vec![values.len() as i64], values)
    }

    fn tally(votes: u64, agreeing: u64) -> Agreement {
        Agreement { votes, agreeing }
    }

    fn votes<'a>(tensors: &'a [Tensor]) -> Vec<Vote<'a>> {
        tensors
            .iter()
            .map(|tensor| Vote {
                member: "m",
                weight: 1.0,
                tensor,
            })
            .collect()
    }

    #[test]
    fn soft_vote_counts_each_members_argmax_against_the_answer() {
        // Row 0: a and b say class 0, c says 1 -> answer 0. Row 1: all say class 2.
        let members = [
            probs(&[&[0.8, 0.1, 0.1], &[0.0, 0.1, 0.9]]),
            probs(&[&[0.6, 0.3, 0.1], &[0.1, 0.2, 0.7]]),
            probs(&[&[0.2, 0.7, 0.1], &[0.3, 0.0, 0.7]]),
        ];
        let outputs = soft_vote(&votes(&members)).unwrap();
        let refs: Vec<(usize, &Tensor)> = members.iter().enumerate().collect();
        // Member 2 (c) is the one that disagreed, on row 0.
        assert_eq!(
            agreement(&refs, &outputs, None),
            vec![(0, tally(2, 2)), (1, tally(2, 2)), (2, tally(2, 1))]
        );
    }

    #[test]
    fn hard_vote_compares_labels() {
        let members = [
            label_tensor(&[3, 1]),
            label_tensor(&[3, 2]),
            label_tensor(&[4, 2]),
        ];
        let outputs = hard_vote(&votes(&members)).unwrap();
        let refs: Vec<(usize, &Tensor)> = members.iter().enumerate().collect();
        assert_eq!(
            agreement(&refs, &outputs, None),
            vec![(0, tally(2, 1)), (1, tally(2, 2)), (2, tally(2, 1))]
        );
    }

    #[test]
    fn one_column_members_vote_as_binary() {
        // Row 0: the sigmoid says 0.9 (class 1), the two-column member 0 -> mean [0.55, 0.45],
        // answer 0. Row 1: both say class 1.
        let members = [
            Tensor::from_values(PROBABILITIES, vec![2, 1], &[0.9f32, 0.75]),
            probs(&[&[1.0, 0.0], &[0.25, 0.75]]),
        ];
        let outputs = soft_vote(&votes(&members)).unwrap();
        let refs: Vec<(usize, &Tensor)> = members.iter().enumerate().collect();
        assert_eq!(
            agreement(&refs, &outputs, None),
            vec![(0, tally(2, 1)), (1, tally(2, 2))]
        );
    }

    #[test]
    fn a_threshold_decides_both_sides() {
        // Mean P(1): row 0 0.6, row 1 0.8. At 0.7 the answer is [0, 1]; the sigmoid (0.65,
        // 0.75) says [0, 1] and agrees on both rows, the two-column member (0.55, 0.85) too,
        // though an argmax would have called row 0 class 1 for both.
        let members = [
            Tensor::from_values(PROBABILITIES, vec![2, 1], &[0.65f32, 0.75]),
            probs(&[&[0.45, 0.55], &[0.15, 0.85]]),
        ];
        let outputs = crate::combine::soft_vote_at(&votes(&members), Some(0.7)).unwrap();
        let refs: Vec<(usize, &Tensor)> = members.iter().enumerate().collect();
        assert_eq!(
            agreement(&refs, &outputs, Some(0.7)),
            vec![(0, tally(2, 2)), (1, tally(2, 2))]
        );
    }

    #[test]
    fn nothing_to_agree_with_is_none() {
        let member = probs(&[&[0.5, 0.5]]);
        // An average's output: no `label`, no `probabilities`.
        let averaged = Tensor::from_values("y", vec![1, 2], &[0.5f32, 0.5]);
        assert_eq!(agreement(&[(0, &member)], &[averaged], None), vec![]);
        assert_eq!(agreement::<usize>(&[], &[label_tensor(&[1])], None), vec![]);
    }

    #[test]
    fn a_member_with_other_rows_or_types_casts_no_vote() {
        let answer = [label_tensor(&[1, 2])];
        let short = label_tensor(&[1]);
        let floats_1d = Tensor::from_values(LABEL, vec![2], &[1.0f32, 2.0]);
        let good = label_tensor(&[1, 0]);
        assert_eq!(
            agreement(&[(0, &short), (1, &floats_1d), (2, &good)], &answer, None),
            vec![(2, tally(2, 1))]
        );
    }
}
