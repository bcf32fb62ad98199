//! Triton-shaped model configurations (Triton's model configuration extension), derived from
//! what Chorus knows: worker-described signatures for models, specs for ensembles. Triton's load
//! and analysis tools read one before they send anything; both front ends encode this one struct.
//!
//! `max_batch_size`: a model (or ensemble) whose every input and output has a variable first
//! dimension takes any number of rows, up to the per-tensor element limit; Triton says so with
//! `max_batch_size` > 0 and dims without the batch dimension, so that is what is reported, with
//! the largest row count the element limit allows. Anything else reports 0 and its full shapes.

use super::Target;
use crate::catalog::{ENSEMBLE_PLATFORM, Signature};
use crate::spec::{CombinerKind, EnsembleSpec};
use chorus_common::{DataType, TensorSpec};

/// Triton's `ModelConfig`, the fields Chorus fills.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub name: String,
    pub platform: String,
    /// Triton's backend name (`onnxruntime`); empty for ensembles.
    pub backend: String,
    pub max_batch_size: i32,
    pub inputs: Vec<ConfigTensor>,
    pub outputs: Vec<ConfigTensor>,
    /// Ensembles only: one step per composing model.
    pub ensemble_steps: Vec<EnsembleStep>,
    /// Chorus's own facts (combiner, quorum, deadline, execution provider), as strings.
    pub parameters: Vec<(String, String)>,
}

/// One input or output: dims without the batch dimension when `max_batch_size` > 0.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigTensor {
    pub name: String,
    pub datatype: DataType,
    pub dims: Vec<i64>,
}

/// One composing model of an ensemble, with Triton's tensor maps (the model's tensor name →
/// the ensemble's tensor name).
#[derive(Debug, Clone, PartialEq)]
pub struct EnsembleStep {
    pub model_name: String,
    /// -1 for the newest version.
    pub model_version: i64,
    pub input_map: Vec<(String, String)>,
    pub output_map: Vec<(String, String)>,
}

/// Triton's name for a datatype in model configurations.
pub fn triton_type_name(datatype: DataType) -> &'static str {
    match datatype {
        DataType::Bool => "TYPE_BOOL",
        DataType::Uint8 => "TYPE_UINT8",
        DataType::Uint16 => "TYPE_UINT16",
        DataType::Uint32 => "TYPE_UINT32",
        DataType::Uint64 => "TYPE_UINT64",
        DataType::Int8 => "TYPE_INT8",
        DataType::Int16 => "TYPE_INT16",
        DataType::Int32 => "TYPE_INT32",
        DataType::Int64 => "TYPE_INT64",
        DataType::Fp16 => "TYPE_FP16",
        DataType::Fp32 => "TYPE_FP32",
        DataType::Fp64 => "TYPE_FP64",
        DataType::Bf16 => "TYPE_BF16",
        DataType::Bytes => "TYPE_STRING",
    }
}

/// Triton's backend for ONNX Runtime models.
const ONNX_BACKEND: &str = "onnxruntime";

/// The configuration of a resolved model or ensemble.
pub fn of_target(target: &Target) -> ModelConfig {
    match target {
        Target::Model {
            info, signature, ..
        } => {
            let mut config = base(&info.name, &info.platform, signature);
            config.backend = ONNX_BACKEND.to_string();
            config.parameters = vec![(
                "execution_provider".to_string(),
                info.execution_provider.to_string(),
            )];
            config
        }
        Target::Ensemble {
            spec, signature, ..
        } => {
            let mut config = base(&spec.name, ENSEMBLE_PLATFORM, signature);
            config.ensemble_steps = ensemble_steps(spec, signature);
            config.parameters = vec![
                ("combiner".to_string(), spec.combiner.as_str().to_string()),
                ("min_members".to_string(), spec.min_members.to_string()),
                (
                    "deadline_ms".to_string(),
                    spec.deadline.as_millis().to_string(),
                ),
                ("description".to_string(), spec.description.clone()),
            ];
            config
        }
    }
}

fn base(name: &str, platform: &str, signature: &Signature) -> ModelConfig {
    let max_batch_size = max_batch_size(signature);
    let tensor = |spec: &TensorSpec| ConfigTensor {
        name: spec.name.clone(),
        datatype: spec.datatype,
        dims: if max_batch_size > 0 {
            spec.shape[1..].to_vec()
        } else {
            spec.shape.clone()
        },
    };
    ModelConfig {
        name: name.to_string(),
        platform: platform.to_string(),
        backend: String::new(),
        max_batch_size,
        inputs: signature.inputs.iter().map(tensor).collect(),
        outputs: signature.outputs.iter().map(tensor).collect(),
        ensemble_steps: Vec::new(),
        parameters: Vec::new(),
    }
}

