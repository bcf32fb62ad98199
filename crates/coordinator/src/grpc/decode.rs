//! Decoding a gRPC `ModelInferRequest` into the core's [`InferRequest`]: raw input contents
//! (sliced, not copied) or typed `contents`, parameters, requested outputs. Mistakes shared with
//! REST get REST's words (`infer::decode`); the rest say which field to fix.

use super::proto::infer_parameter::ParameterChoice;
use super::proto::{InferParameter, InferTensorContents, ModelInferRequest};
use crate::infer::{InferError, InferRequest, RequestedOutput, decode};
use bytes::Bytes;
use chorus_common::tensor::{Element, element_count, encode_bytes_elements};
use chorus_common::{DataType, Tensor};
use std::collections::BTreeMap;
use std::time::Duration;

fn bad(message: impl Into<String>) -> InferError {
    InferError::bad_request(message)
}

/// Decodes `message`; `deadline_timeout` is what the gRPC deadline leaves the core.
pub fn request(
    message: ModelInferRequest,
    deadline_timeout: Option<Duration>,
) -> Result<InferRequest, InferError> {
    reject_unsupported(&message.parameters, "the request")?;
    let timeout = match message.parameters.get("timeout") {
        None => deadline_timeout,
        Some(p) => {
            let micros = Duration::from_micros(timeout_micros(p)?);
            Some(deadline_timeout.map_or(micros, |d| d.min(micros)))
        }
    };
    let priority = match message.parameters.get("priority") {
        None => 0,
        Some(p) => priority_level(p)?,
    };
    let raw = message.raw_input_contents;
    if !raw.is_empty() && raw.len() != message.inputs.len() {
        return Err(bad(format!(
            "the request has {} raw_input_contents entries for {} inputs; send exactly one per input, in input order",
            raw.len(),
            message.inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    let mut inputs = Vec::with_capacity(message.inputs.len());
    for input in message.inputs {
        let whose = format!("input '{}'", input.name);
        reject_unsupported(&input.parameters, &whose)?;
        let datatype: DataType = input
            .datatype
            .parse()
            .map_err(|e| bad(format!("{whose}: {e}")))?;
        let contents = input.contents.filter(has_data);
        let data = match (raw.next(), contents) {
            (Some(_), Some(_)) => {
                return Err(bad(format!(
                    "{whose} has both `contents` and raw_input_contents; send one or the other"
                )));
            }
            (Some(bytes), None) => bytes,
            (None, Some(contents)) => typed(&input.name, datatype, &input.shape, contents)?,
            (None, None) => {
                return Err(bad(format!(
                    "{whose} has no `contents` and the request has no raw_input_contents"
                )));
            }
        };
        inputs.push(Tensor {
            name: input.name,
            datatype,
            shape: input.shape,
            data,
        });
    }
    let mut outputs = Vec::with_capacity(message.outputs.len());
    for output in message.outputs {
        reject_unsupported(&output.parameters, &format!("output '{}'", output.name))?;
        let classification = match output.parameters.get(decode::CLASSIFICATION) {
            None => None,
            Some(p) => Some(classification_count(&output.name, p)?),
        };
        outputs.push(RequestedOutput {
            name: output.name,
            classification,
        });
    }
    Ok(InferRequest {
        id: (!message.id.is_empty()).then_some(message.id),
        inputs,
        outputs,
        timeout,
        priority,
    })
}

fn reject_unsupported(
    parameters: &BTreeMap<String, InferParameter>,
    whose: &str,
) -> Result<(), InferError> {
    decode::reject_unsupported_parameters(parameters.keys().map(String::as_str), whose)
}

/// An output's `classification` parameter (int64 or uint64, at least 1).
fn classification_count(output: &str, parameter: &InferParameter) -> Result<usize, InferError> {
    let count = match &parameter.parameter_choice {
        Some(ParameterChoice::Int64Param(n)) => Some(i128::from(*n)),
        Some(ParameterChoice::Uint64Param(n)) => Some(i128::from(*n)),
        _ => None,
    };
    decode::classification_count(output, count, format!("{:?}", parameter.parameter_choice))
}

/// The `priority` parameter (int64 or uint64, 0 to `u32::MAX`).
fn priority_level(parameter: &InferParameter) -> Result<u32, InferError> {
    let level = match &parameter.parameter_choice {
        Some(ParameterChoice::Uint64Param(n)) => u32::try_from(*n).ok(),
        Some(ParameterChoice::Int64Param(n)) => u32::try_from(*n).ok(),
        _ => None,
    };
    level.ok_or_else(|| decode::bad_priority(format!("{:?}", parameter.parameter_choice)))
}

/// The `timeout` parameter in microseconds (int64 or uint64, never negative).
fn timeout_micros(parameter: &InferParameter) -> Result<u64, InferError> {
    match &parameter.parameter_choice {
        Some(ParameterChoice::Uint64Param(n)) => Ok(*n),
        Some(ParameterChoice::Int64Param(n)) if *n >= 0 => Ok(*n as u64),
        Some(ParameterChoice::Int64Param(n)) => Err(decode::bad_timeout(n)),
        Some(other) => Err(decode::bad_timeout(format!("{other:?}"))),
        None => Err(decode::bad_timeout("nothing")),
    }
}

/// Whether a typed `contents` message carries any data (an empty one counts as absent).
fn has_data(c: &InferTensorContents) -> bool {
    [
        c.bool_contents.len(),
        c.int_contents.len(),
        c.int64_contents.len(),
        c.uint_contents.len(),
        c.uint64_contents.len(),
        c.fp32_contents.len(),
        c.fp64_contents.len(),
        c.bytes_contents.len(),
    ]
    .iter()
    .any(|&n| n > 0)
}

/// The `contents` field each datatype's values belong in.
fn field_of(datatype: DataType) -> Option<&'static str> {
    Some(match datatype {
        DataType::Bool => "bool_contents",
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int_contents",
        DataType::Int64 => "int64_contents",
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => "uint_contents",
        DataType::Uint64 => "uint64_contents",
        DataType::Fp32 => "fp32_contents",
        DataType::Fp64 => "fp64_contents",
        DataType::Bytes => "bytes_contents",
        DataType::Fp16 | DataType::Bf16 => return None,
    })
}

/// The fields of `c` that hold data, by name.
fn filled_fields(c: &InferTensorContents) -> Vec<&'static str> {
    [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(name, _)| name)
    .collect()
}

/// Typed contents as the tensor's raw little-endian bytes.
fn typed(
    name: &str,
    datatype: DataType,
    shape: &[i64],
    c: InferTensorContents,
) -> Result<Bytes, InferError> {
    let Some(field) = field_of(datatype) else {
        return Err(bad(format!(
            "input '{name}' is {datatype}, which has no typed `contents` field; send it in raw_input_contents"
        )));
    };
    if let Some(wrong) = filled_fields(&c).into_iter().find(|f| *f != field) {
        return Err(bad(format!(
            "input '{name}' is {datatype}, so its values belong in `contents.{field}`, not `contents.{wrong}`"
        )));
    }
    let expected = element_count(name, shape).map_err(|e| bad(e.to_string()))?;
    let check = |given: usize| {
        if given == expected {
            Ok(())
        } else {
            Err(decode::element_count_mismatch(name, given, expected))
        }
    };
    let out_of_range = |index: usize, value: i64| {
        bad(format!(
            "input '{name}': data element {index} is {value}, expected an integer that fits {datatype}"
        ))
    };
    macro_rules! narrowed {
        ($values:expr, $ty:ty) => {{
            check($values.len())?;
            let mut out = Vec::with_capacity(expected * std::mem::size_of::<$ty>());
            for (i, &v) in $values.iter().enumerate() {
                <$ty>::try_from(v)
                    .map_err(|_| out_of_range(i, v as i64))?
                    .write_le(&mut out);
            }
            Bytes::from(out)
        }};
    }
    macro_rules! widths {
        ($values:expr) => {{
            check($values.len())?;
            let mut out = Vec::with_capacity(expected * 8);
            for &v in &$values {
                v.write_le(&mut out);
            }
            Bytes::from(out)
        }};
    }
    Ok(match datatype {
        DataType::Bool => {
            check(c.bool_contents.len())?;
            Bytes::from(
                c.bool_contents
                    .iter()
                    .map(|&b| u8::from(b))
                    .collect::<Vec<u8>>(),
            )
        }
        DataType::Int8 => narrowed!(c.int_contents, i8),
        DataType::Int16 => narrowed!(c.int_contents, i16),
        DataType::Int32 => widths!(c.int_contents),
        DataType::Int64 => widths!(c.int64_contents),
        DataType::Uint8 => narrowed!(c.uint_contents, u8),
        DataType::Uint16 => narrowed!(c.uint_contents, u16),
        DataType::Uint32 => widths!(c.uint_contents),
        DataType::Uint64 => widths!(c.uint64_contents),
        DataType::Fp32 => widths!(c.fp32_contents),
        DataType::Fp64 => widths!(c.fp64_contents),
        DataType::Bytes => {
            check(c.bytes_contents.len())?;
            encode_bytes_elements(c.bytes_contents.iter().map(|b| b.as_ref()))
        }
        DataType::Fp16 | DataType::Bf16 => unreachable!("refused above: no typed field"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};

    fn input(
        name: &str,
        datatype: &str,
        shape: Vec<i64>,
        contents: Option<InferTensorContents>,
    ) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            parameters: BTreeMap::new(),
            contents,
        }
    }

    fn fp32(values: Vec<f32>) -> Option<InferTensorContents> {
        Some(InferTensorContents {
            fp32_contents: values,
            ..Default::default()
        })
    }

    fn message(inputs: Vec<InferInputTensor>, raw: Vec<Bytes>) -> ModelInferRequest {
        ModelInferRequest {
            model_name: "m".into(),
            inputs,
            raw_input_contents: raw,
            ..Default::default()
        }
    }

    fn error(m: ModelInferRequest) -> String {
        request(m, None).unwrap_err().to_string()
    }

    #[test]
    fn typed_and_raw_contents_give_the_same_tensor() {
        let typed = request(
            message(
                vec![input("x", "FP32", vec![1, 2], fp32(vec![1.0, 2.5]))],
                vec![],
            ),
            None,
        )
        .unwrap();
        let bytes: Vec<u8> = [1.0f32, 2.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let raw = request(
            message(
                vec![input("x", "FP32", vec![1, 2], None)],
                vec![Bytes::from(bytes)],
            ),
            None,
        )
        .unwrap();
        assert_eq!(typed.inputs, raw.inputs);
        assert_eq!(typed.id, None, "an empty id is no id");
    }

    #[test]
    fn integer_contents_are_range_checked_and_placed_by_datatype() {
        let ints = |values: Vec<i32>| {
            Some(InferTensorContents {
                int_contents: values,
                ..Default::default()
            })
        };
        let ok = request(
            message(vec![input("x", "INT8", vec![2], ints(vec![-5, 7]))], vec![]),
            None,
        )
        .unwrap();
        assert_eq!(ok.inputs[0].to_values::<i8>().unwrap(), vec![-5, 7]);
        let e = error(message(
            vec![input("x", "INT8", vec![1], ints(vec![300]))],
            vec![],
        ));
        assert!(e.contains("fits INT8"), "{e}");
        let e = error(message(
            vec![input("x", "FP32", vec![1], ints(vec![1]))],
            vec![],
        ));
        assert!(
            e.contains("belong in `contents.fp32_contents`, not `contents.int_contents`"),
            "{e}"
        );
        let e = error(message(
            vec![input("x", "FP16", vec![1], ints(vec![1]))],
            vec![],
        ));
        assert!(e.contains("raw_input_contents"), "{e}");
    }

    #[test]
    fn framing_mistakes_say_what_to_fix() {
        let e = error(message(
            vec![input("x", "FP32", vec![1, 3], fp32(vec![1.0, 2.0]))],
            vec![],
        ));
        assert_eq!(
            e, "input 'x' has 2 data elements but its shape calls for 3",
            "REST's words"
        );
        let e = error(message(
            vec![input("x", "FP32", vec![1], fp32(vec![1.0]))],
            vec![Bytes::from_static(&[0; 4])],
        ));
        assert!(e.contains("both `contents` and raw_input_contents"), "{e}");
        let two = vec![
            input("a", "FP32", vec![1], None),
            input("b", "FP32", vec![1], None),
        ];
        let e = error(message(two, vec![Bytes::from_static(&[0; 4])]));
        assert!(
            e.contains("1 raw_input_contents entries for 2 inputs"),
            "{e}"
        );
        let e = error(message(vec![input("x", "FP32", vec![1], None)], vec![]));
        assert!(e.contains("no `contents`"), "{e}");
        let e = error(message(
            vec![input("x", "FP33", vec![1], fp32(vec![1.0]))],
            vec![],
        ));
        assert!(e.contains("unknown datatype"), "{e}");
        let e = error(message(
            vec![input("x", "FP32", vec![i64::MAX, 4], fp32(vec![1.0]))],
            vec![],
        ));
        assert!(
            e.contains("more elements than this server can address"),
            "{e}"
        );
    }

    #[test]
    fn parameters_timeouts_and_unsupported_extensions() {
        let mut m = message(vec![input("x", "FP32", vec![1], fp32(vec![1.0]))], vec![]);
        m.parameters.insert(
            "timeout".into(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::Int64Param(5000)),
            },
        );
        let r = request(m.clone(), Some(Duration::from_millis(2))).unwrap();
        assert_eq!(
            r.timeout,
            Some(Duration::from_millis(2)),
            "the sooner limit wins"
        );
        let r = request(m.clone(), None).unwrap();
        assert_eq!(r.timeout, Some(Duration::from_millis(5)));
        m.parameters.insert(
            "timeout".into(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::Int64Param(-1)),
            },
        );
        assert!(error(m.clone()).contains("`timeout` must be a non-negative integer"));
        m.parameters.clear();
        let classify = |k: i64| InferRequestedOutputTensor {
            name: "p".into(),
            parameters: [(
                "classification".to_string(),
                InferParameter {
                    parameter_choice: Some(ParameterChoice::Int64Param(k)),
                },
            )]
            .into(),
        };
        m.outputs.push(classify(3));
        let r = request(m.clone(), None).unwrap();
        assert_eq!(r.outputs[0].classification, Some(3));
        m.outputs[0] = classify(0);
        let e = error(m.clone());
        assert!(
            e.contains("`classification` must be a positive integer"),
            "{e}"
        );
        m.outputs.clear();
        m.parameters.insert(
            "shared_memory_region".into(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::StringParam("r".into())),
            },
        );
        let e = error(m);
        assert!(
            e.starts_with("the request uses parameter `shared_memory_region`"),
            "{e}"
        );
    }
}
