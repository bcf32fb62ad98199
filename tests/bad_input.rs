//! Bad input over real processes: each mistake gets the right status and a message that says
//! what to fix, nothing crashes or hangs, and none of it counts against a worker.

mod support;

use serde_json::{Value, json};
use support::*;

/// Body limit for this cluster, small enough to exceed cheaply.
const BODY_LIMIT: usize = 64 * 1024;

struct Setup {
    _worker: Proc,
    _lenient_worker: Proc,
    _coordinator: Proc,
    http: Http,
    _repo: tempfile::TempDir,
}

/// One worker with the soft-vote members, one serving a copy of `logreg` named
/// `logreg_lenient` whose config allows NaN/infinity, and a coordinator with a small body limit.
fn setup() -> Setup {
    let repo = tempfile::tempdir().expect("temp repo");
    let lenient = repo.path().join("logreg_lenient");
    std::fs::create_dir_all(lenient.join("1")).unwrap();
    std::fs::copy(
        repo_root().join("models/logreg/1/model.onnx"),
        lenient.join("1/model.onnx"),
    )
    .unwrap();
    std::fs::write(lenient.join("config.toml"), "allow_non_finite = true\n").unwrap();

    let worker = start_worker("w-members", &["logreg", "random_forest", "mlp"]);
    let lenient_worker = spawn(
        "w-lenient",
        &[
            "worker".into(),
            "--listen=127.0.0.1:0".into(),
            "--worker-id=w-lenient".into(),
            format!("--model-repository={}", repo.path().display()),
        ],
        "chorus-worker ready",
    );
    let limit = format!("--max-body-bytes={BODY_LIMIT}");
    let (coordinator, http) = start_coordinator(
        &[&worker, &lenient_worker],
        &[&limit],
        "/v2/models/digits_soft/ready",
    );
    // digits_hard and digits_fusion lack members here, so wait for the model itself.
    wait_until(
        "logreg_lenient ready",
        std::time::Duration::from_secs(30),
        || (http.get("/v2/models/logreg_lenient/ready").0 == 200).then_some(()),
    );
    Setup {
        _worker: worker,
        _lenient_worker: lenient_worker,
        _coordinator: coordinator,
        http,
        _repo: repo,
    }
}

