//! Input validation against a model's declared signature, done by coordinators before fan-out
//! and again by workers before ONNX Runtime sees the bytes.

use crate::model::TensorSpec;
use crate::tensor::{DataType, Tensor, TensorError};

/// Per-model limits on what a request may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputPolicy {
    /// Accept NaN and infinity in float inputs.
    pub allow_non_finite: bool,
    /// Largest element count of one input tensor.
    pub max_elements: u64,
}

/// What is wrong with a request's inputs, phrased so the client knows what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("input '{name}' is missing: model '{model}' expects inputs {expected:?}")]
    Missing {
        model: String,
        name: String,
        expected: Vec<String>,
    },
    #[error("input '{name}' is given more than once")]
    Duplicate { name: String },
    #[error("unexpected input '{name}': model '{model}' expects inputs {expected:?}")]
    Unexpected {
        model: String,
        name: String,
        expected: Vec<String>,
    },
    #[error("input '{name}' has datatype {got}, but model '{model}' expects {expected}")]
    WrongDatatype {
        model: String,
        name: String,
        expected: DataType,
        got: DataType,
    },
    #[error("input '{name}' has shape {got:?} (rank {}), but model '{model}' expects rank {} (shape {expected:?}, -1 = any size)", got.len(), expected.len())]
    WrongRank {
        model: String,
        name: String,
        expected: Vec<i64>,
        got: Vec<i64>,
    },
    #[error("dimension {index} of input '{name}' is {}, but model '{model}' expects {} (shape {expected:?}, -1 = any size)", got[*index], expected[*index])]
    WrongDim {
        model: String,
        name: String,
        index: usize,
        expected: Vec<i64>,
        got: Vec<i64>,
    },
    #[error("input '{name}' has {count} elements, more than the limit of {limit} per tensor")]
    TooManyElements {
        name: String,
        count: u64,
        limit: u64,
    },
    #[error(
        "input '{name}' holds a non-finite value (NaN or infinity) at element {index}; model '{model}' does not accept them"
    )]
    NonFinite {
        model: String,
        name: String,
        index: usize,
    },
    #[error("unknown requested output '{name}': model '{model}' has outputs {available:?}")]
    UnknownOutput {
        model: String,
        name: String,
        available: Vec<String>,
    },
    #[error("requested output '{name}' is named more than once")]
    DuplicateOutput { name: String },
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

/// Checks `inputs` against `specs`: every declared input present once and nothing else, datatype,
/// rank, fixed dimensions, element-count limit, byte size (checked arithmetic) and, unless the
/// policy allows them, NaN/infinity in float inputs.
pub fn validate_inputs(
    model: &str,
    specs: &[TensorSpec],
    inputs: &[Tensor],
    policy: &InputPolicy,
) -> Result<(), InputError> {
    let expected_names = || specs.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    for (i, input) in inputs.iter().enumerate() {
        if inputs[..i].iter().any(|earlier| earlier.name == input.name) {
            return Err(InputError::Duplicate {
                name: input.name.clone(),
            });
        }
        if !specs.iter().any(|s| s.name == input.name) {
            return Err(InputError::Unexpected {
                model: model.to_string(),
                name: input.name.clone(),
                expected: expected_names(),
            });
        }
    }
    for spec in specs {
        let input =
            inputs
                .iter()
                .find(|t| t.name == spec.name)
                .ok_or_else(|| InputError::Missing {
                    model: model.to_string(),
                    name: spec.name.clone(),
                    expected: expected_names(),
                })?;
        validate_one(model, spec, input, policy)?;
    }
    Ok(())
}

fn validate_one(
    model: &str,
    spec: &TensorSpec,
    input: &Tensor,
    policy: &InputPolicy,
) -> Result<(), InputError> {
    if input.datatype != spec.datatype {
        return Err(InputError::WrongDatatype {
            model: model.to_string(),
            name: input.name.clone(),
            expected: spec.datatype,
            got: input.datatype,
        });
    }
    // Positivity and overflow first, so the shape errors below talk about sane numbers.
    let count = input.element_count()? as u64;
    if input.shape.len() != spec.shape.len() {
        return Err(InputError::WrongRank {
            model: model.to_string(),
            name: input.name.clone(),
            expected: spec.shape.clone(),
            got: input.shape.clone(),
        });
    }
    if let Some(index) = spec
        .shape
        .iter()
        .zip(&input.shape)
        .position(|(&want, &got)| want >= 0 && want != got)
    {
        return Err(InputError::WrongDim {
            model: model.to_string(),
            name: input.name.clone(),
            index,
            expected: spec.shape.clone(),
            got: input.shape.clone(),
        });
    }
    if count > policy.max_elements {
        return Err(InputError::TooManyElements {
            name: input.name.clone(),
            count,
            limit: policy.max_elements,
        });
    }
    input.check_byte_size()?;
    // Only scan the data when the policy cares.
    if let Some(index) = (!policy.allow_non_finite)
        .then(|| first_non_finite(input))
        .flatten()
    {
        return Err(InputError::NonFinite {
            model: model.to_string(),
            name: input.name.clone(),
            index,
        });
    }
    Ok(())
}

/// Index of the first NaN or infinite element of a float tensor whose byte size is already checked.
fn first_non_finite(t: &Tensor) -> Option<usize> {
    let data = &t.data;
    match t.datatype {
        DataType::Fp32 => data
            .chunks_exact(4)
            .position(|c| !f32::from_le_bytes(c.try_into().unwrap()).is_finite()),
        DataType::Fp64 => data
            .chunks_exact(8)
            .position(|c| !f64::from_le_bytes(c.try_into().unwrap()).is_finite()),
        DataType::Fp16 => data
            .chunks_exact(2)
            .position(|c| !half::f16::from_le_bytes(c.try_into().unwrap()).is_finite()),
        DataType::Bf16 => data
            .chunks_exact(2)
            .position(|c| !half::bf16::from_le_bytes(c.try_into().unwrap()).is_finite()),
        _ => None,
    }
}

