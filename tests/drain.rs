//! `chorus drain` against a real cluster: etcd, two workers with every sample model, two
//! coordinators following etcd, steady load through both. Draining one worker through one
//! coordinator takes it out of rotation on both, fails no request, leaves the process running
//! (and drained after it loses and renews its etcd lease), while the other worker keeps
//! answering; an unknown worker id is refused with a clear message.

mod support;

use chorus_common::testing::Etcd;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use support::etcdctl::worker_key;
use support::load::{Counts, Load};
use support::*;

/// Every sample model on both workers, so either one can serve every ensemble alone.
const MODELS: [&str; 8] = [
    "logreg",
    "random_forest",
    "mlp",
    "svc",
    "gboost",
    "stacker",
    "logreg_int8",
    "mlp_int8",
];

const DRAINED: &str = "w-a";
const KEPT: &str = "w-b";

fn start_worker_in(etcd: &Etcd, id: &str) -> Proc {
    start_worker_with(
        id,
        &MODELS,
        &[
            format!("--etcd={}", etcd.endpoint),
            // The shortest etcd grants, so that a lost lease is renewed quickly.
            "--lease-ttl-secs=2".into(),
            "--metrics-addr=127.0.0.1:0".into(),
        ],
    )
}

fn start_coordinator_in(etcd: &Etcd) -> Proc {
    spawn_coordinator(&[
        "--ensembles=config/ensembles.toml".into(),
        format!("--etcd={}", etcd.endpoint),
        "--ping-interval-ms=200".into(),
    ])
}

/// A coordinator's entry for `worker` in `/chorus/workers`.
fn entry(admin: &Http, worker: &str) -> Option<Value> {
    let (status, body) = admin.get("/chorus/workers");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["worker_id"] == worker)
        .cloned()
}

fn routable(admin: &Http, worker: &str) -> bool {
    entry(admin, worker).is_some_and(|w| w["routable"] == true)
}

/// Inference calls a worker has counted (`chorus_worker_requests_total`), all outcomes or only
/// `outcome="ok"`.
fn calls(worker: &Proc, only_ok: bool) -> u64 {
    let metrics = Http::new(worker.field("metrics_addr").parse().unwrap());
    let (status, text) = metrics.get("/metrics");
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter(|line| line.starts_with("chorus_worker_requests_total{"))
        .filter(|line| !only_ok || line.contains("outcome=\"ok\""))
        .map(|line| {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("unparsable sample {line}")) as u64
        })
        .sum()
}

/// The state in a worker's etcd record (`Serving` or `Draining`).
fn record_state(etcd: &Etcd, worker: &str) -> Option<String> {
    let output = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints={}", etcd.endpoint),
            "--command-timeout=2s",
            "get",
            &format!("/chorus/v1/workers/{worker}"),
            "--print-value-only",
        ])
        .output()
        .expect("etcdctl runs");
    assert!(output.status.success(), "etcdctl failed");
    let record: Value = serde_json::from_slice(&output.stdout).ok()?;
    record["state"].as_str().map(str::to_string)
}

fn assert_nothing_failed(what: &str, load: &Load, counts: Counts) {
    println!(
        "{what}: sent {} ok {} degraded {} failed {} lost {} wrong {}",
        counts.sent, counts.ok, counts.degraded, counts.failed, counts.lost, counts.wrong
    );
    assert_eq!(
        (counts.failed, counts.lost, counts.wrong),
        (0, 0, 0),
        "{what}: requests failed during the drain: {:?}",
        load.failures()
    );
    assert!(counts.ok > 0, "{what}: no request answered");
}

