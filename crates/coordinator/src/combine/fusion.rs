//! Fusion: the input of a stacking meta-model, the members' outputs side by side.

use super::CombineError;
use super::check::{Matrix, read_columns, read_probabilities, same_rows};
use chorus_common::{DataType, Tensor};

/// Concatenates each member's FP32 `[N, Cᵢ]` block along axis 1, in member order, into one FP32
/// `[N, Σ Cᵢ]` tensor named `input_name` for the meta-model.
///
/// When the members' blocks are class probabilities (`binary_pairs`: the ensemble combines the
/// `probabilities` role), a binary member's single column (`[N]` or `[N, 1]`, P(class 1)) is the
/// block `[1 − p, p]`, so the meta-model sees two columns per binary member however each was
/// exported, and a one-column member can stand in for a two-column one. Other blocks (a score,
/// a logit) are stacked as they are, one column for `[N]`.
///
/// A member that did not answer (`None`) is imputed with the elementwise mean of the blocks that
/// are present (in f64, summed in member order, then cast to f32). The meta-model was trained on
/// every column, so a column cannot simply be dropped, and the mean of the other members is the
/// least surprising stand-in: it is what they agree on, and where they all agree it equals what
/// the absent member would most likely have said. Averaging needs the present blocks to share one
/// width `C`, which the imputed block then takes. If no block is present there is nothing to
/// impute from: [`CombineError::NoMembers`].
pub fn fusion_input(
    blocks: &[(&str, Option<&Tensor>)],
    input_name: &str,
    binary_pairs: bool,
) -> Result<Tensor, CombineError> {
    let mut present: Vec<(&str, Matrix)> = Vec::with_capacity(blocks.len());
    for &(member, tensor) in blocks {
        if let Some(tensor) = tensor {
            let block = if binary_pairs {
                read_probabilities(member, tensor, &[DataType::Fp32])?
            } else {
                read_columns(member, tensor, &[DataType::Fp32])?
            };
            present.push((member, block));
        }
    }
    let Some((reference, first)) = present.first() else {
        return Err(CombineError::NoMembers);
    };
    for (member, matrix) in &present[1..] {
        same_rows(reference, first.rows, member, matrix.rows)?;
    }

    let imputed = match blocks.iter().find(|(_, tensor)| tensor.is_none()) {
        Some(&(missing, _)) => Some(impute(missing, &present)?),
        None => None,
    };

    // Each block's values and width, in member order.
    let mut present_blocks = present.iter().map(|(_, matrix)| matrix);
    let columns: Vec<&Matrix> = blocks
        .iter()
        .filter_map(|(_, tensor)| match tensor {
            Some(_) => present_blocks.next(),
            None => imputed.as_ref(),
        })
        .collect();
    let width: usize = columns.iter().map(|block| block.cols).sum();
    let mut values = Vec::with_capacity(first.rows * width);
    for row in 0..first.rows {
        for block in &columns {
            values.extend(block.row(row).iter().map(|&v| v as f32));
        }
    }
    Ok(Tensor::from_values(
        input_name,
        vec![first.rows as i64, width as i64],
        &values,
    ))
}

