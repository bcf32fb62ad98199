//! Encoding the core's answer as an OIP v2 REST response: JSON tensors, or the binary tensor
//! extension for outputs the client asked to receive as raw bytes.

use super::json_data::{self, JsonData};
use super::request::{HEADER_LENGTH, OutputEncoding};
use crate::infer::{InferAnswer, InferError, ParameterValue};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::{Map, Value};

#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    model_version: &'a str,
    id: &'a str,
    #[serde(skip_serializing_if = "Parameters::is_empty")]
    parameters: Parameters<'a>,
    outputs: Vec<OutputJson<'a>>,
}

/// Response parameters as a JSON object, in the core's (sorted) order.
struct Parameters<'a>(&'a [(&'static str, ParameterValue)]);

impl Parameters<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Parameters<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            match value {
                ParameterValue::Bool(b) => map.serialize_entry(name, b)?,
                ParameterValue::Text(t) => map.serialize_entry(name, t)?,
            }
        }
        map.end()
    }
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

fn malformed(e: impl std::fmt::Display) -> InferError {
    InferError::Internal(format!("worker returned a malformed tensor: {e}"))
}

/// Encodes the answer; each output goes binary or JSON as `encoding` says.
pub fn encode(answer: InferAnswer, encoding: &OutputEncoding) -> Result<Response, InferError> {
    let mut binary_parts: Vec<&[u8]> = Vec::new();
    let mut outputs = Vec::with_capacity(answer.outputs.len());
    for tensor in &answer.outputs {
        let (parameters, data) = if encoding.binary(&tensor.name) {
            tensor.check_byte_size().map_err(malformed)?;
            binary_parts.push(&tensor.data);
            let mut p = Map::new();
            p.insert("binary_data_size".into(), Value::from(tensor.data.len()));
            (Some(p), None)
        } else {
            (None, Some(json_data::decode(tensor).map_err(malformed)?))
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
        model_name: &answer.model_name,
        model_version: &answer.model_version,
        id: &answer.id,
        parameters: Parameters(&answer.parameters),
        outputs,
    };
    let header_json = serde_json::to_vec(&json)
        .map_err(|e| InferError::Internal(format!("cannot encode response: {e}")))?;
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