#[test]
fn a_drained_worker_takes_no_new_calls_on_any_coordinator_and_nothing_fails() {
    let etcd = Etcd::start();
    let mut drained = start_worker_in(&etcd, DRAINED);
    let kept = start_worker_in(&etcd, KEPT);
    let first = start_coordinator_in(&etcd);
    let second = start_coordinator_in(&etcd);
    let admins = [
        Http::new(admin_addr(&first)),
        Http::new(admin_addr(&second)),
    ];
    let publics = [&first, &second].map(|c| Http::new(c.field("http_addr").parse().unwrap()));
    wait_until(
        "both workers routable on both coordinators",
        Duration::from_secs(60),
        || {
            let all = admins
                .iter()
                .all(|a| routable(a, DRAINED) && routable(a, KEPT));
            let ready = publics.iter().all(|p| p.get("/v2/health/ready").0 == 200);
            (all && ready).then_some(())
        },
    );
    let loads = [
        Load::start(publics[0].addr, 3, Duration::from_millis(10)),
        Load::start(publics[1].addr, 1, Duration::from_millis(10)),
    ];
    // Both workers get traffic before the drain.
    let (a0, b0) = (calls(&drained, true), calls(&kept, true));
    wait_until(
        "both workers to answer calls",
        Duration::from_secs(30),
        || (calls(&drained, true) >= a0 + 20 && calls(&kept, true) >= b0 + 20).then_some(()),
    );
    let before = loads.each_ref().map(Load::settle);

    let admin = admins[0].addr.to_string();
    let (ok, out, err) = chorus(&[
        "drain",
        DRAINED,
        "--admin",
        &admin,
        "--wait",
        "--timeout=30",
    ]);
    assert!(ok, "chorus drain failed: {err}");
    println!("chorus drain --wait: {out}");
    assert!(out.contains(&format!("worker {DRAINED}")), "{out}");
    assert!(out.contains("is drained"), "{out}");

    // Every coordinator stops routing to it: the one asked at once, the other through etcd.
    assert_eq!(record_state(&etcd, DRAINED).as_deref(), Some("Draining"));
    let view = entry(&admins[0], DRAINED).expect("still a member");
    assert_eq!(
        (&view["draining"], &view["routable"], &view["outstanding"]),
        (&Value::Bool(true), &Value::Bool(false), &Value::from(0)),
        "{view}"
    );
    wait_until(
        "the second coordinator to see the drain",
        Duration::from_secs(5),
        || (entry(&admins[1], DRAINED).is_some_and(|w| w["draining"] == true)).then_some(()),
    );
    assert!(routable(&admins[0], KEPT) && routable(&admins[1], KEPT));

    // From now on the drained worker sees no call at all, not even one to refuse, while the
    // other keeps answering.
    let (served_a, seen_a) = (calls(&drained, true), calls(&drained, false));
    let b1 = calls(&kept, true);
    wait_until(
        "the kept worker to answer more",
        Duration::from_secs(30),
        || (calls(&kept, true) >= b1 + 300).then_some(()),
    );
    assert_eq!(
        calls(&drained, true),
        served_a,
        "the drained worker answered"
    );
    assert_eq!(
        calls(&drained, false),
        seen_a,
        "the drained worker was called"
    );

    // It keeps running, healthy for a liveness probe, and says it is drained.
    assert!(
        drained.child.try_wait().unwrap().is_none(),
        "it must not exit"
    );
    let health = Http::new(drained.field("metrics_addr").parse().unwrap()).get("/health");
    assert_eq!(health, (200, "drained\n".to_string()));

    // Asking again changes nothing and says so.
    let (ok, out, err) = chorus(&["drain", DRAINED, "--admin", &admin, "--json"]);
    assert!(ok, "{err}");
    let again: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(again["started"], false, "{again}");
    assert_eq!(again["drained"], true, "{again}");
    assert_eq!(again["record"], "marked", "{again}");

    // Losing its lease does not bring it back: it registers again, as draining.
    let lease = worker_key(&etcd.endpoint, DRAINED)
        .expect("registered")
        .lease;
    let revoked = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints={}", etcd.endpoint),
            "lease",
            "revoke",
            &format!("{lease:x}"),
        ])
        .output()
        .expect("etcdctl runs");
    assert!(revoked.status.success(), "{revoked:?}");
    wait_until(
        "the drained worker to register again",
        Duration::from_secs(15),
        || {
            worker_key(&etcd.endpoint, DRAINED)
                .filter(|key| key.lease != lease)
                .map(|_| ())
        },
    );
    assert_eq!(record_state(&etcd, DRAINED).as_deref(), Some("Draining"));
    wait_until(
        "both coordinators to list it again, draining",
        Duration::from_secs(5),
        || {
            admins
                .iter()
                .all(|a| entry(a, DRAINED).is_some_and(|w| w["draining"] == true))
                .then_some(())
        },
    );
    let b2 = calls(&kept, true);
    wait_until(
        "the kept worker to answer more",
        Duration::from_secs(30),
        || (calls(&kept, true) >= b2 + 150).then_some(()),
    );
    assert_eq!(
        calls(&drained, false),
        seen_a,
        "called after re-registering"
    );

    for (i, load) in loads.iter().enumerate() {
        let counts = load.settle() - before[i];
        assert_nothing_failed(&format!("load through coordinator {i}"), load, counts);
    }

    // An unknown id: a clear message, a non-zero exit.
    let (ok, _, err) = chorus(&["drain", "w-nope", "--admin", &admin]);
    assert!(!ok, "draining an unknown worker must fail");
    assert!(
        err.contains("no worker 'w-nope' is known") && err.contains("404"),
        "{err}"
    );

    // The operator stops it afterwards: a clean exit, its key gone.
    drop(loads);
    drained.signal(libc::SIGTERM);
    let status = drained.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "the drained worker exited with {status}");
    wait_until("its key to go", Duration::from_secs(5), || {
        worker_key(&etcd.endpoint, DRAINED).is_none().then_some(())
    });
}
