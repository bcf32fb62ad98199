//! The failover suite: real etcd, a coordinator following membership through it, three workers
//! with every sample model on two of them, and steady load from inside the test. Each scenario
//! injects one fault, measures, heals, prints its figures and asserts the pass criteria.
//!
//! Run alone with `cargo test -p chorus --test failover -- --nocapture` to see the report.

mod support;

use chorus_common::testing::Etcd;
use serde_json::Value;
use std::time::{Duration, Instant};
use support::etcdctl::{KeyState, worker_key};
use support::load::{Counts, Load};
use support::proxy::Proxy;
use support::*;

/// Lease TTL the workers use here (the shortest etcd grants).
const TTL: Duration = Duration::from_secs(2);

/// The worker reached through a [`Proxy`], so that a scenario can silence its RPC port while
/// its process and etcd lease live on.
const PROXIED: &str = "w-a";

/// Each model on exactly two of the three workers, so losing any one worker leaves a replica.
const PLACEMENT: [(&str, &[&str]); 3] = [
    (
        "w-a",
        &[
            "logreg",
            "random_forest",
            "mlp",
            "stacker",
            "logreg_int8",
            "mlp_int8",
        ],
    ),
    (
        "w-b",
        &["random_forest", "mlp", "svc", "gboost", "mlp_int8"],
    ),
    (
        "w-c",
        &["logreg", "svc", "gboost", "stacker", "logreg_int8"],
    ),
];

struct Suite {
    etcd: Etcd,
    proxy: Proxy,
    workers: Vec<Proc>,
    _coordinator: Proc,
    http: Http,
    /// The coordinator's admin port (`/chorus/workers`).
    admin: Http,
    load: Option<Load>,
    report: Vec<Row>,
}

/// One line of the printed report.
struct Row {
    scenario: &'static str,
    counts: Counts,
    detect: Option<Duration>,
    recover: Option<Duration>,
}

fn start_worker_in(etcd: &Etcd, id: &str, models: &[&str]) -> Proc {
    start_worker_behind(etcd, id, models, None)
}

/// Starts a worker that registers `proxy`'s address instead of its own and points the proxy at
/// its port.
fn start_worker_behind(etcd: &Etcd, id: &str, models: &[&str], proxy: Option<&Proxy>) -> Proc {
    let mut extra = vec![
        format!("--etcd={}", etcd.endpoint),
        format!("--lease-ttl-secs={}", TTL.as_secs()),
    ];
    if let Some(proxy) = proxy {
        extra.push(format!("--advertise-addr={}", proxy.addr));
    }
    let worker = start_worker_with(id, models, &extra);
    if let Some(proxy) = proxy {
        proxy.set_upstream(worker.field("listen_addr").parse().unwrap());
    }
    worker
}

impl Suite {
    fn start() -> Suite {
        let etcd = Etcd::start();
        let proxy = Proxy::start();
        let workers: Vec<Proc> = PLACEMENT
            .iter()
            .map(|(id, models)| {
                let behind = (*id == PROXIED).then_some(&proxy);
                start_worker_behind(&etcd, id, models, behind)
            })
            .collect();
        let coordinator = spawn_coordinator(&[
            "--ensembles=config/ensembles.toml".into(),
            format!("--etcd={}", etcd.endpoint),
            "--ping-interval-ms=500".into(),
        ]);
        let http = Http::new(coordinator.field("http_addr").parse().unwrap());
        let admin = Http::new(coordinator.field("admin_addr").parse().unwrap());
        let suite = Suite {
            admin,
            etcd,
            proxy,
            workers,
            _coordinator: coordinator,
            http,
            load: None,
            report: Vec::new(),
        };
        wait_until("three routable workers", Duration::from_secs(30), || {
            (suite.routable().len() == 3 && suite.http.get("/v2/health/ready").0 == 200)
                .then_some(())
        });
        suite
    }

    /// The coordinator's view of its workers.
    fn view(&self) -> Vec<Value> {
        let (status, body) = self.admin.get("/chorus/workers");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["workers"]
            .as_array()
            .unwrap()
            .clone()
    }

