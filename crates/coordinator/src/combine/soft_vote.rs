//! Soft voting: the weighted mean of the members' class probabilities, and its argmax per row.

use super::check::{FLOATS, Matrix, decide, read_probabilities, same_rows, total_weight};
use super::{CombineError, LABEL, PROBABILITIES, Vote};
use chorus_common::Tensor;

/// [`soft_vote_at`] without a threshold: the label is the argmax.
pub fn soft_vote(votes: &[Vote]) -> Result<Vec<Tensor>, CombineError> {
    soft_vote_at(votes, None)
}

/// Combines FP32 (or FP64) `[N, C]` probabilities from every member into
/// `[label INT64 [N], probabilities FP32 [N, C]]`.
///
/// A binary member's single column (`[N]` or `[N, 1]`, P(class 1)) counts as `[1 − p, p]`, so
/// one- and two-column members of a binary ensemble mix.
///
/// `probabilities = Σ wᵢ·pᵢ / Σ wᵢ`, in f64, summed in member order, then cast to f32; dividing by
/// the weights present renormalises them over the members that answered. `label` is the argmax of
/// the f64 mean per row, exact ties going to the lowest class index (as `numpy.argmax` does); with
/// a `threshold` (binary members only), it is 1 where the mean P(class 1) is above it.
pub fn soft_vote_at(votes: &[Vote], threshold: Option<f64>) -> Result<Vec<Tensor>, CombineError> {
    let total = total_weight(votes)?;
    let matrices = votes
        .iter()
        .map(|vote| read_probabilities(vote.member, vote.tensor, FLOATS))
        .collect::<Result<Vec<Matrix>, _>>()?;
    let (first_vote, first) = (&votes[0], &matrices[0]);
    for (vote, matrix) in votes.iter().zip(&matrices).skip(1) {
        same_rows(first_vote.member, first.rows, vote.member, matrix.rows)?;
        if matrix.cols != first.cols {
            return Err(CombineError::ClassMismatch {
                member: vote.member.to_string(),
                classes: matrix.cols,
                reference: first_vote.member.to_string(),
                reference_classes: first.cols,
            });
        }
    }

    let mut sums = vec![0.0f64; first.values.len()];
    for (vote, matrix) in votes.iter().zip(&matrices) {
        for (sum, &p) in sums.iter_mut().zip(&matrix.values) {
            *sum += vote.weight * p;
        }
    }
    let mean: Vec<f64> = sums.iter().map(|sum| sum / total).collect();

    let labels: Vec<i64> = mean
        .chunks_exact(first.cols)
        .map(|row| decide(first_vote.member, row, threshold).map(|class| class as i64))
        .collect::<Result<_, _>>()?;
    let probabilities: Vec<f32> = mean.iter().map(|&p| p as f32).collect();
    let (rows, cols) = (first.rows as i64, first.cols as i64);
    Ok(vec![
        Tensor::from_values(LABEL, vec![rows], &labels),
        Tensor::from_values(PROBABILITIES, vec![rows, cols], &probabilities),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::combine::check::argmax;
    use crate::combine::testing::{Lcg, equal_votes, labels, probs, probs64, vote};
    use chorus_common::DataType;

    fn run(votes: &[Vote]) -> (Vec<i64>, Vec<f32>) {
        let out = soft_vote(votes).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].name, "label");
        assert_eq!(out[0].datatype, DataType::Int64);
        assert_eq!(out[1].name, "probabilities");
        assert_eq!(out[1].datatype, DataType::Fp32);
        assert_eq!(out[0].shape[0], out[1].shape[0]);
        (
            out[0].to_values::<i64>().unwrap(),
            out[1].to_values::<f32>().unwrap(),
        )
    }

    #[test]
    fn plain_mean_and_argmax() {
        let a = probs(&[&[0.5, 0.25, 0.25], &[0.0, 0.0, 1.0]]);
        let b = probs(&[&[0.25, 0.75, 0.0], &[0.5, 0.0, 0.5]]);
        let out = soft_vote(&[vote("a", 1.0, &a), vote("b", 1.0, &b)]).unwrap();
        assert_eq!(out[0].shape, vec![2]);
        assert_eq!(out[1].shape, vec![2, 3]);
        let (won, p) = run(&[vote("a", 1.0, &a), vote("b", 1.0, &b)]);
        assert_eq!(won, vec![1, 2]);
        assert_eq!(p, vec![0.375, 0.5, 0.125, 0.25, 0.0, 0.75]);
    }

    #[test]
    fn weight_overrides_headcount() {
        let yes = probs(&[&[0.0, 1.0]]);
        let no = probs(&[&[1.0, 0.0]]);
        // Two members say class 0 with weight 1 each; one says class 1 with weight 3.
        let (won, p) = run(&[
            vote("a", 1.0, &no),
            vote("b", 1.0, &no),
            vote("c", 3.0, &yes),
        ]);
        assert_eq!(won, vec![1]);
        assert_eq!(p, vec![0.4, 0.6]);
        // Equal weights: the headcount wins.
        let (won, _) = run(&[
            vote("a", 1.0, &no),
            vote("b", 1.0, &no),
            vote("c", 1.0, &yes),
        ]);
        assert_eq!(won, vec![0]);
    }

    #[test]
    fn exact_tie_goes_to_lowest_class() {
        let a = probs(&[&[0.0, 0.5, 0.5], &[0.25, 0.25, 0.5]]);
        let b = probs(&[&[0.0, 0.5, 0.5], &[0.5, 0.5, 0.0]]);
        let (won, p) = run(&[vote("a", 1.0, &a), vote("b", 1.0, &b)]);
        assert_eq!(won, vec![1, 0]);
        assert_eq!(p, vec![0.0, 0.5, 0.5, 0.375, 0.375, 0.25]);
        // A tie created by the weights, not by identical rows.
        let x = probs(&[&[0.0, 1.0]]);
        let y = probs(&[&[1.0, 0.0]]);
        let (won, p) = run(&[vote("x", 2.0, &x), vote("y", 2.0, &y)]);
        assert_eq!((won, p), (vec![0], vec![0.5, 0.5]));
    }

    #[test]
    fn renormalises_over_members_present() {
        let a = probs(&[&[1.0, 0.0]]);
        let b = probs(&[&[0.5, 0.5]]);
        let c = probs(&[&[0.0, 1.0]]);
        let (won, p) = run(&[vote("a", 1.0, &a), vote("b", 2.0, &b), vote("c", 3.0, &c)]);
        assert_eq!(won, vec![1]);
        // (1·1 + 2·0.5 + 3·0) / 6 = 1/3, (0 + 1 + 3) / 6 = 2/3.
        assert_eq!(p, vec![(2.0f64 / 6.0) as f32, (4.0f64 / 6.0) as f32]);
        // b did not answer: weights 1 and 3 renormalise to 1/4 and 3/4.
        let (won, p) = run(&[vote("a", 1.0, &a), vote("c", 3.0, &c)]);
        assert_eq!((won, p), (vec![1], vec![0.25, 0.75]));
        // Only a answered: its probabilities are the answer whatever its weight.
        let (won, p) = run(&[vote("a", 1.0, &a)]);
        assert_eq!((won, p), (vec![0], vec![1.0, 0.0]));
    }

    #[test]
    fn sums_in_member_order_in_f64() {
        let a = probs(&[&[0.1, 0.9]]);
        let b = probs(&[&[0.7, 0.3]]);
        let c = probs(&[&[0.3, 0.7]]);
        let (w_a, w_b, w_c) = (0.2, 0.3, 0.5);
        let (_, p) = run(&[vote("a", w_a, &a), vote("b", w_b, &b), vote("c", w_c, &c)]);
        let expect = |pa: f32, pb: f32, pc: f32| {
            ((w_a * f64::from(pa) + w_b * f64::from(pb) + w_c * f64::from(pc)) / (w_a + w_b + w_c))
                as f32
        };
        assert_eq!(p, vec![expect(0.1, 0.7, 0.3), expect(0.9, 0.3, 0.7)]);
    }

    #[test]
    fn accepts_fp64_and_mixed_precision() {
        let a = probs64(&[&[0.25, 0.75]]);
        let b = probs(&[&[0.75, 0.25]]);
        let (won, p) = run(&[vote("a", 3.0, &a), vote("b", 1.0, &b)]);
        assert_eq!((won, p), (vec![1], vec![0.375, 0.625]));
    }

    #[test]
    fn rejects_empty_and_bad_weights() {
        assert_eq!(soft_vote(&[]), Err(CombineError::NoMembers));
        let a = probs(&[&[1.0, 0.0]]);
        for weight in [0.0, -1.0, f64::NAN, f64::INFINITY, -0.0] {
            let err = soft_vote(&[vote("a", 1.0, &a), vote("b", weight, &a)]).unwrap_err();
            assert!(
                matches!(&err, CombineError::BadWeight { member, .. } if member == "b"),
                "{weight}: {err}"
            );
            assert!(err.to_string().contains("'b'"));
        }
        let err = soft_vote(&[vote("a", f64::MAX, &a), vote("b", f64::MAX, &a)]).unwrap_err();
        assert_eq!(err, CombineError::WeightsOverflow);
    }

    #[test]
    fn rejects_mismatched_batch_and_classes() {
        let two_rows = probs(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let one_row = probs(&[&[1.0, 0.0]]);
        let three_classes = probs(&[&[1.0, 0.0, 0.0]]);
        let err = soft_vote(&[vote("a", 1.0, &two_rows), vote("b", 1.0, &one_row)]).unwrap_err();
        assert_eq!(
            err,
            CombineError::BatchMismatch {
                member: "b".into(),
                rows: 1,
                reference: "a".into(),
                reference_rows: 2
            }
        );
        let err =
            soft_vote(&[vote("a", 1.0, &one_row), vote("b", 1.0, &three_classes)]).unwrap_err();
        assert_eq!(
            err,
            CombineError::ClassMismatch {
                member: "b".into(),
                classes: 3,
                reference: "a".into(),
                reference_classes: 2
            }
        );
        assert!(err.to_string().contains("member 'b' returned 3 classes"));
    }

    #[test]
    fn rejects_wrong_datatype_rank_and_bytes() {
        let a = probs(&[&[1.0, 0.0]]);
        let ints = labels(&[0]);
        let err = soft_vote(&[vote("a", 1.0, &a), vote("b", 1.0, &ints)]).unwrap_err();
        assert!(matches!(
            &err,
            CombineError::WrongDatatype { member, got: DataType::Int64, .. } if member == "b"
        ));
        assert!(err.to_string().contains("FP32 or FP64"), "{err}");

        let cube = Tensor::from_values("p", vec![1, 2, 1], &[1.0f32, 0.0]);
        let err = soft_vote(&[vote("a", 1.0, &cube)]).unwrap_err();
        assert!(matches!(&err, CombineError::WrongShape { member, got, .. }
            if member == "a" && got == &vec![1, 2, 1]));

        let mut short = a.clone();
        short.shape = vec![2, 2];
        let err = soft_vote(&[vote("a", 1.0, &short)]).unwrap_err();
        assert!(matches!(err, CombineError::Malformed { .. }), "{err}");

        let mut zero = a.clone();
        zero.shape = vec![0, 2];
        zero.data = bytes::Bytes::new();
        assert!(matches!(
            soft_vote(&[vote("a", 1.0, &zero)]),
            Err(CombineError::Malformed { .. })
        ));
    }

    #[test]
    fn one_column_members_are_p_of_class_one() {
        // A sigmoid member ([N, 1]) and a flat one ([N]) read as [1 - p, p].
        let column = Tensor::from_values("p", vec![3, 1], &[0.25f32, 0.75, 0.5]);
        let flat = Tensor::from_values("p", vec![3], &[0.25f32, 0.75, 0.5]);
        for member in [&column, &flat] {
            let (won, p) = run(&[vote("s", 1.0, member)]);
            // Exactly 0.5 is a tie: class 0, as argmax and `p > 0.5` both say.
            assert_eq!(won, vec![0, 1, 0]);
            assert_eq!(p, vec![0.75, 0.25, 0.25, 0.75, 0.5, 0.5]);
        }
        // Mixed with a two-column member: the mean is taken class by class.
        let two = probs(&[&[0.5, 0.5], &[0.875, 0.125], &[0.0, 1.0]]);
        let (won, p) = run(&[vote("s", 1.0, &column), vote("t", 1.0, &two)]);
        assert_eq!(won, vec![0, 0, 1]);
        assert_eq!(p, vec![0.625, 0.375, 0.5625, 0.4375, 0.25, 0.75]);
    }

    #[test]
    fn a_threshold_decides_binary_labels() {
        let column = Tensor::from_values("p", vec![4, 1], &[0.25f32, 0.6, 0.75, 0.9]);
        let two = probs(&[&[0.75, 0.25], &[0.4, 0.6], &[0.25, 0.75], &[0.1, 0.9]]);
        for member in [&column, &two] {
            let at = |t| {
                soft_vote_at(&[vote("s", 1.0, member)], t).unwrap()[0]
                    .to_values::<i64>()
                    .unwrap()
            };
            assert_eq!(at(None), vec![0, 1, 1, 1]);
            assert_eq!(at(Some(0.5)), vec![0, 1, 1, 1]);
            assert_eq!(at(Some(0.8)), vec![0, 0, 0, 1]);
            // Strictly above: a row exactly at the threshold stays class 0.
            assert_eq!(at(Some(0.75)), vec![0, 0, 0, 1]);
            assert_eq!(at(Some(0.2)), vec![1, 1, 1, 1]);
        }
        let three = probs(&[&[0.2, 0.3, 0.5]]);
        let err = soft_vote_at(&[vote("wide", 1.0, &three)], Some(0.5)).unwrap_err();
        assert!(
            matches!(&err, CombineError::ThresholdNotBinary { member, classes: 3, .. } if member == "wide"),
            "{err}"
        );
    }

    #[test]
    fn rejects_nan_probabilities() {
        let a = probs(&[&[0.5, f32::NAN]]);
        let err = soft_vote(&[vote("a", 1.0, &a)]).unwrap_err();
        assert!(
            matches!(err, CombineError::NonFinite { index: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn identical_members_give_that_member() {
        let mut rng = Lcg(7);
        for _ in 0..50 {
            let rows = 1 + rng.below(5) as usize;
            // From 2: one column is a binary member's P(class 1), expanded (tested above).
            let cols = 2 + rng.below(5) as usize;
            let member = rng.matrix(rows, cols);
            let copies = 1 + rng.below(5) as usize;
            let weights: Vec<f64> = (0..copies)
                .map(|_| 0.1 + f64::from(rng.next_f32()))
                .collect();
            let votes: Vec<Vote> = weights.iter().map(|&w| vote("m", w, &member)).collect();
            let (won, p) = run(&votes);
            let values = member.to_values::<f32>().unwrap();
            assert_eq!(p, values);
            let expected: Vec<i64> = values
                .chunks_exact(cols)
                .map(|row| {
                    let row: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
                    argmax(&row) as i64
                })
                .collect();
            assert_eq!(won, expected);
        }
    }

    #[test]
    fn equal_weight_order_does_not_change_labels() {
        let mut rng = Lcg(11);
        for _ in 0..50 {
            let (rows, cols) = (1 + rng.below(4) as usize, 2 + rng.below(4) as usize);
            let count = 2 + rng.below(4) as usize;
            let mut members: Vec<Tensor> = (0..count).map(|_| rng.matrix(rows, cols)).collect();
            let (won, p) = run(&equal_votes(&members));
            members.reverse();
            let (won_rev, p_rev) = run(&equal_votes(&members));
            assert_eq!(won, won_rev);
            for (x, y) in p.iter().zip(&p_rev) {
                assert!((x - y).abs() <= 1e-6, "{x} vs {y}");
            }
        }
    }
}
