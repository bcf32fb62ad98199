//! Hard voting: each member votes one label per row; the label with the most weight wins.

use super::check::{
    FLOATS, decide, malformed, read_probabilities, same_rows, total_weight, wrong_shape,
};
use super::{AGREEMENT, CombineError, LABEL, Vote};
use chorus_common::{DataType, Tensor};

/// [`hard_vote_at`] without a threshold: probability members vote their argmax.
pub fn hard_vote(votes: &[Vote]) -> Result<Vec<Tensor>, CombineError> {
    hard_vote_at(votes, None)
}

/// Combines the members' votes into `[label INT64 [N], agreement FP32 [N]]`.
///
/// A member's tensor is either INT64 (or INT32) labels of shape `[N]`, or FP32 (or FP64)
/// probabilities of shape `[N, C]`, in which case it votes for its row argmax (lowest index on
/// ties), or with a `threshold` (binary members only) for class 1 where P(class 1) is above it.
/// A float `[N]` or `[N, 1]` is a binary member's P(class 1), read as `[1 − p, p]`: it votes 1
/// where p > 0.5 (or the threshold). Members may mix the forms, and probability members need not
/// agree on `C`: only the label each one votes for matters here.
///
/// Per row, each label's weight is summed in member order; the largest sum wins and exact ties go
/// to the smallest label value. `agreement` is the winner's weight divided by the total weight of
/// the members present, so it lies in (0, 1] and is 1 when they all agree.
pub fn hard_vote_at(votes: &[Vote], threshold: Option<f64>) -> Result<Vec<Tensor>, CombineError> {
    let total = total_weight(votes)?;
    let ballots = votes
        .iter()
        .map(|vote| ballot(vote, threshold))
        .collect::<Result<Vec<Vec<i64>>, _>>()?;
    let rows = ballots[0].len();
    for (vote, ballot) in votes.iter().zip(&ballots).skip(1) {
        same_rows(votes[0].member, rows, vote.member, ballot.len())?;
    }

    let mut labels = Vec::with_capacity(rows);
    let mut agreement = Vec::with_capacity(rows);
    // (label, summed weight) in order of first vote; ensembles are small, so a linear scan
    // beats a map and keeps the summation order obvious.
    let mut tally: Vec<(i64, f64)> = Vec::with_capacity(votes.len());
    for row in 0..rows {
        tally.clear();
        for (vote, ballot) in votes.iter().zip(&ballots) {
            let label = ballot[row];
            match tally.iter_mut().find(|(l, _)| *l == label) {
                Some((_, weight)) => *weight += vote.weight,
                None => tally.push((label, vote.weight)),
            }
        }
        let (label, weight) = tally.iter().copied().fold(tally[0], |best, candidate| {
            let better = candidate.1 > best.1 || (candidate.1 == best.1 && candidate.0 < best.0);
            if better { candidate } else { best }
        });
        labels.push(label);
        agreement.push((weight / total) as f32);
    }
    Ok(vec![
        Tensor::from_values(LABEL, vec![rows as i64], &labels),
        Tensor::from_values(AGREEMENT, vec![rows as i64], &agreement),
    ])
}

