//! KServe's V1 protocol, which KServe's Python SDK and many existing callers speak, on the same
//! inference core and limits as V2: `GET /v1/models` (the names served), `GET /v1/models/{m}`
//! (`{"name", "ready"}`), and `POST /v1/models/{m}:predict` with `{"instances": [...]}` (rows:
//! arrays for a single-input model, objects by input name otherwise) or `{"inputs": ...}` (the
//! same rows, or an object of columns by input name), answering `{"predictions": [...]}`.
//!
//! Predictions are the `label` output when the model has one, else every output; the
//! `parameters.outputs` list asks for others (`["label", "probabilities"]`). With one output a
//! prediction is that output's row; with several, an object of them by name. Errors are
//! `{"error": "..."}` with the same statuses as V2.

use super::json_data::{self, JsonData};
use super::{App, read_body};
use crate::infer::{InferError, InferRequest, Protocol, RequestedOutput, Target};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use chorus_common::tensor::element_count;
use chorus_common::{Tensor, TensorSpec};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value, json};

/// The only V1 verb served; `:explain` and others answer 404.
const PREDICT: &str = ":predict";

pub async fn models(
    State(app): State<App>,
    caller: Option<axum::Extension<crate::access::Caller>>,
) -> Json<Value> {
    let caller = super::auth::caller_of(caller);
    let mut names: Vec<String> = app
        .repository_index(false)
        .into_iter()
        .map(|e| e.name)
        .filter(|name| caller.may_use(name))
        .collect();
    names.dedup();
    Json(json!({ "models": names }))
}

pub async fn model(
    State(app): State<App>,
    Path(model): Path<String>,
) -> Result<Json<Value>, InferError> {
    let ready = app.model_ready(&model, None)?;
    Ok(Json(json!({ "name": model, "ready": ready })))
}

/// Largest KServe V1 body. V1's row-shaped `instances` are read as a JSON tree (about 32 bytes
/// per number, against 2 in the body), so its bodies get a limit of their own to keep that tree
/// to a bounded size; OIP v2 bodies are decoded straight into tensors and take the full
/// `--max-body-bytes`.
pub const MAX_V1_BODY_BYTES: usize = 4 * 1024 * 1024;

