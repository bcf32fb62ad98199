//! Bring your own models, end to end over real processes: models exported the ordinary way
//! (skl2onnx's `float_input`/`X`, a Keras-like `input.1` → `dense_1` [N, 1] sigmoid), joined
//! through `input_map`/`output_map`, answer the breast-cancer held-out rows exactly as
//! fixtures/make_raw_exports.py computed; a threshold moves a one-column member's labels as
//! Python says; a bad map is reported naming the member and the field; a ZipMap model is refused
//! with the export fix.

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::*;

/// Every model the sample BYO ensembles use (config/byo_ensembles.toml).
const MODELS: [&str; 4] = [
    "cancer_logreg",
    "cancer_sigmoid",
    "cancer_forest",
    "cancer_stacker",
];

/// fixtures/cancer/expected.json.
fn expected() -> Value {
    Expected::of_set("cancer").0
}

/// The held-out rows, as the test sends them.
fn rows(expected: &Value) -> Vec<Vec<f32>> {
    Expected(expected.clone()).rows()
}

fn ints(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

fn floats(value: &Value) -> Vec<f64> {
    let flat: Vec<&Value> = match value.as_array() {
        Some(a) if a.first().is_some_and(Value::is_array) => {
            a.iter().flat_map(|r| r.as_array().unwrap()).collect()
        }
        Some(a) => a.iter().collect(),
        None => panic!("not an array: {value}"),
    };
    flat.iter().map(|v| v.as_f64().unwrap()).collect()
}

/// An OIP v2 request with the ensemble-level input name, `input`.
fn request(rows: &[Vec<f32>]) -> Value {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    json!({"inputs": [{"name": "input", "shape": [rows.len(), rows[0].len()], "datatype": "FP32", "data": data}]})
}

fn output<'a>(response: &'a Value, name: &str) -> &'a Value {
    &response["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {response}"))["data"]
}

fn infer(http: &Http, name: &str, rows: &[Vec<f32>]) -> Value {
    let reply = http.post_json(&format!("/v2/models/{name}/infer"), &request(rows));
    reply.expect_status(200);
    reply.json()
}

fn accuracy(labels: &[i64], truth: &[i64]) -> f64 {
    labels.iter().zip(truth).filter(|(a, b)| a == b).count() as f64 / truth.len() as f64
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-5, "{what}[{i}]: got {g}, want {w}");
    }
}

fn coordinator_for(workers: &[&Proc], ensembles: &str) -> (Proc, Http) {
    let addrs: Vec<String> = workers.iter().map(|w| w.field("rpc_addr")).collect();
    let proc = spawn_coordinator(&[
        format!("--ensembles={ensembles}"),
        format!("--worker={}", addrs.join(",")),
        "--ping-interval-ms=200".to_string(),
    ]);
    let http = Http::new(proc.field("http_addr").parse().expect("http addr"));
    wait_until("readiness", Duration::from_secs(60), || {
        (http.get("/v2/health/ready").0 == 200).then_some(())
    });
    (proc, http)
}

