//! Versioned ensembles with real worker and coordinator processes: versions answer on their own
//! paths with their own golden answers, unversioned requests follow the traffic split (50/50
//! and 90/10 within binomial bounds), a spec file rewrite + SIGHUP or an etcd put swaps the split
//! with no failed request, a shadow version's answers are counted and never returned, bad splits
//! are refused, and one ensemble nobody can serve leaves a non-strict coordinator ready.
//!
//! `digits` version 1 is a soft vote of logreg and mlp; version 2 adds random_forest (it is the
//! sample `digits_soft`). Golden answers come from the Python-computed member probabilities in
//! fixtures/digits/expected.json.

mod support;

use chorus_common::testing::Etcd;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{
    Expected, Http, Proc, admin_addr, grpc, grpc_addr, json_request, run_to_exit,
    spawn_coordinator, start_worker, start_worker_with, wait_until,
};

const MEMBERS: [&str; 3] = ["logreg", "random_forest", "mlp"];

/// One `[[ensemble]]` table of `digits`: a soft vote of `members`, with `extra` fields.
fn table(version: &str, members: &[&str], extra: &str) -> String {
    let mut text = format!(
        "[[ensemble]]\nname = \"digits\"\nversion = {version}\ncombiner = \"soft_vote\"\n\
         deadline_ms = 5000\n{extra}\n"
    );
    for member in members {
        text.push_str(&format!("[[ensemble.member]]\nmodel = \"{member}\"\n"));
    }
    text
}

/// Versions 1 (logreg, mlp) and 2 (logreg, random_forest, mlp), with `routing` on version 1's
/// table, and `more` tables after them.
fn spec(routing: &str, more: &str) -> String {
    format!(
        "version = 1\n{}{}{more}",
        table("1", &["logreg", "mlp"], routing),
        table("2", &MEMBERS, "")
    )
}

fn write(path: &Path, text: &str) {
    // Written beside and renamed: a reload never reads half a file.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).expect("write spec");
    std::fs::rename(&partial, path).expect("rename spec");
}

/// A worker serving every member, and a coordinator on `spec_path` with `extra` flags, once
/// `digits` is ready.
fn start(spec_path: &Path, extra: &[&str]) -> (Proc, Proc, Http) {
    let worker = start_worker("w-digits", &MEMBERS);
    let mut args = vec![
        format!("--ensembles={}", spec_path.display()),
        format!("--worker={}", worker.field("rpc_addr")),
        "--ping-interval-ms=200".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let coordinator = spawn_coordinator(&args);
    let http = Http::new(coordinator.field("http_addr").parse().expect("http addr"));
    wait_until("digits to be ready", Duration::from_secs(60), || {
        (http.get("/v2/models/digits/ready").0 == 200).then_some(())
    });
    (worker, coordinator, http)
}

/// The golden soft vote of `members` over every test row: (labels, probabilities), and for
/// each row whether its top two classes are far enough apart for the label to be certain.
struct Golden {
    labels: Vec<i64>,
    probabilities: Vec<Vec<f64>>,
    clear: Vec<bool>,
}

fn golden(expected: &Expected, members: &[&str]) -> Golden {
    let matrices: Vec<Vec<Vec<f64>>> = members
        .iter()
        .map(|m| expected.matrix(m, "probabilities"))
        .collect();
    let rows = matrices[0].len();
    let mut g = Golden {
        labels: Vec::new(),
        probabilities: Vec::new(),
        clear: Vec::new(),
    };
    for r in 0..rows {
        let classes = matrices[0][r].len();
        let mean: Vec<f64> = (0..classes)
            .map(|c| matrices.iter().map(|m| m[r][c]).sum::<f64>() / members.len() as f64)
            .collect();
        let mut order: Vec<usize> = (0..classes).collect();
        order.sort_by(|a, b| mean[*b].total_cmp(&mean[*a]));
        g.labels.push(order[0] as i64);
        g.clear.push(mean[order[0]] - mean[order[1]] > 1e-4);
        g.probabilities.push(mean);
    }
    g
}

fn output<'a>(response: &'a Value, name: &str) -> &'a Value {
    response["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name}: {response}"))
}

