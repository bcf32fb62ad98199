//! Feedback and online member weights with real processes: etcd, one worker serving the members
//! of `digits_online` (two good models and `logreg_shuffled`, trained on shuffled classes by
//! fixtures/make_bad_member.py), and two coordinators sharing the weights through etcd.
//!
//! The ensemble starts with equal weights; after feedback on 1,000 answered rows the bad
//! member's weight is at the floor (the documented bound: below 0.1, with the floor at 0.05),
//! the ensemble is more accurate on the held-out rows than with equal weights, and both
//! coordinators serve the same weights. Plus the feedback API's edge cases, its gRPC twin
//! (`chorus.v1.Feedback/SubmitFeedback`), and per-member accuracy against feedback with the
//! anomaly signal (`digits_watched`: static weights, `min_member_accuracy = 0.5`).

mod support;

use chorus_common::testing::Etcd;
use chorus_coordinator::grpc::feedback_proto::feedback_client::FeedbackClient;
use chorus_coordinator::grpc::feedback_proto::{
    FeedbackItem, SubmitFeedbackRequest, SubmitFeedbackResponse,
};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use support::{
    Expected, Http, Proc, grpc_addr, json_request, spawn_coordinator, start_worker_with, wait_until,
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
    grpc: SocketAddr,
}

fn start_coordinator(etcd: &Etcd) -> Coordinator {
    start_coordinator_with(&[format!("--etcd={}", etcd.endpoint)], ENSEMBLE)
}

/// A coordinator serving the test specs with `extra` flags (its membership: `--etcd=…` or
/// `--worker=…`), once `ensemble` is ready.
fn start_coordinator_with(extra: &[String], ensemble: &str) -> Coordinator {
    let mut args = vec![
        "--ensembles=tests/fixtures/online_ensembles.toml".to_string(),
        "--ping-interval-ms=200".into(),
    ];
    args.extend_from_slice(extra);
    let proc = spawn_coordinator(&args);
    let http = Http::new(proc.field("http_addr").parse().unwrap());
    let admin = Http::new(proc.field("admin_addr").parse().unwrap());
    wait_until(
        &format!("{ensemble} to be ready"),
        Duration::from_secs(60),
        || (http.get(&format!("/v2/models/{ensemble}/ready")).0 == 200).then_some(()),
    );
    Coordinator {
        grpc: grpc_addr(&proc),
        _proc: proc,
        http,
        admin,
    }
}

/// One worker serving every member of the test specs, and a coordinator that knows it by
/// address (no etcd).
fn start_small_cluster(ensemble: &str) -> (Proc, Coordinator) {
    let worker = start_worker_with("w-accuracy", &["random_forest", "mlp", BAD], &[]);
    let membership = format!("--worker={}", worker.field("rpc_addr"));
    (worker, start_coordinator_with(&[membership], ensemble))
}