/// The elementwise mean of the present blocks, standing in for the `missing` member's block.
fn impute(missing: &str, present: &[(&str, Matrix)]) -> Result<Matrix, CombineError> {
    let (reference, first) = &present[0];
    let mut sums = vec![0.0f64; first.values.len()];
    for (member, matrix) in present {
        if matrix.cols != first.cols {
            return Err(CombineError::ImputeWidthMismatch {
                missing: missing.to_string(),
                member: member.to_string(),
                columns: matrix.cols,
                reference: reference.to_string(),
                reference_columns: first.cols,
            });
        }
        for (sum, &v) in sums.iter_mut().zip(&matrix.values) {
            *sum += v;
        }
    }
    let count = present.len() as f64;
    Ok(Matrix {
        rows: first.rows,
        cols: first.cols,
        values: sums.iter().map(|sum| sum / count).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::combine::testing::{labels, probs, probs64};

    fn rows_of(tensor: &Tensor) -> Vec<Vec<f32>> {
        let cols = tensor.shape[1] as usize;
        tensor
            .to_values::<f32>()
            .unwrap()
            .chunks_exact(cols)
            .map(<[f32]>::to_vec)
            .collect()
    }

    #[test]
    fn concatenates_in_member_order() {
        let a = probs(&[&[1.0, 2.0], &[3.0, 4.0]]);
        let b = probs(&[&[5.0, 5.5, 5.75, 5.875], &[6.0, 6.5, 6.75, 6.875]]);
        let c = probs(&[&[7.0, 8.0, 9.0], &[10.0, 11.0, 12.0]]);
        let out = fusion_input(
            &[("a", Some(&a)), ("b", Some(&b)), ("c", Some(&c))],
            "x",
            true,
        )
        .unwrap();
        assert_eq!(out.name, "x");
        assert_eq!(out.datatype, DataType::Fp32);
        assert_eq!(out.shape, vec![2, 9]);
        assert_eq!(
            rows_of(&out),
            vec![
                vec![1.0, 2.0, 5.0, 5.5, 5.75, 5.875, 7.0, 8.0, 9.0],
                vec![3.0, 4.0, 6.0, 6.5, 6.75, 6.875, 10.0, 11.0, 12.0]
            ]
        );
        let out = fusion_input(&[("c", Some(&c)), ("a", Some(&a))], "x", true).unwrap();
        assert_eq!(
            rows_of(&out),
            vec![
                vec![7.0, 8.0, 9.0, 1.0, 2.0],
                vec![10.0, 11.0, 12.0, 3.0, 4.0]
            ]
        );
    }

    #[test]
    fn imputes_missing_blocks_with_the_mean_of_present_ones() {
        let a = probs(&[&[0.0, 1.0], &[0.5, 0.5]]);
        let c = probs(&[&[1.0, 0.0], &[0.25, 0.75]]);
        let out =
            fusion_input(&[("a", Some(&a)), ("b", None), ("c", Some(&c))], "x", true).unwrap();
        assert_eq!(out.shape, vec![2, 6]);
        assert_eq!(
            rows_of(&out),
            vec![
                vec![0.0, 1.0, 0.5, 0.5, 1.0, 0.0],
                vec![0.5, 0.5, 0.375, 0.625, 0.25, 0.75]
            ]
        );
        // Two missing, one present: both take the present block.
        let out = fusion_input(&[("a", None), ("b", Some(&c)), ("c", None)], "x", true).unwrap();
        assert_eq!(
            rows_of(&out),
            vec![
                vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0],
                vec![0.25, 0.75, 0.25, 0.75, 0.25, 0.75]
            ]
        );
        // The mean is taken in f64 and rounded once.
        let p = probs(&[&[0.1, 0.5, 0.4]]);
        let q = probs(&[&[0.2, 0.5, 0.3]]);
        let r = probs(&[&[0.7, 0.25, 0.05]]);
        let out = fusion_input(
            &[
                ("p", Some(&p)),
                ("q", Some(&q)),
                ("r", Some(&r)),
                ("s", None),
            ],
            "x",
            true,
        )
        .unwrap();
        let mean =
            |a: f32, b: f32, c: f32| ((f64::from(a) + f64::from(b) + f64::from(c)) / 3.0) as f32;
        assert_eq!(
            rows_of(&out),
            vec![vec![
                0.1,
                0.5,
                0.4,
                0.2,
                0.5,
                0.3,
                0.7,
                0.25,
                0.05,
                mean(0.1, 0.2, 0.7),
                mean(0.5, 0.5, 0.25),
                mean(0.4, 0.3, 0.05)
            ]]
        );
    }

    #[test]
    fn blocks_that_are_not_probabilities_are_stacked_as_they_are() {
        let score = Tensor::from_values("score", vec![2, 1], &[0.25f32, 0.875]);
        let flat = Tensor::from_values("score", vec![2], &[3.0f32, -1.0]);
        let out = fusion_input(&[("s", Some(&score)), ("f", Some(&flat))], "x", false).unwrap();
        assert_eq!(out.shape, vec![2, 2]);
        assert_eq!(rows_of(&out), vec![vec![0.25, 3.0], vec![0.875, -1.0]]);
    }

    #[test]
    fn one_column_members_give_two_columns() {
        let sigmoid = Tensor::from_values("p", vec![2, 1], &[0.25f32, 0.875]);
        let two = probs(&[&[0.5, 0.5], &[1.0, 0.0]]);
        let out = fusion_input(&[("s", Some(&sigmoid)), ("t", Some(&two))], "x", true).unwrap();
        assert_eq!(out.shape, vec![2, 4]);
        assert_eq!(
            rows_of(&out),
            vec![vec![0.75, 0.25, 0.5, 0.5], vec![0.125, 0.875, 1.0, 0.0]]
        );
        // A missing two-column member is imputed from the expanded one.
        let out = fusion_input(&[("s", Some(&sigmoid)), ("t", None)], "x", true).unwrap();
        assert_eq!(
            rows_of(&out),
            vec![
                vec![0.75, 0.25, 0.75, 0.25],
                vec![0.125, 0.875, 0.125, 0.875]
            ]
        );
    }

    #[test]
    fn imputation_needs_equal_widths() {
        let a = probs(&[&[1.0, 2.0]]);
        let b = probs(&[&[3.0, 4.0, 5.0]]);
        let err =
            fusion_input(&[("a", Some(&a)), ("b", Some(&b)), ("c", None)], "x", true).unwrap_err();
        assert_eq!(
            err,
            CombineError::ImputeWidthMismatch {
                missing: "c".into(),
                member: "b".into(),
                columns: 3,
                reference: "a".into(),
                reference_columns: 2
            }
        );
        assert!(
            err.to_string().contains("member 'c' did not answer"),
            "{err}"
        );
    }

    #[test]
    fn rejects_no_blocks_mismatched_batch_and_wrong_types() {
        assert_eq!(fusion_input(&[], "x", true), Err(CombineError::NoMembers));
        assert_eq!(
            fusion_input(&[("a", None), ("b", None)], "x", true),
            Err(CombineError::NoMembers)
        );
        let two = probs(&[&[1.0], &[2.0]]);
        let one = probs(&[&[1.0]]);
        let err = fusion_input(
            &[("a", Some(&two)), ("b", None), ("c", Some(&one))],
            "x",
            true,
        )
        .unwrap_err();
        assert_eq!(
            err,
            CombineError::BatchMismatch {
                member: "c".into(),
                rows: 1,
                reference: "a".into(),
                reference_rows: 2
            }
        );
        let f64s = probs64(&[&[1.0]]);
        let err = fusion_input(&[("a", Some(&one)), ("d", Some(&f64s))], "x", true).unwrap_err();
        assert!(matches!(
            &err,
            CombineError::WrongDatatype { member, got: DataType::Fp64, .. } if member == "d"
        ));
        let ints = labels(&[1]);
        assert!(matches!(
            fusion_input(&[("i", Some(&ints))], "x", true),
            Err(CombineError::WrongDatatype { .. })
        ));
        let cube = Tensor::from_values("p", vec![1, 2, 1], &[1.0f32, 2.0]);
        assert!(matches!(
            fusion_input(&[("f", Some(&cube))], "x", true),
            Err(CombineError::WrongShape { .. })
        ));
        let nan = probs(&[&[f32::NAN]]);
        assert!(matches!(
            fusion_input(&[("n", Some(&nan)), ("m", None)], "x", true),
            Err(CombineError::NonFinite { .. })
        ));
    }
}
