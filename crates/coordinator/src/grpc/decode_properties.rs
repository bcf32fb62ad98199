//! Property tests of the gRPC request decoder: arbitrary messages (raw and typed contents,
//! parameters, shapes) never panic, typed contents are sized by their shape or refused, and raw
//! contents of the wrong size never pass the core's input validation.

use super::decode::request;
use super::proto::model_infer_request::InferInputTensor;
use super::proto::{InferParameter, InferTensorContents, ModelInferRequest, infer_parameter};
use bytes::Bytes;
use chorus_common::validate::{InputPolicy, validate_inputs};
use chorus_common::{DataType, TensorSpec};
use proptest::prelude::*;

fn any_datatype() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(DataType::ALL.to_vec()).prop_map(|d| d.as_str().to_string()),
        "[A-Z0-9]{0,5}",
    ]
}

fn any_contents() -> impl Strategy<Value = InferTensorContents> {
    (
        prop::collection::vec(any::<bool>(), 0..6),
        prop::collection::vec(any::<i32>(), 0..6),
        prop::collection::vec(any::<i64>(), 0..6),
        prop::collection::vec(any::<u32>(), 0..6),
        prop::collection::vec(any::<u64>(), 0..6),
        prop::collection::vec(any::<f32>(), 0..6),
        prop::collection::vec(any::<f64>(), 0..6),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..4), 0..4),
    )
        .prop_map(|(b, i, l, u, ul, f, d, s)| InferTensorContents {
            bool_contents: b,
            int_contents: i,
            int64_contents: l,
            uint_contents: u,
            uint64_contents: ul,
            fp32_contents: f,
            fp64_contents: d,
            bytes_contents: s.into_iter().map(Bytes::from).collect(),
        })
}

fn any_parameter() -> impl Strategy<Value = InferParameter> {
    prop_oneof![
        any::<bool>().prop_map(infer_parameter::ParameterChoice::BoolParam),
        any::<i64>().prop_map(infer_parameter::ParameterChoice::Int64Param),
        any::<u64>().prop_map(infer_parameter::ParameterChoice::Uint64Param),
        "[a-z]{0,4}".prop_map(infer_parameter::ParameterChoice::StringParam),
    ]
    .prop_map(|choice| InferParameter {
        parameter_choice: Some(choice),
    })
}

fn any_input() -> impl Strategy<Value = InferInputTensor> {
    (
        any_datatype(),
        prop::collection::vec(-2i64..5, 0..4),
        prop::option::of(any_contents()),
    )
        .prop_map(|(datatype, shape, contents)| InferInputTensor {
            name: "input".into(),
            datatype,
            shape,
            parameters: Default::default(),
            contents,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_messages_never_panic_and_never_mis_size_a_valid_tensor(
        inputs in prop::collection::vec(any_input(), 0..3),
        raw in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..3),
        parameters in prop::collection::hash_map(
            prop::sample::select(vec!["timeout", "priority", "binary_data_output", "x"]),
            any_parameter(),
            0..3,
        ),
    ) {
        let message = ModelInferRequest {
            model_name: "m".into(),
            inputs: inputs.clone(),
            raw_input_contents: raw.iter().cloned().map(Bytes::from).collect(),
            parameters: parameters.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            ..Default::default()
        };
        let Ok(decoded) = request(message, None) else {
            return Ok(());
        };
        for (tensor, input) in decoded.inputs.iter().zip(&inputs) {
            if raw.is_empty() {
                // Typed contents: the decoder sizes them by the shape itself.
                prop_assert!(tensor.check_byte_size().is_ok(), "{tensor:?}");
            }
            let spec = TensorSpec {
                name: tensor.name.clone(),
                datatype: tensor.datatype,
                shape: input.shape.clone(),
            };
            let policy = InputPolicy { allow_non_finite: true, max_elements: 1 << 20 };
            if validate_inputs("m", &[spec], std::slice::from_ref(tensor), &policy).is_ok() {
                prop_assert!(tensor.check_byte_size().is_ok(), "{tensor:?}");
            }
        }
    }
}
