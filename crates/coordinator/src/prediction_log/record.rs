//! The prediction log's line format: one [`Record`] per answered request, as one JSON object
//! per line (docs/data.md has the field list). Tensors keep OIP v2's JSON shape (`name`,
//! `datatype`, `shape`, `data` as numbers or strings) so that a record's input can be replayed
//! as a request; `BYTES` elements that are not UTF-8 come as `data_base64` (the raw tensor
//! bytes in the OIP binary layout) instead.

use super::entry::Entry;
use super::time;
use chorus_common::tensor::Element;
use chorus_common::{DataType, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::UNIX_EPOCH;

/// One logged ensemble answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The request id: the client's, or the coordinator's (unique across coordinators).
    pub id: String,
    /// When the answer was ready, RFC 3339 in UTC with milliseconds.
    pub time: String,
    /// The same instant in milliseconds since the Unix epoch.
    pub unix_ms: i64,
    pub ensemble: String,
    pub ensemble_version: String,
    /// `http` or `grpc`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// The API key id the caller presented; `null` without `--api-keys`.
    #[serde(default)]
    pub key: Option<String>,
    /// From the start of the fan-out to the combined answer, in microseconds.
    pub latency_us: u64,
    /// The request's inputs; absent when the spec sets `log_inputs = false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<TensorRecord>>,
    /// XXH3-128 of the inputs (prediction_log/input_hash.rs), present even without `inputs`;
    /// `None` only when read back from a file written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_hash: Option<String>,
    /// Every member of the spec, in spec order, with its output when it answered.
    pub members: Vec<MemberRecord>,
    /// The combined answer's outputs.
    pub outputs: Vec<TensorRecord>,
    /// Member models that contributed, failed, were late, retried and hedged (as in the
    /// response's `parameters`).
    pub used: Vec<String>,
    pub failed: Vec<String>,
    pub late: Vec<String>,
    pub retried: Vec<String>,
    pub hedged: Vec<String>,
}

/// One member of the ensemble in a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub model: String,
    /// The version the spec pins; `null` for "the newest a replica serves".
    pub version: Option<String>,
    /// `used`, `failed` or `late`.
    pub status: String,
    /// Its `member_output` tensor, when it answered.
    pub output: Option<TensorRecord>,
}

/// A tensor in a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorRecord {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    /// The values, flat in row-major order: numbers, booleans or (for `BYTES`) strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// The raw bytes, base64, when `data` cannot hold them (non-UTF-8 `BYTES`, or bytes that do
    /// not match the shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
}

impl Record {
    /// Encodes an entry (on the writer thread).
    pub fn of(entry: &Entry) -> Record {
        let since_epoch = entry.time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let unix_ms = since_epoch.as_millis() as i64;
        let spec = &entry.spec;
        let report = &entry.report;
        let members = spec
            .members
            .iter()
            .enumerate()
            .map(|(index, member)| {
                let output = entry
                    .members
                    .iter()
                    .find(|(i, _)| *i == index)
                    .map(|(_, t)| TensorRecord::of(t));
                let status = match &output {
                    Some(_) => "used",
                    None if report.late.contains(&member.model) => "late",
                    None => "failed",
                };
                MemberRecord {
                    model: member.model.clone(),
                    version: member.version.clone(),
                    status: status.to_string(),
                    output,
                }
            })
            .collect();
        Record {
            id: entry.id.clone(),
            time: time::format_rfc3339_ms(unix_ms),
            unix_ms,
            ensemble: spec.name.clone(),
            ensemble_version: spec.version.clone(),
            protocol: entry.protocol.map(|p| p.as_str().to_string()),
            key: entry
                .caller
                .as_ref()
                .and_then(|c| c.key())
                .map(|k| k.id.clone()),
            latency_us: entry.latency.as_micros().min(u64::MAX as u128) as u64,
            inputs: entry
                .inputs
                .as_ref()
                .filter(|_| entry.keep_inputs)
                .map(|inputs| inputs.iter().map(TensorRecord::of).collect()),
            input_hash: entry
                .inputs
                .as_deref()
                .map(|inputs| super::input_hash::hex(super::input_hash::input_hash(inputs))),
            members,
            outputs: entry.outputs.iter().map(TensorRecord::of).collect(),
            used: report.used.clone(),
            failed: report.failed.clone(),
            late: report.late.clone(),
            retried: report.retried.clone(),
            hedged: report.hedged.clone(),
        }
    }

