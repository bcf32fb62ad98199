//! Checks the combiners share: weights, datatypes, ranks, batch sizes and finite values.

use super::{CombineError, Vote};
use chorus_common::{DataType, Tensor};

/// FP32 or FP64, the datatypes soft voting, averaging and the median read.
pub(super) const FLOATS: &[DataType] = &[DataType::Fp32, DataType::Fp64];

/// Sum of the weights of the members that answered, summed in member order, after checking that
/// there is at least one and that each is finite and positive. Combiners divide by this sum, which
/// is what renormalises the weights over the members present.
pub(super) fn total_weight(votes: &[Vote]) -> Result<f64, CombineError> {
    if votes.is_empty() {
        return Err(CombineError::NoMembers);
    }
    let mut total = 0.0;
    for vote in votes {
        // Written so that NaN fails too: `NaN > 0.0` is false.
        if !(vote.weight.is_finite() && vote.weight > 0.0) {
            return Err(CombineError::BadWeight {
                member: vote.member.to_string(),
                weight: vote.weight,
            });
        }
        total += vote.weight;
    }
    if !total.is_finite() {
        return Err(CombineError::WeightsOverflow);
    }
    Ok(total)
}

/// The values of a tensor whose datatype is one of `accepted` (a subset of FP32 and FP64) as
/// f64, with the byte count checked against the shape and NaN and infinities refused: one
/// member's NaN would otherwise turn the ensemble's answer into garbage without a word.
pub(super) fn float_values(
    member: &str,
    tensor: &Tensor,
    accepted: &[DataType],
) -> Result<Vec<f64>, CombineError> {
    if !accepted.contains(&tensor.datatype) {
        return Err(wrong_datatype(member, tensor, accepted));
    }
    let values = match tensor.datatype {
        DataType::Fp32 => tensor
            .to_values::<f32>()
            .map(|values| values.into_iter().map(f64::from).collect()),
        DataType::Fp64 => tensor.to_values::<f64>(),
        _ => return Err(wrong_datatype(member, tensor, accepted)),
    }
    .map_err(|source| malformed(member, source))?;
    if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(CombineError::NonFinite {
            member: member.to_string(),
            tensor: tensor.name.clone(),
            index,
            value,
        });
    }
    Ok(values)
}

/// A rank-2 `[N, C]` float tensor, row-major.
pub(super) struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<f64>,
}

impl Matrix {
    pub fn row(&self, row: usize) -> &[f64] {
        &self.values[row * self.cols..(row + 1) * self.cols]
    }
}

/// Reads a member's class probabilities as `[N, C]`: an `[N, C]` tensor as it is, and a binary
/// classifier's single column (`[N]` or `[N, 1]`, P(class 1), as a sigmoid output gives) as
/// `[N, 2]` rows `[1 − p, p]`, computed in f64. Values are not checked to lie in [0, 1]: a
/// member's scores are its own business, as they were before binary members existed.
pub(super) fn read_probabilities(
    member: &str,
    tensor: &Tensor,
    accepted: &[DataType],
) -> Result<Matrix, CombineError> {
    match tensor.shape[..] {
        [_] | [_, 1] => {
            let values = float_values(member, tensor, accepted)?;
            Ok(Matrix {
                rows: values.len(),
                cols: 2,
                values: values.iter().flat_map(|&p| [1.0 - p, p]).collect(),
            })
        }
        [_, _] => read_columns(member, tensor, accepted),
        _ => Err(wrong_shape(
            member,
            tensor,
            "shape [N, C], or [N] or [N, 1] for P(class 1) of a binary classifier".to_string(),
        )),
    }
}

/// Reads a member's block as it is: `[N, C]` as `C` columns, `[N]` as one.
pub(super) fn read_columns(
    member: &str,
    tensor: &Tensor,
    accepted: &[DataType],
) -> Result<Matrix, CombineError> {
    // Values first: decoding checks that every dimension is positive, so the casts below are
    // safe.
    let values = float_values(member, tensor, accepted)?;
    match tensor.shape[..] {
        [_] => Ok(Matrix {
            rows: values.len(),
            cols: 1,
            values,
        }),
        [rows, cols] => Ok(Matrix {
            rows: rows as usize,
            cols: cols as usize,
            values,
        }),
        _ => Err(wrong_shape(
            member,
            tensor,
            "shape [N, C] or [N]".to_string(),
        )),
    }
}

