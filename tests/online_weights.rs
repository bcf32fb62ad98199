//! Feedback and online member weights with real processes: etcd, one worker serving the members
//! of `digits_online` (two good models and `logreg_shuffled`, trained on shuffled classes by
//! fixtures/make_bad_member.py), and two coordinators sharing the weights through etcd.
//!
//! The ensemble starts with equal weights; after feedback on 1,000 answered rows the bad
//! member's weight is at the floor (the documented bound: below 0.1, with the floor at 0.05),
//! the ensemble is more accurate on the held-out rows than with equal weights, and both
//! coordinators serve the same weights. Plus the feedback API's edge cases.

mod support;

use chorus_common::testing::Etcd;
use serde_json::{Value, json};
use std::time::Duration;
use support::{
    Expected, Http, Proc, json_request, spawn_coordinator, start_worker_with, wait_until,
};

const ENSEMBLE: &str = "digits_online";
const BAD: &str = "logreg_shuffled";
/// The spec's `weight_floor`, and the bound the bad member's weight must fall below.
const FLOOR: f64 = 0.05;
const BOUND: f64 = 0.1;
const FEEDBACK_ROWS: usize = 1000;

struct Coordinator {
    _proc: Proc,
    http: Http,
    admin: Http,
}

fn start_coordinator(etcd: &Etcd) -> Coordinator {
    let proc = spawn_coordinator(&[
        "--ensembles=tests/fixtures/online_ensembles.toml".into(),
        format!("--etcd={}", etcd.endpoint),
        "--ping-interval-ms=200".into(),
    ]);
    let http = Http::new(proc.field("http_addr").parse().unwrap());
    let admin = Http::new(proc.field("admin_addr").parse().unwrap());
    wait_until("digits_online to be ready", Duration::from_secs(60), || {
        (http.get("/v2/models/digits_online/ready").0 == 200).then_some(())
    });
    Coordinator {
        _proc: proc,
        http,
        admin,
    }
}