fn numbers(value: &Value) -> Vec<f64> {
    value["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// Checks an answer for `rows[start..start + n]` against `golden`.
fn check_answer(response: &Value, golden: &Golden, start: usize, what: &str) {
    let labels = numbers(output(response, "label"));
    let probabilities = numbers(output(response, "probabilities"));
    let classes = golden.probabilities[0].len();
    for (i, label) in labels.iter().enumerate() {
        let row = start + i;
        for c in 0..classes {
            let got = probabilities[i * classes + c];
            let want = golden.probabilities[row][c];
            assert!(
                (got - want).abs() < 1e-4,
                "{what}: row {row} class {c}: {got} vs golden {want}"
            );
        }
        if golden.clear[row] {
            assert_eq!(*label as i64, golden.labels[row], "{what}: row {row} label");
        }
    }
}

/// A metric's value from Prometheus text, by its name and exact label set (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Unversioned requests from 4 threads until stopped, counting answers by version and failures.
struct RequestLoop {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicUsize>,
    answered: Arc<[AtomicUsize; 2]>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl RequestLoop {
    fn start(http: &Http, rows: &[Vec<f32>]) -> RequestLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicUsize::new(0));
        let answered: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let threads = (0..4)
            .map(|t| {
                let (stop, failed, answered) = (stop.clone(), failed.clone(), answered.clone());
                let http = Http::new(http.addr);
                let rows = rows[t * 10..t * 10 + 4].to_vec();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let reply = http.post_json("/v2/models/digits/infer", &json_request(&rows));
                        if reply.status != 200 {
                            eprintln!(
                                "failed: {} {}",
                                reply.status,
                                String::from_utf8_lossy(&reply.body)
                            );
                            failed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        match reply.json()["model_version"].as_str() {
                            Some("1") => answered[0].fetch_add(1, Ordering::Relaxed),
                            Some("2") => answered[1].fetch_add(1, Ordering::Relaxed),
                            other => panic!("answered by {other:?}"),
                        };
                    }
                })
            })
            .collect();
        RequestLoop {
            stop,
            failed,
            answered,
            threads,
        }
    }

    fn answered(&self, version: usize) -> usize {
        self.answered[version - 1].load(Ordering::Relaxed)
    }

    /// Waits until `version` has answered `more` requests beyond now.
    fn wait_for(&self, version: usize, more: usize) {
        let from = self.answered(version);
        wait_until(
            &format!("{more} more answers from version {version}"),
            Duration::from_secs(20),
            || (self.answered(version) >= from + more).then_some(()),
        );
    }

    /// Stops the threads; the number of failed requests.
    fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("request loop");
        }
        self.failed.load(Ordering::Relaxed)
    }
}

/// Waits until an unversioned request is answered by `version`.
fn wait_for_version(http: &Http, rows: &[Vec<f32>], version: &str) {
    wait_until(
        &format!("version {version} to answer"),
        Duration::from_secs(20),
        || {
            let reply = http.post_json("/v2/models/digits/infer", &json_request(&rows[..1]));
            (reply.json()["model_version"] == version).then_some(())
        },
    );
}

