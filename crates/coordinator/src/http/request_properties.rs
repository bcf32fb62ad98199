//! Property tests of the REST request decoder: arbitrary bodies (and binary-extension headers)
//! never panic, and a decoded tensor never has a byte size that disagrees with its shape — JSON
//! `data` is sized by the decoder itself, binary data by the core's input validation.

use super::request::{HEADER_LENGTH, parse};
use axum::http::{HeaderMap, HeaderValue};
use bytes::Bytes;
use chorus_common::validate::{InputPolicy, validate_inputs};
use chorus_common::{DataType, TensorSpec};
use proptest::prelude::*;
use serde_json::{Value, json};

fn single_input() -> TensorSpec {
    TensorSpec {
        name: "input".into(),
        datatype: DataType::Fp32,
        shape: vec![-1, 4],
    }
}

fn headers(length: Option<usize>) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(n) = length {
        h.insert(HEADER_LENGTH, HeaderValue::from(n));
    }
    h
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-z]{0,3}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,2}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn any_datatype() -> impl Strategy<Value = DataType> {
    prop::sample::select(DataType::ALL.to_vec())
}

/// The policy the core applies, with room for any shape the strategies make.
fn policy() -> InputPolicy {
    InputPolicy {
        allow_non_finite: true,
        max_elements: 1 << 20,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..256),
        length in prop::option::of(0usize..300),
    ) {
        let _ = parse(&headers(length), Bytes::from(body), Some(&single_input()));
    }

    #[test]
    fn json_data_is_sized_by_its_shape_or_refused(
        shape in prop::collection::vec(-1i64..5, 0..4),
        datatype in any_datatype(),
        data in any_json(),
        parameters in prop::option::of(any_json()),
    ) {
        let mut request = json!({
            "inputs": [{"name": "input", "shape": shape, "datatype": datatype.as_str(), "data": data}],
        });
        if let Some(parameters) = parameters {
            request["parameters"] = parameters;
        }
        let body = Bytes::from(request.to_string());
        if let Ok((decoded, _)) = parse(&headers(None), body, None) {
            for tensor in &decoded.inputs {
                prop_assert!(tensor.check_byte_size().is_ok(), "{tensor:?}");
            }
        }
    }

    #[test]
    fn binary_data_never_passes_validation_with_the_wrong_size(
        shape in prop::collection::vec(0i64..5, 1..4),
        datatype in any_datatype(),
        declared in 0usize..80,
        tail in prop::collection::vec(any::<u8>(), 0..80),
    ) {
        let header = json!({
            "inputs": [{"name": "input", "shape": shape, "datatype": datatype.as_str(),
                        "parameters": {"binary_data_size": declared}}],
        })
        .to_string();
        let mut body = header.clone().into_bytes();
        body.extend_from_slice(&tail);
        if let Ok((decoded, _)) = parse(&headers(Some(header.len())), Bytes::from(body), None) {
            let spec = TensorSpec { name: "input".into(), datatype, shape: shape.clone() };
            if validate_inputs("m", &[spec], &decoded.inputs, &policy()).is_ok() {
                for tensor in &decoded.inputs {
                    prop_assert!(tensor.check_byte_size().is_ok(), "{tensor:?}");
                }
            }
        }
    }

    #[test]
    fn well_formed_json_data_decodes_to_its_shape(
        rows in 1usize..5,
        cols in 1usize..6,
        nested in any::<bool>(),
        seed in any::<i32>(),
        datatype in prop::sample::select(vec![DataType::Fp32, DataType::Fp64, DataType::Int64, DataType::Int32, DataType::Fp16]),
    ) {
        let values: Vec<Value> = (0..rows * cols)
            .map(|i| Value::from((seed.wrapping_add(i as i32) % 1000) as i64))
            .collect();
        let data = if nested {
            Value::from(values.chunks(cols).map(|row| Value::from(row.to_vec())).collect::<Vec<_>>())
        } else {
            Value::from(values)
        };
        let request = json!({
            "inputs": [{"name": "input", "shape": [rows, cols], "datatype": datatype.as_str(), "data": data}],
        });
        let (decoded, _) = parse(&headers(None), Bytes::from(request.to_string()), None)
            .expect("a well-formed request decodes");
        let tensor = &decoded.inputs[0];
        prop_assert_eq!(tensor.element_count().unwrap(), rows * cols);
        prop_assert!(tensor.check_byte_size().is_ok());
    }
}
