//! The etcd sources against a real etcd (Debian's etcd-server, started per test on loopback):
//! worker records and ensemble specs written with etcd-client arrive as changes, survive an etcd
//! outage, and bad values are ignored. Worker addresses are fake: these tests check the change
//! stream, not calls to workers.

use chorus_common::membership::{ENSEMBLES_PREFIX, encode_record, worker_key};
use chorus_common::testing::Etcd;
use chorus_common::{WorkerInfo, WorkerState};
use chorus_coordinator::catalog::Catalog;
use chorus_coordinator::membership::MembershipChange;
use chorus_coordinator::membership::etcd::{self, EtcdSettings, SourceState};
use chorus_coordinator::metrics::Metrics;
use chorus_coordinator::pool::{Pool, PoolSettings};
use chorus_coordinator::spec;
use etcd_client::{Client, PutOptions};
use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::block_in_place;
use tokio::time::timeout;

/// Quick to notice an outage and to retry; the periodic re-list stays out of the way.
fn settings() -> EtcdSettings {
    EtcdSettings {
        relist_interval: Duration::from_secs(30),
        request_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(500),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..EtcdSettings::default()
    }
}

/// Everything logged by this test binary (`RUST_LOG`, default info), kept to check warnings
/// and echoed for failures.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&buffer);
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_writer(move || LogWriter(Arc::clone(&writer)))
            .init();
        buffer
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        eprint!("{}", String::from_utf8_lossy(bytes));
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged(needle: &str) -> bool {
    String::from_utf8_lossy(&logs().lock().unwrap()).contains(needle)
}

fn start_etcd() -> Etcd {
    logs();
    block_in_place(Etcd::start)
}

async fn connect(etcd: &Etcd) -> Client {
    Client::connect([etcd.endpoint.as_str()], None)
        .await
        .expect("etcd client")
}

fn record(id: &str, port: u16, state: WorkerState) -> Vec<u8> {
    encode_record(&WorkerInfo {
        worker_id: id.into(),
        rpc_addr: format!("127.0.0.1:{port}"),
        state,
        capacity: 1,
        models: vec![],
        local_link: None,
    })
}

async fn put_worker(client: &mut Client, id: &str, port: u16) {
    put(
        client,
        &worker_key(id),
        record(id, port, WorkerState::Serving),
    )
    .await;
}

async fn put(client: &mut Client, key: &str, value: impl Into<Vec<u8>>) {
    try_put(client, key, value).await.expect("put");
}

/// Puts `value` under a lease of its own, as a worker registers (the coordinator ignores worker
/// records written without one); the lease outlives the test.
async fn try_put(
    client: &mut Client,
    key: &str,
    value: impl Into<Vec<u8>>,
) -> Result<(), etcd_client::Error> {
    let lease = client.lease_grant(600, None).await?.id();
    let options = PutOptions::new().with_lease(lease);
    client.put(key, value, Some(options)).await.map(drop)
}

fn joined(id: &str, port: u16, state: WorkerState) -> MembershipChange {
    MembershipChange::Joined {
        worker_id: id.into(),
        addr: format!("127.0.0.1:{port}"),
        state,
    }
}

fn left(id: &str) -> MembershipChange {
    MembershipChange::Left {
        worker_id: id.into(),
    }
}

/// The next change, within `within`.
async fn next<T>(changes: &mut mpsc::Receiver<T>, within: Duration) -> T {
    timeout(within, changes.recv())
        .await
        .unwrap_or_else(|_| panic!("no change within {within:?}"))
        .expect("the source ended")
}

