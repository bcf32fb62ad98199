//! The README's quick start, as a user runs it: `chorus up` starts the cluster on the embedded
//! defaults (or with membership through etcd), answers the sample request, and Ctrl-C stops
//! every process it started.

mod support;

use chorus_common::testing::Etcd;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

fn alive(pid: u32) -> bool {
    // A process that exited but is not yet reaped by its parent is gone for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Runs `chorus up` with `extra` flags until the sample answer, checks it, stops it with
/// SIGINT and checks that every process it started is gone. Returns what it printed.
fn run_up(extra: &[&str], expected_processes: usize) -> Vec<String> {
    let child = Command::new(chorus_bin())
        .args(["up", "--http-addr=127.0.0.1:0", "--grpc-addr=127.0.0.1:0"])
        .args(extra)
        .current_dir(repo_root())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("chorus up starts");
    // Owned by a Proc from here on, so a failing assertion still kills it.
    let mut up = Proc {
        name: "chorus up".into(),
        child,
        ready_line: String::new(),
    };
    let stdout = up.child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("[chorus up] {line}");
            let _ = tx.send(line);
        }
    });

    let mut lines = Vec::new();
    wait_until("the sample answer", Duration::from_secs(120), || {
        while let Ok(line) = rx.try_recv() {
            lines.push(line);
        }
        if let Ok(Some(status)) = up.child.try_wait() {
            panic!("chorus up exited early ({status}): {lines:#?}");
        }
        lines
            .iter()
            .any(|l| l.starts_with("sample request to digits_soft"))
            .then_some(())
    });
    let sample = lines
        .iter()
        .find(|l| l.starts_with("sample request"))
        .unwrap();
    assert!(sample.contains("200 OK"), "{sample}");
    assert!(sample.contains("\"degraded\":false"), "{sample}");
    assert!(
        lines.iter().any(|l| l.starts_with("Chorus is up")),
        "{lines:#?}"
    );

    let pids: Vec<u32> = lines
        .iter()
        .filter_map(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "pid")
                .nth(1)?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(
        pids.len(),
        expected_processes,
        "workers and a coordinator: {lines:#?}"
    );
    assert!(pids.iter().all(|&p| alive(p)));

    up.signal(libc::SIGINT);
    let status = up.wait_exit(Duration::from_secs(60));
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
    // Every model on two workers: each worker line names four of the six models.
    for line in lines.iter().filter(|l| l.starts_with("worker-")) {
        let models = line.rsplit(' ').next().unwrap().split(',').count();
        assert_eq!(models, 4, "{line}");
    }
    // A clean stop drains and revokes each lease: no key waits for its TTL.
    for id in workers {
        assert_eq!(
            support::etcdctl::worker_key(&etcd.endpoint, id),
            None,
            "{id} still registered"
        );
    }
}
