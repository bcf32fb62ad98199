//! Encoding the core's answers and descriptions as gRPC messages. Outputs always travel as raw
//! contents (as Triton answers), so they carry exactly the bytes the REST binary extension does.

use super::proto::infer_parameter::ParameterChoice;
use super::proto::model_infer_response::InferOutputTensor;
use super::proto::model_metadata_response::TensorMetadata;
use super::proto::repository_index_response::ModelIndex;
use super::proto::{self, InferParameter, ModelInferResponse, ModelStreamInferResponse};
use crate::infer::model_config::{ConfigTensor, ModelConfig};
use crate::infer::{IndexEntry, InferAnswer, InferError, ModelMetadata, ParameterValue};
use crate::stats::{ModelStatistics, StatDuration};
use chorus_common::{DataType, TensorSpec};

pub fn answer(answer: InferAnswer) -> ModelInferResponse {
    let parameters = answer
        .parameters
        .into_iter()
        .map(|(name, value)| {
            let choice = match value {
                ParameterValue::Bool(b) => ParameterChoice::BoolParam(b),
                ParameterValue::Text(t) => ParameterChoice::StringParam(t),
            };
            (
                name.to_string(),
                InferParameter {
                    parameter_choice: Some(choice),
                },
            )
        })
        .collect();
    let mut outputs = Vec::with_capacity(answer.outputs.len());
    let mut raw = Vec::with_capacity(answer.outputs.len());
    for tensor in answer.outputs {
        outputs.push(InferOutputTensor {
            name: tensor.name,
            datatype: tensor.datatype.as_str().to_string(),
            shape: tensor.shape,
            parameters: Default::default(),
            contents: None,
        });
        raw.push(tensor.data);
    }
    ModelInferResponse {
        model_name: answer.model_name,
        model_version: answer.model_version,
        id: answer.id,
        parameters,
        outputs,
        raw_output_contents: raw,
    }
}

/// A stream's answer to one request: the response, or the error with the request's model,
/// version and id, so that the client knows which request failed.
pub fn stream_answer(
    result: Result<InferAnswer, InferError>,
    model_name: String,
    model_version: String,
    id: String,
) -> ModelStreamInferResponse {
    match result {
        Ok(a) => ModelStreamInferResponse {
            error_message: String::new(),
            infer_response: Some(answer(a)),
        },
        Err(e) => ModelStreamInferResponse {
            error_message: e.to_string(),
            infer_response: Some(ModelInferResponse {
                model_name,
                model_version,
                id,
                ..Default::default()
            }),
        },
    }
}

fn tensor_metadata(specs: &[TensorSpec]) -> Vec<TensorMetadata> {
    specs
        .iter()
        .map(|s| TensorMetadata {
            name: s.name.clone(),
            datatype: s.datatype.as_str().to_string(),
            shape: s.shape.clone(),
        })
        .collect()
}

pub fn metadata(m: ModelMetadata) -> proto::ModelMetadataResponse {
    proto::ModelMetadataResponse {
        inputs: tensor_metadata(&m.inputs),
        outputs: tensor_metadata(&m.outputs),
        name: m.name,
        versions: m.versions,
        platform: m.platform,
    }
}

pub fn index(entries: Vec<IndexEntry>) -> proto::RepositoryIndexResponse {
    proto::RepositoryIndexResponse {
        models: entries
            .into_iter()
            .map(|e| ModelIndex {
                state: e.state().to_string(),
                name: e.name,
                version: e.version,
                reason: e.unready_reason.unwrap_or_default(),
            })
            .collect(),
    }
}

fn data_type(datatype: DataType) -> proto::DataType {
    use proto::DataType as T;
    match datatype {
        DataType::Bool => T::TypeBool,
        DataType::Uint8 => T::TypeUint8,
        DataType::Uint16 => T::TypeUint16,
        DataType::Uint32 => T::TypeUint32,
        DataType::Uint64 => T::TypeUint64,
        DataType::Int8 => T::TypeInt8,
        DataType::Int16 => T::TypeInt16,
        DataType::Int32 => T::TypeInt32,
        DataType::Int64 => T::TypeInt64,
        DataType::Fp16 => T::TypeFp16,
        DataType::Fp32 => T::TypeFp32,
        DataType::Fp64 => T::TypeFp64,
        DataType::Bf16 => T::TypeBf16,
        DataType::Bytes => T::TypeString,
    }
}

fn pairs(pairs: &[(String, String)]) -> std::collections::BTreeMap<String, String> {
    pairs.iter().cloned().collect()
}

pub fn config(c: ModelConfig) -> proto::ModelConfigResponse {
    let input = |t: &ConfigTensor| proto::ModelInput {
        name: t.name.clone(),
        data_type: data_type(t.datatype).into(),
        format: proto::model_input::Format::None.into(),
        dims: t.dims.clone(),
    };
    let output = |t: &ConfigTensor| proto::ModelOutput {
        name: t.name.clone(),
        data_type: data_type(t.datatype).into(),
        dims: t.dims.clone(),
    };
    let ensemble = (!c.ensemble_steps.is_empty()).then(|| {
        proto::model_config::SchedulingChoice::EnsembleScheduling(proto::ModelEnsembling {
            step: c
                .ensemble_steps
                .iter()
                .map(|s| proto::model_ensembling::Step {
                    model_name: s.model_name.clone(),
                    model_version: s.model_version,
                    input_map: pairs(&s.input_map),
                    output_map: pairs(&s.output_map),
                })
                .collect(),
        })
    });
    proto::ModelConfigResponse {
        config: Some(proto::ModelConfig {
            input: c.inputs.iter().map(input).collect(),
            output: c.outputs.iter().map(output).collect(),
            parameters: c
                .parameters
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        proto::ModelParameter {
                            string_value: v.clone(),
                        },
                    )
                })
                .collect(),
            model_transaction_policy: Some(proto::ModelTransactionPolicy { decoupled: false }),
            scheduling_choice: ensemble,
            name: c.name,
            platform: c.platform,
            backend: c.backend,
            max_batch_size: c.max_batch_size,
        }),
    }
}

fn duration(d: StatDuration) -> Option<proto::StatisticDuration> {
    Some(proto::StatisticDuration {
        count: d.count,
        ns: d.ns,
    })
}

pub fn statistics(stats: Vec<ModelStatistics>) -> proto::ModelStatisticsResponse {
    proto::ModelStatisticsResponse {
        model_stats: stats
            .into_iter()
            .map(|s| proto::ModelStatistics {
                name: s.name,
                version: s.version,
                last_inference: s.last_inference_ms,
                inference_count: s.inference_count,
                execution_count: s.execution_count,
                inference_stats: Some(proto::InferStatistics {
                    success: duration(s.success),
                    fail: duration(s.fail),
                    queue: duration(s.queue),
                    compute_input: duration(s.compute_input),
                    compute_infer: duration(s.compute_infer),
                    compute_output: duration(s.compute_output),
                    cache_hit: duration(StatDuration::default()),
                    cache_miss: duration(StatDuration::default()),
                }),
                batch_stats: Vec::new(),
            })
            .collect(),
    }
}
