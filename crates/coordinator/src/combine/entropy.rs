//! Entropy of an ensemble's combined class probabilities: how sure the answer is. A rise for the
//! same traffic means the members have started to pull apart or the inputs have moved away from
//! what they were trained on.

use super::PROBABILITIES;
use super::check::{FLOATS, float_values};
use chorus_common::Tensor;

/// The mean over rows of `-Σ p·log2 p` of the `probabilities` `[N, C]` output, in bits
/// (0: certain; log2 C: uniform). `None` when the answer has no such output or it is malformed.
/// Probabilities are used as given, never renormalised: a combiner's mean is already a
/// distribution.
pub fn mean_entropy_bits(outputs: &[Tensor]) -> Option<f64> {
    let probabilities = outputs.iter().find(|t| t.name == PROBABILITIES)?;
    let [rows, cols] = probabilities.shape[..] else {
        return None;
    };
    let (rows, cols) = (usize::try_from(rows).ok()?, usize::try_from(cols).ok()?);
    if rows == 0 || cols == 0 {
        return None;
    }
    let values = float_values("", probabilities, FLOATS).ok()?;
    if values.len() != rows * cols {
        return None;
    }
    let total: f64 = values
        .chunks_exact(cols)
        .map(|row| {
            row.iter()
                .filter(|&&p| p > 0.0)
                .map(|&p| -p * p.log2())
                .sum::<f64>()
        })
        .sum();
    Some(total / rows as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probabilities(rows: &[&[f32]]) -> Tensor {
        let values: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_values(
            PROBABILITIES,
            vec![rows.len() as i64, rows[0].len() as i64],
            &values,
        )
    }

    #[test]
    fn certain_is_zero_and_uniform_is_log2_of_the_classes() {
        let certain = probabilities(&[&[0.0, 1.0, 0.0, 0.0]]);
        assert_eq!(mean_entropy_bits(&[certain]), Some(0.0));
        let uniform = probabilities(&[&[0.25, 0.25, 0.25, 0.25]]);
        assert_eq!(mean_entropy_bits(&[uniform]), Some(2.0));
    }

    #[test]
    fn rows_are_averaged() {
        let two = probabilities(&[&[1.0, 0.0], &[0.5, 0.5]]);
        assert_eq!(mean_entropy_bits(&[two]), Some(0.5));
    }

    #[test]
    fn no_probabilities_no_entropy() {
        let label = Tensor::from_values("label", vec![1], &[3i64]);
        assert_eq!(mean_entropy_bits(&[label]), None);
        let flat = Tensor::from_values(PROBABILITIES, vec![2], &[0.5f32, 0.5]);
        assert_eq!(mean_entropy_bits(&[flat]), None);
    }
}
