//! Decoding an OIP v2 REST infer request into the core's [`InferRequest`]: JSON tensors, the
//! binary tensor extension (`Inference-Header-Content-Length`, `binary_data_size`) and raw
//! single-input bodies, plus how the client wants each output encoded.

use super::json_stream;
use super::parameters::Parameters;
use crate::infer::{InferError, InferRequest, RequestedOutput, decode};
use axum::http::HeaderMap;
use bytes::Bytes;
use chorus_common::tensor::element_count;
use chorus_common::{DataType, Tensor, TensorSpec};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::time::Duration;

/// Most inputs (or outputs) one request may name; far more than any model has, and a bound on
/// what a body of small entries can make the coordinator allocate.
pub const MAX_TENSORS: usize = 1024;

/// Most dimensions a shape may have (ONNX Runtime itself stops well below).
pub const MAX_RANK: usize = 64;

/// Header that splits a binary-extension body into its JSON part and its tensor bytes.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// How the client wants outputs encoded: each output's own `binary_data` if it stated one, else
/// the request-level `binary_data_output`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputEncoding {
    pub binary_default: bool,
    /// Outputs that stated `binary_data`, with it.
    pub stated: Vec<(String, bool)>,
}

impl OutputEncoding {
    pub fn binary(&self, output: &str) -> bool {
        self.stated
            .iter()
            .find(|(name, _)| name == output)
            .map_or(self.binary_default, |(_, binary)| *binary)
    }
}

/// The JSON part of a request, borrowing from the body: `data` and `parameters` stay raw JSON
/// until they are decoded into their types (json_stream.rs, parameters.rs).
#[derive(Deserialize)]
struct RequestJson<'a> {
    id: Option<String>,
    #[serde(default, borrow)]
    parameters: Parameters<'a>,
    #[serde(borrow, deserialize_with = "at_most_tensors")]
    inputs: Vec<InputJson<'a>>,
    #[serde(default, borrow, deserialize_with = "at_most_tensors")]
    outputs: Vec<OutputJson<'a>>,
}

#[derive(Deserialize)]
struct InputJson<'a> {
    name: String,
    #[serde(deserialize_with = "bounded_shape")]
    shape: Vec<i64>,
    datatype: String,
    #[serde(default, borrow)]
    parameters: Parameters<'a>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OutputJson<'a> {
    name: String,
    #[serde(default, borrow)]
    parameters: Parameters<'a>,
}

/// A list of at most `N` items, refused at the first one over (before it is even read).
struct Bounded<T, const N: usize>(Vec<T>);

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Bounded<T, N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Items<T, const N: usize>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> serde::de::Visitor<'de> for Items<T, N> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "an array of at most {N} items")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<T>, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    if items.len() == N {
                        return Err(serde::de::Error::custom(format!(
                            "more than {N} items where at most {N} are accepted"
                        )));
                    }
                    items.push(item);
                }
                Ok(items)
            }
        }
        deserializer
            .deserialize_seq(Items::<T, N>(std::marker::PhantomData))
            .map(Bounded)
    }
}

fn at_most_tensors<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Vec<T>, D::Error> {
    Bounded::<T, MAX_TENSORS>::deserialize(deserializer).map(|b| b.0)
}

fn bounded_shape<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<i64>, D::Error> {
    Bounded::<i64, MAX_RANK>::deserialize(deserializer).map(|b| b.0)
}

/// Parses a request body. `single_input` is the model's input when it has exactly one; raw
/// bodies (`Inference-Header-Content-Length: 0`) need it.
pub fn parse(
    headers: &HeaderMap,
    body: Bytes,
    single_input: Option<&TensorSpec>,
) -> Result<(InferRequest, OutputEncoding), InferError> {
    let header_length = header_length(headers, body.len())?;
    match header_length {
        Some(0) => raw_request(body, single_input),
        Some(length) => {
            let binary = body.slice(length..);
            parse_json(&body[..length], binary)
        }
        None => parse_json(&body, Bytes::new()),
    }
}

fn header_length(headers: &HeaderMap, body_length: usize) -> Result<Option<usize>, InferError> {
    let Some(value) = headers.get(HEADER_LENGTH) else {
        return Ok(None);
    };
    let length: usize = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            bad(format!(
                "Inference-Header-Content-Length must be a whole number of bytes, got {value:?}"
            ))
        })?;
    if length > body_length {
        return Err(bad(format!(
            "Inference-Header-Content-Length is {length} but the body has only {body_length} bytes"
        )));
    }
    Ok(Some(length))
}

