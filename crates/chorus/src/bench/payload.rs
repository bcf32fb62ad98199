//! Request payloads, encoded once before a run: the fixture's real rows in JSON or binary-extension
//! bodies, or as gRPC messages with typed or raw contents (and as tensors for the floor), plus the
//! labels each one should get back.

use super::args::{Compression, Encoding, Protocol};
use anyhow::{Context, bail};
use bytes::Bytes;
use chorus_common::Tensor;
use chorus_coordinator::grpc::proto::model_infer_request::InferInputTensor;
use chorus_coordinator::grpc::proto::{InferTensorContents, ModelInferRequest};
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::Path;

/// The fixture file's fields that the benchmark reads.
#[derive(Debug, Deserialize)]
struct FixtureFile {
    x: Vec<Vec<f32>>,
    #[serde(default)]
    models: serde_json::Map<String, Value>,
    #[serde(default)]
    ensembles: serde_json::Map<String, Value>,
}

/// Input rows and, when the fixture knows the model, its expected label per row.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub rows: Vec<Vec<f32>>,
    pub labels: Option<Vec<i64>>,
}

impl Fixture {
    pub fn load(path: &Path, model: &str) -> anyhow::Result<Fixture> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the fixture {}", path.display()))?;
        let file: FixtureFile = serde_json::from_str(&text)
            .with_context(|| format!("fixture {} has no `x` rows", path.display()))?;
        let labels = file
            .ensembles
            .get(model)
            .or_else(|| file.models.get(model))
            .and_then(|entry| serde_json::from_value::<Vec<i64>>(entry["label"].clone()).ok());
        Fixture::new(file.x, labels)
    }

    pub fn new(rows: Vec<Vec<f32>>, labels: Option<Vec<i64>>) -> anyhow::Result<Fixture> {
        let Some(width) = rows.first().map(Vec::len) else {
            bail!("the fixture has no input rows");
        };
        if width == 0 || rows.iter().any(|r| r.len() != width) {
            bail!("the fixture's rows must all have the same, non-zero, number of features");
        }
        let labels = labels.filter(|l| l.len() == rows.len());
        Ok(Fixture { rows, labels })
    }

    pub fn features(&self) -> usize {
        self.rows[0].len()
    }

    /// Row indices of batch `index` of `rows` rows: consecutive, wrapping around the fixture.
    fn batch(&self, index: usize, rows: usize) -> impl Iterator<Item = usize> + '_ {
        (0..rows).map(move |r| (index * rows + r) % self.rows.len())
    }

    /// How many distinct batches of `rows` rows cover every fixture row once.
    fn batch_count(&self, rows: usize) -> usize {
        self.rows.len().div_ceil(rows)
    }

    fn expected(&self, index: usize, rows: usize) -> Option<Vec<i64>> {
        let labels = self.labels.as_ref()?;
        Some(self.batch(index, rows).map(|i| labels[i]).collect())
    }

    fn values(&self, index: usize, rows: usize) -> Vec<f32> {
        self.batch(index, rows)
            .flat_map(|i| self.rows[i].iter().copied())
            .collect()
    }

    /// Every distinct HTTP body of `rows` rows in `encoding`.
    pub fn bodies(&self, rows: usize, encoding: Encoding, input: &str) -> Vec<Payload> {
        self.payloads(rows, Protocol::Http, encoding, Compression::None, "", input)
    }

    /// Every distinct request of `rows` rows for `model`, in `protocol` and `encoding`.
    pub fn payloads(
        &self,
        rows: usize,
        protocol: Protocol,
        encoding: Encoding,
        compression: Compression,
        model: &str,
        input: &str,
    ) -> Vec<Payload> {
        (0..self.batch_count(rows))
            .map(|index| {
                let values = self.values(index, rows);
                let shape = [rows, self.features()];
                let wire = match (protocol, encoding) {
                    (Protocol::Http, Encoding::Json) => {
                        Wire::http(json_body(input, shape, &values), None, compression)
                    }
                    (Protocol::Http, Encoding::Binary) => {
                        let (body, length) = binary_body(input, shape, &values);
                        Wire::http(body, Some(length), compression)
                    }
                    (Protocol::Grpc, encoding) => {
                        let request = grpc_request(model, input, shape, &values, encoding);
                        Wire::Grpc(super::grpc_client::frame(&prost::Message::encode_to_vec(
                            &request,
                        )))
                    }
                };
                Payload {
                    wire,
                    rows,
                    expected: self.expected(index, rows),
                }
            })
            .collect()
    }

    /// Every distinct input tensor of `rows` rows, for the floor.
    pub fn tensors(&self, rows: usize, input: &str) -> Vec<(Tensor, Option<Vec<i64>>)> {
        (0..self.batch_count(rows))
            .map(|index| {
                let shape = vec![rows as i64, self.features() as i64];
                let tensor = Tensor::from_values(input, shape, &self.values(index, rows));
                (tensor, self.expected(index, rows))
            })
            .collect()
    }
}