/// `ensemble` as `/chorus/ensembles` shows it.
fn listed(c: &Coordinator, ensemble: &str) -> Value {
    let (status, body) = c.admin.get("/chorus/ensembles");
    assert_eq!(status, 200, "{body}");
    let all: Value = serde_json::from_str(&body).unwrap();
    all["ensembles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == ensemble)
        .unwrap_or_else(|| panic!("{ensemble} not listed: {all}"))
        .clone()
}

/// The ensemble's online weights as `/chorus/ensembles` shows them.
fn online_weights(c: &Coordinator) -> Value {
    listed(c, ENSEMBLE)["online_weights"].clone()
}

fn weight(weights: &Value, member: &str) -> f64 {
    weights["weights"][member].as_f64().expect("weight")
}

/// Infers `rows` in one request; the labels and the request id.
fn infer(c: &Coordinator, rows: &[Vec<f32>]) -> (Vec<i64>, String) {
    infer_on(c, ENSEMBLE, rows)
}

fn infer_on(c: &Coordinator, ensemble: &str, rows: &[Vec<f32>]) -> (Vec<i64>, String) {
    let reply = c
        .http
        .post_json(&format!("/v2/models/{ensemble}/infer"), &json_request(rows));
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
    // The edge cases' two accepted rows flushed (the other coordinator sees them) before the
    // reset: a flush that landed after it would apply them on top of the reset weights.
    wait_until(
        "the edge cases' rows to reach both",
        Duration::from_secs(10),
        || (online_weights(&coordinators[1])["rows"] == FEEDBACK_ROWS as u64 + 2).then_some(()),
    );

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

/// Calls `chorus.v1.Feedback/SubmitFeedback` on `c`'s gRPC port.
fn submit_grpc(
    c: &Coordinator,
    ensemble: &str,
    items: &[(&str, &[i64])],
) -> Result<SubmitFeedbackResponse, tonic::Status> {
    submit_grpc_as(c, None, ensemble, items)
}

/// [`submit_grpc`] presenting API key `key` (`authorization: Bearer …`).
fn submit_grpc_as(
    c: &Coordinator,
    key: Option<&str>,
    ensemble: &str,
    items: &[(&str, &[i64])],
) -> Result<SubmitFeedbackResponse, tonic::Status> {
    let mut request = tonic::Request::new(SubmitFeedbackRequest {
        model_name: ensemble.into(),
        items: items
            .iter()
            .map(|(id, labels)| FeedbackItem {
                id: id.to_string(),
                labels: labels.to_vec(),
            })
            .collect(),
    });
    if let Some(key) = key {
        let bearer = format!("Bearer {key}").parse().expect("metadata value");
        request.metadata_mut().insert("authorization", bearer);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut client = FeedbackClient::connect(format!("http://{}", c.grpc))
            .await
            .expect("gRPC connect");
        client
            .submit_feedback(request)
            .await
            .map(|r| r.into_inner())
    })
}

/// The value of one series on `c`'s `/metrics` (`name{labels}` exactly as exported).
fn metric(c: &Coordinator, series: &str) -> Option<f64> {
    let (status, text) = c.admin.get("/metrics");
    assert_eq!(status, 200);
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn grpc_feedback_shares_the_rest_store_and_counts() {
    let (worker, c) = start_small_cluster(ENSEMBLE);
    let expected = Expected::load();
    let (rows, truth) = (expected.rows(), expected.truth());
    let (_, id) = infer(&c, &rows[0..2]);
    let labels = &truth[0..2];

    let r = submit_grpc(
        &c,
        ENSEMBLE,
        &[(&id, labels), (&id, labels), ("never-answered", &[1])],
    )
    .expect("feedback accepted");
    assert_eq!(
        (r.accepted, r.duplicate, r.unknown, r.invalid, r.frozen),
        (1, 1, 1, 0, false),
        "{r:?}"
    );
    // One store behind both doors: REST sees the id as answered already.
    let (status, body) = feedback(&c, &json!({"id": id, "label": labels}));
    assert_eq!((status, &body["duplicate"]), (200, &json!(1)), "{body}");
    // A label count other than the request's rows is invalid, and can be corrected.
    let (_, other) = infer(&c, &rows[2..4]);
    let r = submit_grpc(&c, ENSEMBLE, &[(&other, &[1])]).unwrap();
    assert_eq!((r.accepted, r.invalid), (0, 1), "{r:?}");
    let r = submit_grpc(&c, ENSEMBLE, &[(&other, &truth[2..4])]).unwrap();
    assert_eq!(r.accepted, 1, "{r:?}");
    // The weights learnt from both rows of both requests.
    wait_until(
        "the weights to count 4 rows",
        Duration::from_secs(10),
        || (online_weights(&c)["rows"] == 4).then_some(()),
    );

    // Errors: the REST statuses' gRPC twins.
    let missing = submit_grpc(&c, "nope", &[(&id, &[1])]).unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    let refused = submit_grpc(&c, "digits_static", &[(&id, &[1])]).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("feedback = true"), "{refused:?}");
    let malformed = submit_grpc(&c, ENSEMBLE, &[("", &[1])]).unwrap_err();
    assert_eq!(malformed.code(), tonic::Code::InvalidArgument);
    assert!(malformed.message().contains("`id`"), "{malformed:?}");

    // Counted as REST counts: the malformed request is one invalid item.
    let count = |outcome: &str| {
        metric(
            &c,
            &format!("chorus_feedback_total{{model=\"{ENSEMBLE}\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(count("accepted"), Some(2.0));
    assert_eq!(count("duplicate"), Some(2.0));
    assert_eq!(count("unknown"), Some(1.0));
    assert_eq!(count("invalid"), Some(2.0));

    authorization(&worker.field("rpc_addr"));
}

/// With `--api-keys`, feedback over gRPC is authorized like `ModelInfer`: a key, allowed the
/// ensemble.
fn authorization(worker_rpc_addr: &str) {
    let keys = tempfile::NamedTempFile::new().unwrap();
    let digest = |secret: &str| chorus_coordinator::access::digest_hex(secret);
    let file = format!(
        "[[key]]\nid = \"all\"\nsha256 = \"{}\"\n[[key]]\nid = \"static-only\"\nsha256 = \"{}\"\nmodels = [\"digits_static\"]\n",
        digest("secret-all-0123456789"),
        digest("secret-static-0123456789"),
    );
    std::fs::write(keys.path(), file).unwrap();
    let worker = format!("--worker={worker_rpc_addr}");
    let c = start_coordinator_with(
        &[worker, format!("--api-keys={}", keys.path().display())],
        ENSEMBLE,
    );
    let items: &[(&str, &[i64])] = &[("never-answered", &[1])];
    let refused = submit_grpc_as(&c, None, ENSEMBLE, items).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let refused =
        submit_grpc_as(&c, Some("secret-static-0123456789"), ENSEMBLE, items).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let r = submit_grpc_as(&c, Some("secret-all-0123456789"), ENSEMBLE, items).unwrap();
    assert_eq!(r.unknown, 1, "{r:?}");
}

#[test]
fn accuracy_against_feedback_reports_the_bad_member_once() {
    const WATCHED: &str = "digits_watched";
    const ROWS: usize = 400;
    const BATCH: usize = 50;
    let (_worker, c) = start_small_cluster(WATCHED);
    let expected = Expected::load();
    let (rows, truth) = (expected.rows(), expected.truth());
    assert!(rows.len() >= ROWS, "{} rows", rows.len());

    let before = listed(&c, WATCHED)["accuracy"].clone();
    assert_eq!(
        (&before["window"], &before["samples"]),
        (&json!(200), &json!(0))
    );
    assert_eq!(before["min_member_accuracy"], 0.5, "{before}");

    // 400 rows in requests of 50, each told the truth, through REST and gRPC in turn.
    for (n, start) in (0..ROWS).step_by(BATCH).enumerate() {
        let (_, id) = infer_on(&c, WATCHED, &rows[start..start + BATCH]);
        let labels = &truth[start..start + BATCH];
        if n % 2 == 0 {
            let reply = c.http.post_json(
                &format!("/v2/models/{WATCHED}/feedback"),
                &json!({"id": id, "label": labels}),
            );
            let body = reply.json();
            assert_eq!(
                (reply.status, &body["accepted"]),
                (200, &json!(1)),
                "{body}"
            );
        } else {
            let r = submit_grpc(&c, WATCHED, &[(&id, labels)]).expect("feedback");
            assert_eq!(r.accepted, 1, "{r:?}");
        }
    }

    let accuracy = |member: &str| {
        metric(
            &c,
            &format!("chorus_member_accuracy{{model=\"{WATCHED}\",member=\"{member}\"}}"),
        )
        .unwrap_or_else(|| panic!("no accuracy gauge for {member}"))
    };
    let alerts = |member: &str| {
        metric(
            &c,
            &format!(
                "chorus_member_accuracy_alerts_total{{model=\"{WATCHED}\",member=\"{member}\"}}"
            ),
        )
    };
    let bad = accuracy(BAD);
    assert!(bad < 0.2, "the bad member's accuracy is {bad}");
    for good in ["random_forest", "mlp"] {
        let accuracy = accuracy(good);
        assert!(accuracy > 0.9, "{good}'s accuracy is {accuracy}");
        assert_eq!(alerts(good), Some(0.0), "{good} alerted");
    }
    // Below from its 100th row on (half the window) and never back: one crossing, one alert.
    assert_eq!(alerts(BAD), Some(1.0));
    let ensemble = metric(
        &c,
        &format!("chorus_ensemble_accuracy{{model=\"{WATCHED}\"}}"),
    )
    .expect("ensemble accuracy gauge");
    assert!(ensemble > 0.9, "the ensemble's accuracy is {ensemble}");

    let listed = listed(&c, WATCHED);
    let standing = &listed["accuracy"];
    assert_eq!(standing["samples"], 200, "{standing}");
    let members = standing["members"].as_array().expect("members");
    let member = |name: &str| members.iter().find(|m| m["model"] == name).unwrap();
    assert_eq!(member(BAD)["below_threshold"], true, "{standing}");
    assert_eq!(member(BAD)["samples"], 200, "{standing}");
    assert_eq!(member("mlp")["below_threshold"], false, "{standing}");
    // Static weights stay static.
    assert_eq!(listed["online_weights"], Value::Null, "{listed}");
}

/// The value of `chorus_feedback_total{model=ensemble, outcome}` on `c` (0 when absent).
fn feedback_count(c: &Coordinator, ensemble: &str, outcome: &str) -> f64 {
    metric(
        c,
        &format!("chorus_feedback_total{{model=\"{ensemble}\",outcome=\"{outcome}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Answers `count` single-row requests of `ensemble` on `c`; the feedback items telling their
/// truth.
fn answered(c: &Coordinator, ensemble: &str, from: usize, count: usize) -> Vec<Value> {
    let expected = Expected::load();
    let (rows, truth) = (expected.rows(), expected.truth());
    (from..from + count)
        .map(|i| {
            let row = i % rows.len();
            let (_, id) = infer_on(c, ensemble, &rows[row..=row]);
            json!({"id": id, "label": truth[row]})
        })
        .collect()
}

fn feedback_to(c: &Coordinator, ensemble: &str, items: &[Value]) -> Value {
    let reply = c.http.post_json(
        &format!("/v2/models/{ensemble}/feedback"),
        &json!({ "feedback": items }),
    );
    let body = reply.json();
    assert_eq!(reply.status, 200, "{body}");
    body
}

/// Feedback sent to a coordinator that did not answer the request reaches the one that did,
/// relayed through etcd: counted there, moving the weights as direct feedback would, applied
/// once however often it is sent; etcd down, the relay fails per item, promptly. Fusion
/// ensembles take feedback and report accuracy too.
#[test]
fn feedback_through_another_coordinator_reaches_the_one_that_answered() {
    const FUSION: &str = "digits_fusion_watched";
    const ROWS: usize = 20;
    let mut etcd = Etcd::start();
    let _worker = start_worker_with(
        "w-relay",
        &[
            "random_forest",
            "mlp",
            BAD,
            "logreg",
            "svc",
            "gboost",
            "stacker",
        ],
        &[format!("--etcd={}", etcd.endpoint)],
    );
    let a = start_coordinator(&etcd);
    let b = start_coordinator(&etcd);

    // Answered by A, told to B: relayed, and applied by A.
    let items = answered(&a, ENSEMBLE, 0, ROWS);
    let body = feedback_to(&b, ENSEMBLE, &items);
    assert_eq!(
        (&body["relayed"], &body["accepted"], &body["unknown"]),
        (&json!(ROWS), &json!(0), &json!(0)),
        "{body}"
    );
    wait_until(
        "A to apply the relayed feedback",
        Duration::from_secs(15),
        || (feedback_count(&a, ENSEMBLE, "accepted") == ROWS as f64).then_some(()),
    );
    assert_eq!(feedback_count(&b, ENSEMBLE, "relayed"), ROWS as f64);
    assert_eq!(feedback_count(&b, ENSEMBLE, "accepted"), 0.0);
    let relayed = wait_until(
        "both coordinators to show the relayed rows' weights",
        Duration::from_secs(15),
        || {
            let (wa, wb) = (online_weights(&a), online_weights(&b));
            (wa["rows"] == ROWS && wa == wb).then_some(wa)
        },
    );
    assert!(weight(&relayed, BAD) < 1.0, "{relayed}");

    // The same feedback again through B, and over gRPC: applied once.
    let body = feedback_to(&b, ENSEMBLE, &items[..1]);
    assert_eq!(body["relayed"], 1, "{body}");
    let first = items[1]["id"].as_str().unwrap();
    let label = items[1]["label"].as_i64().unwrap();
    let r = submit_grpc(&b, ENSEMBLE, &[(first, &[label])]).expect("gRPC feedback");
    assert_eq!((r.relayed, r.accepted, r.relay_failed), (1, 0, 0), "{r:?}");
    wait_until("A to see both duplicates", Duration::from_secs(15), || {
        (feedback_count(&a, ENSEMBLE, "duplicate") == 2.0).then_some(())
    });
    assert_eq!(feedback_count(&a, ENSEMBLE, "accepted"), ROWS as f64);
    assert_eq!(
        online_weights(&a)["rows"],
        ROWS,
        "a duplicate moved the weights"
    );

    // The same rows told to A directly move the weights the same way.
    a.admin
        .post_json(
            &format!("/chorus/ensembles/{ENSEMBLE}/weights/reset"),
            &json!({}),
        )
        .expect_status(200);
    wait_until("the reset", Duration::from_secs(10), || {
        (online_weights(&a)["rows"] == 0).then_some(())
    });
    let again = answered(&a, ENSEMBLE, 0, ROWS);
    assert_eq!(feedback_to(&a, ENSEMBLE, &again)["accepted"], ROWS);
    let direct = wait_until("the direct rows", Duration::from_secs(10), || {
        let w = online_weights(&a);
        (w["rows"] == ROWS).then_some(w)
    });
    for member in ["random_forest", "mlp", BAD] {
        let (r, d) = (weight(&relayed, member), weight(&direct, member));
        assert!((r - d).abs() < 1e-9, "{member}: relayed {r}, direct {d}");
    }

    // Without an answering coordinator alive, an id still relays (and expires with its
    // lease); a client's own id is unknown.
    let body = feedback_to(
        &b,
        ENSEMBLE,
        &[
            json!({"id": "00000000000000ff-1", "label": 1}),
            json!({"id": "client-chosen", "label": 1}),
        ],
    );
    assert_eq!(
        (&body["relayed"], &body["unknown"]),
        (&json!(1), &json!(1)),
        "{body}"
    );

    // A fusion ensemble takes feedback, here and relayed, and reports its accuracy.
    let fused = answered(&a, FUSION, 0, 60);
    assert_eq!(feedback_to(&a, FUSION, &fused[..30])["accepted"], 30);
    assert_eq!(feedback_to(&b, FUSION, &fused[30..])["relayed"], 30);
    let standing = wait_until("A to count 60 fusion rows", Duration::from_secs(15), || {
        let standing = listed(&a, FUSION)["accuracy"].clone();
        (standing["samples"] == 60).then_some(standing)
    });
    let accuracy = standing["accuracy"].as_f64().expect("ensemble accuracy");
    assert!(
        accuracy > 0.85,
        "the stacker's accuracy is {accuracy}: {standing}"
    );
    let gauge = metric(
        &a,
        &format!("chorus_ensemble_accuracy{{model=\"{FUSION}\"}}"),
    );
    let gauge = gauge.expect("fusion accuracy gauge");
    assert!(
        (gauge - accuracy).abs() < 1e-9,
        "gauge {gauge}, listed {accuracy}"
    );
    assert_eq!(listed(&a, FUSION)["online_weights"], Value::Null);

    // etcd down: the relay fails per item, within the etcd request timeout, counted.
    let pending = answered(&a, ENSEMBLE, ROWS, 5);
    etcd.kill();
    let started = std::time::Instant::now();
    let body = feedback_to(&b, ENSEMBLE, &pending);
    assert_eq!(
        (&body["relay_failed"], &body["relayed"]),
        (&json!(5), &json!(0)),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the relay held the request {:?}",
        started.elapsed()
    );
    assert_eq!(feedback_count(&b, ENSEMBLE, "relay_failed"), 5.0);
    // Back up, the same items sent again are applied.
    etcd.resume();
    wait_until("the resent items to relay", Duration::from_secs(30), || {
        (feedback_to(&b, ENSEMBLE, &pending)["relayed"] == 5).then_some(())
    });
    wait_until("A to apply them", Duration::from_secs(30), || {
        (feedback_count(&a, ENSEMBLE, "accepted") == (2 * ROWS + 5) as f64).then_some(())
    });
}
