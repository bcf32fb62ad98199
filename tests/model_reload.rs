//! Live model changes against real processes: a worker serving a temporary copy of sample models,
//! a coordinator in front of it. New versions and models dropped into the repository answer
//! through the coordinator after SIGHUP, `POST /admin/reload` or `chorus reload`, and its
//! metadata lists them (static `--worker` list: its prober's refresh; with etcd: the record the
//! worker re-publishes); a version removed under steady load fails no request; a broken
//! `model.onnx` is reported and the version it was meant to replace keeps answering.

mod support;

use chorus_common::testing::Etcd;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use support::*;

/// Long enough for a reload to load a small model and a coordinator to see it.
const SEEN: Duration = Duration::from_secs(30);

/// `models/<from>/1/model.onnx` as `<repo>/<name>/<version>/model.onnx`, with the sample's
/// `config.toml` and `labels.txt` when the model directory is new, and every version loaded.
fn add_version(repo: &Path, from: &str, name: &str, version: u64) {
    let sample = repo_root().join("models").join(from);
    let dir = repo.join(name);
    if !dir.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let config = std::fs::read_to_string(sample.join("config.toml")).unwrap();
        std::fs::write(
            dir.join("config.toml"),
            format!("{config}\nversion_policy = \"all\"\n"),
        )
        .unwrap();
        std::fs::copy(sample.join("labels.txt"), dir.join("labels.txt")).unwrap();
    }
    // Written aside and renamed into place, as docs/operations.md says to.
    let staging = repo.join(format!(".staging-{name}-{version}"));
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::copy(sample.join("1/model.onnx"), staging.join("model.onnx")).unwrap();
    std::fs::rename(&staging, dir.join(version.to_string())).unwrap();
}

/// Replaces `<repo>/<name>/<version>/model.onnx` by `bytes` (aside, then renamed).
fn overwrite_model(repo: &Path, name: &str, version: u64, bytes: &[u8]) {
    let staging = repo.join(".staging-model.onnx");
    std::fs::write(&staging, bytes).unwrap();
    std::fs::rename(
        &staging,
        repo.join(name).join(version.to_string()).join("model.onnx"),
    )
    .unwrap();
}

struct Served {
    worker: Proc,
    /// The worker's `--metrics-addr` listener (`/admin/reload`).
    worker_http: Http,
    _coordinator: Proc,
    http: Http,
}

fn start_worker_on(repo: &Path, extra: &[String]) -> (Proc, Http) {
    let mut args = vec![
        "worker".to_string(),
        "--listen=127.0.0.1:0".to_string(),
        "--worker-id=w-reload".to_string(),
        format!("--model-repository={}", repo.display()),
        "--metrics-addr=127.0.0.1:0".to_string(),
        "--drain-timeout-secs=5".to_string(),
    ];
    args.extend_from_slice(extra);
    let worker = spawn("w-reload", &args, "chorus-worker ready");
    let http = Http::new(worker.field("metrics_addr").parse().unwrap());
    (worker, http)
}

/// A worker on `repo` and a coordinator listing it statically, pinging every 100 ms (so that
/// its metadata refresh comes every 500 ms).
fn serve(repo: &Path) -> Served {
    let (worker, worker_http) = start_worker_on(repo, &[]);
    let coordinator = spawn_coordinator(&[
        format!("--worker={}", worker.field("rpc_addr")),
        "--ping-interval-ms=100".into(),
    ]);
    let http = Http::new(coordinator.field("http_addr").parse().unwrap());
    wait_until("the coordinator to see logreg", SEEN, || {
        (versions(&http, "logreg") == ["1"]).then_some(())
    });
    Served {
        worker,
        worker_http,
        _coordinator: coordinator,
        http,
    }
}

fn temp_repo(models: &[(&str, &str, u64)]) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("models");
    std::fs::create_dir_all(&repo).unwrap();
    for (from, name, version) in models {
        add_version(&repo, from, name, *version);
    }
    (tmp, repo)
}

