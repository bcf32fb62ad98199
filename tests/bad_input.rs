//! Bad input over real processes: each mistake gets the right status and a message that says
//! what to fix, nothing crashes or hangs, and none of it counts against a worker. Every REST case
//! has a gRPC twin with the matching code and the same words.

mod support;

use serde_json::{Value, json};
use std::net::SocketAddr;
use support::grpc::{self, Code, Grpc, proto};
use support::*;

/// Body limit for this cluster, small enough to exceed cheaply.
const BODY_LIMIT: usize = 64 * 1024;

struct Setup {
    _worker: Proc,
    _lenient_worker: Proc,
    _coordinator: Proc,
    http: Http,
    grpc: SocketAddr,
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
        grpc: grpc_addr(&coordinator),
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
    // An id too long to echo and log (the limit is 256 bytes; 256 itself is fine).
    let mut long_id = input(json!([1, 64]), "FP32", zeros(64));
    long_id["id"] = json!("x".repeat(257));
    expect(
        http.post_json(soft, &long_id),
        400,
        &["request id is 257 bytes", "at most 256"],
    );
    long_id["id"] = json!("x".repeat(256));
    http.post_json(soft, &long_id).expect_status(200);
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

/// The gRPC code each REST status maps to (docs/protocol.md).
fn code_of(status: u16) -> Code {
    match status {
        400 => Code::InvalidArgument,
        404 => Code::NotFound,
        413 => Code::ResourceExhausted,
        other => panic!("no twin for {other}"),
    }
}

/// Sends the gRPC twin of a REST mistake: same kind of failure, same words.
fn twin(grpc: &Grpc, request: proto::ModelInferRequest, rest: Reply) {
    let rest_status = rest.status;
    let rest_message = rest.error_message();
    let status = grpc
        .infer(request)
        .expect_err("the gRPC twin of a REST error must fail");
    assert_eq!(
        status.code(),
        code_of(rest_status),
        "REST said {rest_status} {rest_message:?}; gRPC said {status:?}"
    );
    assert_eq!(
        status.message(),
        rest_message,
        "the same words over both protocols"
    );
}

/// A gRPC-only mistake: the code and every fragment of the message.
fn grpc_expect(grpc: &Grpc, request: proto::ModelInferRequest, code: Code, fragments: &[&str]) {
    let status = grpc.infer(request).expect_err("must fail");
    assert_eq!(status.code(), code, "{status:?}");
    for fragment in fragments {
        assert!(
            status.message().contains(fragment),
            "{:?} lacks {fragment:?}",
            status.message()
        );
    }
}

fn typed(
    model: &str,
    shape: Vec<i64>,
    datatype: &str,
    contents: proto::InferTensorContents,
) -> proto::ModelInferRequest {
    proto::ModelInferRequest {
        model_name: model.into(),
        inputs: vec![grpc::input("input", datatype, shape, Some(contents))],
        ..Default::default()
    }
}

fn fp32s(n: usize) -> proto::InferTensorContents {
    proto::InferTensorContents {
        fp32_contents: vec![0.0; n],
        ..Default::default()
    }
}

fn raw(model: &str, shape: Vec<i64>, bytes: Vec<u8>) -> proto::ModelInferRequest {
    proto::ModelInferRequest {
        model_name: model.into(),
        inputs: vec![grpc::input("input", "FP32", shape, None)],
        raw_input_contents: vec![bytes.into()],
        ..Default::default()
    }
}

fn parameter(value: proto::infer_parameter::ParameterChoice) -> proto::InferParameter {
    proto::InferParameter {
        parameter_choice: Some(value),
    }
}

#[test]
fn every_kind_of_bad_input_gets_the_same_clear_error_over_grpc() {
    use proto::infer_parameter::ParameterChoice;
    let s = setup();
    let http = &s.http;
    let g = Grpc::connect(s.grpc);
    let soft = "/v2/models/digits_soft/infer";
    let logreg = "/v2/models/logreg/infer";

    // Unknown model and versions.
    twin(
        &g,
        typed("nope", vec![1, 64], "FP32", fp32s(64)),
        http.post_json(
            "/v2/models/nope/infer",
            &input(json!([1, 64]), "FP32", zeros(64)),
        ),
    );
    let mut pinned = typed("logreg", vec![1, 64], "FP32", fp32s(64));
    pinned.model_version = "9".into();
    twin(
        &g,
        pinned,
        http.post_json(
            "/v2/models/logreg/versions/9/infer",
            &input(json!([1, 64]), "FP32", zeros(64)),
        ),
    );
    let mut pinned = typed("digits_soft", vec![1, 64], "FP32", fp32s(64));
    pinned.model_version = "2".into();
    twin(
        &g,
        pinned,
        http.post_json(
            "/v2/models/digits_soft/versions/2/infer",
            &input(json!([1, 64]), "FP32", zeros(64)),
        ),
    );
    // An id too long.
    let mut long_id = typed("digits_soft", vec![1, 64], "FP32", fp32s(64));
    long_id.id = "x".repeat(257);
    let mut rest_long_id = input(json!([1, 64]), "FP32", zeros(64));
    rest_long_id["id"] = json!("x".repeat(257));
    twin(&g, long_id, http.post_json(soft, &rest_long_id));
    // Missing, duplicate and unexpected inputs.
    let none = proto::ModelInferRequest {
        model_name: "digits_soft".into(),
        ..Default::default()
    };
    twin(&g, none, http.post_json(soft, &json!({"inputs": []})));
    let one = json!({"name": "input", "shape": [1, 64], "datatype": "FP32", "data": zeros(64)});
    let mut twice = typed("digits_soft", vec![1, 64], "FP32", fp32s(64));
    twice.inputs.push(twice.inputs[0].clone());
    twin(
        &g,
        twice,
        http.post_json(soft, &json!({"inputs": [one.clone(), one.clone()]})),
    );
    let extra = json!({"name": "extra", "shape": [1], "datatype": "FP32", "data": [0.0]});
    let mut with_extra = typed("digits_soft", vec![1, 64], "FP32", fp32s(64));
    with_extra
        .inputs
        .push(grpc::input("extra", "FP32", vec![1], Some(fp32s(1))));
    twin(
        &g,
        with_extra,
        http.post_json(soft, &json!({"inputs": [one, extra]})),
    );
    // Element counts, datatypes, ranks, dimensions.
    twin(
        &g,
        typed("logreg", vec![2, 64], "FP32", fp32s(64)),
        http.post_json(logreg, &input(json!([2, 64]), "FP32", zeros(64))),
    );
    let int64s = proto::InferTensorContents {
        int64_contents: vec![0; 64],
        ..Default::default()
    };
    twin(
        &g,
        typed("digits_soft", vec![1, 64], "INT64", int64s),
        http.post_json(
            soft,
            &input(json!([1, 64]), "INT64", Value::from(vec![0; 64])),
        ),
    );
    twin(
        &g,
        typed("digits_soft", vec![64], "FP32", fp32s(64)),
        http.post_json(soft, &input(json!([64]), "FP32", zeros(64))),
    );
    twin(
        &g,
        typed("digits_soft", vec![1, 63], "FP32", fp32s(63)),
        http.post_json(soft, &input(json!([1, 63]), "FP32", zeros(63))),
    );
    twin(
        &g,
        typed("digits_soft", vec![1, 64], "FP32", fp32s(60)),
        http.post_json(soft, &input(json!([1, 64]), "FP32", zeros(60))),
    );
    twin(
        &g,
        typed("digits_soft", vec![1, 64], "FP99", fp32s(64)),
        http.post_json(soft, &input(json!([1, 64]), "FP99", zeros(64))),
    );
    // Negative, zero and overflowing dimensions.
    twin(
        &g,
        typed("digits_soft", vec![-1, 64], "FP32", fp32s(64)),
        http.post_json(soft, &input(json!([-1, 64]), "FP32", zeros(64))),
    );
    twin(
        &g,
        typed("digits_soft", vec![0, 64], "FP32", fp32s(1)),
        http.post_json(soft, &input(json!([0, 64]), "FP32", zeros(1))),
    );
    twin(
        &g,
        typed("digits_soft", vec![i64::MAX, i64::MAX], "FP32", fp32s(1)),
        http.post_json(soft, &input(json!([i64::MAX, i64::MAX]), "FP32", zeros(1))),
    );
    // An unknown requested output.
    let mut rest_request = input(json!([1, 64]), "FP32", zeros(64));
    rest_request["outputs"] = json!([{"name": "logits"}]);
    let mut request = typed("digits_soft", vec![1, 64], "FP32", fp32s(64));
    request.outputs.push(grpc::output("logits"));
    twin(&g, request, http.post_json(soft, &rest_request));
    // Raw contents whose size does not fit the shape: the binary extension's twin.
    let header = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 128}}]});
    twin(
        &g,
        raw("digits_soft", vec![1, 64], vec![0; 128]),
        binary(http, "digits_soft", &header, &[0u8; 128], None),
    );
    // Parameters: a bad timeout, an unsupported extension.
    let mut request = typed("digits_soft", vec![1, 64], "FP32", fp32s(64));
    request
        .parameters
        .insert("timeout".into(), parameter(ParameterChoice::Int64Param(-1)));
    let mut rest_request = input(json!([1, 64]), "FP32", zeros(64));
    rest_request["parameters"] = json!({"timeout": -1});
    twin(&g, request, http.post_json(soft, &rest_request));
    let mut request = typed("digits_soft", vec![1, 64], "FP32", fp32s(64));
    request.parameters.insert(
        "shared_memory_region".into(),
        parameter(ParameterChoice::StringParam("r".into())),
    );
    let mut rest_request = input(json!([1, 64]), "FP32", zeros(64));
    rest_request["parameters"] = json!({"shared_memory_region": "r"});
    twin(&g, request, http.post_json(soft, &rest_request));
    // Non-finite values, refused by digits_soft's members.
    let mut row = [0.0f32; 64];
    row[5] = f32::NAN;
    let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 256}}]});
    twin(
        &g,
        raw("digits_soft", vec![1, 64], bytes.clone()),
        binary(http, "digits_soft", &header, &bytes, None),
    );

    // gRPC's own framing: raw entries that do not match the inputs, raw and typed at once, no
    // data at all, typed values in the wrong field, FP16 without raw contents.
    let mut two_raw = raw("digits_soft", vec![1, 64], vec![0; 256]);
    two_raw.raw_input_contents.push(vec![0u8; 4].into());
    grpc_expect(
        &g,
        two_raw,
        Code::InvalidArgument,
        &["2 raw_input_contents entries for 1 inputs"],
    );
    let mut both = raw("digits_soft", vec![1, 64], vec![0; 256]);
    both.inputs[0].contents = Some(fp32s(64));
    grpc_expect(
        &g,
        both,
        Code::InvalidArgument,
        &["both `contents` and raw_input_contents"],
    );
    let mut nothing = typed("digits_soft", vec![1, 64], "FP32", fp32s(64));
    nothing.inputs[0].contents = None;
    grpc_expect(&g, nothing, Code::InvalidArgument, &["no `contents`"]);
    let ints = proto::InferTensorContents {
        int_contents: vec![0; 64],
        ..Default::default()
    };
    grpc_expect(
        &g,
        typed("digits_soft", vec![1, 64], "FP32", ints),
        Code::InvalidArgument,
        &["`contents.fp32_contents`, not `contents.int_contents`"],
    );
    grpc_expect(
        &g,
        typed("digits_soft", vec![1, 64], "FP16", fp32s(64)),
        Code::InvalidArgument,
        &["raw_input_contents"],
    );
    // A request message over the limit: RESOURCE_EXHAUSTED before anything is decoded.
    let huge = raw("digits_soft", vec![1, 64], vec![0; BODY_LIMIT + 1]);
    grpc_expect(
        &g,
        huge,
        Code::ResourceExhausted,
        &[
            "request message is larger than the limit",
            &BODY_LIMIT.to_string(),
        ],
    );
    // An absurd grpc-timeout is refused; a huge valid one is clamped to the server's deadline.
    let rows = Expected::load().rows();
    let mut request = tonic::Request::new(grpc::raw_request("digits_soft", &rows[..1]));
    request
        .metadata_mut()
        .insert("grpc-timeout", "123456789S".parse().unwrap());
    let status = g.infer_with(request).expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("grpc-timeout"),
        "{}",
        status.message()
    );
    let mut request = tonic::Request::new(grpc::raw_request("digits_soft", &rows[..1]));
    request
        .metadata_mut()
        .insert("grpc-timeout", "99999999H".parse().unwrap());
    g.infer_with(request)
        .expect("a far deadline is served under the server's own");
    // The same over a stream: each bad request answered on its own, the stream goes on.
    let answers = g
        .stream(vec![
            typed("nope", vec![1, 64], "FP32", fp32s(64)),
            grpc::raw_request("digits_soft", &rows[..1]),
        ])
        .unwrap();
    assert_eq!(answers.len(), 2);
    let errors: Vec<String> = answers
        .iter()
        .map(|a| a.as_ref().unwrap().error_message.clone())
        .collect();
    assert!(
        errors.iter().any(|e| e == "unknown model 'nope'"),
        "{errors:?}"
    );
    assert!(errors.iter().any(String::is_empty), "{errors:?}");
    // An oversize message on a stream ends the stream with RESOURCE_EXHAUSTED.
    let answers = g
        .stream(vec![raw(
            "digits_soft",
            vec![1, 64],
            vec![0; BODY_LIMIT + 1],
        )])
        .unwrap();
    let last = answers
        .last()
        .expect("the stream's end")
        .as_ref()
        .expect_err("an error status");
    assert_eq!(last.code(), Code::ResourceExhausted, "{last:?}");

    // None of it hurt: the coordinator is live and ready, and answers.
    let live = g.with(|mut c| async move { c.server_live(proto::ServerLiveRequest {}).await });
    assert!(live.unwrap().into_inner().live);
    let ready = g.with(|mut c| async move { c.server_ready(proto::ServerReadyRequest {}).await });
    assert!(
        ready.unwrap().into_inner().ready || http.get("/v2/health/ready").0 == 400,
        "readiness unchanged"
    );
    assert_eq!(http.get("/v2/models/digits_soft/ready").0, 200);
    g.infer(grpc::raw_request("digits_soft", &rows[..3]))
        .expect("still answers");
}
