//! The gRPC front door over real processes: every sample ensemble and member model answers the
//! whole digits test set over gRPC, with raw and with typed contents, with exactly the bytes the
//! REST binary extension returns; degraded answers say so in the same parameters; one stream
//! carries many requests, each answered (or failed) on its own with its id.

mod support;

use std::time::Duration;
use support::grpc::*;
use support::*;

/// The REST binary answer to `rows` on `name`: each output's bytes by name.
fn rest_outputs(http: &Http, name: &str, rows: &[Vec<f32>]) -> Vec<(String, Vec<u8>)> {
    let (headers, body) = binary_request(rows);
    let reply = http.post(&format!("/v2/models/{name}/infer"), &headers, body);
    reply.expect_status(200);
    split_binary(&reply).1
}

#[test]
fn grpc_answers_equal_rest_answers_bit_for_bit() {
    let cluster = Cluster::start();
    let grpc = Grpc::connect(cluster.grpc);
    let expected = Expected::load();
    let rows = expected.rows();
    for name in SERVED {
        let rest = rest_outputs(&cluster.http, name, &rows);
        for (encoding, request) in [
            ("raw", raw_request(name, &rows)),
            ("typed", typed_request(name, &rows)),
        ] {
            let response = grpc
                .infer(request)
                .unwrap_or_else(|s| panic!("{name} ({encoding}): {s}"));
            assert_eq!(response.model_name, name);
            let names: Vec<&str> = response.outputs.iter().map(|o| o.name.as_str()).collect();
            let rest_names: Vec<&str> = rest.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names, rest_names,
                "{name}: the same outputs in the same order"
            );
            for (output, bytes) in &rest {
                assert_eq!(
                    raw_output(&response, output),
                    bytes.as_slice(),
                    "{name} ({encoding}): output {output} differs from REST"
                );
            }
            assert_eq!(
                i64s(raw_output(&response, "label")),
                expected.labels(name),
                "{name} ({encoding}): labels"
            );
        }
    }
    // Asked-for outputs, in the order asked, and the client's id echoed.
    let mut request = raw_request("digits_soft", &rows[..2]);
    request.id = "grpc-7".into();
    request.outputs = vec![output("probabilities"), output("label")];
    let response = grpc.infer(request).unwrap();
    assert_eq!(response.id, "grpc-7");
    let names: Vec<&str> = response.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["probabilities", "label"]);
    assert_eq!(response.outputs[0].shape, [2, 10]);
    assert_eq!(parameter(&response, "degraded").as_deref(), Some("false"));
    assert_eq!(
        parameter(&response, "members_used").as_deref(),
        Some("logreg,random_forest,mlp")
    );
    // A pinned version of a member model.
    let mut request = raw_request("logreg", &rows[..1]);
    request.model_version = "1".into();
    assert_eq!(grpc.infer(request).unwrap().model_version, "1");
}

#[test]
fn a_degraded_answer_says_so_over_grpc() {
    let mut cluster = Cluster::start();
    let grpc = Grpc::connect(cluster.grpc);
    let rows = Expected::load().rows();
    cluster.worker("w-mlp").signal(libc::SIGKILL);
    cluster.worker("w-mlp").wait_exit(Duration::from_secs(10));
    let response = grpc.infer(raw_request("digits_soft", &rows[..5])).unwrap();
    assert_eq!(parameter(&response, "degraded").as_deref(), Some("true"));
    assert_eq!(
        parameter(&response, "members_used").as_deref(),
        Some("logreg,random_forest")
    );
    assert_eq!(
        parameter(&response, "members_failed").as_deref(),
        Some("mlp")
    );
    assert_eq!(i64s(raw_output(&response, "label")).len(), 5);
    // Without its meta-model, fusion cannot answer: UNAVAILABLE, as REST's 503.
    let status = grpc
        .infer(raw_request("digits_fusion", &rows[..5]))
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("stacker"), "{}", status.message());
}

#[test]
fn one_stream_answers_every_request_with_its_id() {
    let cluster = Cluster::start();
    let grpc = Grpc::connect(cluster.grpc);
    let expected = Expected::load();
    let rows = expected.rows();
    let labels = expected.labels("digits_hard");
    let mut requests = Vec::new();
    for (i, row) in rows.iter().take(200).enumerate() {
        let model = ["digits_hard", "logreg"][i % 2];
        let mut request = raw_request(model, std::slice::from_ref(row));
        request.id = format!("row-{i}");
        requests.push(request);
    }
    // Two failures in the middle of the stream: an unknown model and a wrong shape.
    let mut unknown = raw_request("nope", &rows[..1]);
    unknown.id = "bad-model".into();
    requests.insert(50, unknown);
    let mut misshapen = raw_request("digits_hard", &rows[..1]);
    misshapen.id = "bad-shape".into();
    misshapen.inputs[0].shape = vec![1, 63];
    requests.insert(120, misshapen);

    let answers = grpc.stream(requests).expect("stream opened");
    assert_eq!(
        answers.len(),
        202,
        "one answer per request, then the stream ends"
    );
    let mut seen = std::collections::HashSet::new();
    for answer in answers {
        let answer = answer.expect("the stream itself never fails");
        let response = answer
            .infer_response
            .expect("every answer names its request");
        assert!(
            seen.insert(response.id.clone()),
            "{} answered twice",
            response.id
        );
        match response.id.as_str() {
            "bad-model" => assert!(answer.error_message.contains("unknown model 'nope'")),
            "bad-shape" => assert!(
                answer.error_message.contains("dimension 1"),
                "{}",
                answer.error_message
            ),
            id => {
                assert!(
                    answer.error_message.is_empty(),
                    "{id}: {}",
                    answer.error_message
                );
                let i: usize = id.trim_start_matches("row-").parse().unwrap();
                let label = i64s(raw_output(&response, "label"))[0];
                if response.model_name == "digits_hard" {
                    assert_eq!(label, labels[i], "{id}");
                } else {
                    assert_eq!(label, expected.labels("logreg")[i], "{id}");
                }
            }
        }
    }
    assert_eq!(seen.len(), 202);
}