/// The versions the coordinator's metadata lists for `model` (empty when it knows none).
fn versions(http: &Http, model: &str) -> Vec<String> {
    let (status, body) = http.get(&format!("/v2/models/{model}"));
    if status != 200 {
        return vec![];
    }
    serde_json::from_str::<Value>(&body).unwrap()["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Four digits, read once (the fixture file is large).
fn rows() -> &'static [Vec<f32>] {
    static ROWS: std::sync::OnceLock<Vec<Vec<f32>>> = std::sync::OnceLock::new();
    ROWS.get_or_init(|| Expected::load().rows()[..4].to_vec())
}

/// Infers on `path` (`/v2/models/…/infer`) and returns (status, model_version answered).
fn infer(http: &Http, path: &str) -> (u16, String) {
    let reply = http.post_json(path, &json_request(rows()));
    let version = if reply.status == 200 {
        reply.json()["model_version"]
            .as_str()
            .unwrap_or("")
            .to_string()
    } else {
        reply.error_message()
    };
    (reply.status, version)
}

fn reload(worker_http: &Http) -> (u16, Value) {
    let reply = worker_http.post("/admin/reload", &[], vec![]);
    (reply.status, reply.json())
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| {
            format!(
                "{}@{}",
                v["model"].as_str().unwrap(),
                v["version"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn new_versions_and_models_answer_after_sighup_the_endpoint_and_chorus_reload() {
    let (_tmp, repo) = temp_repo(&[("logreg", "logreg", 1)]);
    let served = serve(&repo);
    let http = &served.http;

    // A new version (another model's graph with the same signature), then SIGHUP.
    add_version(&repo, "mlp", "logreg", 2);
    served.worker.signal(libc::SIGHUP);
    wait_until(
        "logreg version 2 in the coordinator's metadata",
        SEEN,
        || (versions(http, "logreg") == ["1", "2"]).then_some(()),
    );
    assert_eq!(infer(http, "/v2/models/logreg/infer"), (200, "2".into()));
    assert_eq!(
        infer(http, "/v2/models/logreg/versions/1/infer"),
        (200, "1".into()),
        "the old version serves beside the new one"
    );

    // A new model, through `chorus reload`.
    add_version(&repo, "svc", "svc", 1);
    let worker_addr = served.worker.field("metrics_addr");
    let (ok, stdout, stderr) = chorus(&["reload", "--worker", &worker_addr]);
    assert!(ok, "chorus reload failed: {stdout}{stderr}");
    assert!(stdout.contains("loaded:    svc@1"), "{stdout}");
    wait_until("svc in the coordinator's metadata", SEEN, || {
        (versions(http, "svc") == ["1"]).then_some(())
    });
    assert_eq!(infer(http, "/v2/models/svc/infer"), (200, "1".into()));

    // Nothing changed: the endpoint says so and changes nothing.
    let (status, report) = reload(&served.worker_http);
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["unchanged"], 3, "{report}");
    assert_eq!(report["record"], "unchanged", "{report}");
    assert!(names(&report["loaded"]).is_empty(), "{report}");
    assert_eq!(
        names(&report["models"]),
        ["logreg@1", "logreg@2", "svc@1"],
        "{report}"
    );
}

#[test]
fn removing_a_version_under_load_fails_no_request() {
    let (_tmp, repo) = temp_repo(&[("logreg", "logreg", 1)]);
    let served = serve(&repo);
    add_version(&repo, "logreg", "logreg", 2);
    let (status, report) = reload(&served.worker_http);
    assert_eq!(status, 200, "{report}");
    assert_eq!(names(&report["loaded"]), ["logreg@2"]);
    wait_until(
        "logreg version 2 in the coordinator's metadata",
        SEEN,
        || (versions(&served.http, "logreg") == ["1", "2"]).then_some(()),
    );

    // Steady load on the newest version (unnamed) and on version 1 (named), from 4 clients.
    let stop = Arc::new(AtomicBool::new(false));
    let answered_by_1 = Arc::new(AtomicUsize::new(0));
    let addr = served.http.addr;
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (stop, answered_by_1) = (Arc::clone(&stop), Arc::clone(&answered_by_1));
            std::thread::spawn(move || {
                let http = Http::new(addr);
                let path = if i % 2 == 0 {
                    "/v2/models/logreg/infer"
                } else {
                    "/v2/models/logreg/versions/1/infer"
                };
                let mut failures = Vec::new();
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (status, version) = infer(&http, path);
                    sent += 1;
                    if status != 200 {
                        failures.push(format!("{path}: {status} {version}"));
                    } else if version == "1" && i % 2 == 0 {
                        answered_by_1.fetch_add(1, Ordering::Relaxed);
                    }
                }
                (sent, failures)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::remove_dir_all(repo.join("logreg/2")).unwrap();
    let (status, report) = reload(&served.worker_http);
    assert_eq!(status, 200, "{report}");
    assert_eq!(names(&report["removed"]), ["logreg@2"], "{report}");
    wait_until(
        "version 2 gone from the coordinator's metadata",
        SEEN,
        || (versions(&served.http, "logreg") == ["1"]).then_some(()),
    );
    // Unnamed calls now land on version 1.
    wait_until("an unnamed call answered by version 1", SEEN, || {
        (answered_by_1.load(Ordering::Relaxed) > 0).then_some(())
    });
    // And on a while, past the retired version's unload.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for client in clients {
        let (n, failures) = client.join().unwrap();
        sent += n;
        assert!(failures.is_empty(), "requests failed: {failures:?}");
    }
    eprintln!("{sent} requests across the removal, none failed");
    assert!(
        sent > 100,
        "too little load to mean anything: {sent} requests"
    );
}

#[test]
fn a_broken_model_file_is_reported_and_the_old_version_keeps_answering() {
    let (_tmp, repo) = temp_repo(&[("logreg", "logreg", 1)]);
    let served = serve(&repo);
    let worker_addr = served.worker.field("metrics_addr");

    // The serving version's file replaced by garbage, and a new model that is garbage too.
    overwrite_model(&repo, "logreg", 1, b"this is not an onnx graph");
    add_version(&repo, "svc", "broken", 1);
    overwrite_model(&repo, "broken", 1, b"nor is this");
    let (status, report) = reload(&served.worker_http);
    assert_eq!(status, 422, "{report}");
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("model 'logreg' version 1") && error.contains("model 'broken' version 1"),
        "{error}"
    );
    assert_eq!(names(&report["models"]), ["logreg@1"], "{report}");
    assert_eq!(
        infer(&served.http, "/v2/models/logreg/infer"),
        (200, "1".into())
    );
    let (ok, stdout, stderr) = chorus(&["reload", "--worker", &worker_addr]);
    assert!(!ok, "a failed reload must exit non-zero: {stdout}");
    assert!(stdout.contains("FAILED:    logreg@1"), "{stdout}");
    assert!(stderr.contains("reload incomplete"), "{stderr}");

    // Fixed: the next reload loads both.
    let good = std::fs::read(repo_root().join("models/logreg/1/model.onnx")).unwrap();
    overwrite_model(&repo, "logreg", 1, &good);
    std::fs::remove_dir_all(repo.join("broken")).unwrap();
    let (status, report) = reload(&served.worker_http);
    assert_eq!(status, 200, "{report}");
    assert_eq!(names(&report["reloaded"]), ["logreg@1"], "{report}");
    assert_eq!(
        infer(&served.http, "/v2/models/logreg/infer"),
        (200, "1".into())
    );

    // Under Triton's default policy (latest 1) a new version replaces the old one; a new
    // version that fails to load must leave the old one serving, not take the model away.
    let sample = repo_root().join("models/mlp");
    let latest = repo.join("latest_only");
    std::fs::create_dir_all(latest.join("1")).unwrap();
    std::fs::copy(sample.join("config.toml"), latest.join("config.toml")).unwrap();
    std::fs::copy(sample.join("labels.txt"), latest.join("labels.txt")).unwrap();
    std::fs::copy(sample.join("1/model.onnx"), latest.join("1/model.onnx")).unwrap();
    let (status, report) = reload(&served.worker_http);
    assert_eq!(status, 200, "{report}");
    wait_until("latest_only@1 answers", SEEN, || {
        (infer(&served.http, "/v2/models/latest_only/infer") == (200, "1".into())).then_some(())
    });
    add_version(&repo, "mlp", "latest_only", 2);
    overwrite_model(&repo, "latest_only", 2, b"half copied");
    let (status, report) = reload(&served.worker_http);
    assert_eq!(status, 422, "{report}");
    assert!(
        names(&report["models"]).contains(&"latest_only@1".to_string()),
        "{report}"
    );
    assert_eq!(
        infer(&served.http, "/v2/models/latest_only/infer"),
        (200, "1".into())
    );
    std::fs::remove_dir_all(repo.join("latest_only")).unwrap();

    // An emptied repository (an unmounted volume) is refused whole.
    std::fs::remove_dir_all(repo.join("logreg")).unwrap();
    let (status, report) = reload(&served.worker_http);
    assert_eq!(status, 422, "{report}");
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("nothing changed"),
        "{report}"
    );
    assert_eq!(
        infer(&served.http, "/v2/models/logreg/infer"),
        (200, "1".into())
    );
}

#[test]
fn with_etcd_the_coordinator_sees_reloaded_models_through_the_record() {
    let etcd = Etcd::start();
    let (_tmp, repo) = temp_repo(&[("logreg", "logreg", 1)]);
    let (worker, worker_http) = start_worker_on(
        &repo,
        &[
            format!("--etcd={}", etcd.endpoint),
            "--lease-ttl-secs=2".into(),
        ],
    );
    // Pings every 10 s: the periodic refresh (every 50 s) cannot be what shows the new model.
    let coordinator = spawn_coordinator(&[
        format!("--etcd={}", etcd.endpoint),
        "--ping-interval-ms=10000".into(),
        "--eject-after-silence-ms=60000".into(),
    ]);
    let http = Http::new(coordinator.field("http_addr").parse().unwrap());
    wait_until("the coordinator to see logreg", SEEN, || {
        (versions(&http, "logreg") == ["1"]).then_some(())
    });
    add_version(&repo, "svc", "svc", 1);
    let (status, report) = reload(&worker_http);
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["record"], "updated", "{report}");
    wait_until(
        "svc in the coordinator's metadata",
        Duration::from_secs(10),
        || (versions(&http, "svc") == ["1"]).then_some(()),
    );
    assert_eq!(infer(&http, "/v2/models/svc/infer"), (200, "1".into()));
    drop(worker);
}