    /// The record as one JSON line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("records are plain data");
        line.push(b'\n');
        line
    }
}

impl TensorRecord {
    pub fn of(tensor: &Tensor) -> TensorRecord {
        let (data, data_base64) = match values(tensor) {
            Some(values) => (Some(values), None),
            None => (None, Some(base64(&tensor.data))),
        };
        TensorRecord {
            name: tensor.name.clone(),
            datatype: tensor.datatype.as_str().to_string(),
            shape: tensor.shape.clone(),
            data,
            data_base64,
        }
    }
}

/// The tensor's values as a flat JSON array, or `None` when they cannot be (bytes that do not
/// match the shape, `BYTES` elements that are not UTF-8).
fn values(tensor: &Tensor) -> Option<Value> {
    fn typed<T: Element + Serialize>(tensor: &Tensor) -> Option<Value> {
        serde_json::to_value(tensor.to_values::<T>().ok()?).ok()
    }
    fn widened<T: Element + Into<f32>>(tensor: &Tensor) -> Option<Value> {
        let values: Vec<f32> = tensor
            .to_values::<T>()
            .ok()?
            .into_iter()
            .map(Into::into)
            .collect();
        serde_json::to_value(values).ok()
    }
    match tensor.datatype {
        DataType::Bool => {
            tensor.check_byte_size().ok()?;
            let bools: Vec<bool> = tensor.data.iter().map(|&b| b != 0).collect();
            serde_json::to_value(bools).ok()
        }
        DataType::Uint8 => typed::<u8>(tensor),
        DataType::Uint16 => typed::<u16>(tensor),
        DataType::Uint32 => typed::<u32>(tensor),
        DataType::Uint64 => typed::<u64>(tensor),
        DataType::Int8 => typed::<i8>(tensor),
        DataType::Int16 => typed::<i16>(tensor),
        DataType::Int32 => typed::<i32>(tensor),
        DataType::Int64 => typed::<i64>(tensor),
        DataType::Fp16 => widened::<half::f16>(tensor),
        DataType::Bf16 => widened::<half::bf16>(tensor),
        DataType::Fp32 => typed::<f32>(tensor),
        DataType::Fp64 => typed::<f64>(tensor),
        DataType::Bytes => {
            let strings = tensor
                .bytes_elements()
                .ok()?
                .into_iter()
                .map(|b| std::str::from_utf8(b).ok())
                .collect::<Option<Vec<&str>>>()?;
            serde_json::to_value(strings).ok()
        }
    }
}

