//! Averaging: the weighted elementwise mean of same-shaped float outputs (regression, embeddings).

use super::check::{Stack, total_weight};
use super::{CombineError, Vote};
use chorus_common::Tensor;

/// Weighted elementwise mean `Σ wᵢ·xᵢ / Σ wᵢ` of FP32 or FP64 tensors that all share one datatype
/// and one shape, computed in f64 summing in member order, returned in that datatype and shape as
/// `output_name`. Dividing by the weights present renormalises them over the members that answered.
pub fn average(votes: &[Vote], output_name: &str) -> Result<Tensor, CombineError> {
    let total = total_weight(votes)?;
    let stack = Stack::read(votes)?;
    let mut sums = vec![0.0f64; stack.len()];
    for (vote, values) in votes.iter().zip(&stack.members) {
        for (sum, &x) in sums.iter_mut().zip(values) {
            *sum += vote.weight * x;
        }
    }
    let mean: Vec<f64> = sums.iter().map(|sum| sum / total).collect();
    Ok(stack.output(output_name, &mean))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::combine::testing::{Lcg, labels, probs, vote};
    use chorus_common::DataType;

    #[test]
    fn weighted_mean_keeps_datatype_and_shape() {
        let a = Tensor::from_values("y", vec![2, 1, 2], &[1.0f32, 2.0, 3.0, 4.0]);
        let b = Tensor::from_values("y", vec![2, 1, 2], &[3.0f32, 6.0, -1.0, 0.0]);
        let out = average(&[vote("a", 1.0, &a), vote("b", 3.0, &b)], "value").unwrap();
        assert_eq!(out.name, "value");
        assert_eq!(out.datatype, DataType::Fp32);
        assert_eq!(out.shape, vec![2, 1, 2]);
        assert_eq!(out.to_values::<f32>().unwrap(), vec![2.5, 5.0, 0.0, 1.0]);

        let a = Tensor::from_values("y", vec![], &[0.1f64]);
        let b = Tensor::from_values("y", vec![], &[0.2f64]);
        let out = average(&[vote("a", 1.0, &a), vote("b", 1.0, &b)], "value").unwrap();
        assert_eq!(out.datatype, DataType::Fp64);
        assert_eq!(out.shape, Vec::<i64>::new());
        assert_eq!(out.to_values::<f64>().unwrap(), vec![(0.1 + 0.2) / 2.0]);
    }

    #[test]
    fn renormalises_over_members_present() {
        let a = Tensor::from_values("y", vec![1], &[6.0f64]);
        let b = Tensor::from_values("y", vec![1], &[0.0f64]);
        let c = Tensor::from_values("y", vec![1], &[2.0f64]);
        let all = average(
            &[vote("a", 1.0, &a), vote("b", 2.0, &b), vote("c", 3.0, &c)],
            "y",
        );
        assert_eq!(all.unwrap().to_values::<f64>().unwrap(), vec![2.0]);
        // b missing: (1·6 + 3·2) / 4 = 3.
        let two = average(&[vote("a", 1.0, &a), vote("c", 3.0, &c)], "y").unwrap();
        assert_eq!(two.to_values::<f64>().unwrap(), vec![3.0]);
    }

    #[test]
    fn rejects_mixed_datatypes_shapes_and_bad_input() {
        let f32s = Tensor::from_values("y", vec![2], &[1.0f32, 2.0]);
        let f64s = Tensor::from_values("y", vec![2], &[1.0f64, 2.0]);
        let err = average(&[vote("a", 1.0, &f32s), vote("b", 1.0, &f64s)], "y").unwrap_err();
        assert!(matches!(
            &err,
            CombineError::WrongDatatype { member, got: DataType::Fp64, .. } if member == "b"
        ));
        assert!(
            err.to_string()
                .contains("FP32, the datatype member 'a' returned"),
            "{err}"
        );

        let ints = labels(&[1, 2]);
        assert!(matches!(
            average(&[vote("a", 1.0, &ints)], "y"),
            Err(CombineError::WrongDatatype { .. })
        ));

        let other = Tensor::from_values("y", vec![1, 2], &[1.0f32, 2.0]);
        let err = average(&[vote("a", 1.0, &f32s), vote("b", 1.0, &other)], "y").unwrap_err();
        assert!(matches!(&err, CombineError::WrongShape { member, .. } if member == "b"));
        assert!(
            err.to_string()
                .contains("[2], the shape member 'a' returned"),
            "{err}"
        );

        assert_eq!(average(&[], "y"), Err(CombineError::NoMembers));
        assert!(matches!(
            average(&[vote("a", 0.0, &f32s)], "y"),
            Err(CombineError::BadWeight { .. })
        ));
        let inf = Tensor::from_values("y", vec![1], &[f64::INFINITY]);
        assert!(matches!(
            average(&[vote("a", 1.0, &inf)], "y"),
            Err(CombineError::NonFinite { .. })
        ));
    }

    #[test]
    fn identical_members_give_that_member() {
        let mut rng = Lcg(5);
        for _ in 0..30 {
            let (rows, cols) = (1 + rng.below(4) as usize, 1 + rng.below(4) as usize);
            let member = rng.matrix(rows, cols);
            let weights = [0.3, 1.7, 2.0];
            let votes: Vec<Vote> = weights.iter().map(|&w| vote("m", w, &member)).collect();
            let out = average(&votes, "probabilities").unwrap();
            assert_eq!(out, member);
        }
        let p = probs(&[&[0.5, 0.5]]);
        assert_eq!(average(&[vote("m", 9.0, &p)], "probabilities").unwrap(), p);
    }
}