    fn routable(&self) -> Vec<String> {
        self.view()
            .iter()
            .filter(|w| w["routable"] == true)
            .map(|w| w["worker_id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Calls the coordinator has completed on `worker` at `addr` (0 if it is not in the view).
    fn completed(&self, worker: &str, addr: &str) -> u64 {
        self.view()
            .iter()
            .find(|w| w["worker_id"] == worker && w["addr"] == addr)
            .and_then(|w| w["completed"].as_u64())
            .unwrap_or(0)
    }

    fn worker(&mut self, id: &str) -> &mut Proc {
        self.workers.iter_mut().find(|w| w.name == id).unwrap()
    }

    fn key(&self, id: &str) -> Option<KeyState> {
        worker_key(&self.etcd.endpoint, id)
    }

    /// Replaces a worker process with a new one of the same id; returns when it is ready.
    fn restart(&mut self, id: &str) -> Instant {
        let models = PLACEMENT.iter().find(|(w, _)| *w == id).unwrap().1;
        let behind = (id == PROXIED).then_some(&self.proxy);
        let fresh = start_worker_behind(&self.etcd, id, models, behind);
        let index = self.workers.iter().position(|w| w.name == id).unwrap();
        self.workers[index] = fresh;
        Instant::now()
    }

    /// Waits until the coordinator has routed calls to `id` at its current address.
    fn wait_for_traffic(&self, id: &str, since: Instant, limit: Duration) -> Duration {
        let addr = self
            .workers
            .iter()
            .find(|w| w.name == id)
            .unwrap()
            .field("rpc_addr");
        let base = self.completed(id, &addr);
        wait_until(&format!("{id} to get traffic"), limit, || {
            (self.completed(id, &addr) > base).then_some(())
        });
        since.elapsed()
    }

    fn load(&self) -> &Load {
        self.load.as_ref().unwrap()
    }

    fn record(
        &mut self,
        scenario: &'static str,
        before: Counts,
        detect: Option<Duration>,
        recover: Option<Duration>,
    ) -> Counts {
        let counts = self.load().settle() - before;
        let fmt = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
        };
        println!(
            "scenario {scenario}: sent {} ok {} degraded {} failed {} lost {} wrong {} detect {} recover {}",
            counts.sent,
            counts.ok,
            counts.degraded,
            counts.failed,
            counts.lost,
            counts.wrong,
            fmt(detect),
            fmt(recover)
        );
        println!(
            "  routing so far: {}",
            serde_json::from_str::<Value>(&self.admin.get("/chorus/workers").1).unwrap()["routing"]
        );
        for failure in self.load().failures() {
            println!("  failure seen so far: {failure}");
        }
        self.report.push(Row {
            scenario,
            counts,
            detect,
            recover,
        });
        assert_eq!(counts.wrong, 0, "{scenario}: wrong answers");
        assert_eq!(counts.lost, 0, "{scenario}: lost requests");
        assert!(counts.sent > 0, "{scenario}: no load was sent");
        counts
    }

    fn print_report(&self) {
        println!(
            "\n| scenario | sent | ok | degraded | failed | lost | time to detect | time to recover |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        let fmt = |d: Option<Duration>| {
            d.map_or("–".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
        };
        for r in &self.report {
            let c = r.counts;
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.scenario,
                c.sent,
                c.ok,
                c.degraded,
                c.failed,
                c.lost,
                fmt(r.detect),
                fmt(r.recover)
            );
        }
    }
}

/// Scenario 1: kill -9 a worker: nothing fails; its key goes within TTL + 1 s; once restarted it gets
/// traffic within 5 s of being ready.
fn kill_a_worker(s: &mut Suite) {
    let before = s.load().settle();
    let killed = Instant::now();
    s.worker("w-b").signal(libc::SIGKILL);
    let detect = wait_until("w-b's key to go", TTL + Duration::from_secs(3), || {
        s.key("w-b").is_none().then(Instant::now)
    })
    .duration_since(killed);
    assert!(
        detect <= TTL + Duration::from_secs(1),
        "key went after {detect:?}"
    );
    let ready = s.restart("w-b");
    let recover = s.wait_for_traffic("w-b", ready, Duration::from_secs(5));
    let counts = s.record("kill -9 a worker", before, Some(detect), Some(recover));
    assert_eq!(counts.failed, 0);
}

/// Scenario 2: SIGSTOP shorter than the TTL: nothing fails, the key is never removed, and the worker is
/// back in rotation after a probe.
fn short_pause(s: &mut Suite) {
    let before = s.load().settle();
    let key = s.key("w-c").expect("w-c registered");
    s.worker("w-c").signal(libc::SIGSTOP);
    let paused = Instant::now();
    while paused.elapsed() < Duration::from_millis(800) {
        assert_eq!(
            s.key("w-c").as_ref(),
            Some(&key),
            "w-c's key changed while paused"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    s.worker("w-c").signal(libc::SIGCONT);
    let resumed = Instant::now();
    let recover = s.wait_for_traffic("w-c", resumed, Duration::from_secs(10));
    assert_eq!(
        s.key("w-c"),
        Some(key),
        "w-c re-registered after a short pause"
    );
    let counts = s.record("SIGSTOP < TTL", before, None, Some(recover));
    assert_eq!(counts.failed, 0);
}

/// Scenario 3: SIGSTOP longer than the TTL: at most the calls in flight to it fail (target 0); after
/// SIGCONT it registers again under a new lease.
fn long_pause(s: &mut Suite) {
    let before = s.load().settle();
    let key = s.key("w-c").expect("w-c registered");
    s.worker("w-c").signal(libc::SIGSTOP);
    let paused = Instant::now();
    let detect = wait_until("w-c's key to expire", Duration::from_secs(10), || {
        s.key("w-c").is_none().then(Instant::now)
    })
    .duration_since(paused);
    std::thread::sleep((TTL * 2).saturating_sub(paused.elapsed()));
    s.worker("w-c").signal(libc::SIGCONT);
    let resumed = Instant::now();
    wait_until("w-c under a new lease", Duration::from_secs(15), || {
        s.key("w-c").filter(|k| k.lease != key.lease).map(|_| ())
    });
    let recover = s.wait_for_traffic("w-c", resumed, Duration::from_secs(10));
    let counts = s.record("SIGSTOP > TTL", before, Some(detect), Some(recover));
    assert!(
        counts.failed <= 3,
        "more than the in-flight requests failed: {counts:?}"
    );
}

/// Scenario 4: etcd down for 15 s: nothing fails; after it returns the coordinator's view matches etcd
/// within 10 s.
fn etcd_outage(s: &mut Suite) {
    let before = s.load().settle();
    s.etcd.kill();
    std::thread::sleep(Duration::from_secs(15));
    assert_eq!(
        s.routable().len(),
        3,
        "the view must not shrink while etcd is down"
    );
    s.etcd.resume();
    let back = Instant::now();
    let ids: Vec<String> = PLACEMENT.iter().map(|(id, _)| id.to_string()).collect();
    wait_until(
        "the view to converge with etcd",
        Duration::from_secs(10),
        || {
            let registered = ids.iter().all(|id| s.key(id).is_some());
            let mut routable = s.routable();
            routable.sort();
            (registered && routable == ids).then_some(())
        },
    );
    let recover = back.elapsed();
    let counts = s.record("etcd down 15 s", before, None, Some(recover));
    assert_eq!(counts.failed, 0);
}

/// Scenario 5: Rolling restart: SIGTERM each worker in turn and start it again; nothing fails.
fn rolling_restart(s: &mut Suite) {
    let before = s.load().settle();
    let mut detect = Duration::ZERO;
    let mut recover = Duration::ZERO;
    for (id, _) in PLACEMENT {
        let stopped = Instant::now();
        s.worker(id).signal(libc::SIGTERM);
        let status = s.worker(id).wait_exit(Duration::from_secs(20));
        assert!(status.success(), "{id} exited with {status} on SIGTERM");
        detect = detect.max(wait_until(
            &format!("{id}'s key to go"),
            Duration::from_secs(5),
            || s.key(id).is_none().then(|| stopped.elapsed()),
        ));
        let ready = s.restart(id);
        recover = recover.max(s.wait_for_traffic(id, ready, Duration::from_secs(10)));
    }
    let counts = s.record("rolling restart", before, Some(detect), Some(recover));
    assert_eq!(counts.failed, 0);
}

/// Scenario 6: A new worker joins mid-run and gets traffic within 5 s of registering.
fn new_worker_joins(s: &mut Suite) {
    let before = s.load().settle();
    let joiner = start_worker_in(&s.etcd, "w-d", &["logreg", "random_forest", "mlp"]);
    let ready = Instant::now();
    s.workers.push(joiner);
    let recover = s.wait_for_traffic("w-d", ready, Duration::from_secs(5));
    let counts = s.record("new worker joins", before, None, Some(recover));
    assert_eq!(counts.failed, 0);
}

/// Scenario 7: gray failure under concurrent load: w-a's RPC port stops answering (its proxy
/// stops forwarding, no RST) while its process and etcd lease live on. It leaves rotation within
/// 3 s on the data plane's evidence alone, nothing fails or is lost, and it comes back once the
/// link heals.
fn gray_failure(s: &mut Suite) {
    let before = s.load().settle();
    // More clients, no pauses, for this scenario: the silence must be seen at load.
    let burst = Load::start(s.http.addr, 6, Duration::ZERO);
    std::thread::sleep(Duration::from_secs(1));
    let key = s.key(PROXIED).expect("w-a registered");
    s.proxy.set_blackhole(true);
    let cut = Instant::now();
    let detect = wait_until("w-a out of rotation", Duration::from_secs(10), || {
        (!s.routable().iter().any(|w| w == PROXIED)).then(Instant::now)
    })
    .duration_since(cut);
    std::thread::sleep(Duration::from_secs(3).saturating_sub(cut.elapsed()));
    assert_eq!(
        s.key(PROXIED),
        Some(key),
        "w-a's lease must outlive the partition (only the data plane can tell)"
    );
    s.proxy.set_blackhole(false);
    let healed = Instant::now();
    let recover = s.wait_for_traffic(PROXIED, healed, Duration::from_secs(10));
    let burst_counts = burst.settle();
    println!(
        "  burst load during the gray failure: sent {} ok {} degraded {} failed {} lost {} wrong {}",
        burst_counts.sent,
        burst_counts.ok,
        burst_counts.degraded,
        burst_counts.failed,
        burst_counts.lost,
        burst_counts.wrong
    );
    for failure in burst.failures() {
        println!("  burst failure: {failure}");
    }
    drop(burst);
    let counts = s.record("gray failure", before, Some(detect), Some(recover));
    assert!(
        detect < Duration::from_secs(3),
        "a silent worker must leave rotation within 3 s, took {detect:?}"
    );
    assert_eq!(counts.failed + burst_counts.failed, 0);
    assert_eq!(burst_counts.lost + burst_counts.wrong, 0);
    assert!(burst_counts.sent > 0);
}

#[test]
fn failover_suite() {
    let mut suite = Suite::start();
    suite.load = Some(Load::start(suite.http.addr, 3, Duration::from_millis(2)));
    // Let latency windows fill so hedging has a p95 to go by.
    std::thread::sleep(Duration::from_secs(2));
    kill_a_worker(&mut suite);
    short_pause(&mut suite);
    long_pause(&mut suite);
    etcd_outage(&mut suite);
    rolling_restart(&mut suite);
    new_worker_joins(&mut suite);
    gray_failure(&mut suite);
    let total = suite.load().settle();
    suite.print_report();
    println!(
        "total: {total:?} over {:.1} s",
        suite.load().elapsed().as_secs_f64()
    );
}