/// The label a member votes for in each row.
fn ballot(vote: &Vote, threshold: Option<f64>) -> Result<Vec<i64>, CombineError> {
    let (member, tensor) = (vote.member, vote.tensor);
    let labels = match tensor.datatype {
        DataType::Int64 => tensor.to_values::<i64>(),
        DataType::Int32 => tensor
            .to_values::<i32>()
            .map(|labels| labels.into_iter().map(i64::from).collect()),
        DataType::Fp32 | DataType::Fp64 => {
            let matrix = read_probabilities(member, tensor, FLOATS)?;
            return (0..matrix.rows)
                .map(|row| decide(member, matrix.row(row), threshold).map(|class| class as i64))
                .collect();
        }
        got => {
            return Err(CombineError::WrongDatatype {
                member: member.to_string(),
                tensor: tensor.name.clone(),
                expected: "INT64 or INT32 labels, or FP32 or FP64 probabilities".to_string(),
                got,
            });
        }
    }
    .map_err(|source| malformed(member, source))?;
    if tensor.shape.len() != 1 {
        return Err(wrong_shape(
            member,
            tensor,
            "labels of shape [N]".to_string(),
        ));
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::combine::testing::{Lcg, equal_votes, labels, probs, probs64, vote};

    fn run(votes: &[Vote]) -> (Vec<i64>, Vec<f32>) {
        let out = hard_vote(votes).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].name, "label");
        assert_eq!(out[0].datatype, DataType::Int64);
        assert_eq!(out[1].name, "agreement");
        assert_eq!(out[1].datatype, DataType::Fp32);
        assert_eq!(out[0].shape, out[1].shape);
        (
            out[0].to_values::<i64>().unwrap(),
            out[1].to_values::<f32>().unwrap(),
        )
    }

    fn int32_labels(values: &[i32]) -> Tensor {
        Tensor::from_values("label", vec![values.len() as i64], values)
    }

    #[test]
    fn plain_majority_and_agreement() {
        let a = labels(&[1, 0, 2]);
        let b = labels(&[1, 2, 2]);
        let c = labels(&[0, 2, 2]);
        let (won, agreement) = run(&[vote("a", 1.0, &a), vote("b", 1.0, &b), vote("c", 1.0, &c)]);
        assert_eq!(won, vec![1, 2, 2]);
        assert_eq!(
            agreement,
            vec![(2.0f64 / 3.0) as f32, (2.0f64 / 3.0) as f32, 1.0]
        );
    }

    #[test]
    fn weight_overrides_headcount() {
        let a = labels(&[0]);
        let b = labels(&[0]);
        let c = labels(&[7]);
        let (won, agreement) = run(&[vote("a", 1.0, &a), vote("b", 1.0, &b), vote("c", 2.5, &c)]);
        assert_eq!(won, vec![7]);
        assert_eq!(agreement, vec![(2.5f64 / 4.5) as f32]);
    }

    #[test]
    fn exact_tie_goes_to_smallest_label() {
        let a = labels(&[5, 3, -1]);
        let b = labels(&[2, 9, 4]);
        let (won, agreement) = run(&[vote("a", 1.0, &a), vote("b", 1.0, &b)]);
        assert_eq!(won, vec![2, 3, -1]);
        assert_eq!(agreement, vec![0.5, 0.5, 0.5]);
        // Three-way tie by weight: 2 = 1 + 1 = 2.
        let x = labels(&[4]);
        let y = labels(&[3]);
        let z = labels(&[9]);
        let (won, agreement) = run(&[
            vote("x", 2.0, &x),
            vote("y", 1.0, &y),
            vote("z", 2.0, &z),
            vote("w", 1.0, &y),
        ]);
        assert_eq!(won, vec![3]);
        assert_eq!(agreement, vec![(2.0f64 / 6.0) as f32]);
    }

    #[test]
    fn renormalises_over_members_present() {
        let a = labels(&[0, 1]);
        let b = labels(&[1, 1]);
        let c = labels(&[1, 0]);
        let (won, agreement) = run(&[vote("a", 1.0, &a), vote("b", 2.0, &b), vote("c", 3.0, &c)]);
        // Row 1 is a tie, 1 + 2 for label 1 against 3 for label 0: the smaller label wins.
        assert_eq!(won, vec![1, 0]);
        assert_eq!(agreement, vec![(5.0f64 / 6.0) as f32, 0.5]);
        // b did not answer: row 0 is 1 (weight 3 of 4), row 1 is 0 (weight 3 of 4).
        let (won, agreement) = run(&[vote("a", 1.0, &a), vote("c", 3.0, &c)]);
        assert_eq!((won, agreement), (vec![1, 0], vec![0.75, 0.75]));
        // c did not answer: a (1) and b (2); b wins row 0, both agree on row 1.
        let (won, agreement) = run(&[vote("a", 1.0, &a), vote("b", 2.0, &b)]);
        assert_eq!(
            (won, agreement),
            (vec![1, 1], vec![(2.0f64 / 3.0) as f32, 1.0])
        );
    }

    #[test]
    fn probabilities_vote_their_argmax() {
        // Row 0: argmax 1. Row 1: tie between classes 0 and 2, so the member votes 0.
        let p = probs(&[&[0.1, 0.8, 0.1], &[0.4, 0.2, 0.4]]);
        let q = probs64(&[&[0.6, 0.3, 0.1], &[0.0, 0.0, 1.0]]);
        let l = labels(&[1, 2]);
        let (won, agreement) = run(&[vote("p", 1.0, &p), vote("q", 1.0, &q), vote("l", 1.0, &l)]);
        assert_eq!(won, vec![1, 2]);
        let two_thirds = (2.0f64 / 3.0) as f32;
        assert_eq!(agreement, vec![two_thirds, two_thirds]);
        // Probability members need not share C: only the voted label counts.
        let wide = probs(&[&[0.0, 0.0, 0.0, 0.0, 1.0], &[1.0, 0.0, 0.0, 0.0, 0.0]]);
        let (won, _) = run(&[vote("p", 1.0, &p), vote("wide", 2.0, &wide)]);
        assert_eq!(won, vec![4, 0]);
    }

    #[test]
    fn one_column_members_vote_by_threshold() {
        let sigmoid = Tensor::from_values("p", vec![3, 1], &[0.3f32, 0.6, 0.9]);
        let flat = Tensor::from_values("p", vec![3], &[0.3f32, 0.6, 0.9]);
        let two = probs(&[&[0.6, 0.4], &[0.35, 0.65], &[0.45, 0.55]]);
        let l = labels(&[1, 0, 1]);
        // Default: p > 0.5 for the one-column members, argmax for the two-column one.
        let (won, agreement) = run(&[
            vote("s", 1.0, &sigmoid),
            vote("f", 1.0, &flat),
            vote("t", 1.0, &two),
        ]);
        assert_eq!(won, vec![0, 1, 1]);
        assert_eq!(agreement, vec![1.0, 1.0, 1.0]);
        let at = |t| {
            let votes = [
                vote("s", 1.0, &sigmoid),
                vote("t", 1.0, &two),
                vote("l", 1.0, &l),
            ];
            hard_vote_at(&votes, t).unwrap()[0]
                .to_values::<i64>()
                .unwrap()
        };
        assert_eq!(at(None), vec![0, 1, 1]);
        // At 0.62 row 1: s (0.6) votes 0, t (0.65) votes 1, l votes 0.
        // Row 2: s 1, t (0.55) 0, l 1.
        assert_eq!(at(Some(0.62)), vec![0, 0, 1]);
        let three = probs(&[&[0.2, 0.3, 0.5]]);
        assert!(matches!(
            hard_vote_at(&[vote("w", 1.0, &three)], Some(0.5)),
            Err(CombineError::ThresholdNotBinary { .. })
        ));
    }

    #[test]
    fn int32_labels_are_accepted() {
        let a = int32_labels(&[3, -2]);
        let b = labels(&[3, 5]);
        let c = int32_labels(&[1, -2]);
        let (won, agreement) = run(&[vote("a", 1.0, &a), vote("b", 1.0, &b), vote("c", 1.0, &c)]);
        assert_eq!(won, vec![3, -2]);
        let two_thirds = (2.0f64 / 3.0) as f32;
        assert_eq!(agreement, vec![two_thirds, two_thirds]);
    }

    #[test]
    fn rejects_empty_and_bad_weights() {
        assert_eq!(hard_vote(&[]), Err(CombineError::NoMembers));
        let a = labels(&[0]);
        for weight in [0.0, -2.0, f64::NAN, f64::NEG_INFINITY] {
            let err = hard_vote(&[vote("a", weight, &a)]).unwrap_err();
            assert!(
                matches!(&err, CombineError::BadWeight { member, .. } if member == "a"),
                "{err}"
            );
        }
    }

    #[test]
    fn rejects_mismatched_batch() {
        let a = labels(&[0, 1]);
        let b = probs(&[&[1.0, 0.0]]);
        let err = hard_vote(&[vote("a", 1.0, &a), vote("b", 1.0, &b)]).unwrap_err();
        assert_eq!(
            err,
            CombineError::BatchMismatch {
                member: "b".into(),
                rows: 1,
                reference: "a".into(),
                reference_rows: 2
            }
        );
        assert!(
            err.to_string().contains("member 'b' returned 1 rows"),
            "{err}"
        );
    }

    #[test]
    fn rejects_wrong_datatype_and_shape() {
        let strings = Tensor {
            name: "label".into(),
            datatype: DataType::Bytes,
            shape: vec![1],
            data: chorus_common::tensor::encode_bytes_elements([b"cat".as_slice()]),
        };
        let err = hard_vote(&[vote("s", 1.0, &strings)]).unwrap_err();
        assert!(matches!(
            &err,
            CombineError::WrongDatatype { member, got: DataType::Bytes, .. } if member == "s"
        ));
        let column = Tensor::from_values("label", vec![2, 1], &[0i64, 1]);
        let err = hard_vote(&[vote("c", 1.0, &column)]).unwrap_err();
        assert!(matches!(&err, CombineError::WrongShape { member, .. } if member == "c"));
        let cube = Tensor::from_values("p", vec![1, 2, 1], &[0.5f32, 0.5]);
        assert!(matches!(
            hard_vote(&[vote("f", 1.0, &cube)]),
            Err(CombineError::WrongShape { .. })
        ));
        let mut short = labels(&[1, 2]);
        short.shape = vec![3];
        assert!(matches!(
            hard_vote(&[vote("s", 1.0, &short)]),
            Err(CombineError::Malformed { .. })
        ));
        let nan = probs(&[&[f32::NAN, 0.0]]);
        assert!(matches!(
            hard_vote(&[vote("n", 1.0, &nan)]),
            Err(CombineError::NonFinite { .. })
        ));
    }

    #[test]
    fn equal_weight_order_does_not_matter() {
        let mut rng = Lcg(3);
        for _ in 0..100 {
            let rows = 1 + rng.below(6) as usize;
            let count = 1 + rng.below(7) as usize;
            let mut members: Vec<Tensor> = (0..count)
                .map(|_| {
                    let values: Vec<i64> = (0..rows).map(|_| i64::from(rng.below(4))).collect();
                    labels(&values)
                })
                .collect();
            let forward = run(&equal_votes(&members));
            // Equal weights sum to the same value in any order, so the answer must be identical.
            members.rotate_left(1);
            assert_eq!(run(&equal_votes(&members)), forward);
            members.reverse();
            assert_eq!(run(&equal_votes(&members)), forward);
            let min_share = 1.0 / count as f32;
            assert!(forward.1.iter().all(|&a| a >= min_share - 1e-6 && a <= 1.0));
        }
    }
}