/// Checks that each requested output exists and is named once.
pub fn validate_requested_outputs(
    model: &str,
    specs: &[TensorSpec],
    requested: &[String],
) -> Result<(), InputError> {
    for (i, name) in requested.iter().enumerate() {
        if requested[..i].contains(name) {
            return Err(InputError::DuplicateOutput { name: name.clone() });
        }
        if !specs.iter().any(|s| &s.name == name) {
            return Err(InputError::UnknownOutput {
                model: model.to_string(),
                name: name.clone(),
                available: specs.iter().map(|s| s.name.clone()).collect(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const POLICY: InputPolicy = InputPolicy {
        allow_non_finite: false,
        max_elements: 1000,
    };

    fn specs() -> Vec<TensorSpec> {
        vec![TensorSpec {
            name: "input".into(),
            datatype: DataType::Fp32,
            shape: vec![-1, 4],
        }]
    }

    fn input(shape: Vec<i64>, values: &[f32]) -> Tensor {
        Tensor::from_values("input", shape, values)
    }

    fn check(inputs: &[Tensor]) -> Result<(), InputError> {
        validate_inputs("m", &specs(), inputs, &POLICY)
    }

    #[test]
    fn accepts_matching_input_with_any_batch() {
        check(&[input(vec![1, 4], &[0.0; 4])]).unwrap();
        check(&[input(vec![3, 4], &[0.5; 12])]).unwrap();
    }

    #[test]
    fn names_must_match_exactly_once() {
        assert!(matches!(check(&[]), Err(InputError::Missing { .. })));
        let ok = input(vec![1, 4], &[0.0; 4]);
        assert!(matches!(
            check(&[ok.clone(), ok.clone()]),
            Err(InputError::Duplicate { .. })
        ));
        let mut other = ok.clone();
        other.name = "extra".into();
        assert!(matches!(
            check(&[ok, other]),
            Err(InputError::Unexpected { .. })
        ));
    }

    #[test]
    fn datatype_rank_and_dims_are_checked() {
        let t = Tensor::from_values("input", vec![1, 4], &[0i64; 4]);
        assert!(matches!(check(&[t]), Err(InputError::WrongDatatype { .. })));
        assert!(matches!(
            check(&[input(vec![4], &[0.0; 4])]),
            Err(InputError::WrongRank { .. })
        ));
        assert!(matches!(
            check(&[input(vec![2, 2], &[0.0; 4])]),
            Err(InputError::WrongDim { index: 1, .. })
        ));
        assert!(matches!(
            check(&[input(vec![0, 4], &[])]),
            Err(InputError::Tensor(TensorError::NonPositiveDim { .. }))
        ));
        assert!(matches!(
            check(&[input(vec![i64::MAX, 4], &[])]),
            Err(InputError::Tensor(TensorError::ShapeOverflow { .. }))
        ));
    }

    #[test]
    fn byte_size_and_limits_are_checked() {
        assert!(matches!(
            check(&[input(vec![2, 4], &[0.0; 4])]),
            Err(InputError::Tensor(TensorError::ByteSizeMismatch { .. }))
        ));
        assert!(matches!(
            check(&[input(vec![1000, 4], &[])]),
            Err(InputError::TooManyElements { count: 4000, .. })
        ));
    }

    #[test]
    fn non_finite_floats_are_rejected_unless_allowed() {
        let bad = input(vec![1, 4], &[0.0, f32::NAN, 0.0, 0.0]);
        assert!(matches!(
            check(std::slice::from_ref(&bad)),
            Err(InputError::NonFinite { index: 1, .. })
        ));
        let inf = input(vec![1, 4], &[0.0, 0.0, 0.0, f32::INFINITY]);
        assert!(matches!(
            check(&[inf]),
            Err(InputError::NonFinite { index: 3, .. })
        ));
        let lenient = InputPolicy {
            allow_non_finite: true,
            ..POLICY
        };
        validate_inputs("m", &specs(), &[bad], &lenient).unwrap();
    }

    #[test]
    fn non_finite_check_covers_half_and_double() {
        let t = Tensor::from_values("h", vec![2], &[half::f16::ONE, half::f16::NAN]);
        assert_eq!(first_non_finite(&t), Some(1));
        let t = Tensor::from_values("d", vec![2], &[f64::NEG_INFINITY, 1.0]);
        assert_eq!(first_non_finite(&t), Some(0));
        let t = Tensor {
            name: "i".into(),
            datatype: DataType::Int32,
            shape: vec![1],
            data: Bytes::from_static(&[0xff; 4]),
        };
        assert_eq!(first_non_finite(&t), None);
    }

    #[test]
    fn requested_outputs_must_exist_once() {
        let outs = vec![TensorSpec {
            name: "label".into(),
            datatype: DataType::Int64,
            shape: vec![-1],
        }];
        validate_requested_outputs("m", &outs, &["label".into()]).unwrap();
        assert!(matches!(
            validate_requested_outputs("m", &outs, &["nope".into()]),
            Err(InputError::UnknownOutput { .. })
        ));
        assert!(matches!(
            validate_requested_outputs("m", &outs, &["label".into(), "label".into()]),
            Err(InputError::DuplicateOutput { .. })
        ));
    }
}