#[test]
fn versions_answer_on_their_paths_and_a_sighup_swaps_the_split_without_failing_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ensembles.toml");
    write(&path, &spec("traffic = { \"1\" = 100, \"2\" = 0 }", ""));
    let (_worker, coordinator, http) = start(&path, &[]);
    let expected = Expected::load();
    let rows = expected.rows();
    let (v1, v2) = (
        golden(&expected, &["logreg", "mlp"]),
        golden(&expected, &MEMBERS),
    );

    // Each version on its own path, with its own golden answer and its version in the reply.
    let batch = 50;
    for (version, golden) in [("1", &v1), ("2", &v2)] {
        for start in (0..rows.len()).step_by(batch) {
            let end = (start + batch).min(rows.len());
            let reply = http.post_json(
                &format!("/v2/models/digits/versions/{version}/infer"),
                &json_request(&rows[start..end]),
            );
            reply.expect_status(200);
            let response = reply.json();
            assert_eq!(response["model_version"], version);
            check_answer(&response, golden, start, &format!("version {version}"));
        }
    }
    // gRPC reaches a version by `model_version` and says which answered.
    let client = grpc::Grpc::connect(grpc_addr(&coordinator));
    let mut request = grpc::typed_request("digits", &rows[..4]);
    request.model_version = "2".into();
    let answer = client.infer(request).expect("gRPC version 2");
    assert_eq!(answer.model_version, "2");
    let mut request = grpc::typed_request("digits", &rows[..4]);
    request.model_version = "7".into();
    assert!(client.infer(request).is_err(), "no version 7");
    // Metadata lists both versions; each version is ready on its own; 7 is unknown.
    let (status, body) = http.get("/v2/models/digits");
    assert_eq!(status, 200, "{body}");
    let metadata: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(metadata["versions"], json!(["1", "2"]));
    assert_eq!(http.get("/v2/models/digits/versions/2/ready").0, 200);
    assert_eq!(http.get("/v2/models/digits/versions/7/ready").0, 404);
    assert_eq!(
        http.post_json(
            "/v2/models/digits/versions/7/infer",
            &json_request(&rows[..1])
        )
        .status,
        404
    );

    // Unversioned requests follow the 100/0 split to version 1.
    for _ in 0..20 {
        let reply = http.post_json("/v2/models/digits/infer", &json_request(&rows[..2]));
        assert_eq!(reply.expect_status(200).json()["model_version"], "1");
    }

    // A request loop runs across the swap to 0/100 and a bad file: nothing fails.
    let requests = RequestLoop::start(&http, &rows);
    requests.wait_for(1, 20);
    write(&path, &spec("traffic = { \"1\" = 0, \"2\" = 100 }", ""));
    coordinator.signal(libc::SIGHUP);
    wait_for_version(&http, &rows, "2");
    // After the swap every unversioned answer comes from version 2; requests in flight at the
    // swap may still come from version 1, at most one per thread.
    let ones = requests.answered(1);
    requests.wait_for(2, 20);
    assert!(requests.answered(1) <= ones + 4);

    // A spec file that does not load keeps the specs in use (and the process).
    write(&path, "version = 1\n[[ensemble]]\nname = \"digits\"\n");
    coordinator.signal(libc::SIGHUP);
    requests.wait_for(2, 40);
    assert_eq!(requests.stop(), 0, "requests failed across the swap");
    let reply = http.post_json("/v2/models/digits/infer", &json_request(&rows[..1]));
    assert_eq!(reply.expect_status(200).json()["model_version"], "2");

    // Rolling back is the same single update.
    write(&path, &spec("traffic = { \"1\" = 100, \"2\" = 0 }", ""));
    coordinator.signal(libc::SIGHUP);
    wait_for_version(&http, &rows, "1");
}

#[test]
fn a_split_pushed_through_etcd_swaps_without_failing_a_request() {
    let etcd = Etcd::start();
    let _worker = start_worker_with("w-digits", &MEMBERS, &[format!("--etcd={}", etcd.endpoint)]);
    let key = "/chorus/v1/ensembles/digits";
    etcd.etcdctl(&[
        "put",
        key,
        &spec("traffic = { \"1\" = 100, \"2\" = 0 }", ""),
    ]);
    let coordinator = spawn_coordinator(&[
        "--ensembles=/nonexistent/ensembles.toml".into(),
        format!("--etcd={}", etcd.endpoint),
        "--ping-interval-ms=200".into(),
    ]);
    let http = Http::new(coordinator.field("http_addr").parse().unwrap());
    wait_until("digits to be ready", Duration::from_secs(60), || {
        (http.get("/v2/models/digits/ready").0 == 200).then_some(())
    });
    let rows = Expected::load().rows();
    wait_for_version(&http, &rows, "1");

    let requests = RequestLoop::start(&http, &rows);
    requests.wait_for(1, 20);
    etcd.etcdctl(&[
        "put",
        key,
        &spec("traffic = { \"1\" = 0, \"2\" = 100 }", ""),
    ]);
    wait_for_version(&http, &rows, "2");
    let ones = requests.answered(1);
    requests.wait_for(2, 20);
    assert!(requests.answered(1) <= ones + 4);
    // A value naming a missing version is refused; the key keeps its last good specs.
    etcd.etcdctl(&[
        "put",
        key,
        &spec("traffic = { \"1\" = 50, \"9\" = 50 }", ""),
    ]);
    requests.wait_for(2, 40);
    assert!(
        requests.answered(1) <= ones + 4,
        "the refused split (half to version 1) was applied"
    );
    assert_eq!(requests.stop(), 0, "requests failed across the etcd swap");
    let reply = http.post_json("/v2/models/digits/infer", &json_request(&rows[..1]));
    assert_eq!(reply.expect_status(200).json()["model_version"], "2");
}