/// The ensemble's online weights as `/chorus/ensembles` shows them.
fn online_weights(c: &Coordinator) -> Value {
    let (status, body) = c.admin.get("/chorus/ensembles");
    assert_eq!(status, 200, "{body}");
    let all: Value = serde_json::from_str(&body).unwrap();
    all["ensembles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == ENSEMBLE)
        .expect("digits_online listed")["online_weights"]
        .clone()
}

fn weight(weights: &Value, member: &str) -> f64 {
    weights["weights"][member].as_f64().expect("weight")
}

/// Infers `rows` in one request; the labels and the request id.
fn infer(c: &Coordinator, rows: &[Vec<f32>]) -> (Vec<i64>, String) {
    let reply = c
        .http
        .post_json(&format!("/v2/models/{ENSEMBLE}/infer"), &json_request(rows));
    reply.expect_status(200);
    let body = reply.json();
    let label = body["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "label")
        .expect("label output");
    let labels = label["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    (labels, body["id"].as_str().expect("id").to_string())
}

fn accuracy(c: &Coordinator, rows: &[Vec<f32>], truth: &[i64]) -> f64 {
    let (labels, _) = infer(c, rows);
    let right = labels.iter().zip(truth).filter(|(a, b)| a == b).count();
    right as f64 / truth.len() as f64
}

fn feedback(c: &Coordinator, body: &Value) -> (u16, Value) {
    let reply = c
        .http
        .post_json(&format!("/v2/models/{ENSEMBLE}/feedback"), body);
    (reply.status, reply.json())
}

#[test]
fn feedback_teaches_both_coordinators_to_ignore_a_bad_member() {
    let etcd = Etcd::start();
    let _worker = start_worker_with(
        "w-online",
        &["random_forest", "mlp", BAD],
        &[format!("--etcd={}", etcd.endpoint)],
    );
    let coordinators = [start_coordinator(&etcd), start_coordinator(&etcd)];
    let expected = Expected::load();
    let rows = expected.rows();
    let truth: Vec<i64> = expected.truth();

    // Equal weights at the start, on both.
    for c in &coordinators {
        let weights = online_weights(c);
        for member in ["random_forest", "mlp", BAD] {
            assert_eq!(weight(&weights, member), 1.0, "{weights}");
        }
    }
    let equal_accuracy = accuracy(&coordinators[0], &rows, &truth);

    // 1,000 single-row requests, alternating coordinators, each told the truth in batches of
    // 50 by the coordinator that answered it.
    let mut pending: [Vec<Value>; 2] = [Vec::new(), Vec::new()];
    for i in 0..FEEDBACK_ROWS {
        let row = i % rows.len();
        let which = i % 2;
        let (_, id) = infer(&coordinators[which], &rows[row..=row]);
        pending[which].push(json!({"id": id, "label": truth[row]}));
        if pending[which].len() == 50 || i + 2 >= FEEDBACK_ROWS {
            let items = std::mem::take(&mut pending[which]);
            let count = items.len() as u64;
            let (status, body) = feedback(&coordinators[which], &json!({ "feedback": items }));
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["accepted"], count, "{body}");
        }
    }

    // Both coordinators converge on the same stored weights, with every row applied.
    let settled = wait_until(
        "both coordinators to show the weights after 1,000 rows",
        Duration::from_secs(30),
        || {
            let a = online_weights(&coordinators[0]);
            let b = online_weights(&coordinators[1]);
            (a["rows"] == FEEDBACK_ROWS as u64 && a == b).then_some(a)
        },
    );
    let bad = weight(&settled, BAD);
    assert!(bad < BOUND, "the bad member keeps weight {bad}: {settled}");
    assert!((bad - FLOOR).abs() < 1e-9, "not at the floor: {settled}");
    let total: f64 = settled["weights"]
        .as_object()
        .unwrap()
        .values()
        .map(|w| w.as_f64().unwrap())
        .sum();
    assert!((total - 3.0).abs() < 1e-9, "weights sum to {total}");

    let learnt_accuracy = accuracy(&coordinators[1], &rows, &truth);
    assert!(
        learnt_accuracy > equal_accuracy,
        "accuracy with learnt weights {learnt_accuracy} is not above equal weights' {equal_accuracy}"
    );
    eprintln!(
        "accuracy: equal weights {equal_accuracy:.4}, learnt {learnt_accuracy:.4}; {settled}"
    );

    // Visible in metadata and metrics too.
    for c in &coordinators {
        let (_, body) = c.http.get(&format!("/v2/models/{ENSEMBLE}"));
        let metadata: Value = serde_json::from_str(&body).unwrap();
        let listed = metadata["parameters"]["member_weights"]
            .as_str()
            .unwrap_or_default();
        assert!(listed.contains(&format!("{BAD}=0.050000")), "{metadata}");
        let (_, metrics) = c.admin.get("/metrics");
        assert!(
            metrics.contains(&format!(
                "chorus_ensemble_member_weight{{model=\"{ENSEMBLE}\",member=\"{BAD}\"}} 0.05"
            )),
            "no weight gauge"
        );
        assert!(metrics.contains(&format!(
            "chorus_feedback_total{{model=\"{ENSEMBLE}\",outcome=\"accepted\"}} 500"
        )));
    }

    edge_cases(&coordinators[0]);

    // An operator's reset reaches both coordinators.
    let reset = coordinators[1].admin.post_json(
        &format!("/chorus/ensembles/{ENSEMBLE}/weights/reset"),
        &json!({}),
    );
    reset.expect_status(200);
    wait_until("the reset to reach both", Duration::from_secs(10), || {
        coordinators
            .iter()
            .all(|c| weight(&online_weights(c), BAD) == 1.0)
            .then_some(())
    });
    let bogus = coordinators[0].admin.post_json(
        &format!("/chorus/ensembles/{ENSEMBLE}/weights/melt"),
        &json!({}),
    );
    bogus.expect_status(404);
}

fn edge_cases(c: &Coordinator) {
    let expected = Expected::load();
    let rows = expected.rows();
    let (_, id) = infer(c, &rows[0..2]);
    // A two-row request needs two labels.
    let (status, body) = feedback(c, &json!({"id": id, "label": 3}));
    assert_eq!((status, body["invalid"].as_u64()), (200, Some(1)), "{body}");
    let (status, body) = feedback(
        c,
        &json!({"feedback": [
            {"id": id, "label": [0, 1]},
            {"id": id, "label": [0, 1]},
            {"id": "never-answered", "label": 1},
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["accepted"], &body["duplicate"], &body["unknown"]),
        (&json!(1), &json!(1), &json!(1)),
        "{body}"
    );
    // Malformed bodies: 400 with a message naming the problem.
    let reply = c.http.post(
        &format!("/v2/models/{ENSEMBLE}/feedback"),
        &[("content-type", "application/json".into())],
        b"{not json".to_vec(),
    );
    reply.expect_status(400);
    assert!(reply.error_message().contains("not valid JSON"));
    let (status, body) = feedback(c, &json!({"id": id, "label": "seven"}));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("`label`"),
        "{body}"
    );
    // Unknown ensemble: 404; an ensemble with static weights refuses feedback.
    let reply = c
        .http
        .post_json("/v2/models/nope/feedback", &json!({"id": id, "label": 1}));
    reply.expect_status(404);
    let reply = c.http.post_json(
        "/v2/models/digits_static/feedback",
        &json!({"id": id, "label": 1}),
    );
    reply.expect_status(400);
    assert!(
        reply.error_message().contains("weights = \\\"online\\\"")
            || reply.error_message().contains("weights = \"online\"")
    );
}
