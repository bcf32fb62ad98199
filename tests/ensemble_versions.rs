//! Versioned ensembles with real worker and coordinator processes: versions answer on their own
//! paths with their own golden answers, unversioned requests follow the traffic split (50/50
//! and 90/10 within binomial bounds), a spec file rewrite + SIGHUP or an etcd put swaps the split
//! with no failed request, a shadow version's answers are counted and never returned, bad splits
//! are refused, and one ensemble nobody can serve leaves a non-strict coordinator ready. A
//! rollback (by SIGHUP and through etcd) under open-loop load at 200 req/s fails no request, and
//! a broken spec pushed through etcd leaves two non-strict coordinators ready and serving.
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

/// Open-loop load: request `i` is sent at `start + i / RATE` whatever happened to the ones
/// before it, so a stall in the cluster shows as failures rather than as a slower client.
const RATE: u32 = 200;
/// Requests in flight at most; a request due while this many are outstanding is a failure.
const OUTSTANDING: usize = 256;

/// What one open-loop request got. `status` 0 is a transport error (the text is in `body`).
struct Sent {
    at: Instant,
    row: usize,
    status: u16,
    body: Vec<u8>,
}

/// The outcome of a finished open-loop run.
struct OpenLoopReport {
    /// Every request sent, with its answer.
    answers: Vec<Sent>,
    /// Requests due while `OUTSTANDING` were in flight, never sent: failures.
    overflow: usize,
    /// From the first request's slot to the last one's dispatch.
    send_span: Duration,
}

/// `n` unversioned one-row `digits` requests at `RATE` per second from a tokio runtime of its
/// own; `answered` counts the requests that have an outcome.
struct OpenLoop {
    answered: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<OpenLoopReport>,
}

impl OpenLoop {
    fn start(addr: std::net::SocketAddr, rows: &[Vec<f32>], n: usize) -> OpenLoop {
        let bodies: Arc<Vec<String>> = Arc::new(
            (0..rows.len())
                .map(|r| json_request(&rows[r..r + 1]).to_string())
                .collect(),
        );
        let answered = Arc::new(AtomicUsize::new(0));
        let counter = answered.clone();
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(open_loop(addr, bodies, n, counter))
        });
        OpenLoop { answered, thread }
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }

    fn finish(self) -> OpenLoopReport {
        self.thread.join().expect("open-loop load")
    }
}

async fn open_loop(
    addr: std::net::SocketAddr,
    bodies: Arc<Vec<String>>,
    n: usize,
    answered: Arc<AtomicUsize>,
) -> OpenLoopReport {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(OUTSTANDING)
        .build()
        .expect("http client");
    let url = format!("http://{addr}/v2/models/digits/infer");
    let permits = Arc::new(tokio::sync::Semaphore::new(OUTSTANDING));
    let period = Duration::from_secs(1) / RATE;
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut overflow = 0;
    for i in 0..n {
        // A late slot (the runtime was starved) sends at once: the schedule stays fixed.
        tokio::time::sleep_until(start + period * i as u32).await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            overflow += 1;
            answered.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let row = i % bodies.len();
        let request = client
            .post(&url)
            .header("content-type", "application/json")
            .body(bodies[row].clone());
        let answered = answered.clone();
        tasks.spawn(async move {
            let at = Instant::now();
            let (status, body) = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    match response.bytes().await {
                        Ok(body) => (status, body.to_vec()),
                        Err(e) => (0, format!("reading the body: {e}").into_bytes()),
                    }
                }
                Err(e) => (0, e.to_string().into_bytes()),
            };
            drop(permit);
            answered.fetch_add(1, Ordering::Relaxed);
            Sent {
                at,
                row,
                status,
                body,
            }
        });
    }
    let send_span = start.elapsed();
    let mut answers = Vec::with_capacity(n);
    while let Some(sent) = tasks.join_next().await {
        answers.push(sent.expect("request task"));
    }
    OpenLoopReport {
        answers,
        overflow,
        send_span,
    }
}

/// The version 1 routing of the canary (90/10) and of the rollback (100/0). The description
/// tells which file a coordinator applied: `GET /v2/models/digits` shows version 1's.
const CANARY: &str = "traffic = { \"1\" = 90, \"2\" = 10 }\ndescription = \"canary\"";
const ROLLED_BACK: &str = "traffic = { \"1\" = 100, \"2\" = 0 }\ndescription = \"rolled back\"";