/// Polls `condition` until it holds, panicking with `what` after `within`.
async fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let give_up = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < give_up, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_records_join_and_later_changes_arrive_within_a_second() {
    let etcd = start_etcd();
    let mut client = connect(&etcd).await;
    put_worker(&mut client, "w1", 1001).await;
    put_worker(&mut client, "w2", 1002).await;

    let (mut changes, source) = etcd::watch(vec![etcd.endpoint.clone()], settings());
    let first: BTreeSet<String> = [
        next(&mut changes, Duration::from_secs(5)).await,
        next(&mut changes, Duration::from_secs(1)).await,
    ]
    .iter()
    .map(|c| format!("{c:?}"))
    .collect();
    let expected: BTreeSet<String> = [
        joined("w1", 1001, WorkerState::Serving),
        joined("w2", 1002, WorkerState::Serving),
    ]
    .iter()
    .map(|c| format!("{c:?}"))
    .collect();
    assert_eq!(first, expected);
    assert_eq!(source.state(), SourceState::Live);

    let second = Duration::from_secs(1);
    let started = Instant::now();
    put_worker(&mut client, "w3", 1003).await;
    assert_eq!(
        next(&mut changes, second).await,
        joined("w3", 1003, WorkerState::Serving)
    );
    let join_latency = started.elapsed();

    put(
        &mut client,
        &worker_key("w1"),
        record("w1", 1001, WorkerState::Draining),
    )
    .await;
    assert_eq!(
        next(&mut changes, second).await,
        joined("w1", 1001, WorkerState::Draining)
    );

    let started = Instant::now();
    client.delete(worker_key("w2"), None).await.unwrap();
    assert_eq!(next(&mut changes, second).await, left("w2"));
    let leave_latency = started.elapsed();

    // Rewriting a record with the same address and state tells the pool nothing.
    put(
        &mut client,
        &worker_key("w3"),
        record("w3", 1003, WorkerState::Serving),
    )
    .await;
    put_worker(&mut client, "w4", 1004).await;
    assert_eq!(
        next(&mut changes, second).await,
        joined("w4", 1004, WorkerState::Serving)
    );
    eprintln!("put -> change {join_latency:?}, delete -> change {leave_latency:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_keeps_the_view_and_a_relist_catches_up() {
    let mut etcd = start_etcd();
    let mut client = connect(&etcd).await;
    put_worker(&mut client, "w1", 2001).await;
    put_worker(&mut client, "w2", 2002).await;
    let (mut changes, source) = etcd::watch(vec![etcd.endpoint.clone()], settings());
    next(&mut changes, Duration::from_secs(5)).await;
    next(&mut changes, Duration::from_secs(1)).await;
    assert_eq!(source.state(), SourceState::Live);
    // One change through the watch, so that the outage breaks a running watch.
    put_worker(&mut client, "w0", 2000).await;
    assert_eq!(
        next(&mut changes, Duration::from_secs(1)).await,
        joined("w0", 2000, WorkerState::Serving)
    );

    block_in_place(|| etcd.kill());
    let killed = Instant::now();
    wait_until(
        "the source reports itself stale",
        Duration::from_secs(5),
        || source.is_stale(),
    )
    .await;
    let detected = killed.elapsed();
    // A few retry rounds pass: nothing leaves because etcd is down.
    match timeout(Duration::from_secs(2), changes.recv()).await {
        Err(_) => {}
        Ok(change) => panic!("a change while etcd was down: {change:?}"),
    }
    assert!(source.is_stale());
    assert!(logged("membership view is stale: etcd unreachable"));

    block_in_place(|| etcd.resume());
    let resumed = Instant::now();
    // The old client reconnects by itself; retry until etcd takes writes again.
    let give_up = Instant::now() + Duration::from_secs(10);
    while try_put(
        &mut client,
        &worker_key("w3"),
        record("w3", 2003, WorkerState::Serving),
    )
    .await
    .is_err()
    {
        assert!(Instant::now() < give_up, "etcd takes writes after resume");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.delete(worker_key("w1"), None).await.unwrap();
    let mut seen = BTreeSet::new();
    while seen.len() < 2 {
        seen.insert(format!(
            "{:?}",
            next(&mut changes, Duration::from_secs(5)).await
        ));
    }
    let caught_up = resumed.elapsed();
    let expected: BTreeSet<String> = [joined("w3", 2003, WorkerState::Serving), left("w1")]
        .iter()
        .map(|c| format!("{c:?}"))
        .collect();
    assert_eq!(seen, expected);
    wait_until("the source is live again", Duration::from_secs(5), || {
        source.state() == SourceState::Live
    })
    .await;
    eprintln!("kill -> stale {detected:?}; resume -> changes applied {caught_up:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_started_while_etcd_is_down_lists_once_it_is_up() {
    let mut etcd = start_etcd();
    let mut client = connect(&etcd).await;
    put_worker(&mut client, "early", 4001).await;
    block_in_place(|| etcd.kill());

    let (mut changes, source) = etcd::watch(vec![etcd.endpoint.clone()], settings());
    match timeout(Duration::from_millis(500), changes.recv()).await {
        Err(_) => {}
        Ok(change) => panic!("a change with etcd down: {change:?}"),
    }
    assert_eq!(
        source.state(),
        SourceState::Starting,
        "no view yet, so not stale either"
    );

    block_in_place(|| etcd.resume());
    let resumed = Instant::now();
    assert_eq!(
        next(&mut changes, Duration::from_secs(10)).await,
        joined("early", 4001, WorkerState::Serving)
    );
    assert_eq!(source.state(), SourceState::Live);
    eprintln!("resume -> first listing {:?}", resumed.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_skipped_without_going_stale() {
    let etcd = start_etcd();
    let mut client = connect(&etcd).await;
    put_worker(&mut client, "w1", 5001).await;
    // Nothing listens there: bound a moment ago, then released.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoints = vec![format!("http://{dead}"), etcd.endpoint.clone()];
    let (mut changes, source) = etcd::watch(endpoints, settings());
    let mut states = source.subscribe();
    let started = Instant::now();
    assert_eq!(
        next(&mut changes, Duration::from_secs(2)).await,
        joined("w1", 5001, WorkerState::Serving)
    );
    eprintln!("dead endpoint first -> listed in {:?}", started.elapsed());
    assert_eq!(*states.borrow_and_update(), SourceState::Live);
    put_worker(&mut client, "w2", 5002).await;
    assert_eq!(
        next(&mut changes, Duration::from_secs(1)).await,
        joined("w2", 5002, WorkerState::Serving)
    );
    assert!(!states.has_changed().unwrap(), "never stale");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frequent_relists_and_the_watch_agree() {
    let etcd = start_etcd();
    let mut client = connect(&etcd).await;
    let fast = EtcdSettings {
        relist_interval: Duration::from_millis(20),
        ..settings()
    };
    let (mut changes, _source) = etcd::watch(vec![etcd.endpoint.clone()], fast);
    // Writes race the re-lists: every change must still be applied once, in order.
    for i in 0..30u16 {
        put_worker(&mut client, &format!("w{i}"), 6000 + i).await;
        if i % 3 == 0 {
            client
                .delete(worker_key(&format!("w{i}")), None)
                .await
                .unwrap();
        }
    }
    put_worker(&mut client, "last", 6999).await;
    let expected: BTreeSet<String> = (0..30u16)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("w{i}"))
        .chain(["last".to_string()])
        .collect();
    let mut alive = BTreeSet::new();
    let mut seen = Vec::new();
    while alive != expected {
        let change = timeout(Duration::from_secs(2), changes.recv())
            .await
            .unwrap_or_else(|_| panic!("stuck at {alive:?} after {seen:?}"))
            .expect("the source ended");
        seen.push(format!("{change:?}"));
        match change {
            MembershipChange::Joined { worker_id, .. } => {
                assert!(alive.insert(worker_id), "joined twice: {seen:?}")
            }
            MembershipChange::Left { worker_id } => {
                assert!(alive.remove(&worker_id), "left unknown: {seen:?}")
            }
        }
    }
    match timeout(Duration::from_millis(200), changes.recv()).await {
        Err(_) => {}
        Ok(change) => panic!("a change after the last write: {change:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_values_are_ignored_and_good_ones_beside_them_join() {
    let etcd = start_etcd();
    let mut client = connect(&etcd).await;
    put(&mut client, &worker_key("bad"), "{not json").await;
    put_worker(&mut client, "good", 3001).await;
    let (mut changes, _source) = etcd::watch(vec![etcd.endpoint.clone()], settings());
    assert_eq!(
        next(&mut changes, Duration::from_secs(5)).await,
        joined("good", 3001, WorkerState::Serving)
    );

    // Through the watch: a malformed value, one under another worker's key, a key naming no
    // worker, then a good record.
    put(&mut client, &worker_key("bad2"), vec![0xff, 0x00]).await;
    put(
        &mut client,
        &worker_key("liar"),
        record("someone-else", 3009, WorkerState::Serving),
    )
    .await;
    put_worker(&mut client, "nested/key", 3008).await;
    put_worker(&mut client, "good2", 3002).await;
    assert_eq!(
        next(&mut changes, Duration::from_secs(1)).await,
        joined("good2", 3002, WorkerState::Serving)
    );

    // A good record turned malformed keeps the last good one; deleting the key removes it.
    put(&mut client, &worker_key("good"), "oops").await;
    client.delete(worker_key("good"), None).await.unwrap();
    assert_eq!(
        next(&mut changes, Duration::from_secs(1)).await,
        left("good")
    );
    assert!(logged("ignoring a malformed worker record"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_records_without_a_lease_get_no_traffic() {
    let etcd = start_etcd();
    let mut client = connect(&etcd).await;
    // Written by anything with access to etcd, not by a worker keeping a lease alive.
    let forged = record("forged", 3100, WorkerState::Serving);
    client
        .put(worker_key("forged"), forged.clone(), None)
        .await
        .unwrap();
    put_worker(&mut client, "real", 3101).await;
    let (mut changes, _source) = etcd::watch(vec![etcd.endpoint.clone()], settings());
    assert_eq!(
        next(&mut changes, Duration::from_secs(5)).await,
        joined("real", 3101, WorkerState::Serving)
    );

    // Through the watch too, and overwriting a live worker's record without a lease unbinds
    // it from its lease: it leaves rather than keep traffic going to the new address.
    let forged_again = record("forged2", 3102, WorkerState::Serving);
    client
        .put(worker_key("forged2"), forged_again, None)
        .await
        .unwrap();
    let hijack = record("real", 3199, WorkerState::Serving);
    client.put(worker_key("real"), hijack, None).await.unwrap();
    assert_eq!(
        next(&mut changes, Duration::from_secs(1)).await,
        left("real")
    );
    match timeout(Duration::from_millis(300), changes.recv()).await {
        Err(_) => {}
        Ok(change) => panic!("a lease-less record reached the pool: {change:?}"),
    }
    assert!(logged("ignoring a worker record written without a lease"));
    assert!(logged("/chorus/v1/workers/forged"));
}

const FILE_SPECS: &str = r#"
version = 1
[[ensemble]]
name = "filed"
combiner = "soft_vote"
deadline_ms = 100
[[ensemble.member]]
model = "a"
"#;

fn spec_text(name: &str, deadline_ms: u64) -> String {
    format!(
        "version = 1\n[[ensemble]]\nname = \"{name}\"\ncombiner = \"soft_vote\"\ndeadline_ms = {deadline_ms}\n[[ensemble.member]]\nmodel = \"a\"\n[[ensemble.member]]\nmodel = \"b\"\n"
    )
}

fn deadline_ms(catalog: &Catalog, name: &str) -> Option<u128> {
    catalog.ensemble(name).map(|s| s.deadline.as_millis())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensemble_specs_in_etcd_update_the_catalog() {
    let etcd = start_etcd();
    let mut client = connect(&etcd).await;
    let pool = Pool::new(
        PoolSettings {
            max_frame_bytes: 1 << 20,
            ping_interval: Duration::from_secs(1),
            eject_after_failures: 3,
            silence_limit: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
        },
        Arc::new(Metrics::new()),
        None,
    );
    let catalog = Catalog::new(spec::parse(FILE_SPECS, "file").unwrap(), pool);
    let (specs, _source) = etcd::watch_ensembles(vec![etcd.endpoint.clone()], settings());
    let follower = catalog.follow_specs(specs);
    let key = format!("{ENSEMBLES_PREFIX}x");
    let within = Duration::from_secs(2);

    put(&mut client, &key, spec_text("from-etcd", 300)).await;
    wait_until("the new ensemble is served", within, || {
        deadline_ms(&catalog, "from-etcd") == Some(300)
    })
    .await;
    assert_eq!(deadline_ms(&catalog, "filed"), Some(100));

    // Invalid TOML, then a spec that fails validation: both rejected with a warning naming the
    // key, the previous spec stays.
    put(&mut client, &key, "version = 1\n[[ensemble]\n").await;
    wait_until("the invalid TOML is rejected", within, || {
        logged(&format!("key={key}")) && logged("ignoring a malformed ensemble spec")
    })
    .await;
    put(&mut client, &key, spec_text("from-etcd", 0)).await;
    wait_until("the invalid spec is rejected", within, || {
        logged("deadline_ms` is 0, but it must be between 1 and 3600000")
    })
    .await;
    assert_eq!(deadline_ms(&catalog, "from-etcd"), Some(300));

    // A valid change applies; one overriding the file's ensemble too.
    put(
        &mut client,
        &key,
        format!(
            "{}{}",
            spec_text("from-etcd", 400),
            spec_text("filed", 500).replace("version = 1\n", "")
        ),
    )
    .await;
    wait_until("the change applies", within, || {
        deadline_ms(&catalog, "from-etcd") == Some(400)
            && deadline_ms(&catalog, "filed") == Some(500)
    })
    .await;

    // Deleting the key removes its ensembles and restores the file's.
    client.delete(key.as_str(), None).await.unwrap();
    wait_until("the key's ensembles are gone", within, || {
        deadline_ms(&catalog, "from-etcd").is_none() && deadline_ms(&catalog, "filed") == Some(100)
    })
    .await;
    let names: Vec<String> = catalog.ensembles().iter().map(|s| s.name.clone()).collect();
    assert_eq!(names, vec!["filed"]);
    follower.abort();
}