/// Standard base64 with padding (RFC 4648), as JSON carries raw bytes.
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ensemble::MemberReport;
    use crate::spec::parse;
    use chorus_common::tensor::encode_bytes_elements;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    fn entry() -> Entry {
        let text = "version = 1\n[[ensemble]]\nname = \"e\"\ncombiner = \"soft_vote\"\ndeadline_ms = 100\nmin_members = 1\n[[ensemble.member]]\nmodel = \"a\"\nversion = \"2\"\n[[ensemble.member]]\nmodel = \"b\"\n[[ensemble.member]]\nmodel = \"c\"\n";
        let spec = Arc::new(parse(text, "t").unwrap().remove(0));
        Entry {
            id: "req-1".into(),
            time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            spec,
            protocol: Some(crate::infer::Protocol::Grpc),
            caller: None,
            inputs: Some(vec![Tensor::from_values(
                "input",
                vec![1, 2],
                &[0.5f32, 1.0],
            )]),
            keep_inputs: true,
            members: vec![(
                0,
                Tensor::from_values("probabilities", vec![1, 2], &[0.25f32, 0.75]),
            )],
            outputs: vec![
                Tensor::from_values("probabilities", vec![1, 2], &[0.25f32, 0.75]),
                Tensor::from_values("label", vec![1], &[1i64]),
            ],
            report: MemberReport {
                used: vec!["a".into()],
                failed: vec!["b".into()],
                late: vec!["c".into()],
                retried: vec![],
                hedged: vec!["a".into()],
            },
            latency: Duration::from_micros(1500),
        }
    }

    #[test]
    fn a_record_names_every_member_and_keeps_values_as_numbers() {
        let record = Record::of(&entry());
        let line = String::from_utf8(record.to_line()).unwrap();
        assert!(
            line.ends_with('\n') && line.matches('\n').count() == 1,
            "{line}"
        );
        let json: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["id"], "req-1");
        assert_eq!(json["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(json["unix_ms"], 1_700_000_000_123i64);
        assert_eq!(json["ensemble"], "e");
        assert_eq!(json["ensemble_version"], "1");
        assert_eq!(json["protocol"], "grpc");
        assert_eq!(json["key"], Value::Null);
        assert_eq!(json["latency_us"], 1500);
        assert_eq!(json["inputs"][0]["data"], serde_json::json!([0.5, 1.0]));
        assert_eq!(json["inputs"][0]["shape"], serde_json::json!([1, 2]));
        let members = json["members"].as_array().unwrap();
        assert_eq!(members.len(), 3);
        assert_eq!(members[0]["version"], "2");
        assert_eq!(members[0]["status"], "used");
        assert_eq!(
            members[0]["output"]["data"],
            serde_json::json!([0.25, 0.75])
        );
        assert_eq!(members[1]["status"], "failed");
        assert_eq!(members[1]["output"], Value::Null);
        assert_eq!(members[2]["status"], "late");
        assert_eq!(json["outputs"][1]["data"], serde_json::json!([1]));
        assert_eq!(json["hedged"], serde_json::json!(["a"]));
        // Reads back into the same record.
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), record);
    }

    #[test]
    fn inputs_are_left_out_when_not_kept() {
        let mut entry = entry();
        entry.keep_inputs = false;
        let line = String::from_utf8(Record::of(&entry).to_line()).unwrap();
        assert!(!line.contains("\"inputs\""), "{line}");
        assert!(!line.contains("0.5"), "{line}");
        let json: Value = serde_json::from_str(&line).unwrap();
        let hash = super::super::input_hash::input_hash(entry.inputs.as_deref().unwrap());
        assert_eq!(json["input_hash"], format!("{hash:032x}"));
    }

    #[test]
    fn bytes_are_strings_or_base64() {
        let text = Tensor {
            name: "s".into(),
            datatype: DataType::Bytes,
            shape: vec![2],
            data: encode_bytes_elements([&b"hi"[..], b""]),
        };
        let record = TensorRecord::of(&text);
        assert_eq!(record.data, Some(serde_json::json!(["hi", ""])));
        let binary = Tensor {
            data: encode_bytes_elements([&[0xffu8, 0xfe][..]]),
            shape: vec![1],
            ..text
        };
        let record = TensorRecord::of(&binary);
        assert_eq!(record.data, None);
        assert_eq!(record.data_base64.as_deref(), Some("AgAAAP/+"));
        let short = Tensor {
            name: "x".into(),
            datatype: DataType::Fp32,
            shape: vec![2],
            data: bytes::Bytes::from_static(&[0, 0, 128, 63]),
        };
        assert_eq!(
            TensorRecord::of(&short).data_base64.as_deref(),
            Some("AACAPw==")
        );
        let _ = SystemTime::now();
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }
}