fn bad(message: impl Into<String>) -> InferError {
    InferError::BadRequest(message.into())
}

fn parse_json(json: &[u8], binary: Bytes) -> Result<(InferRequest, OutputEncoding), InferError> {
    let request: RequestJson = serde_json::from_slice(json)
        .map_err(|e| bad(format!("request body is not a valid infer request: {e}")))?;
    request.parameters.reject_unsupported("the request")?;
    let mut offset = 0usize;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in &request.inputs {
        input
            .parameters
            .reject_unsupported(&format!("input '{}'", input.name))?;
        let datatype: DataType = input
            .datatype
            .parse()
            .map_err(|e| bad(format!("input '{}': {e}", input.name)))?;
        let binary_size: Option<usize> = input.parameters.get("binary_data_size", |got| {
            bad(format!(
                "input '{}': binary_data_size must be a non-negative integer, got {got}",
                input.name
            ))
        })?;
        let data = match (binary_size, &input.data) {
            (Some(_), Some(_)) => {
                return Err(bad(format!(
                    "input '{}' has both `data` and binary_data_size; send one or the other",
                    input.name
                )));
            }
            (Some(size), None) => {
                let end = offset.checked_add(size).filter(|&end| end <= binary.len()).ok_or_else(|| {
                    bad(format!(
                        "input '{}' claims binary_data_size {size} but only {} bytes of binary data remain after the JSON header",
                        input.name,
                        binary.len() - offset
                    ))
                })?;
                let slice = binary.slice(offset..end);
                offset = end;
                slice
            }
            (None, Some(data)) => {
                let count =
                    element_count(&input.name, &input.shape).map_err(|e| bad(e.to_string()))?;
                json_stream::decode(&input.name, datatype, data.get(), &input.shape, count)
                    .map_err(bad)?
            }
            (None, None) => {
                return Err(bad(format!(
                    "input '{}' has no `data` and no binary_data_size parameter",
                    input.name
                )));
            }
        };
        inputs.push(Tensor {
            name: input.name.clone(),
            datatype,
            shape: input.shape.clone(),
            data,
        });
    }
    if offset != binary.len() {
        return Err(bad(format!(
            "{} bytes of binary data follow the JSON header but the inputs' binary_data_size add up to {offset}",
            binary.len()
        )));
    }
    let mut encoding = OutputEncoding {
        binary_default: request
            .parameters
            .flag("binary_data_output")?
            .unwrap_or(false),
        stated: Vec::new(),
    };
    let mut outputs = Vec::with_capacity(request.outputs.len());
    for output in request.outputs {
        output
            .parameters
            .reject_unsupported(&format!("output '{}'", output.name))?;
        if let Some(binary) = output.parameters.flag("binary_data")? {
            encoding.stated.push((output.name.clone(), binary));
        }
        let classification = match output.parameters.raw(decode::CLASSIFICATION) {
            None => None,
            Some(text) => Some(decode::classification_count(
                &output.name,
                serde_json::from_str::<i128>(text).ok(),
                super::parameters::quote(text),
            )?),
        };
        outputs.push(RequestedOutput {
            name: output.name,
            classification,
        });
    }
    let timeout = request
        .parameters
        .get::<u64>("timeout", |got| decode::bad_timeout(got))?
        .map(Duration::from_micros);
    let priority = request
        .parameters
        .get::<u32>("priority", |got| decode::bad_priority(got))?
        .unwrap_or(0);
    let request = InferRequest {
        id: request.id,
        inputs,
        outputs,
        timeout,
        priority,
    };
    Ok((request, encoding))
}