#[test]
fn a_fifty_fifty_split_and_a_shadow_that_is_compared_and_never_returned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ensembles.toml");
    // Version 3 (random_forest alone) shadows the split: its labels differ from the others' on
    // some rows, so both agreement outcomes are exercised.
    let text = spec(
        "traffic = { \"1\" = 50, \"2\" = 50 }\nshadow = 3",
        &table("3", &["random_forest"], ""),
    );
    write(&path, &text);
    let (_worker, coordinator, http) = start(&path, &[]);
    let admin = Http::new(admin_addr(&coordinator));
    let expected = Expected::load();
    let rows = expected.rows();
    let goldens = [
        golden(&expected, &["logreg", "mlp"]),
        golden(&expected, &MEMBERS),
    ];

    let n = 400;
    let mut by_version = [0usize; 2];
    for i in 0..n {
        let start = (i * 3) % (rows.len() - 3);
        let reply = http.post_json(
            "/v2/models/digits/infer",
            &json_request(&rows[start..start + 3]),
        );
        let response = reply.expect_status(200).json();
        let version = response["model_version"].as_str().expect("model_version");
        let index = match version {
            "1" => 0,
            "2" => 1,
            other => panic!("answered by version {other}: the shadow's answers must never return"),
        };
        by_version[index] += 1;
        // The answer is the primary's own, whatever the shadow said.
        check_answer(
            &response,
            &goldens[index],
            start,
            &format!("version {version}"),
        );
    }
    // Binomial(400, 0.5): sd 10; five of them either side.
    assert!(
        (150..=250).contains(&by_version[0]),
        "50/50 split gave {by_version:?}"
    );

    // Every request was shadowed (one at a time: never over the cap), and compared.
    let series = |outcome: &str| {
        format!(
            "chorus_shadow_agreement_total{{model=\"digits\",version=\"3\",outcome=\"{outcome}\"}}"
        )
    };
    let text = wait_until(
        "every shadow call to be counted",
        Duration::from_secs(20),
        || {
            let (_, text) = admin.get("/metrics");
            let counted = metric(&text, &series("agree")) + metric(&text, &series("disagree"));
            (counted as usize == n).then_some(text)
        },
    );
    assert_eq!(metric(&text, &series("failed")), 0.0);
    assert_eq!(metric(&text, &series("dropped")), 0.0);
    assert!(metric(&text, &series("agree")) > 0.0, "{text}");
    let answered = |v: &str| {
        metric(
            &text,
            &format!("chorus_ensemble_version_requests_total{{model=\"digits\",version=\"{v}\"}}"),
        )
    };
    assert_eq!(answered("1") as usize, by_version[0]);
    assert_eq!(answered("2") as usize, by_version[1]);
    assert_eq!(answered("3"), 0.0, "the shadow answered no client");

    // A pinned request is not shadowed.
    http.post_json(
        "/v2/models/digits/versions/1/infer",
        &json_request(&rows[..1]),
    )
    .expect_status(200);
    std::thread::sleep(Duration::from_millis(300));
    let (_, after) = admin.get("/metrics");
    let total = |t: &str| metric(t, &series("agree")) + metric(t, &series("disagree"));
    assert_eq!(total(&after), total(&text));
}

