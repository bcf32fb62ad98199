//! `POST /v2/models/{ensemble}/feedback` (ground truth for earlier answers, behind the API keys
//! like inference) and, on the admin port, `POST /chorus/ensembles/{name}/weights/{action}`
//! (freeze, unfreeze, reset). docs/data.md describes both.

use super::{App, read_body};
use crate::feedback::{Item, Record};
use crate::infer::InferError;
use crate::spec::EnsembleSpec;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};
use std::sync::Arc;

fn ensemble(app: &App, name: &str) -> Result<Arc<EnsembleSpec>, InferError> {
    app.catalog()
        .ensemble(name)
        .ok_or_else(|| InferError::NotFound(format!("no ensemble '{name}' is served")))
}

pub async fn feedback(
    State(app): State<App>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, InferError> {
    // An unknown ensemble is a 404 before the body is read.
    ensemble(&app, &model)?;
    let body = read_body(&headers, body, app.limits().max_request_bytes).await?;
    let counts = crate::feedback::submit(&app, &model, parse(&body)).await?;
    Ok(Json(
        serde_json::to_value(counts).expect("counts serialise"),
    ))
}

/// `{"id": "...", "label": 3}`, `{"id": "...", "label": [3, 1]}` or
/// `{"feedback": [{"id": ..., "label": ...}, ...]}`.
fn parse(body: &[u8]) -> Result<Vec<Item>, InferError> {
    let bad = |m: String| InferError::BadRequest(format!("feedback body: {m}"));
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let items = match value.get("feedback") {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(_) => {
            return Err(bad(
                "`feedback` must be an array of {\"id\", \"label\"}".into()
            ));
        }
        None => vec![&value],
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| item_of(item).map_err(|m| bad(format!("item {i}: {m}"))))
        .collect()
}

fn item_of(item: &Value) -> Result<Item, String> {
    let Value::Object(fields) = item else {
        return Err("must be an object with `id` and `label`".into());
    };
    if let Some(other) = fields.keys().find(|k| *k != "id" && *k != "label") {
        return Err(format!("unknown field `{other}`; send `id` and `label`"));
    }
    let id = match fields.get("id") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        _ => return Err("`id` must be the request id answered (a non-empty string)".into()),
    };
    let class = |v: &Value| {
        v.as_i64()
            .filter(|c| *c >= 0)
            .ok_or_else(|| format!("`label` must be a class index (an integer ≥ 0), not {v}"))
    };
    let labels = match fields.get("label") {
        Some(Value::Array(values)) if !values.is_empty() => {
            values.iter().map(class).collect::<Result<Vec<_>, _>>()?
        }
        Some(value @ Value::Number(_)) => vec![class(value)?],
        _ => {
            return Err(
                "`label` must be a class index, or an array of them for a request of several rows"
                    .into(),
            );
        }
    };
    Ok(Item { id, labels })
}

/// What the admin endpoints and `/chorus/ensembles` show of an ensemble's online weights.
pub fn weights_json(spec: &EnsembleSpec, record: &Record) -> Value {
    let weights: serde_json::Map<String, Value> = spec
        .members
        .iter()
        .zip(&record.weights)
        .map(|(m, w)| (m.model.clone(), json!(w)))
        .collect();
    let online = spec.online.expect("only online ensembles have a record");
    json!({
        "weights": weights,
        "frozen": record.frozen,
        "rows": record.rows,
        "generation": record.generation,
        "learning_rate": online.learning_rate,
        "weight_floor": online.floor,
    })
}

/// `freeze`, `unfreeze` or `reset` an online ensemble's weights.
pub async fn control(
    State(app): State<App>,
    Path((name, action)): Path<(String, String)>,
) -> Result<Json<Value>, InferError> {
    let spec = ensemble(&app, &name)?;
    let feedback = app.feedback();
    let record = match action.as_str() {
        "freeze" => feedback.freeze(&spec, true)?,
        "unfreeze" => feedback.freeze(&spec, false)?,
        "reset" => feedback.reset(&spec)?,
        other => {
            return Err(InferError::NotFound(format!(
                "no weights action '{other}': use freeze, unfreeze or reset"
            )));
        }
    };
    Ok(Json(weights_json(&spec, &record)))
}

/// Adds an online ensemble's current weights to its metadata `parameters` (as a string:
/// OIP parameter values are scalars).
pub fn annotate(app: &App, name: &str, metadata: &mut Value) {
    let Some(spec) = app.catalog().ensemble(name) else {
        return;
    };
    let Some(record) = app.feedback().weights(&spec) else {
        return;
    };
    let weights: Vec<String> = spec
        .members
        .iter()
        .zip(&record.weights)
        .map(|(m, w)| format!("{}={w:.6}", m.model))
        .collect();
    if let Some(parameters) = metadata["parameters"].as_object_mut() {
        parameters.insert("weights".into(), json!("online"));
        parameters.insert("member_weights".into(), json!(weights.join(",")));
        parameters.insert("weights_frozen".into(), json!(record.frozen));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_as_one_item_or_a_batch() {
        let one = parse(br#"{"id": "a", "label": 3}"#).unwrap();
        assert_eq!(
            one,
            vec![Item {
                id: "a".into(),
                labels: vec![3]
            }]
        );
        let batch =
            parse(br#"{"feedback": [{"id": "a", "label": [1, 2]}, {"id": "b", "label": 0}]}"#)
                .unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].labels, vec![1, 2]);
    }

    #[test]
    fn malformed_bodies_say_what_is_wrong() {
        let message = |body: &str| parse(body.as_bytes()).unwrap_err().to_string();
        assert!(message("{").contains("not valid JSON"));
        assert!(message(r#"{"label": 1}"#).contains("`id`"));
        assert!(message(r#"{"id": "a"}"#).contains("`label`"));
        assert!(message(r#"{"id": "a", "label": -1}"#).contains("class index"));
        assert!(message(r#"{"id": "a", "label": "cat"}"#).contains("`label`"));
        assert!(message(r#"{"id": "a", "label": 1, "extra": 2}"#).contains("extra"));
        assert!(message(r#"{"feedback": {"id": "a"}}"#).contains("array"));
        assert!(message(r#"{"feedback": [{"id": "a", "label": 1}, 7]}"#).contains("item 1"));
    }
}