/// A raw body: one input, batch of one, exactly the model's single input's bytes.
fn raw_request(
    body: Bytes,
    single_input: Option<&TensorSpec>,
) -> Result<(InferRequest, OutputEncoding), InferError> {
    let spec = single_input.ok_or_else(|| {
        bad("a raw request body (Inference-Header-Content-Length: 0) is only accepted by models with exactly one input")
    })?;
    // Variable dimensions are taken as 1, as Triton does for raw bodies (batch-1 requests).
    let shape: Vec<i64> = spec
        .shape
        .iter()
        .map(|&d| if d < 0 { 1 } else { d })
        .collect();
    let request = InferRequest {
        id: None,
        inputs: vec![Tensor {
            name: spec.name.clone(),
            datatype: spec.datatype,
            shape,
            data: body,
        }],
        outputs: Vec::new(),
        timeout: None,
        priority: 0,
    };
    let encoding = OutputEncoding {
        binary_default: true,
        stated: Vec::new(),
    };
    Ok((request, encoding))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(length: Option<usize>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(n) = length {
            h.insert(HEADER_LENGTH, HeaderValue::from(n));
        }
        h
    }

    fn binary_body(json: &str, tail: &[u8]) -> (HeaderMap, Bytes) {
        let mut body = json.as_bytes().to_vec();
        body.extend_from_slice(tail);
        (headers(Some(json.len())), Bytes::from(body))
    }

    #[test]
    fn json_request_parses_with_parameters() {
        let body = r#"{"id":"7","parameters":{"timeout":1500,"binary_data_output":true},
            "inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","data":[[1.0,2.0]]}],
            "outputs":[{"name":"label","parameters":{"binary_data":false}}]}"#;
        let (r, encoding) = parse(&headers(None), Bytes::from(body), None).unwrap();
        assert_eq!(r.id.as_deref(), Some("7"));
        assert_eq!(r.timeout, Some(Duration::from_micros(1500)));
        assert!(encoding.binary_default);
        assert_eq!(r.outputs, vec![RequestedOutput::named("label")]);
        assert!(
            !encoding.binary("label"),
            "the output's own preference wins"
        );
        assert!(encoding.binary("probabilities"));
        assert_eq!(r.inputs[0].to_values::<f32>().unwrap(), vec![1.0, 2.0]);
    }

    #[test]
    fn binary_inputs_are_sliced_in_order() {
        let json = r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}},
            {"name":"b","shape":[2],"datatype":"INT8","parameters":{"binary_data_size":2}}]}"#;
        let (h, body) = binary_body(json, &[0, 0, 128, 63, 5, 251]);
        let (r, _) = parse(&h, body, None).unwrap();
        assert_eq!(r.inputs[0].to_values::<f32>().unwrap(), vec![1.0]);
        assert_eq!(r.inputs[1].to_values::<i8>().unwrap(), vec![5, -5]);
    }

    #[test]
    fn binary_framing_errors_are_bad_requests() {
        let json = r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#;
        let (h, body) = binary_body(json, &[0, 0]);
        assert!(
            parse(&h, body, None)
                .unwrap_err()
                .to_string()
                .contains("only 2 bytes")
        );
        let (h, body) = binary_body(json, &[0; 6]);
        assert!(
            parse(&h, body, None)
                .unwrap_err()
                .to_string()
                .contains("add up to 4")
        );
        let long = headers(Some(10_000));
        assert!(
            parse(&long, Bytes::from(json), None)
                .unwrap_err()
                .to_string()
                .contains("only")
        );
        let mut garbage = HeaderMap::new();
        garbage.insert(HEADER_LENGTH, HeaderValue::from_static("ten"));
        assert!(parse(&garbage, Bytes::from(json), None).is_err());
    }

    #[test]
    fn malformed_requests_say_what_is_wrong() {
        let err = |body: &str| {
            parse(&headers(None), Bytes::from(body.to_string()), None)
                .unwrap_err()
                .to_string()
        };
        assert!(err("{not json").contains("not a valid infer request"));
        assert!(
            err(r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP33","data":[1]}]}"#)
                .contains("unknown datatype")
        );
        assert!(
            err(r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32"}]}"#).contains("no `data`")
        );
        assert!(
            err(r#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","data":[1]}]}"#)
                .contains("calls for 2")
        );
        assert!(
            err(r#"{"inputs":[{"name":"a","shape":[-2],"datatype":"FP32","data":[1]}]}"#)
                .contains("positive")
        );
        assert!(
            err(r#"{"parameters":{"shared_memory_region":"r"},"inputs":[]}"#)
                .contains("does not support")
        );
        assert!(err(r#"{"parameters":{"timeout":-1},"inputs":[]}"#).contains("timeout"));
    }

    #[test]
    fn raw_bodies_need_a_single_input_model() {
        let spec = TensorSpec {
            name: "input".into(),
            datatype: DataType::Fp32,
            shape: vec![-1, 2],
        };
        let (r, encoding) =
            parse(&headers(Some(0)), Bytes::from(vec![0u8; 8]), Some(&spec)).unwrap();
        assert_eq!(r.inputs[0].shape, vec![1, 2]);
        assert!(encoding.binary("anything"), "raw requests get raw answers");
        assert!(parse(&headers(Some(0)), Bytes::from(vec![0u8; 8]), None).is_err());
    }
}
