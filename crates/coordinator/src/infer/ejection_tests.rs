//! Gray failure through the whole core: a replica that goes silent under steady concurrent load
//! leaves rotation within the silence limit (one second here) whether or not hedges are winning
//! its calls, the calls stuck on it move to the other replica instead of failing, and it comes
//! back after its probation once it answers again. Paused clock, fake workers (see `testing`).

use crate::router::RouterSettings;
use crate::testing::{Behaviour, FakeWorker, Harness, router_settings};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// `pair`: one member, `m`, with a generous deadline, so a stuck call can still be retried.
const PAIR: &str = "version = 1\n[[ensemble]]\nname = \"pair\"\ncombiner = \"soft_vote\"\n\
    deadline_ms = 5000\nmin_members = 1\n[[ensemble.member]]\nmodel = \"m\"\n";

const ROW: [f32; 3] = [0.2, 0.7, 0.1];

/// Outcomes of the load loops.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// `clients` loops sending `pair` requests back to back (1 ms apart) until `stop`.
fn steady_load(h: &Arc<Harness>, clients: usize, stop: &Arc<AtomicBool>) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    for _ in 0..clients {
        let (h, stop, tally) = (Arc::clone(h), Arc::clone(stop), Arc::clone(&tally));
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match h.infer("pair").await {
                    Ok(_) => tally.ok.fetch_add(1, Ordering::SeqCst),
                    Err(_) => tally.failed.fetch_add(1, Ordering::SeqCst),
                };
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    }
    tally
}

fn routable(h: &Harness, worker: &str) -> bool {
    h.infer
        .router()
        .pool()
        .workers()
        .iter()
        .any(|w| w.worker_id == worker && w.is_routable())
}

/// Polls every 10 ms until `worker`'s routability is `wanted`; returns how long that took.
async fn until_routable(h: &Harness, worker: &str, wanted: bool, limit: Duration) -> Duration {
    let since = Instant::now();
    while routable(h, worker) != wanted {
        assert!(
            since.elapsed() < limit,
            "{worker} routable != {wanted} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    since.elapsed()
}

async fn silent_replica_under_load(
    settings: RouterSettings,
) -> (Duration, Arc<Tally>, Arc<Harness>, Vec<FakeWorker>) {
    let slow = Behaviour::slow(Duration::from_millis(2), &ROW);
    let workers = vec![
        FakeWorker::new("w-1", &[("m", slow.clone())]),
        FakeWorker::new("w-2", &[("m", slow)]),
    ];
    let h = Arc::new(Harness::start_with(PAIR, &workers, settings).await);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = steady_load(&h, 16, &stop);
    // Warm up: latency windows fill, so hedging has a p95.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let warm = tally.ok.load(Ordering::SeqCst);
    assert!(warm > 1000, "the load is steady: {warm} answers in 2 s");
    assert!(
        workers[0].started.load(Ordering::SeqCst) > 100,
        "w-1 shares the load"
    );
    workers[0].freeze(true);
    let detect = until_routable(&h, "w-1", false, Duration::from_secs(5)).await;
    // Keep the load on while w-1 stays silent, then heal it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    workers[0].freeze(false);
    let back = until_routable(&h, "w-1", true, Duration::from_secs(10)).await;
    assert!(
        back >= Duration::from_secs(1),
        "returned after {back:?}: the probation needs two pings a ping interval apart"
    );
    stop.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(6)).await;
    (detect, tally, h, workers)
}

#[tokio::test(start_paused = true)]
async fn a_silent_replica_leaves_rotation_and_its_calls_move_without_hedging() {
    let no_hedging = RouterSettings {
        hedge_ratio: 0.0,
        ..router_settings()
    };
    let (detect, tally, h, _) = silent_replica_under_load(no_hedging).await;
    assert!(
        detect <= Duration::from_millis(1_200),
        "ejected after {detect:?}"
    );
    assert_eq!(
        tally.failed.load(Ordering::SeqCst),
        0,
        "stuck calls were retried"
    );
    let stats = h.infer.router().routing_stats();
    assert!(stats.retries > 0, "the calls stuck on w-1 moved to w-2");
    assert_eq!(stats.hedges, 0);
}

#[tokio::test(start_paused = true)]
async fn hedges_winning_every_call_do_not_hide_a_silent_replica() {
    let (detect, tally, h, workers) = silent_replica_under_load(router_settings()).await;
    assert!(
        detect <= Duration::from_millis(1_200),
        "ejected after {detect:?}"
    );
    assert_eq!(tally.failed.load(Ordering::SeqCst), 0);
    assert!(
        h.infer.router().routing_stats().hedges_won > 0,
        "hedges carried w-1's calls"
    );
    // Back in rotation, w-1 gets calls again even at the lightest load (one request at a time,
    // so w-2 never has a call outstanding when a replica is chosen): the hedges it lost while
    // silent describe the link that was cut, not the one it came back on.
    let before = workers[0].started.load(Ordering::SeqCst);
    for _ in 0..50 {
        h.infer("pair").await.unwrap();
    }
    assert!(
        workers[0].started.load(Ordering::SeqCst) > before,
        "w-1 got no call after its return"
    );
}

/// With the hedging budget empty, calls stuck on a replica that went silent are still hedged
/// as soon as it looks stalled (100 ms here), long before the silence limit ejects it.
#[tokio::test(start_paused = true)]
async fn calls_stuck_on_a_silent_replica_are_hedged_whatever_the_budget() {
    let slow = Behaviour::slow(Duration::from_millis(2), &ROW);
    let workers = vec![
        FakeWorker::new("w-1", &[("m", slow.clone())]),
        FakeWorker::new("w-2", &[("m", slow)]),
    ];
    let broke = RouterSettings {
        hedge_ratio: 1e-9,
        budget_burst: 0.0,
        retry_ratio: 0.0,
        ..router_settings()
    };
    let h = Arc::new(Harness::start_with(PAIR, &workers, broke).await);
    for _ in 0..20 {
        h.infer("pair").await.unwrap();
    }
    workers[0].freeze(true);
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let h = Arc::clone(&h);
            tokio::spawn(async move {
                let started = Instant::now();
                h.infer("pair").await.map(|_| started.elapsed())
            })
        })
        .collect();
    for request in requests {
        let took = request.await.unwrap().expect("answered by w-2");
        assert!(took < Duration::from_millis(300), "took {took:?}");
    }
    let stats = h.infer.router().routing_stats();
    assert!(stats.hedges_off_stalled > 0, "{stats:?}");
    assert!(
        stats.hedges_refused > 0,
        "the budget had nothing: {stats:?}"
    );
    assert_eq!(stats.retries, 0);
}