fn input(shape: Value, datatype: &str, data: Value) -> Value {
    json!({"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]})
}

fn zeros(n: usize) -> Value {
    Value::from(vec![0.0f32; n])
}

/// Asserts status and that the error message mentions every fragment.
fn expect(reply: Reply, status: u16, fragments: &[&str]) {
    let text = String::from_utf8_lossy(&reply.body).to_string();
    assert_eq!(reply.status, status, "body: {text}");
    let message = reply.error_message();
    for fragment in fragments {
        assert!(
            message.contains(fragment),
            "error {message:?} lacks {fragment:?}"
        );
    }
}

fn binary(
    http: &Http,
    model: &str,
    header: &Value,
    tail: &[u8],
    header_length: Option<usize>,
) -> Reply {
    let header = header.to_string();
    let length = header_length.unwrap_or(header.len());
    let mut body = header.into_bytes();
    body.extend_from_slice(tail);
    http.post(
        &format!("/v2/models/{model}/infer"),
        &[("inference-header-content-length", length.to_string())],
        body,
    )
}

#[test]
fn every_kind_of_bad_input_gets_a_clear_error() {
    let s = setup();
    let http = &s.http;
    let soft = "/v2/models/digits_soft/infer";
    let logreg = "/v2/models/logreg/infer";

    // Malformed JSON.
    expect(
        http.post(soft, &[], b"{\"inputs\": [".to_vec()),
        400,
        &["not a valid infer request"],
    );
    // Unknown model and version.
    expect(
        http.post_json(
            "/v2/models/nope/infer",
            &input(json!([1, 64]), "FP32", zeros(64)),
        ),
        404,
        &["nope"],
    );
    expect(
        http.post_json(
            "/v2/models/logreg/versions/9/infer",
            &input(json!([1, 64]), "FP32", zeros(64)),
        ),
        404,
        &["version 9"],
    );
    expect(
        http.post_json(
            "/v2/models/digits_soft/versions/2/infer",
            &input(json!([1, 64]), "FP32", zeros(64)),
        ),
        404,
        &["digits_soft"],
    );
    assert_eq!(http.get("/v2/models/nope").0, 404);
    // Missing, duplicate and unexpected inputs.
    expect(
        http.post_json(soft, &json!({"inputs": []})),
        400,
        &["missing", "input"],
    );
    let one = json!({"name": "input", "shape": [1, 64], "datatype": "FP32", "data": zeros(64)});
    expect(
        http.post_json(soft, &json!({"inputs": [one.clone(), one.clone()]})),
        400,
        &["more than once"],
    );
    let extra = json!({"name": "extra", "shape": [1], "datatype": "FP32", "data": [0.0]});
    expect(
        http.post_json(soft, &json!({"inputs": [one, extra]})),
        400,
        &["unexpected input 'extra'"],
    );
    // The same checks guard single models.
    expect(
        http.post_json(logreg, &input(json!([2, 64]), "FP32", zeros(64))),
        400,
        &["64 data elements", "128"],
    );
    // Wrong datatype, rank, dimension, element count.
    expect(
        http.post_json(
            soft,
            &input(json!([1, 64]), "INT64", Value::from(vec![0; 64])),
        ),
        400,
        &["INT64", "FP32"],
    );
    expect(
        http.post_json(soft, &input(json!([64]), "FP32", zeros(64))),
        400,
        &["rank"],
    );
    expect(
        http.post_json(soft, &input(json!([1, 63]), "FP32", zeros(63))),
        400,
        &["dimension 1", "63", "64"],
    );
    expect(
        http.post_json(soft, &input(json!([1, 64]), "FP32", zeros(60))),
        400,
        &["60 data elements", "64"],
    );
    expect(
        http.post_json(
            soft,
            &input(json!([1, 64]), "FP32", Value::from(vec!["x"; 64])),
        ),
        400,
        &["a number"],
    );
    expect(
        http.post_json(soft, &input(json!([1, 64]), "FP99", zeros(64))),
        400,
        &["unknown datatype 'FP99'"],
    );
    // Negative, zero and overflowing dimensions.
    expect(
        http.post_json(soft, &input(json!([-1, 64]), "FP32", zeros(64))),
        400,
        &["positive"],
    );
    expect(
        http.post_json(soft, &input(json!([0, 64]), "FP32", json!([]))),
        400,
        &["positive"],
    );
    expect(
        http.post_json(soft, &input(json!([i64::MAX, i64::MAX]), "FP32", zeros(1))),
        400,
        &["more elements"],
    );
    // An unknown requested output.
    let mut request = input(json!([1, 64]), "FP32", zeros(64));
    request["outputs"] = json!([{"name": "logits"}]);
    expect(
        http.post_json(soft, &request),
        400,
        &["unknown requested output 'logits'", "probabilities"],
    );
    // Binary framing: header longer than the body, sizes that do not add up.
    let header = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 256}}]});
    expect(
        binary(http, "digits_soft", &header, &[0u8; 256], Some(100_000)),
        400,
        &["Inference-Header-Content-Length"],
    );
    expect(
        binary(http, "digits_soft", &header, &[0u8; 200], None),
        400,
        &["binary_data_size 256", "200"],
    );
    expect(
        binary(http, "digits_soft", &header, &[0u8; 300], None),
        400,
        &["add up to 256"],
    );
    let wrong_size = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 128}}]});
    expect(
        binary(http, "digits_soft", &wrong_size, &[0u8; 128], None),
        400,
        &["256 bytes", "128 bytes"],
    );
    // Too large a body.
    let huge = vec![b' '; BODY_LIMIT + 1];
    expect(http.post(soft, &[], huge), 413, &["limit"]);
}

#[test]
fn non_finite_floats_are_refused_unless_the_model_allows_them() {
    let s = setup();
    let mut row = [0.0f32; 64];
    row[5] = f32::NAN;
    let raw: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 256}}]});
    expect(
        binary(&s.http, "digits_soft", &header, &raw, None),
        400,
        &["non-finite", "element 5"],
    );
    expect(
        binary(&s.http, "logreg", &header, &raw, None),
        400,
        &["non-finite"],
    );
    row[5] = f32::INFINITY;
    let raw: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
    expect(
        binary(&s.http, "logreg", &header, &raw, None),
        400,
        &["non-finite"],
    );
    // The lenient copy of the same model takes it and answers.
    let reply = binary(&s.http, "logreg_lenient", &header, &raw, None);
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
}

#[test]
fn bad_input_never_counts_against_a_worker() {
    let s = setup();
    let expected = Expected::load();
    for _ in 0..30 {
        let reply = s.http.post_json(
            "/v2/models/logreg/infer",
            &input(json!([1, 64]), "FP32", zeros(3)),
        );
        assert_eq!(reply.status, 400);
    }
    assert_eq!(s.http.get("/v2/models/logreg/ready").0, 200);
    assert_eq!(s.http.get("/v2/models/digits_soft/ready").0, 200);
    let reply = s.http.post_json(
        "/v2/models/digits_soft/infer",
        &json_request(&expected.rows()[..3]),
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["parameters"]["degraded"], false);
}