/// Runs 6 s of open-loop load (1,200 requests at 200/s) against the 90/10 canary at `http`,
/// calls `roll_back` half-way, and checks that no request failed, every one was answered with
/// its version's golden answer, and every request sent once the rollback was applied was
/// answered by version 1.
fn roll_back_under_open_loop(http: &Http, roll_back: impl FnOnce()) {
    let expected = Expected::load();
    let rows = expected.rows();
    let goldens = [
        golden(&expected, &["logreg", "mlp"]),
        golden(&expected, &MEMBERS),
    ];
    let description = |http: &Http| {
        let (status, body) = http.get("/v2/models/digits");
        assert_eq!(status, 200, "{body}");
        let metadata: Value = serde_json::from_str(&body).unwrap();
        metadata["parameters"]["description"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(description(http), "canary");

    let n = 6 * RATE as usize;
    let load = OpenLoop::start(http.addr, &rows, n);
    wait_until("half of the load", Duration::from_secs(10), || {
        (load.answered() >= n / 2).then_some(())
    });
    let rolling = Instant::now();
    roll_back();
    wait_until("the rollback to apply", Duration::from_secs(5), || {
        (description(http) == "rolled back").then_some(())
    });
    let applied = Instant::now();
    let report = load.finish();

    let failures: Vec<String> = report
        .answers
        .iter()
        .filter(|s| s.status != 200)
        .take(5)
        .map(|s| format!("{} {}", s.status, String::from_utf8_lossy(&s.body)))
        .collect();
    assert!(failures.is_empty(), "requests failed: {failures:?}");
    assert_eq!(report.overflow, 0, "requests over {OUTSTANDING} in flight");
    assert_eq!(report.answers.len(), n, "every request answered");
    // Open loop kept its schedule: the last request went out close to its slot.
    let schedule = Duration::from_secs(1) / RATE * (n as u32 - 1);
    assert!(
        report.send_span < schedule + Duration::from_secs(1),
        "sending {n} took {:?}",
        report.send_span
    );

    let mut canary_before = 0;
    let mut after = 0;
    for sent in &report.answers {
        let response: Value = serde_json::from_slice(&sent.body).expect("answer is JSON");
        let version = response["model_version"].as_str().expect("model_version");
        let index = match version {
            "1" => 0,
            "2" => 1,
            other => panic!("answered by version {other}"),
        };
        check_answer(
            &response,
            &goldens[index],
            sent.row,
            &format!("version {version}"),
        );
        if sent.at < rolling && version == "2" {
            canary_before += 1;
        }
        if sent.at > applied {
            assert_eq!(version, "1", "a request sent after the rollback applied");
            after += 1;
        }
    }
    // 600 requests at 10%: sd 7; 0 would be 8 sd below.
    assert!(
        canary_before > 0,
        "the canary answered nothing before the rollback"
    );
    assert!(after >= n / 4, "only {after} requests after the rollback");
}

#[test]
fn a_rollback_by_sighup_under_open_loop_load_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ensembles.toml");
    write(&path, &spec(CANARY, ""));
    let (_worker, coordinator, http) = start(&path, &[]);
    roll_back_under_open_loop(&http, || {
        write(&path, &spec(ROLLED_BACK, ""));
        coordinator.signal(libc::SIGHUP);
    });
}

#[test]
fn a_rollback_through_etcd_under_open_loop_load_fails_no_request() {
    let etcd = Etcd::start();
    let _worker = start_worker_with("w-digits", &MEMBERS, &[format!("--etcd={}", etcd.endpoint)]);
    let key = "/chorus/v1/ensembles/digits";
    etcd.etcdctl(&["put", key, &spec(CANARY, "")]);
    let coordinator = spawn_coordinator(&[
        "--ensembles=/nonexistent/ensembles.toml".into(),
        format!("--etcd={}", etcd.endpoint),
        "--ping-interval-ms=200".into(),
    ]);
    let http = Http::new(coordinator.field("http_addr").parse().unwrap());
    wait_until("digits to be ready", Duration::from_secs(60), || {
        (http.get("/v2/models/digits/ready").0 == 200).then_some(())
    });
    roll_back_under_open_loop(&http, || {
        etcd.etcdctl(&["put", key, &spec(ROLLED_BACK, "")]);
    });
}

/// Keeps asking each coordinator in `https` for both healthy ensembles (checked against their
/// golden answers) and for server readiness (must be 200), counting rounds, until stopped.
struct HealthyCheck {
    stop: Arc<AtomicBool>,
    /// Set when a round found a problem (the panic message is on stderr).
    broken: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl HealthyCheck {
    fn start(https: &[&Http]) -> HealthyCheck {
        let stop = Arc::new(AtomicBool::new(false));
        let broken = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicUsize::new(0));
        let clients: Vec<Http> = https.iter().map(|h| Http::new(h.addr)).collect();
        let (stop_, broken_, rounds_) = (stop.clone(), broken.clone(), rounds.clone());
        let thread = std::thread::spawn(move || {
            let expected = Expected::load();
            let rows = expected.rows();
            let digits = golden(&expected, &["logreg", "mlp"]);
            let forest = golden(&expected, &["random_forest"]);
            let mut start = 0;
            while !stop_.load(Ordering::Relaxed) {
                let round = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    for http in &clients {
                        assert_eq!(http.get("/v2/health/ready").0, 200, "server readiness");
                        for (name, golden, version) in
                            [("digits", &digits, "1"), ("forest", &forest, "1")]
                        {
                            let reply = http.post_json(
                                &format!("/v2/models/{name}/infer"),
                                &json_request(&rows[start..start + 2]),
                            );
                            let response = reply.expect_status(200).json();
                            assert_eq!(response["model_version"], version, "{name}");
                            check_answer(&response, golden, start, name);
                        }
                    }
                }));
                if round.is_err() {
                    broken_.store(true, Ordering::Relaxed);
                    return;
                }
                start = (start + 2) % (rows.len() - 2);
                rounds_.fetch_add(1, Ordering::Relaxed);
            }
        });
        HealthyCheck {
            stop,
            broken,
            rounds,
            thread,
        }
    }

    /// Waits for `more` clean rounds beyond now.
    fn wait_rounds(&self, more: usize) {
        let from = self.rounds.load(Ordering::Relaxed);
        wait_until(
            &format!("{more} more healthy rounds"),
            Duration::from_secs(20),
            || {
                assert!(
                    !self.broken.load(Ordering::Relaxed),
                    "a healthy ensemble or the server's readiness failed (see stderr)"
                );
                (self.rounds.load(Ordering::Relaxed) >= from + more).then_some(())
            },
        );
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("healthy check");
        assert!(
            !self.broken.load(Ordering::Relaxed),
            "a healthy ensemble or the server's readiness failed (see stderr)"
        );
    }
}

