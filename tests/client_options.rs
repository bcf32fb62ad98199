//! Every client option over real processes: compressed request bodies (and the bomb that a
//! compressed body can be), the classification extension's mistakes, and KServe's V1 protocol
//! answering exactly what V2 answers.

mod support;

use serde_json::{Value, json};
use std::io::Write;
use support::grpc::{self, Code, Grpc, proto};
use support::*;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

fn labels_of(reply: &Reply) -> Vec<i64> {
    reply.json()["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "label")
        .expect("label output")["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

#[test]
fn compressed_bodies_are_read_and_a_bomb_stops_at_the_limit() {
    let cluster = Cluster::start();
    let http = &cluster.http;
    let rows = Expected::load().rows();
    let body = json_request(&rows[..4]).to_string().into_bytes();
    let plain = http.post("/v2/models/digits_soft/infer", &[], body.clone());
    plain.expect_status(200);
    let gzipped = http.post(
        "/v2/models/digits_soft/infer",
        &[("content-encoding", "gzip".into())],
        gzip(&body),
    );
    gzipped.expect_status(200);
    assert_eq!(labels_of(&gzipped), labels_of(&plain));

    // A truncated stream, and a coding Chorus does not read.
    let compressed = gzip(&body);
    let truncated = http.post(
        "/v2/models/digits_soft/infer",
        &[("content-encoding", "gzip".into())],
        compressed[..compressed.len() / 2].to_vec(),
    );
    truncated.expect_status(400);
    assert!(
        truncated.error_message().contains("not valid gzip data"),
        "{}",
        truncated.error_message()
    );
    let brotli = http.post(
        "/v2/models/digits_soft/infer",
        &[("content-encoding", "br".into())],
        body.clone(),
    );
    brotli.expect_status(415);
    assert!(
        brotli.error_message().contains("gzip, deflate, zstd"),
        "{}",
        brotli.error_message()
    );

    // A bomb: 1 GiB of zeros as 1,024 concatenated gzip members of 1 MiB each (about 1 MB on the
    // wire). It must get 413 after decompressing at most the 32 MiB limit.
    let member = gzip(&vec![0u8; 1 << 20]);
    let bomb: Vec<u8> = member.repeat(1024);
    assert!(bomb.len() < 8 << 20, "{} bytes on the wire", bomb.len());
    let pid = cluster.coordinator.pid();
    let before = peak_rss_kib(pid);
    let reply = http.post(
        "/v2/models/digits_soft/infer",
        &[("content-encoding", "gzip".into())],
        bomb,
    );
    reply.expect_status(413);
    assert!(
        reply
            .error_message()
            .contains("decompressed request body is larger than the limit")
    );
    let grew_mib = peak_rss_kib(pid).saturating_sub(before) / 1024;
    assert!(
        grew_mib < 160,
        "the coordinator's peak RSS grew by {grew_mib} MiB"
    );
    // The coordinator is fine afterwards.
    http.post("/v2/models/digits_soft/infer", &[], body)
        .expect_status(200);
}

#[test]
fn classification_mistakes_get_clear_errors_over_both_protocols() {
    let cluster = Cluster::start();
    let http = &cluster.http;
    let rows = Expected::load().rows();
    let with_output = |output: Value| {
        let mut request = json_request(&rows[..2]);
        request["outputs"] = json!([output]);
        request
    };
    let cases = [
        (
            json!({"name": "label", "parameters": {"classification": 2}}),
            "is INT64",
        ),
        (
            json!({"name": "probabilities", "parameters": {"classification": 0}}),
            "must be a positive integer",
        ),
        (
            json!({"name": "probabilities", "parameters": {"classification": -3}}),
            "must be a positive integer",
        ),
        (
            json!({"name": "probabilities", "parameters": {"classification": "2"}}),
            "must be a positive integer",
        ),
        (
            json!({"name": "probabilities", "parameters": {"classification": 11}}),
            "which has only 10",
        ),
    ];
    for (output, fragment) in cases {
        let reply = http.post_json("/v2/models/digits_soft/infer", &with_output(output));
        reply.expect_status(400);
        assert!(
            reply.error_message().contains(fragment),
            "{}",
            reply.error_message()
        );
    }
    // A good one, on a member model: the top two, best first, with the class names.
    let reply = http.post_json(
        "/v2/models/logreg/infer",
        &with_output(json!({"name": "probabilities", "parameters": {"classification": 2}})),
    );
    reply.expect_status(200);
    let top = &reply.json()["outputs"][0];
    assert_eq!(top["datatype"], "BYTES");
    assert_eq!(top["shape"], json!([2, 2]));
    let first = top["data"][0].as_str().unwrap();
    assert!(
        first.ends_with(":2:two"),
        "row 0 of the test set is a 2: {first}"
    );

    // gRPC: the same words.
    let g = Grpc::connect(cluster.grpc);
    let mut request = grpc::raw_request("digits_soft", &rows[..2]);
    request
        .outputs
        .push(proto::model_infer_request::InferRequestedOutputTensor {
            name: "label".into(),
            parameters: [(
                "classification".to_string(),
                proto::InferParameter {
                    parameter_choice: Some(proto::infer_parameter::ParameterChoice::Int64Param(2)),
                },
            )]
            .into(),
        });
    let status = g.infer(request).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("is INT64"),
        "{}",
        status.message()
    );
}

#[test]
fn kserve_v1_answers_what_v2_answers() {
    let cluster = Cluster::start();
    let http = &cluster.http;
    let expected = Expected::load();
    let rows = expected.rows();
    let instances = json!({ "instances": rows[..50] });
    for name in SERVED {
        let reply = http.post_json(&format!("/v1/models/{name}:predict"), &instances);
        reply.expect_status(200);
        let predictions: Vec<i64> = reply.json()["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(predictions, expected.labels(name)[..50], "{name}");
        let (status, text) = http.get(&format!("/v1/models/{name}"));
        assert_eq!(status, 200);
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"name": name, "ready": true})
        );
    }
    // Several outputs: an object per prediction, the same numbers as V2.
    let v1 = http.post_json(
        "/v1/models/digits_soft:predict",
        &json!({"instances": rows[..3], "parameters": {"outputs": ["label", "probabilities"]}}),
    );
    v1.expect_status(200);
    let v2 = http.post_json("/v2/models/digits_soft/infer", &json_request(&rows[..3]));
    let v2_probabilities = v2.json()["outputs"][1]["data"].clone();
    let predictions = v1.json()["predictions"].clone();
    assert_eq!(predictions[0]["label"], expected.labels("digits_soft")[0]);
    let flat: Vec<Value> = predictions
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["probabilities"].as_array().unwrap().clone())
        .collect();
    assert_eq!(Value::Array(flat), v2_probabilities);
    // The columnar `inputs` form.
    let columns = http.post_json(
        "/v1/models/logreg:predict",
        &json!({"inputs": {"input": rows[..2]}}),
    );
    columns.expect_status(200);
    assert_eq!(
        columns.json()["predictions"],
        json!(expected.labels("logreg")[..2])
    );
    let (status, text) = http.get("/v1/models");
    assert_eq!(status, 200);
    assert!(
        text.contains("digits_fusion") && text.contains("gboost"),
        "{text}"
    );

    // Mistakes: V1's error shape, V2's statuses.
    let ragged = json!({"instances": [rows[0].clone(), rows[1][..63].to_vec()]});
    let reply = http.post_json("/v1/models/digits_soft:predict", &ragged);
    reply.expect_status(400);
    assert!(
        reply.error_message().contains("not all alike"),
        "{}",
        reply.error_message()
    );
    let reply = http.post_json("/v1/models/nope:predict", &instances);
    reply.expect_status(404);
    assert!(reply.error_message().contains("unknown model 'nope'"));
    let reply = http.post_json("/v1/models/digits_soft:explain", &instances);
    reply.expect_status(404);
    assert!(
        reply.error_message().contains(":predict"),
        "{}",
        reply.error_message()
    );
    let short = json!({"instances": [rows[0][..10].to_vec()]});
    let reply = http.post_json("/v1/models/digits_soft:predict", &short);
    reply.expect_status(400);
    assert!(
        reply.error_message().contains("dimension 1"),
        "{}",
        reply.error_message()
    );
    assert_eq!(http.get("/v1/models/nope").0, 404);
}

#[test]
fn ragged_nested_v2_data_is_refused() {
    let cluster = Cluster::start();
    let ragged = json!({"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32",
        "data": [vec![0.0f32; 63], vec![0.0f32; 65]]}]});
    let reply = cluster
        .http
        .post_json("/v2/models/digits_soft/infer", &ragged);
    reply.expect_status(400);
    assert!(
        reply.error_message().contains("ragged"),
        "{}",
        reply.error_message()
    );
}