pub async fn predict(
    State(app): State<App>,
    Path(target): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(model) = target.strip_suffix(PREDICT) else {
        return InferError::NotFound(format!(
            "no such endpoint: /v1/models/{target}; KServe V1 inference is POST /v1/models/<model>:predict"
        ))
        .into_response();
    };
    let credentials = super::credentials(&headers);
    let trace = super::auth::trace_context(&headers);
    let headers = &headers;
    let app = &app;
    let work = |caller| async move {
        let target = app.resolve_admissible(&caller, model, None)?;
        let limit = app.limits().max_request_bytes.min(MAX_V1_BODY_BYTES);
        let mut reserved = crate::admission::Reserved::default();
        app.reserve_bytes(&mut reserved, super::body::expected_size(headers))
            .await?;
        let body = read_body(headers, body, limit).await?;
        app.reserve_bytes(&mut reserved, body.len()).await?;
        let (request, outputs) = decode(&body, &target)?;
        let answer = app.infer(&target, request).await?;
        encode(&answer.outputs, &outputs)
    };
    app.observed(Protocol::Http, model, credentials, trace, work)
        .await
        .map(|predictions| {
            ([(header::CONTENT_TYPE, "application/json")], predictions).into_response()
        })
        .unwrap_or_else(IntoResponse::into_response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct V1Request {
    instances: Option<Value>,
    inputs: Option<Value>,
    #[serde(default)]
    parameters: V1Parameters,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct V1Parameters {
    outputs: Option<Vec<String>>,
}

fn bad(message: impl Into<String>) -> InferError {
    InferError::bad_request(message)
}

/// The V1 body as the core's request, and the outputs the predictions are made of.
fn decode(body: &[u8], target: &Target) -> Result<(InferRequest, Vec<String>), InferError> {
    let request: V1Request = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "request body is not a KServe V1 request ({{\"instances\": [...]}} or {{\"inputs\": ...}}): {e}"
        ))
    })?;
    let inputs = &target.signature().inputs;
    let columns = match (request.instances, request.inputs) {
        (Some(_), Some(_)) => return Err(bad("give `instances` or `inputs`, not both")),
        (None, None) => return Err(bad("the request has no `instances` (or `inputs`)")),
        (Some(rows), None) => rows_to_columns(rows, inputs)?,
        (None, Some(Value::Object(columns))) => columns,
        (None, Some(rows)) => rows_to_columns(rows, inputs)?,
    };
    let tensors = inputs
        .iter()
        .map(|spec| {
            let column = columns.get(&spec.name).ok_or_else(|| {
                bad(format!(
                    "input '{}' is missing: model '{}' expects inputs {:?}",
                    spec.name,
                    target.name(),
                    inputs.iter().map(|s| &s.name).collect::<Vec<_>>()
                ))
            })?;
            tensor(spec, column)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(extra) = columns
        .keys()
        .find(|k| !inputs.iter().any(|s| &s.name == *k))
    {
        return Err(bad(format!(
            "unexpected input '{extra}': model '{}' expects inputs {:?}",
            target.name(),
            inputs.iter().map(|s| &s.name).collect::<Vec<_>>()
        )));
    }
    let outputs = request
        .parameters
        .outputs
        .unwrap_or_else(|| default_outputs(&target.signature().outputs));
    let requested = outputs.iter().map(RequestedOutput::named).collect();
    let request = InferRequest {
        id: None,
        inputs: tensors,
        outputs: requested,
        timeout: None,
        priority: 0,
    };
    Ok((request, outputs))
}

/// `label` if the model has it, else every output.
fn default_outputs(outputs: &[TensorSpec]) -> Vec<String> {
    if outputs.iter().any(|o| o.name == "label") {
        vec!["label".to_string()]
    } else {
        outputs.iter().map(|o| o.name.clone()).collect()
    }
}

/// Rows (instances) as columns by input name: each row is the single input's value, or an
/// object of values by input name.
fn rows_to_columns(rows: Value, inputs: &[TensorSpec]) -> Result<Map<String, Value>, InferError> {
    let Value::Array(rows) = rows else {
        return Err(bad("`instances` must be a list with one entry per row"));
    };
    if rows.is_empty() {
        return Err(bad("the request has no rows: give at least one instance"));
    }
    let mut columns: Map<String, Value> = Map::new();
    for (index, row) in rows.into_iter().enumerate() {
        match row {
            Value::Object(fields) => {
                for (name, value) in fields {
                    push(&mut columns, name, value);
                }
            }
            value => match inputs {
                [only] => push(&mut columns, only.name.clone(), value),
                _ => {
                    return Err(bad(format!(
                        "instance {index} is not an object of inputs by name, which a model with {} inputs needs",
                        inputs.len()
                    )));
                }
            },
        }
    }
    Ok(columns)
}

fn push(columns: &mut Map<String, Value>, name: String, value: Value) {
    match columns
        .entry(name)
        .or_insert_with(|| Value::Array(Vec::new()))
    {
        Value::Array(column) => column.push(value),
        _ => unreachable!("columns are arrays"),
    }
}

/// One input's column of rows as a tensor `[rows, ...row shape]` of the input's datatype.
fn tensor(spec: &TensorSpec, column: &Value) -> Result<Tensor, InferError> {
    let shape = json_data::nested_shape(column).map_err(|e| {
        bad(format!(
            "input '{}': the rows are not all alike: {e}",
            spec.name
        ))
    })?;
    if shape.first().is_none_or(|&rows| rows == 0) {
        return Err(bad(format!(
            "input '{}' has no rows: give at least one instance",
            spec.name
        )));
    }
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let count = element_count(&spec.name, &shape).map_err(|e| bad(e.to_string()))?;
    let data = json_data::encode(&spec.name, spec.datatype, column, count).map_err(bad)?;
    Ok(Tensor {
        name: spec.name.clone(),
        datatype: spec.datatype,
        shape,
        data,
    })
}

/// `{"predictions": [...]}`: one entry per row, the row of the one output asked for, or an
/// object of each output's row by name. Values print as V2 prints them (FP32 in its shortest
/// form), so V1 and V2 answers carry the same numbers.
fn encode(outputs: &[Tensor], names: &[String]) -> Result<String, InferError> {
    let malformed =
        |e: String| InferError::Internal(format!("worker returned a malformed tensor: {e}"));
    let columns = outputs
        .iter()
        .map(|tensor| {
            let rows = tensor.shape.first().map_or(1, |&n| n.max(0) as usize);
            Ok((json_data::decode(tensor).map_err(malformed)?, rows))
        })
        .collect::<Result<Vec<_>, InferError>>()?;
    let predictions = Predictions { columns, names };
    serde_json::to_string(&predictions).map_err(|e| malformed(e.to_string()))
}

/// Each output's values with its row count, written row by row.
struct Predictions<'a> {
    columns: Vec<(JsonData, usize)>,
    names: &'a [String],
}

impl Serialize for Predictions<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let rows = self.columns.first().map_or(0, |(_, rows)| *rows);
        let entries: Vec<Entry<'_>> = (0..rows)
            .map(|row| match self.columns.as_slice() {
                [(data, rows)] => Entry::One(Row::of(data, *rows, row)),
                all => Entry::Named(
                    self.names
                        .iter()
                        .zip(all)
                        .map(|(name, (data, rows))| (name.as_str(), Row::of(data, *rows, row)))
                        .collect(),
                ),
            })
            .collect();
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("predictions", &entries)?;
        map.end()
    }
}