#[test]
fn a_broken_spec_pushed_through_etcd_leaves_non_strict_coordinators_ready_and_serving() {
    let etcd = Etcd::start();
    let _worker = start_worker_with("w-digits", &MEMBERS, &[format!("--etcd={}", etcd.endpoint)]);
    let prefix = "/chorus/v1/ensembles/";
    let put = |key: &str, value: &str| {
        etcd.etcdctl(&["put", &format!("{prefix}{key}"), value]);
    };
    let forest = "version = 1\n[[ensemble]]\nname = \"forest\"\ncombiner = \"soft_vote\"\n\
                  deadline_ms = 5000\n[[ensemble.member]]\nmodel = \"random_forest\"\n";
    put("digits", &spec("traffic = { \"1\" = 100, \"2\" = 0 }", ""));
    put("forest", forest);
    let coordinators: Vec<(Proc, Http)> = (0..2)
        .map(|_| {
            let coordinator = spawn_coordinator(&[
                "--ensembles=/nonexistent/ensembles.toml".into(),
                format!("--etcd={}", etcd.endpoint),
                "--ping-interval-ms=200".into(),
                "--strict-readiness=false".into(),
            ]);
            let http = Http::new(coordinator.field("http_addr").parse().unwrap());
            (coordinator, http)
        })
        .collect();
    let https: Vec<&Http> = coordinators.iter().map(|(_, h)| h).collect();
    for http in &https {
        wait_until(
            "digits and forest to be ready",
            Duration::from_secs(60),
            || {
                (http.get("/v2/models/digits/ready").0 == 200
                    && http.get("/v2/models/forest/ready").0 == 200)
                    .then_some(())
            },
        );
    }
    let check = HealthyCheck::start(&https);
    check.wait_rounds(5);

    // Valid TOML naming a model nobody serves: accepted, and unservable.
    let orphan = "version = 1\n[[ensemble]]\nname = \"orphan\"\ncombiner = \"soft_vote\"\n\
                  deadline_ms = 100\n[[ensemble.member]]\nmodel = \"nobody\"\n";
    put("orphan", orphan);
    for http in &https {
        wait_until("orphan to be known", Duration::from_secs(20), || {
            (http.get("/v2/models/orphan/ready").0 != 404).then_some(())
        });
        assert_eq!(
            http.get("/v2/models/orphan/ready").0,
            400,
            "orphan's own readiness"
        );
        assert_eq!(
            http.get("/v2/health/ready").0,
            200,
            "the server's readiness"
        );
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
            entry["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("nobody"),
            "{entry}"
        );
    }
    check.wait_rounds(10);

    // Values that do not load are refused: a new key keeps nothing, and a key that held good
    // specs keeps them.
    put(
        "garbage",
        "version = 1\n[[ensemble]]\nname = \"garbage\"\ncombiner = soft_vote [[",
    );
    put(
        "forest",
        "version = 1\n[[ensemble]]\nname = \"forest\"\ncombiner = \"soft_vote\"\n",
    );
    // etcd orders events by revision: once a later put shows, the refused ones were seen.
    put(
        "marker",
        "version = 1\n[[ensemble]]\nname = \"marker\"\ncombiner = \"soft_vote\"\n\
         deadline_ms = 5000\n[[ensemble.member]]\nmodel = \"logreg\"\n",
    );
    for http in &https {
        wait_until("the marker to be ready", Duration::from_secs(20), || {
            (http.get("/v2/models/marker/ready").0 == 200).then_some(())
        });
        assert_eq!(http.get("/v2/models/garbage/ready").0, 404);
        assert_eq!(http.get("/v2/models/forest/ready").0, 200);
        assert_eq!(http.get("/v2/models/orphan/ready").0, 400);
        assert_eq!(http.get("/v2/health/ready").0, 200);
    }
    check.wait_rounds(10);
    check.stop();
}