/// The class a row of probabilities stands for: with a `threshold`, a binary row is class 1
/// when P(class 1) is above it (strictly, as scikit-learn's `predict` and `p > t` in Keras
/// code compare); otherwise the argmax. A threshold on a row that is not binary is refused.
pub(super) fn decide(
    member: &str,
    row: &[f64],
    threshold: Option<f64>,
) -> Result<usize, CombineError> {
    match threshold {
        None => Ok(argmax(row)),
        Some(t) if row.len() == 2 => Ok(usize::from(row[1] > t)),
        Some(threshold) => Err(CombineError::ThresholdNotBinary {
            member: member.to_string(),
            classes: row.len(),
            threshold,
        }),
    }
}

/// Checks that `member` answered as many rows as the `reference` member.
pub(super) fn same_rows(
    reference: &str,
    reference_rows: usize,
    member: &str,
    rows: usize,
) -> Result<(), CombineError> {
    if rows == reference_rows {
        return Ok(());
    }
    Err(CombineError::BatchMismatch {
        member: member.to_string(),
        rows,
        reference: reference.to_string(),
        reference_rows,
    })
}

/// Index of the largest value; exact ties go to the lowest index, as with `numpy.argmax`.
/// `row` is never empty (dimensions are positive) and holds no NaN (values are checked finite).
pub(super) fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (index, &value) in row.iter().enumerate().skip(1) {
        // Strictly greater, so an equal later value does not displace the earlier index.
        if value > row[best] {
            best = index;
        }
    }
    best
}

/// Every member's values, all of one float datatype and one shape, for the elementwise combiners.
pub(super) struct Stack {
    pub datatype: DataType,
    pub shape: Vec<i64>,
    pub members: Vec<Vec<f64>>,
}

impl Stack {
    /// Reads every member's tensor, requiring the first member's datatype and shape of the rest.
    pub fn read(votes: &[Vote]) -> Result<Stack, CombineError> {
        let Some(first) = votes.first() else {
            return Err(CombineError::NoMembers);
        };
        let mut members = Vec::with_capacity(votes.len());
        for vote in votes {
            if vote.tensor.datatype != first.tensor.datatype
                && FLOATS.contains(&vote.tensor.datatype)
            {
                // The output keeps the input datatype, so members must agree on it.
                return Err(CombineError::WrongDatatype {
                    member: vote.member.to_string(),
                    tensor: vote.tensor.name.clone(),
                    expected: format!(
                        "{}, the datatype member '{}' returned",
                        first.tensor.datatype, first.member
                    ),
                    got: vote.tensor.datatype,
                });
            }
            let values = float_values(vote.member, vote.tensor, FLOATS)?;
            if vote.tensor.shape != first.tensor.shape {
                return Err(wrong_shape(
                    vote.member,
                    vote.tensor,
                    format!(
                        "shape {:?}, the shape member '{}' returned",
                        first.tensor.shape, first.member
                    ),
                ));
            }
            members.push(values);
        }
        Ok(Stack {
            datatype: first.tensor.datatype,
            shape: first.tensor.shape.clone(),
            members,
        })
    }

    /// Number of elements in each member's tensor.
    pub fn len(&self) -> usize {
        self.members.first().map_or(0, Vec::len)
    }

    /// Builds the output tensor in the members' datatype.
    pub fn output(&self, name: &str, values: &[f64]) -> Tensor {
        match self.datatype {
            DataType::Fp32 => {
                let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
                Tensor::from_values(name, self.shape.clone(), &values)
            }
            _ => Tensor::from_values(name, self.shape.clone(), values),
        }
    }
}

pub(super) fn wrong_datatype(member: &str, tensor: &Tensor, accepted: &[DataType]) -> CombineError {
    let expected: Vec<&str> = accepted.iter().map(|dt| dt.as_str()).collect();
    CombineError::WrongDatatype {
        member: member.to_string(),
        tensor: tensor.name.clone(),
        expected: expected.join(" or "),
        got: tensor.datatype,
    }
}

pub(super) fn wrong_shape(member: &str, tensor: &Tensor, expected: String) -> CombineError {
    CombineError::WrongShape {
        member: member.to_string(),
        tensor: tensor.name.clone(),
        expected,
        got: tensor.shape.clone(),
    }
}

pub(super) fn malformed(member: &str, source: chorus_common::TensorError) -> CombineError {
    CombineError::Malformed {
        member: member.to_string(),
        source,
    }
}
