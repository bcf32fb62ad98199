//! Median: the unweighted elementwise median of same-shaped float outputs, robust to one outlier.

use super::check::{Stack, total_weight};
use super::{CombineError, Vote};
use chorus_common::Tensor;

/// Elementwise median of FP32 or FP64 tensors that all share one datatype and one shape, returned
/// in that datatype and shape as `output_name`. For an even member count it is the mean of the two
/// middle values, as with `numpy.median`.
///
/// Weights are ignored: a weighted median is a different statistic (it never averages the middle
/// pair), and the point of choosing the median is robustness to a wild member rather than trust in
/// one. Weights are still checked so that a bad ensemble spec fails the same way for every
/// combiner. Non-finite inputs are refused, since NaN has no place in an ordering.
pub fn median(votes: &[Vote], output_name: &str) -> Result<Tensor, CombineError> {
    total_weight(votes)?;
    let stack = Stack::read(votes)?;
    let count = stack.members.len();
    let mut column = Vec::with_capacity(count);
    let medians: Vec<f64> = (0..stack.len())
        .map(|element| {
            column.clear();
            column.extend(stack.members.iter().map(|values| values[element]));
            // total_cmp is a total order; the values are finite, so it agrees with `<`.
            column.sort_by(f64::total_cmp);
            if count % 2 == 1 {
                column[count / 2]
            } else {
                (column[count / 2 - 1] + column[count / 2]) / 2.0
            }
        })
        .collect();
    Ok(stack.output(output_name, &medians))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::combine::average;
    use crate::combine::testing::{Lcg, equal_votes, vote};
    use chorus_common::DataType;

    fn values(xs: &[f64]) -> Vec<Tensor> {
        xs.iter()
            .map(|&x| Tensor::from_values("y", vec![1], &[x]))
            .collect()
    }

    fn median_of(xs: &[f64]) -> f64 {
        let members = values(xs);
        let out = median(&equal_votes(&members), "y").unwrap();
        out.to_values::<f64>().unwrap()[0]
    }

    #[test]
    fn odd_and_even_counts() {
        assert_eq!(median_of(&[3.0]), 3.0);
        assert_eq!(median_of(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median_of(&[4.0, 1.0]), 2.5);
        assert_eq!(median_of(&[10.0, -2.0, 1.0, 4.0]), 2.5);
        assert_eq!(median_of(&[1.0, 1.0, 1.0, 100.0]), 1.0);
    }

    #[test]
    fn median_vs_average_with_an_outlier() {
        let members = values(&[1.0, 2.0, 3.0, 1000.0]);
        let votes = equal_votes(&members);
        let mean = average(&votes, "y").unwrap().to_values::<f64>().unwrap()[0];
        let mid = median(&votes, "y").unwrap().to_values::<f64>().unwrap()[0];
        assert_eq!((mean, mid), (251.5, 2.5));
        let odd = &votes[..3];
        let mean = average(odd, "y").unwrap().to_values::<f64>().unwrap()[0];
        let mid = median(odd, "y").unwrap().to_values::<f64>().unwrap()[0];
        assert_eq!((mean, mid), (2.0, 2.0));
    }

    #[test]
    fn elementwise_and_ignores_weights() {
        let a = Tensor::from_values("y", vec![2, 2], &[1.0f32, 8.0, 0.5, -1.0]);
        let b = Tensor::from_values("y", vec![2, 2], &[2.0f32, 6.0, 0.25, -3.0]);
        let c = Tensor::from_values("y", vec![2, 2], &[3.0f32, 7.0, 0.75, -2.0]);
        let out = median(
            &[vote("a", 100.0, &a), vote("b", 1.0, &b), vote("c", 1.0, &c)],
            "out",
        )
        .unwrap();
        assert_eq!(out.name, "out");
        assert_eq!(out.datatype, DataType::Fp32);
        assert_eq!(out.shape, vec![2, 2]);
        assert_eq!(out.to_values::<f32>().unwrap(), vec![2.0, 7.0, 0.5, -2.0]);
        // Even count in FP32: the mean of the middle pair, rounded once to f32.
        let out = median(&[vote("a", 1.0, &a), vote("b", 1.0, &b)], "out").unwrap();
        assert_eq!(out.to_values::<f32>().unwrap(), vec![1.5, 7.0, 0.375, -2.0]);
    }

    #[test]
    fn rejects_nan_bad_weights_and_empty() {
        let members = values(&[1.0, f64::NAN, 2.0]);
        let err = median(&equal_votes(&members), "y").unwrap_err();
        assert!(
            matches!(&err, CombineError::NonFinite { member, index: 0, .. } if member == "m1"),
            "{err}"
        );
        assert!(err.to_string().contains("member 'm1'"));
        let members = values(&[1.0]);
        assert!(matches!(
            median(&[vote("a", -1.0, &members[0])], "y"),
            Err(CombineError::BadWeight { .. })
        ));
        assert_eq!(median(&[], "y"), Err(CombineError::NoMembers));
        let other = Tensor::from_values("y", vec![2], &[1.0f64, 2.0]);
        assert!(matches!(
            median(&[vote("a", 1.0, &members[0]), vote("b", 1.0, &other)], "y"),
            Err(CombineError::WrongShape { .. })
        ));
    }

    #[test]
    fn lies_between_min_and_max_and_ignores_order() {
        let mut rng = Lcg(13);
        for _ in 0..50 {
            let count = 1 + rng.below(6) as usize;
            let mut members: Vec<Tensor> = (0..count).map(|_| rng.matrix(2, 3)).collect();
            let out = median(&equal_votes(&members), "y").unwrap();
            let mid = out.to_values::<f32>().unwrap();
            for (element, &m) in mid.iter().enumerate() {
                let column: Vec<f32> = members
                    .iter()
                    .map(|t| t.to_values::<f32>().unwrap()[element])
                    .collect();
                let lo = column.iter().copied().fold(f32::INFINITY, f32::min);
                let hi = column.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                assert!(lo <= m && m <= hi, "{m} outside [{lo}, {hi}]");
            }
            members.reverse();
            assert_eq!(median(&equal_votes(&members), "y").unwrap(), out);
        }
    }
}