/// One pre-encoded request.
#[derive(Debug, Clone)]
pub struct Payload {
    pub wire: Wire,
    pub rows: usize,
    /// The labels a correct answer carries, when the fixture has them.
    pub expected: Option<Vec<i64>>,
}

/// A request as it goes on the wire.
#[derive(Debug, Clone)]
pub enum Wire {
    Http {
        body: Bytes,
        /// `Inference-Header-Content-Length` for binary bodies (of the uncompressed body).
        header_length: Option<usize>,
        /// The body's `Content-Encoding`, also sent as `Accept-Encoding`.
        coding: Option<&'static str>,
    },
    /// A `ModelInferRequest`, encoded and framed once.
    Grpc(Bytes),
}

impl Wire {
    /// An HTTP body, compressed as asked.
    fn http(body: Bytes, header_length: Option<usize>, compression: Compression) -> Wire {
        let body = match compression {
            Compression::None => body,
            coding => Bytes::from(coding.compress(&body)),
        };
        Wire::Http {
            body,
            header_length,
            coding: compression.token(),
        }
    }
}

/// A `ModelInferRequest`: `binary` sends raw contents, `json` typed `fp32_contents`.
fn grpc_request(
    model: &str,
    input: &str,
    shape: [usize; 2],
    values: &[f32],
    encoding: Encoding,
) -> ModelInferRequest {
    let mut tensor = InferInputTensor {
        name: input.into(),
        datatype: "FP32".into(),
        shape: shape.iter().map(|&d| d as i64).collect(),
        ..Default::default()
    };
    let mut raw = Vec::new();
    match encoding {
        Encoding::Json => {
            tensor.contents = Some(InferTensorContents {
                fp32_contents: values.to_vec(),
                ..Default::default()
            });
        }
        Encoding::Binary => {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            raw.push(Bytes::from(bytes));
        }
    }
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![tensor],
        raw_input_contents: raw,
        ..Default::default()
    }
}

fn json_body(input: &str, shape: [usize; 2], values: &[f32]) -> Bytes {
    let body = json!({
        "inputs": [{"name": input, "shape": shape, "datatype": "FP32", "data": values}],
    });
    Bytes::from(serde_json::to_vec(&body).expect("a JSON value encodes"))
}

/// A binary-extension body asking for every output in binary; returns it with its JSON length.
fn binary_body(input: &str, shape: [usize; 2], values: &[f32]) -> (Bytes, usize) {
    let header = json!({
        "inputs": [{
            "name": input, "shape": shape, "datatype": "FP32",
            "parameters": {"binary_data_size": values.len() * 4},
        }],
        "parameters": {"binary_data_output": true},
    });
    let mut body = serde_json::to_vec(&header).expect("a JSON value encodes");
    let length = body.len();
    for v in values {
        body.extend_from_slice(&v.to_le_bytes());
    }
    (Bytes::from(body), length)
}

