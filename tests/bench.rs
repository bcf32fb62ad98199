//! `chorus bench` end to end: against a cluster it spawns itself, and in floor mode. Checks the
//! JSON it writes (answers counted, no errors, memory reported), never how fast anything was.

mod support;

use serde_json::Value;
use std::process::Command;
use support::*;

fn bench(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let status = Command::new(chorus_bin())
        .arg("bench")
        .args(args)
        .arg(format!("--json-out={}", out.display()))
        .args([
            "--duration=1s",
            "--warmup=200ms",
            "--pause=0s",
            "--verify-every=1",
        ])
        .current_dir(repo_root())
        .env("RUST_LOG", "warn")
        .status()
        .expect("chorus bench starts");
    assert!(status.success(), "chorus bench {args:?} failed: {status}");
    serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap()
}

/// Answers counted and none failed. (An open-loop run may drop requests on a busy machine: that
/// is overload, reported, not a failure of the harness.)
fn assert_clean(run: &Value) {
    assert!(run["results"]["requests"].as_u64().unwrap() > 0, "{run:#}");
    assert!(
        run["results"]["latency_us"]["p50"].as_u64().unwrap() > 0,
        "{run:#}"
    );
    let errors = &run["errors"];
    assert_eq!(errors["by_status"], serde_json::json!({}), "{run:#}");
    for kind in ["transport", "timeout", "wrong_answer"] {
        assert_eq!(errors[kind], 0, "{kind}: {run:#}");
    }
    if run["mode"] == "closed" {
        assert_eq!(errors["dropped"], 0, "{run:#}");
    } else {
        let sent = run["pacing"]["sent"].as_u64().unwrap();
        let scheduled = run["pacing"]["scheduled"].as_u64().unwrap();
        assert!(sent > 0, "{run:#}");
        assert_eq!(
            sent + errors["dropped"].as_u64().unwrap(),
            scheduled,
            "{run:#}"
        );
    }
}

#[test]
fn spawned_cluster_closed_and_open_loop() {
    let report = bench(&[
        "--spawn",
        "--concurrency=2",
        "--rate=50",
        "--max-outstanding=32",
        "--encoding=json,binary",
        "--protocol=http,grpc",
    ]);
    assert_eq!(
        report["machine"]["nproc"].as_u64().map(|n| n > 0),
        Some(true)
    );
    assert!(report["workers"]["worker-0"].is_array(), "{report:#}");
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 8, "{report:#}");
    for run in runs {
        assert_clean(run);
        assert_eq!(run["target"]["kind"], "chorus");
        let names: Vec<&str> = run["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"coordinator"), "{names:?}");
        assert!(names.contains(&"bench (load generator)"), "{names:?}");
        assert!(names.iter().filter(|n| n.starts_with("worker-")).count() >= 1);
        for p in run["processes"].as_array().unwrap() {
            assert!(p["peak_rss_kib"].as_u64().unwrap() > 0, "{p}");
            assert!(p["cpu_us_per_request"].as_f64().is_some(), "{p}");
        }
    }
    assert_eq!(runs[0]["mode"], "closed");
    assert_eq!(runs[0]["concurrency"], 2);
    assert_eq!(runs[0]["target"]["protocol"], "http");
    assert_eq!(runs[1]["target"]["encoding"], "binary");
    // Each protocol in each encoding: gRPC with typed, then raw contents.
    assert_eq!(runs[2]["target"]["protocol"], "grpc");
    assert_eq!(runs[2]["target"]["encoding"], "json");
    assert!(runs[2]["url"].as_str().unwrap().starts_with("grpc://"));
    assert_eq!(runs[3]["target"]["encoding"], "binary");
    assert_eq!(runs[4]["mode"], "open");
    assert_eq!(runs[4]["rate"], 50.0);
    assert_eq!(runs[6]["target"]["protocol"], "grpc");
}

#[test]
fn floor_single_row_and_batched() {
    let report = bench(&["--floor", "--concurrency=1", "--rows=1,32"]);
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{report:#}");
    for run in runs {
        assert_clean(run);
        assert_eq!(run["target"]["kind"], "floor");
    }
    let rows = |run: &Value| run["results"]["rows"].as_u64().unwrap();
    let requests = |run: &Value| run["results"]["requests"].as_u64().unwrap();
    assert_eq!(rows(&runs[0]), requests(&runs[0]));
    assert_eq!(rows(&runs[1]), 32 * requests(&runs[1]));
}

#[test]
fn compressed_bodies_and_answers_are_checked_like_plain_ones() {
    // 32-row answers are well above the 1 KiB the coordinator compresses from.
    let report = bench(&[
        "--spawn",
        "--concurrency=2",
        "--rows=32",
        "--encoding=json,binary",
        "--compression=gzip",
    ]);
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{report:#}");
    for run in runs {
        assert_clean(run);
        assert_eq!(run["compression"], "gzip");
    }
}