enum Entry<'a> {
    One(Row<'a>),
    Named(Vec<(&'a str, Row<'a>)>),
}

impl Serialize for Entry<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Entry::One(row) => row.serialize(serializer),
            Entry::Named(rows) => {
                let mut map = serializer.serialize_map(Some(rows.len()))?;
                for (name, row) in rows {
                    map.serialize_entry(name, row)?;
                }
                map.end()
            }
        }
    }
}

/// One row of an output: a scalar when rows have one value, else a list.
struct Row<'a> {
    data: &'a JsonData,
    start: usize,
    width: usize,
}

impl<'a> Row<'a> {
    fn of(data: &'a JsonData, rows: usize, row: usize) -> Self {
        let width = data.count() / rows.max(1);
        Row {
            data,
            start: row * width,
            width,
        }
    }
}

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        fn row<T: Serialize, S: Serializer>(
            values: &[T],
            start: usize,
            width: usize,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            let values = &values[start..start + width];
            match values {
                [one] => one.serialize(serializer),
                many => many.serialize(serializer),
            }
        }
        let (start, width) = (self.start, self.width);
        match self.data {
            JsonData::Bool(v) => row(v, start, width, serializer),
            JsonData::Unsigned(v) => row(v, start, width, serializer),
            JsonData::Signed(v) => row(v, start, width, serializer),
            JsonData::Fp32(v) => row(v, start, width, serializer),
            JsonData::Fp64(v) => row(v, start, width, serializer),
            JsonData::Text(v) => row(v, start, width, serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Signature;
    use chorus_common::DataType;
    use chorus_common::validate::InputPolicy;

    fn target() -> Target {
        let spec = |name: &str, datatype, shape: Vec<i64>| TensorSpec {
            name: name.into(),
            datatype,
            shape,
        };
        let signature = Signature {
            inputs: vec![spec("input", DataType::Fp32, vec![-1, 2])],
            outputs: vec![
                spec("label", DataType::Int64, vec![-1]),
                spec("probabilities", DataType::Fp32, vec![-1, 3]),
            ],
            policy: InputPolicy {
                allow_non_finite: false,
                max_elements: 1 << 20,
            },
            labels: Vec::new(),
        };
        Target::Model {
            info: crate::testing::model_info("m"),
            pinned: None,
            signature,
        }
    }

    #[test]
    fn instances_become_one_tensor_and_labels_are_the_default() {
        let (request, outputs) =
            decode(br#"{"instances": [[1, 2], [3, 4], [5, 6]]}"#, &target()).unwrap();
        assert_eq!(request.inputs[0].shape, vec![3, 2]);
        assert_eq!(
            request.inputs[0].to_values::<f32>().unwrap(),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        assert_eq!(outputs, ["label"]);
        let (request, _) = decode(br#"{"inputs": {"input": [[1, 2]]}}"#, &target()).unwrap();
        assert_eq!(request.inputs[0].shape, vec![1, 2]);
        let (_, outputs) = decode(
            br#"{"instances": [{"input": [1, 2]}], "parameters": {"outputs": ["label", "probabilities"]}}"#,
            &target(),
        )
        .unwrap();
        assert_eq!(outputs, ["label", "probabilities"]);
    }

    #[test]
    fn ragged_or_malformed_bodies_say_what_is_wrong() {
        let error = |body: &str| decode(body.as_bytes(), &target()).unwrap_err().to_string();
        assert!(error(r#"{"instances": [[1, 2], [3]]}"#).contains("not all alike"));
        assert!(error(r#"{"instances": []}"#).contains("no rows"));
        assert!(error(r#"{"instances": [["a", "b"]]}"#).contains("a number"));
        assert!(error(r#"{"rows": []}"#).contains("not a KServe V1 request"));
        assert!(error(r#"{"instances": [[1, 2]], "inputs": [[1, 2]]}"#).contains("not both"));
        assert!(error(r#"{"inputs": {"other": [[1, 2]]}}"#).contains("input 'input' is missing"));
        assert!(error(r#"{"instances": 5}"#).contains("must be a list"));
    }

    #[test]
    fn predictions_are_rows_or_objects_of_rows() {
        let label = Tensor::from_values("label", vec![2], &[7i64, 1]);
        let probabilities =
            Tensor::from_values("probabilities", vec![2, 2], &[0.25f32, 0.75, 1.0, 0.0]);
        let parse = |text: String| serde_json::from_str::<Value>(&text).unwrap();
        assert_eq!(
            encode(std::slice::from_ref(&label), &["label".into()]).unwrap(),
            r#"{"predictions":[7,1]}"#
        );
        assert_eq!(
            parse(
                encode(
                    &[label, probabilities],
                    &["label".into(), "probabilities".into()]
                )
                .unwrap()
            ),
            json!({"predictions": [
                {"label": 7, "probabilities": [0.25, 0.75]},
                {"label": 1, "probabilities": [1.0, 0.0]}
            ]})
        );
    }
}
