//! Encoding an infer response: JSON tensors, or the binary tensor extension for outputs the
//! client asked to receive as raw bytes.

use super::error::ApiError;
use super::json_data::{self, JsonData};
use super::request::{HEADER_LENGTH, RequestedOutput};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chorus_common::Tensor;
use serde::Serialize;
use serde_json::{Map, Value};

#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    parameters: Map<String, Value>,
    outputs: Vec<OutputJson<'a>>,
}

#[derive(Serialize)]
struct OutputJson<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData>,
}

/// Everything that goes into one infer response.
pub struct InferResponse<'a> {
    pub model_name: &'a str,
    pub model_version: &'a str,
    pub id: Option<&'a str>,
    pub parameters: Map<String, Value>,
    /// Outputs in the order the client will see them (already filtered to those requested).
    pub outputs: Vec<Tensor>,
}

/// Picks and orders outputs: the requested ones in request order, or all of them.
pub fn select_outputs(
    all: Vec<Tensor>,
    requested: &[RequestedOutput],
) -> Result<Vec<Tensor>, ApiError> {
    if requested.is_empty() {
        return Ok(all);
    }
    requested
        .iter()
        .map(|r| {
            all.iter()
                .find(|t| t.name == r.name)
                .cloned()
                .ok_or_else(|| {
                    ApiError::Internal(format!(
                        "the model did not produce requested output '{}'",
                        r.name
                    ))
                })
        })
        .collect()
}

/// Encodes the response; each output goes binary if its own `binary_data` says so, else if the
/// request-level `binary_data_output` does.
pub fn encode(
    response: InferResponse<'_>,
    requested: &[RequestedOutput],
    binary_default: bool,
) -> Result<Response, ApiError> {
    let wants_binary = |name: &str| {
        requested
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.binary)
            .unwrap_or(binary_default)
    };
    let mut binary_parts: Vec<&[u8]> = Vec::new();
    let mut outputs = Vec::with_capacity(response.outputs.len());
    for tensor in &response.outputs {
        let (parameters, data) = if wants_binary(&tensor.name) {
            tensor.check_byte_size().map_err(|e| {
                ApiError::Internal(format!("worker returned a malformed tensor: {e}"))
            })?;
            binary_parts.push(&tensor.data);
            let mut p = Map::new();
            p.insert("binary_data_size".into(), Value::from(tensor.data.len()));
            (Some(p), None)
        } else {
            let data = json_data::decode(tensor).map_err(|e| {
                ApiError::Internal(format!("worker returned a malformed tensor: {e}"))
            })?;
            (None, Some(data))
        };
        outputs.push(OutputJson {
            name: &tensor.name,
            datatype: tensor.datatype.as_str(),
            shape: &tensor.shape,
            parameters,
            data,
        });
    }
    let json = ResponseJson {
        model_name: response.model_name,
        model_version: response.model_version,
        id: response.id,
        parameters: response.parameters,
        outputs,
    };
    let header_json = serde_json::to_vec(&json)
        .map_err(|e| ApiError::Internal(format!("cannot encode response: {e}")))?;
    if binary_parts.is_empty() {
        return Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            header_json,
        )
            .into_response());
    }
    let header_length = header_json.len();
    let mut body = header_json;
    body.reserve(binary_parts.iter().map(|p| p.len()).sum());
    for part in binary_parts {
        body.extend_from_slice(part);
    }
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                header::HeaderName::from_static(HEADER_LENGTH),
                HeaderValue::from(header_length),
            ),
        ],
        body,
    )
        .into_response())
}