/// The most rows one request may carry when every tensor is batch-major; 0 otherwise.
pub fn max_batch_size(signature: &Signature) -> i32 {
    let batch_major = |specs: &[TensorSpec]| specs.iter().all(|s| s.shape.first() == Some(&-1));
    if signature.inputs.is_empty()
        || !batch_major(&signature.inputs)
        || !batch_major(&signature.outputs)
    {
        return 0;
    }
    let rows = signature
        .inputs
        .iter()
        .map(|spec| {
            // Other variable dimensions count as 1: the limit is then an upper bound.
            let row: u64 = spec.shape[1..]
                .iter()
                .map(|&d| d.max(1) as u64)
                .fold(1u64, u64::saturating_mul);
            signature.policy.max_elements / row.max(1)
        })
        .min()
        .unwrap_or(0);
    rows.clamp(1, i32::MAX as u64) as i32
}

fn ensemble_steps(spec: &EnsembleSpec, signature: &Signature) -> Vec<EnsembleStep> {
    let version =
        |pinned: &Option<String>| pinned.as_deref().and_then(|v| v.parse().ok()).unwrap_or(-1);
    let same_inputs: Vec<(String, String)> = signature
        .inputs
        .iter()
        .map(|s| (s.name.clone(), s.name.clone()))
        .collect();
    let mut steps: Vec<EnsembleStep> = spec
        .members
        .iter()
        .map(|member| EnsembleStep {
            model_name: member.model.clone(),
            model_version: version(&member.version),
            input_map: same_inputs.clone(),
            // Each member's output is an internal tensor the combiner reads.
            output_map: vec![(
                spec.member_output.clone(),
                format!("{}.{}", member.model, spec.member_output),
            )],
        })
        .collect();
    if let (CombinerKind::Fusion, Some((meta, meta_version))) = (spec.combiner, &spec.meta_model) {
        steps.push(EnsembleStep {
            model_name: meta.clone(),
            model_version: version(meta_version),
            input_map: vec![("input".to_string(), "fused_member_outputs".to_string())],
            output_map: signature
                .outputs
                .iter()
                .map(|o| (o.name.clone(), o.name.clone()))
                .collect(),
        });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_common::validate::InputPolicy;

    fn spec(name: &str, shape: Vec<i64>) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype: DataType::Fp32,
            shape,
        }
    }

    fn signature(inputs: Vec<TensorSpec>, outputs: Vec<TensorSpec>) -> Signature {
        Signature {
            inputs,
            outputs,
            policy: InputPolicy {
                allow_non_finite: false,
                max_elements: 1 << 20,
            },
            labels: Vec::new(),
        }
    }

    #[test]
    fn batch_major_models_report_rows_and_dims_without_the_batch() {
        let s = signature(
            vec![spec("input", vec![-1, 64])],
            vec![spec("probabilities", vec![-1, 10])],
        );
        assert_eq!(max_batch_size(&s), (1 << 20) / 64);
        let config = base("m", "onnxruntime_onnx", &s);
        assert_eq!(config.inputs[0].dims, vec![64]);
        assert_eq!(config.outputs[0].dims, vec![10]);
    }

    #[test]
    fn fixed_batch_models_report_zero_and_full_shapes() {
        let s = signature(vec![spec("input", vec![1, 64])], vec![spec("y", vec![-1])]);
        assert_eq!(max_batch_size(&s), 0);
        assert_eq!(base("m", "p", &s).inputs[0].dims, vec![1, 64]);
        let no_batch_output = signature(vec![spec("x", vec![-1, 2])], vec![spec("y", vec![3])]);
        assert_eq!(max_batch_size(&no_batch_output), 0);
    }

    #[test]
    fn a_tiny_element_limit_still_allows_one_row() {
        let mut s = signature(vec![spec("x", vec![-1, 64])], vec![spec("y", vec![-1])]);
        s.policy.max_elements = 10;
        assert_eq!(max_batch_size(&s), 1);
    }

    #[test]
    fn triton_type_names() {
        assert_eq!(triton_type_name(DataType::Fp32), "TYPE_FP32");
        assert_eq!(triton_type_name(DataType::Bytes), "TYPE_STRING");
    }
}