#[test]
fn a_ninety_ten_canary_lands_within_two_points_over_5000_requests() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ensembles.toml");
    write(&path, &spec("traffic = { \"1\" = 90, \"2\" = 10 }", ""));
    let (_worker, _coordinator, http) = start(&path, &[]);
    let rows = Expected::load().rows();
    let n = 5000;
    let canary = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let http = Http::new(http.addr);
            let canary = canary.clone();
            let row = rows[t..t + 1].to_vec();
            std::thread::spawn(move || {
                for _ in 0..n / 4 {
                    let reply = http.post_json("/v2/models/digits/infer", &json_request(&row));
                    if reply.expect_status(200).json()["model_version"] == "2" {
                        canary.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("request thread");
    }
    // Binomial(5000, 0.1): sd 21 requests (0.42 points); ±2 points is 4.7 sd.
    let share = canary.load(Ordering::Relaxed) as f64 / n as f64;
    assert!((0.08..=0.12).contains(&share), "canary share {share}");
}

#[test]
fn a_split_naming_a_missing_version_is_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ensembles.toml");
    write(&path, &spec("traffic = { \"1\" = 90, \"5\" = 10 }", ""));
    let (status, stderr) = run_to_exit(
        &[
            "coordinator".into(),
            "--http-addr=127.0.0.1:0".into(),
            "--grpc-addr=127.0.0.1:0".into(),
            "--admin-addr=127.0.0.1:0".into(),
            format!("--ensembles={}", path.display()),
            "--worker=127.0.0.1:1".into(),
        ],
        Duration::from_secs(30),
    );
    assert!(!status.success());
    assert!(
        stderr.contains("`traffic`") && stderr.contains("'5'") && stderr.contains("digits"),
        "{stderr}"
    );
}

#[test]
fn an_ensemble_nobody_can_serve_leaves_a_non_strict_coordinator_ready() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ensembles.toml");
    let orphan = "[[ensemble]]\nname = \"orphan\"\ncombiner = \"soft_vote\"\ndeadline_ms = 100\n\
                  [[ensemble.member]]\nmodel = \"nobody\"\n";
    write(&path, &spec("", orphan));

    // Before any worker is known nothing can be served: not ready, strict or not.
    let lonely = spawn_coordinator(&[
        format!("--ensembles={}", path.display()),
        "--worker=127.0.0.1:1".into(),
        "--strict-readiness=false".into(),
    ]);
    let lonely_http = Http::new(lonely.field("http_addr").parse().unwrap());
    assert_eq!(lonely_http.get("/v2/health/ready").0, 400);
    drop(lonely);

    let (worker, coordinator, http) = start(&path, &["--strict-readiness=false"]);
    let started = Instant::now();
    wait_until("the server to be ready", Duration::from_secs(10), || {
        (http.get("/v2/health/ready").0 == 200).then_some(())
    });
    let admin = Http::new(admin_addr(&coordinator));
    assert_eq!(admin.get("/v2/health/ready").0, 200, "the probe's port");
    // The broken ensemble says so on its own endpoint and in the index, with the reason.
    assert_eq!(http.get("/v2/models/orphan/ready").0, 400);
    let index = http
        .post_json("/v2/repository/index", &json!({}))
        .expect_status(200)
        .json();
    let entry = index
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "orphan")
        .expect("orphan in the index")
        .clone();
    assert_eq!(entry["state"], "UNAVAILABLE");
    assert!(
        entry["reason"].as_str().unwrap().contains("nobody"),
        "{entry}"
    );
    // The healthy ensemble serves.
    let rows = Expected::load().rows();
    http.post_json("/v2/models/digits/infer", &json_request(&rows[..2]))
        .expect_status(200);
    assert!(started.elapsed() < Duration::from_secs(10));

    // Strict (the default) reports the broken ensemble as the server's readiness.
    let strict = spawn_coordinator(&[
        format!("--ensembles={}", path.display()),
        format!("--worker={}", worker.field("rpc_addr")),
        "--ping-interval-ms=200".into(),
    ]);
    let strict_http = Http::new(strict.field("http_addr").parse().unwrap());
    wait_until(
        "digits to be ready on the strict one",
        Duration::from_secs(30),
        || (strict_http.get("/v2/models/digits/ready").0 == 200).then_some(()),
    );
    assert_eq!(strict_http.get("/v2/health/ready").0, 400);
}
