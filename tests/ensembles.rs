//! End to end over real processes: every sample ensemble and member model answers the whole
//! digits test set exactly as the Python expectations say, over JSON and binary tensors; a
//! killed member degrades the answer while quorum holds and fails it with 503 after.

mod support;

use serde_json::Value;
use support::*;

/// Rows per request when pushing the test set through (several requests, several batch sizes).
const CHUNK: usize = 64;

fn json_output<'a>(response: &'a Value, name: &str) -> &'a Value {
    response["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {response}"))
}

fn assert_close(name: &str, row: usize, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{name} row {row}: width");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-5,
            "{name} row {row}: got {got:?}, want {want:?}"
        );
    }
}

/// The float output a model or ensemble returns next to `label`, if any.
fn score_output(expected: &Expected, name: &str) -> Option<&'static str> {
    if !expected.of(name)["probabilities"].is_null() {
        Some("probabilities")
    } else if !expected.of(name)["agreement"].is_null() {
        Some("agreement")
    } else {
        None
    }
}

/// Pushes the whole test set through `name` as JSON requests and checks every row.
fn check_json(http: &Http, expected: &Expected, name: &str) {
    let rows = expected.rows();
    let labels = expected.labels(name);
    let score = score_output(expected, name);
    for (chunk_index, chunk) in rows.chunks(CHUNK).enumerate() {
        let reply = http.post_json(&format!("/v2/models/{name}/infer"), &json_request(chunk));
        assert_eq!(
            reply.status,
            200,
            "{name}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let response = reply.json();
        assert_eq!(response["model_name"], name);
        let got: Vec<i64> = json_output(&response, "label")["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let first = chunk_index * CHUNK;
        assert_eq!(
            got,
            labels[first..first + chunk.len()],
            "{name}: labels of rows {first}.."
        );
        if let Some(score) = score {
            let output = json_output(&response, score);
            let flat: Vec<f64> = output["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let width = flat.len() / chunk.len();
            for (i, row) in flat.chunks(width).enumerate() {
                let want = if score == "agreement" {
                    vec![expected.vector(name, score)[first + i]]
                } else {
                    expected.matrix(name, score)[first + i].clone()
                };
                assert_close(name, first + i, row, &want);
            }
        }
    }
}

/// Pushes the whole test set through `name` in one binary-extension request.
fn check_binary(http: &Http, expected: &Expected, name: &str) {
    let rows = expected.rows();
    let (headers, body) = binary_request(&rows);
    let reply = http.post(&format!("/v2/models/{name}/infer"), &headers, body);
    assert_eq!(
        reply.status,
        200,
        "{name}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    let (_, parts) = split_binary(&reply);
    let part = |n: &str| {
        &parts
            .iter()
            .find(|(k, _)| k == n)
            .unwrap_or_else(|| panic!("{name} lacks {n}"))
            .1
    };
    assert_eq!(
        i64s(part("label")),
        expected.labels(name),
        "{name}: binary labels"
    );
    if let Some(score) = score_output(expected, name) {
        let got: Vec<f64> = f32s(part(score)).into_iter().map(f64::from).collect();
        let want: Vec<f64> = if score == "agreement" {
            expected.vector(name, score)
        } else {
            expected.matrix(name, score).concat()
        };
        assert_close(name, 0, &got, &want);
    }
}

#[test]
fn every_ensemble_and_model_matches_python_on_the_whole_test_set() {
    let cluster = Cluster::start();
    let expected = Expected::load();
    assert_eq!(expected.rows().len(), 450);
    for name in SERVED {
        check_json(&cluster.http, &expected, name);
        check_binary(&cluster.http, &expected, name);
    }
    let reply = cluster.http.post_json(
        "/v2/models/digits_soft/infer",
        &json_request(&expected.rows()[..2]),
    );
    let parameters = &reply.json()["parameters"];
    assert_eq!(parameters["degraded"], false);
    assert_eq!(parameters["members_used"], "logreg,random_forest,mlp");
    assert_eq!(parameters["members_failed"], "");
}

#[test]
fn a_killed_member_degrades_the_answer_until_quorum_is_lost() {
    let mut cluster = Cluster::start();
    let expected = Expected::load();
    let rows = expected.rows();
    let request = json_request(&rows[..5]);

    cluster.worker("w-mlp").signal(libc::SIGKILL);
    cluster
        .worker("w-mlp")
        .wait_exit(std::time::Duration::from_secs(10));
    // The very next request already sees the dead link (the call fails fast); no sleep needed.
    let reply = cluster
        .http
        .post_json("/v2/models/digits_soft/infer", &request);
    reply.expect_status(200);
    let response = reply.json();
    assert_eq!(response["parameters"]["degraded"], true);
    assert_eq!(
        response["parameters"]["members_used"],
        "logreg,random_forest"
    );
    assert_eq!(response["parameters"]["members_failed"], "mlp");
    let labels: Vec<i64> = json_output(&response, "label")["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(labels.len(), 5);

    // Fusion lost its meta-model with that worker: no answer is possible.
    let reply = cluster
        .http
        .post_json("/v2/models/digits_fusion/infer", &request);
    reply.expect_status(503);
    assert!(
        reply.error_message().contains("stacker"),
        "{}",
        reply.error_message()
    );

    // A second member gone puts digits_soft (min_members 2) below quorum.
    cluster.worker("w-forest").signal(libc::SIGKILL);
    cluster
        .worker("w-forest")
        .wait_exit(std::time::Duration::from_secs(10));
    let reply = cluster
        .http
        .post_json("/v2/models/digits_soft/infer", &request);
    reply.expect_status(503);
    assert!(reply.headers.contains_key("retry-after"));
    let message = reply.error_message();
    assert!(
        message.contains("needs 2") && message.contains("random_forest"),
        "{message}"
    );
    wait_until(
        "readiness to drop",
        std::time::Duration::from_secs(10),
        || (cluster.http.get("/v2/models/digits_soft/ready").0 == 400).then_some(()),
    );
    assert_eq!(cluster.http.get("/v2/health/ready").0, 400);
    // The surviving single model still answers.
    assert_eq!(
        cluster
            .http
            .post_json("/v2/models/logreg/infer", &request)
            .status,
        200
    );
}