/// A spec file in a fresh scratch directory, removed when the test ends.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn spec(name: &str, text: &str) -> (Scratch, String) {
        let dir = std::env::temp_dir().join(format!("chorus-byo-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let path = dir.join("ensembles.toml");
        std::fs::write(&path, text).expect("spec file");
        let display = path.display().to_string();
        (Scratch(dir), display)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn mapped_ensembles_answer_as_python_computed() {
    let expected = expected();
    let x = rows(&expected);
    let truth = ints(&expected["y"]);
    assert_eq!(x.len(), 143);
    // Two workers, so members are spread as in a real cluster.
    let a = start_worker("w-byo-a", &MODELS[..2]);
    let b = start_worker("w-byo-b", &MODELS[2..]);
    let (_coordinator, http) = coordinator_for(&[&a, &b], "config/byo_ensembles.toml");

    // The ensemble speaks its own names: `input`, and a two-class `probabilities`.
    let metadata: Value = serde_json::from_str(&http.get("/v2/models/cancer_soft").1).unwrap();
    assert_eq!(metadata["inputs"][0]["name"], "input", "{metadata}");
    assert_eq!(
        metadata["inputs"][0]["shape"],
        json!([-1, 30]),
        "{metadata}"
    );
    assert_eq!(
        metadata["outputs"][1]["shape"],
        json!([-1, 2]),
        "{metadata}"
    );

    let ensembles = expected["ensembles"].as_object().unwrap();
    assert_eq!(ensembles.len(), 4);
    for (name, want) in ensembles {
        // In chunks of 50: several calls, several batch sizes.
        let mut labels = Vec::new();
        let mut scores = Vec::new();
        let score = if want["agreement"].is_null() {
            "probabilities"
        } else {
            "agreement"
        };
        for chunk in x.chunks(50) {
            let response = infer(&http, name, chunk);
            assert_eq!(response["parameters"]["degraded"], false, "{response}");
            labels.extend(ints(output(&response, "label")));
            scores.extend(floats(output(&response, score)));
        }
        assert_eq!(labels, ints(&want["label"]), "{name}: labels");
        assert_close(&format!("{name}.{score}"), &scores, &floats(&want[score]));
        // numpy's mean and a count over rows may differ in the last bit.
        let (got, python) = (
            accuracy(&labels, &truth),
            want["accuracy"].as_f64().unwrap(),
        );
        assert!(
            (got - python).abs() < 1e-12,
            "{name}: accuracy {got}, Python {python}"
        );
    }
    // The members answer under their own names when asked directly.
    let response = infer_named(&http, "cancer_sigmoid", "input.1", &x[..3]);
    let p1 = floats(output(&response, "dense_1"));
    assert_close(
        "dense_1",
        &p1,
        &floats(&expected["models"]["cancer_sigmoid"]["p1"])[..3],
    );
}

fn infer_named(http: &Http, model: &str, input: &str, rows: &[Vec<f32>]) -> Value {
    let mut body = request(rows);
    body["inputs"][0]["name"] = json!(input);
    let reply = http.post_json(&format!("/v2/models/{model}/infer"), &body);
    reply.expect_status(200);
    reply.json()
}

/// One sigmoid member alone: at the default threshold its labels are p > 0.5; at 0.8 they move
/// exactly where Python says; soft and hard voting agree.
#[test]
fn a_threshold_moves_one_column_labels_as_computed() {
    let expected = expected();
    let x = rows(&expected);
    let sigmoid = &expected["models"]["cancer_sigmoid"];
    let at_half = ints(&sigmoid["label"]);
    let at_screen = ints(&sigmoid["label_at_screen_threshold"]);
    let screen = expected["screen_threshold"].as_f64().unwrap();
    assert_ne!(at_half, at_screen, "the fixture must move some labels");
    let member = "[[ensemble.member]]\nmodel = \"cancer_sigmoid\"\ninput_map = { input = \"input.1\" }\noutput_map = { dense_1 = \"probabilities\" }\n";
    let table = |name: &str, combiner: &str, threshold: Option<f64>| {
        let threshold = threshold.map_or(String::new(), |t| format!("threshold = {t}\n"));
        let output = if combiner == "hard_vote" {
            "member_output = \"probabilities\"\n"
        } else {
            ""
        };
        format!(
            "[[ensemble]]\nname = \"{name}\"\ncombiner = \"{combiner}\"\ndeadline_ms = 1000\n{output}{threshold}{member}\n"
        )
    };
    let text = [
        "version = 1\n".to_string(),
        table("sig_soft", "soft_vote", None),
        table("sig_soft_half", "soft_vote", Some(0.5)),
        table("sig_soft_screen", "soft_vote", Some(screen)),
        table("sig_hard", "hard_vote", None),
        table("sig_hard_screen", "hard_vote", Some(screen)),
    ]
    .concat();
    let (_scratch, path) = Scratch::spec("threshold", &text);
    let worker = start_worker("w-byo-sigmoid", &["cancer_sigmoid"]);
    let (_coordinator, http) = coordinator_for(&[&worker], &path);
    for (name, want) in [
        ("sig_soft", &at_half),
        ("sig_soft_half", &at_half),
        ("sig_soft_screen", &at_screen),
        ("sig_hard", &at_half),
        ("sig_hard_screen", &at_screen),
    ] {
        let response = infer(&http, name, &x);
        assert_eq!(&ints(output(&response, "label")), want, "{name}");
    }
    // Soft voting answers the expanded [1 - p, p].
    let response = infer(&http, "sig_soft", &x[..4]);
    let p = floats(output(&response, "probabilities"));
    let p1 = floats(&sigmoid["p1"]);
    for row in 0..4 {
        assert!((p[2 * row + 1] - p1[row]).abs() <= 1e-6, "{p:?}");
        assert!((p[2 * row] + p[2 * row + 1] - 1.0).abs() <= 1e-6, "{p:?}");
    }
}

/// A map that names a tensor the model lacks: the coordinator serves the other ensembles, and a
/// request to this one says which member and field to fix. A map to an unknown role is refused
/// when the spec is read.
#[test]
fn bad_maps_name_the_member_and_the_field() {
    let good = std::fs::read_to_string(repo_root().join("config/byo_ensembles.toml")).unwrap();
    let bad_table = "\n[[ensemble]]\nname = \"cancer_typo\"\ncombiner = \"soft_vote\"\ndeadline_ms = 1000\n[[ensemble.member]]\nmodel = \"cancer_logreg\"\ninput_map = { input = \"float_input\" }\n[[ensemble.member]]\nmodel = \"cancer_sigmoid\"\ninput_map = { input = \"input_1\" }\noutput_map = { dense_1 = \"probabilities\" }\n";
    let (_scratch, path) = Scratch::spec("badmap", &format!("{good}{bad_table}"));
    let worker = start_worker("w-byo-bad", &MODELS);
    let addr = worker.field("rpc_addr");
    let coordinator = spawn_coordinator(&[
        format!("--ensembles={path}"),
        format!("--worker={addr}"),
        "--ping-interval-ms=200".to_string(),
    ]);
    let http = Http::new(coordinator.field("http_addr").parse().unwrap());
    wait_until("cancer_soft ready", Duration::from_secs(60), || {
        (http.get("/v2/models/cancer_soft/ready").0 == 200).then_some(())
    });
    let x = rows(&expected());
    infer(&http, "cancer_soft", &x[..2]);
    let reply = http.post_json("/v2/models/cancer_typo/infer", &request(&x[..2]));
    assert_eq!(
        reply.status,
        503,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let message = reply.error_message();
    assert!(
        message.contains("member 'cancer_sigmoid'")
            && message.contains("`input_map`")
            && message.contains("'input_1'")
            && message.contains("input.1"),
        "{message}"
    );
    // Every request to it would be refused, so it is not ready either (while its members are).
    assert_eq!(http.get("/v2/models/cancer_typo/ready").0, 400);

    let unknown_role = good.replacen("dense_1 = \"probabilities\"", "dense_1 = \"proba\"", 1);
    let (_scratch, path) = Scratch::spec("badrole", &unknown_role);
    let (status, stderr) = run_to_exit(
        &[
            "coordinator".into(),
            "--http-addr=127.0.0.1:0".into(),
            "--grpc-addr=127.0.0.1:0".into(),
            "--admin-addr=127.0.0.1:0".into(),
            format!("--ensembles={path}"),
            format!("--worker={addr}"),
        ],
        Duration::from_secs(30),
    );
    assert!(!status.success());
    assert!(
        stderr.contains("member 'cancer_sigmoid'")
            && stderr.contains("`output_map`")
            && stderr.contains("'proba'")
            && stderr.contains("probabilities"),
        "{stderr}"
    );
}

/// skl2onnx's default export (ZipMap on) makes `output_probability` a sequence of maps: the
/// worker refuses it at load, saying how to export it instead.
#[test]
fn a_zipmap_model_is_refused_with_the_export_fix() {
    let (status, stderr) = run_to_exit(
        &[
            "worker".into(),
            "--listen=127.0.0.1:0".into(),
            "--worker-id=w-zipmap".into(),
            "--model-repository=tests/fixtures/zipmap_models".into(),
            "--models=cancer_zipmap".into(),
        ],
        Duration::from_secs(60),
    );
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("cancer_zipmap")
            && stderr.contains("output_probability")
            && stderr.contains("ZipMap")
            && stderr.contains("{'zipmap': False}"),
        "{stderr}"
    );
}
