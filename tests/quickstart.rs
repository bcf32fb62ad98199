//! The README's quick start, as a user runs it: `chorus up` starts the cluster on the embedded
//! defaults (or with membership through etcd), answers the sample request, and Ctrl-C stops
//! every process it started.

mod support;

use chorus_common::testing::Etcd;
use std::time::Duration;
use support::up::{Up, alive};

/// Runs `chorus up` with `extra` flags until the sample answer, checks it, stops it with
/// SIGINT and checks that every process it started is gone. Returns what it printed.
fn run_up(extra: &[&str], expected_processes: usize) -> Vec<String> {
    let mut up = Up::start(extra);
    let sample = up.wait_for_line("the sample answer", Duration::from_secs(60), |l| {
        l.starts_with("sample request to digits_soft")
    });
    assert!(sample.contains("200 OK"), "{sample}");
    assert!(sample.contains("\"degraded\":false"), "{sample}");
    let lines = up.lines();

    let pids = up.pids();
    assert_eq!(
        pids.len(),
        expected_processes,
        "workers and a coordinator: {lines:#?}"
    );
    assert!(pids.iter().all(|&p| alive(p)));

    up.proc.signal(libc::SIGINT);
    let status = up.proc.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "chorus up exited with {status}");
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived chorus up");
    }
    lines
}

#[test]
fn chorus_up_answers_a_request_and_stops_cleanly() {
    run_up(&[], 4);
}

#[test]
fn chorus_up_with_etcd_registers_workers_and_revokes_them_on_stop() {
    let etcd = Etcd::start();
    let endpoint = format!("--etcd={}", etcd.endpoint);
    let lines = run_up(&[&endpoint, "--workers=3", "--replication=2"], 4);
    let workers: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("worker-"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(workers, ["worker-0", "worker-1", "worker-2"], "{lines:#?}");
    // Every model of the repository on two workers, spread evenly (within one model).
    let total = std::fs::read_dir(support::repo_root().join("models"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("1/model.onnx").is_file())
        .count();
    let counts: Vec<usize> = lines
        .iter()
        .filter(|l| l.starts_with("worker-"))
        .map(|l| l.rsplit(' ').next().unwrap().split(',').count())
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), 2 * total, "{lines:#?}");
    assert!(
        counts.iter().all(|&c| c.abs_diff(2 * total / 3) <= 1),
        "{lines:#?}"
    );
    // A clean stop drains and revokes each lease: no key waits for its TTL.
    for id in workers {
        assert_eq!(
            support::etcdctl::worker_key(&etcd.endpoint, id),
            None,
            "{id} still registered"
        );
    }
}
