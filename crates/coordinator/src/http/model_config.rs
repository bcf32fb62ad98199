//! Triton's model configuration extension over REST: `GET /v2/models/{m}[/versions/{v}]/config`
//! answers the configuration as Triton prints it (protobuf field names, numbers as numbers).

use super::App;
use crate::infer::InferError;
use crate::infer::model_config::{ConfigTensor, ModelConfig, triton_type_name};
use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Map, Value, json};

pub async fn config(
    State(app): State<App>,
    Path(model): Path<String>,
) -> Result<Json<Value>, InferError> {
    app.model_config(&model, None).map(|c| Json(to_json(&c)))
}

pub async fn config_version(
    State(app): State<App>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, InferError> {
    app.model_config(&model, Some(&version))
        .map(|c| Json(to_json(&c)))
}

fn tensor(t: &ConfigTensor, is_input: bool) -> Value {
    let mut v = json!({
        "name": t.name,
        "data_type": triton_type_name(t.datatype),
        "dims": t.dims,
    });
    if is_input {
        v["format"] = json!("FORMAT_NONE");
        v["optional"] = json!(false);
        v["is_shape_tensor"] = json!(false);
    }
    v
}

fn map(pairs: &[(String, String)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect()
}

pub fn to_json(c: &ModelConfig) -> Value {
    let mut v = json!({
        "name": c.name,
        "platform": c.platform,
        "backend": c.backend,
        "max_batch_size": c.max_batch_size,
        "input": c.inputs.iter().map(|t| tensor(t, true)).collect::<Vec<_>>(),
        "output": c.outputs.iter().map(|t| tensor(t, false)).collect::<Vec<_>>(),
        "parameters": c.parameters.iter()
            .map(|(k, value)| (k.clone(), json!({"string_value": value})))
            .collect::<Map<_, _>>(),
        "model_transaction_policy": {"decoupled": false},
    });
    if !c.ensemble_steps.is_empty() {
        v["ensemble_scheduling"] = json!({
            "step": c.ensemble_steps.iter().map(|s| json!({
                "model_name": s.model_name,
                "model_version": s.model_version,
                "input_map": map(&s.input_map),
                "output_map": map(&s.output_map),
            })).collect::<Vec<_>>(),
        });
    }
    v
}