/// The `label` output of an OIP v2 answer, JSON or binary extension (`header_length` from the
/// response's `Inference-Header-Content-Length`). `None` when the answer has no readable label.
pub fn answer_labels(body: &[u8], header_length: Option<usize>) -> Option<Vec<i64>> {
    let json_end = header_length.unwrap_or(body.len());
    let header: Value = serde_json::from_slice(body.get(..json_end)?).ok()?;
    let mut offset = json_end;
    for output in header["outputs"].as_array()? {
        let binary_size = output["parameters"]["binary_data_size"]
            .as_u64()
            .map(|n| n as usize);
        if output["name"] == "label" {
            return match binary_size {
                Some(size) => {
                    let bytes = body.get(offset..offset.checked_add(size)?)?;
                    Some(
                        bytes
                            .chunks_exact(8)
                            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                            .collect(),
                    )
                }
                None => output["data"]
                    .as_array()?
                    .iter()
                    .map(Value::as_i64)
                    .collect(),
            };
        }
        offset = offset.checked_add(binary_size.unwrap_or(0))?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Fixture {
        let rows = (0..5).map(|i| vec![i as f32, 0.5]).collect();
        Fixture::new(rows, Some(vec![10, 11, 12, 13, 14])).unwrap()
    }

    #[test]
    fn batches_wrap_and_cover_every_row() {
        let f = fixture();
        let bodies = f.bodies(2, Encoding::Json, "input");
        assert_eq!(bodies.len(), 3);
        let expected: Vec<_> = bodies.iter().map(|b| b.expected.clone().unwrap()).collect();
        assert_eq!(expected, [vec![10, 11], vec![12, 13], vec![14, 10]]);
        assert_eq!(f.bodies(1, Encoding::Json, "input").len(), 5);
        assert_eq!(f.bodies(32, Encoding::Json, "input").len(), 1);
    }

    fn http(payload: &Payload) -> (&Bytes, Option<usize>) {
        match &payload.wire {
            Wire::Http {
                body,
                header_length,
                ..
            } => (body, *header_length),
            Wire::Grpc(_) => panic!("an HTTP payload"),
        }
    }

    #[test]
    fn json_body_is_an_infer_request() {
        let b = &fixture().bodies(2, Encoding::Json, "x")[1];
        let (body, header_length) = http(b);
        assert_eq!(header_length, None);
        assert_eq!(b.rows, 2);
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["inputs"][0]["name"], "x");
        assert_eq!(v["inputs"][0]["shape"], json!([2, 2]));
        assert_eq!(v["inputs"][0]["datatype"], "FP32");
        assert_eq!(v["inputs"][0]["data"], json!([2.0, 0.5, 3.0, 0.5]));
    }

    #[test]
    fn binary_body_has_header_then_little_endian_floats() {
        let b = &fixture().bodies(1, Encoding::Binary, "input")[3];
        let (body, length) = http(b);
        let length = length.unwrap();
        let header: Value = serde_json::from_slice(&body[..length]).unwrap();
        assert_eq!(header["inputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(header["parameters"]["binary_data_output"], true);
        assert!(header["inputs"][0].get("data").is_none());
        let tail = &body[length..];
        assert_eq!(tail.len(), 8);
        assert_eq!(f32::from_le_bytes(tail[..4].try_into().unwrap()), 3.0);
        assert_eq!(f32::from_le_bytes(tail[4..].try_into().unwrap()), 0.5);
    }

    #[test]
    fn grpc_requests_carry_the_same_rows_raw_or_typed() {
        let f = fixture();
        let none = Compression::None;
        let raw = &f.payloads(2, Protocol::Grpc, Encoding::Binary, none, "m", "x")[1];
        let typed = &f.payloads(2, Protocol::Grpc, Encoding::Json, none, "m", "x")[1];
        let decode = |p: &Payload| match &p.wire {
            Wire::Grpc(framed) => {
                <ModelInferRequest as prost::Message>::decode(framed.slice(5..)).unwrap()
            }
            Wire::Http { .. } => panic!("a gRPC payload"),
        };
        let (raw, typed) = (decode(raw), decode(typed));
        assert_eq!(raw.model_name, "m");
        assert_eq!(raw.inputs[0].shape, vec![2, 2]);
        let values: Vec<f32> = raw.raw_input_contents[0]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(values, vec![2.0, 0.5, 3.0, 0.5]);
        let contents = typed.inputs[0].contents.as_ref().unwrap();
        assert_eq!(contents.fp32_contents, values);
        assert!(typed.raw_input_contents.is_empty());
    }

    #[test]
    fn compressed_bodies_decompress_to_the_plain_ones() {
        let f = fixture();
        let plain = &f.bodies(2, Encoding::Binary, "x")[0];
        for compression in [Compression::Gzip, Compression::Deflate, Compression::Zstd] {
            let packed = &f.payloads(2, Protocol::Http, Encoding::Binary, compression, "", "x")[0];
            let Wire::Http {
                body,
                header_length,
                coding,
            } = &packed.wire
            else {
                panic!("an HTTP payload");
            };
            assert_eq!(*coding, compression.token());
            assert_eq!(
                *header_length,
                http(plain).1,
                "the header length is the plain body's"
            );
            let unpacked = Compression::decompress(coding.unwrap(), body).unwrap();
            assert_eq!(&unpacked[..], &http(plain).0[..]);
        }
    }

    #[test]
    fn tensors_match_bodies() {
        let f = fixture();
        let t = f.tensors(2, "input");
        assert_eq!(t.len(), 3);
        assert_eq!(t[2].0.shape, vec![2, 2]);
        assert_eq!(t[2].0.to_values::<f32>().unwrap(), vec![4.0, 0.5, 0.0, 0.5]);
        assert_eq!(t[2].1, Some(vec![14, 10]));
    }

    #[test]
    fn labels_are_read_from_json_and_binary_answers() {
        let json_answer = br#"{"model_name":"m","outputs":[{"name":"probabilities","datatype":"FP32","shape":[2,1],"data":[1.0,1.0]},{"name":"label","datatype":"INT64","shape":[2],"data":[3,7]}]}"#;
        assert_eq!(answer_labels(json_answer, None), Some(vec![3, 7]));

        let header = br#"{"outputs":[{"name":"probabilities","parameters":{"binary_data_size":4}},{"name":"label","parameters":{"binary_data_size":16}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&1.0f32.to_le_bytes());
        body.extend_from_slice(&5i64.to_le_bytes());
        body.extend_from_slice(&(-2i64).to_le_bytes());
        assert_eq!(answer_labels(&body, Some(header.len())), Some(vec![5, -2]));
        // Truncated binary part, no label, not JSON.
        assert_eq!(
            answer_labels(&body[..body.len() - 1], Some(header.len())),
            None
        );
        assert_eq!(answer_labels(br#"{"outputs":[]}"#, None), None);
        assert_eq!(answer_labels(b"garbage", None), None);
    }

    #[test]
    fn fixture_checks() {
        assert!(Fixture::new(vec![], None).is_err());
        assert!(Fixture::new(vec![vec![1.0], vec![1.0, 2.0]], None).is_err());
        // Labels of the wrong length are ignored rather than trusted.
        let f = Fixture::new(vec![vec![1.0]], Some(vec![1, 2])).unwrap();
        assert!(f.labels.is_none());
    }

    #[test]
    fn the_digits_fixture_loads_with_ensemble_labels() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/digits/expected.json");
        let f = Fixture::load(&path, "digits_soft").unwrap();
        assert_eq!(f.rows.len(), 450);
        assert_eq!(f.features(), 64);
        assert_eq!(f.labels.as_ref().map(Vec::len), Some(450));
        assert!(Fixture::load(&path, "logreg").unwrap().labels.is_some());
        assert!(Fixture::load(&path, "nope").unwrap().labels.is_none());
    }
}
