//! `chorus up` as a process manager, with real processes: a worker killed with SIGKILL under
//! load is restarted on the same address and serves again while no request fails (every model
//! has a second replica), and a worker that cannot start again stops the cluster with the
//! crash-loop error, leaving no process behind.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::load::Load;
use support::up::{Up, alive, kill_9};
use support::*;

/// The worker the tests kill.
const VICTIM: &str = "worker-1";

/// `/chorus/workers`' entry for the worker at `addr`, once the coordinator answers.
fn worker_status(admin: &Http, addr: &str) -> Option<Value> {
    let (status, body) = admin.get("/chorus/workers");
    if status != 200 {
        return None;
    }
    let workers: Value = serde_json::from_str(&body).ok()?;
    workers["workers"]
        .as_array()?
        .iter()
        .find(|w| w["addr"] == addr)
        .cloned()
}

/// Stops `chorus up` with SIGINT and checks that it exits cleanly and that every pid it
/// printed is gone.
fn stop_cleanly(mut up: Up) {
    let pids = up.pids();
    up.proc.signal(libc::SIGINT);
    let status = up.proc.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "chorus up exited with {status}");
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived chorus up");
    }
}

#[test]
fn a_killed_worker_is_restarted_on_its_address_and_no_request_fails() {
    let up = Up::start(&["--replication=2", "--no-sample"]);
    let first = up.workers();
    assert_eq!(first.len(), 3, "three workers: {first:#?}");
    assert!(
        first.iter().all(|w| w.metrics.is_some()),
        "every worker's metrics address is printed: {first:#?}"
    );
    let victim = first.iter().find(|w| w.id == VICTIM).unwrap().clone();
    let admin = Http::new(up.admin_addr());

    let load = Load::start(up.http_addr(), 2, Duration::ZERO);
    wait_until("answers before the kill", Duration::from_secs(20), || {
        (load.counts().ok >= 20).then_some(())
    });

    kill_9(victim.pid);
    up.wait_for_line("the exit to be logged", Duration::from_secs(10), |l| {
        l.starts_with(&format!(
            "{VICTIM} exited (signal: 9 (SIGKILL)); restarting in 0.5 s"
        ))
    });
    let restarted = wait_until(
        "the restarted worker's line",
        Duration::from_secs(30),
        || {
            up.workers()
                .into_iter()
                .find(|w| w.id == VICTIM && w.pid != victim.pid)
        },
    );
    assert_eq!(restarted.rpc, victim.rpc, "restarted on the same address");
    assert_eq!(restarted.local, victim.local, "and the same local socket");
    assert!(
        victim
            .local
            .as_deref()
            .is_some_and(|l| l.starts_with("unix:/")),
        "chorus up links its workers over local sockets: {victim:?}"
    );
    assert_eq!(restarted.metrics, victim.metrics, "same metrics address");
    assert!(!alive(victim.pid));

    // Back in rotation, then answering calls again.
    let completed = wait_until(
        "the worker to be routable again",
        Duration::from_secs(20),
        || {
            let status = worker_status(&admin, victim.dialled())?;
            (status["routable"] == true).then(|| status["completed"].as_u64().unwrap_or(0))
        },
    );
    wait_until(
        "the restarted worker to answer calls",
        Duration::from_secs(20),
        || {
            let status = worker_status(&admin, victim.dialled())?;
            (status["completed"].as_u64()? > completed).then_some(())
        },
    );

    let counts = load.settle();
    drop(load);
    println!("load over the whole run: {counts:?}");
    assert!(counts.sent > 0);
    assert_eq!(
        (counts.failed, counts.lost, counts.wrong),
        (0, 0, 0),
        "no request may fail while a replica is restarted: {counts:?}"
    );
    stop_cleanly(up);
}

#[test]
fn a_worker_that_cannot_start_again_stops_the_cluster() {
    // A private copy of the models, so that one can be broken under the running worker.
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let copied = std::process::Command::new("cp")
        .arg("-r")
        .arg(repo_root().join("models"))
        .arg(&models)
        .status()
        .unwrap();
    assert!(copied.success());
    let config = dir.path().join("cluster.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\nhttp_addr = \"127.0.0.1:0\"\nmodel_repository = {:?}\n\
             ensembles = {:?}\nworkers = 3\n",
            models,
            repo_root().join("config/ensembles.toml"),
        ),
    )
    .unwrap();
    let config_flag = format!("--config={}", config.display());
    let mut up = Up::start(&[&config_flag, "--no-sample"]);
    let victim = up
        .workers()
        .into_iter()
        .find(|w| w.id == VICTIM)
        .expect("worker-1 line");
    let line = up
        .lines()
        .into_iter()
        .find(|l| l.starts_with(&format!("{VICTIM}  pid")))
        .unwrap();
    // The running worker keeps its loaded copy; every restart reads the broken file.
    let model = line.rsplit(' ').next().unwrap().split(',').next().unwrap();
    std::fs::write(
        models.join(model).join("1/model.onnx"),
        b"not an onnx model",
    )
    .unwrap();
    kill_9(victim.pid);

    let status = up.proc.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "a crash loop must exit non-zero");
    let stderr = up.stderr();
    assert!(
        stderr.contains(&format!("{VICTIM} exited 6 times within 60s"))
            && stderr.contains("crash-looping"),
        "{stderr}"
    );
    let restarts = up
        .lines()
        .iter()
        .filter(|l| l.starts_with(&format!("{VICTIM} exited (")))
        .count();
    assert_eq!(
        restarts,
        5,
        "five restarts before giving up: {:#?}",
        up.lines()
    );
    for pid in up.pids() {
        assert!(!alive(pid), "process {pid} outlived chorus up");
    }
}
