//! Worker registration against a real etcd (Debian's etcd 3.4 on loopback) with a real worker
//! serving the repository's logreg model: the record and its lease, duplicate ids, shutdown,
//! an etcd outage (the worker keeps serving), a lease etcd says is gone (refusal and
//! re-registration), giving up, an unreachable etcd at start-up, and a worker's local socket.

mod support;

use chorus_common::local_link::host_identity;
use chorus_common::membership::{decode_record, worker_key};
use chorus_common::testing::Etcd;
use chorus_common::transport::{DEFAULT_MAX_FRAME_BYTES, connect_worker, connect_worker_unix};
use chorus_common::{
    ExecutionProvider, InferCall, Tensor, WorkerError, WorkerServiceClient, WorkerState,
};
use chorus_worker::local_socket::LocalSocket;
use chorus_worker::{LoadedWorker, ProviderChoice, ReadyWorker, RegistrationError, WorkerConfig};
use etcd_client::{Client, EventType, KeyValue, PutOptions, WatchOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{features, http_get, load, wait_until};
use tarpc::context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The shortest lease etcd grants; every test uses it to stay fast.
const TTL: Duration = Duration::from_secs(2);

fn etcd_config(etcd: &str, worker_id: &str, give_up_ttls: u32) -> WorkerConfig {
    WorkerConfig {
        worker_id: Some(worker_id.into()),
        etcd: vec![etcd.to_string()],
        lease_ttl_secs: TTL.as_secs(),
        etcd_give_up_ttls: give_up_ttls,
        ..support::config(&["logreg"], ProviderChoice::Cpu)
    }
}

async fn etcd_client(etcd: &Etcd) -> Client {
    Client::connect([etcd.endpoint.as_str()], None)
        .await
        .unwrap()
}

/// The worker's key-value in etcd, if any.
async fn record(client: &mut Client, worker_id: &str) -> Option<KeyValue> {
    let mut answer = client.get(worker_key(worker_id), None).await.unwrap();
    answer.take_kvs().into_iter().next()
}

/// A registered worker serving in the background, with a client and its shutdown switch.
struct Running {
    addr: SocketAddr,
    client: WorkerServiceClient,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(ready: ReadyWorker) -> Running {
        let addr: SocketAddr = ready.rpc_addr().parse().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(ready.serve(async {
            let _ = stopped.await;
        }));
        let client = connect_worker(addr, DEFAULT_MAX_FRAME_BYTES, Duration::from_secs(5))
            .await
            .unwrap();
        Running {
            addr,
            client,
            stop: Some(stop),
            server,
        }
    }

    /// Requests shutdown and waits for `serve` to return.
    async fn shut_down(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
    }

    async fn state(&self) -> WorkerState {
        self.client.ping(context::current()).await.unwrap().state
    }

    async fn infer(&self) -> Result<(), WorkerError> {
        self.client
            .infer(context::current(), logreg_call(1, "registration-test"))
            .await
            .unwrap()
            .map(|_| ())
    }
}

/// `rows` rows of the digits features for the repository's logreg model.
fn logreg_call(rows: usize, request_id: &str) -> InferCall {
    InferCall {
        model: "logreg".into(),
        version: None,
        inputs: vec![Tensor::from_values(
            "input",
            vec![rows as i64, 64],
            &features(rows, 64),
        )],
        outputs: vec![],
        request_id: request_id.into(),
        trace_context: None,
    }
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

async fn register(worker: LoadedWorker) -> ReadyWorker {
    worker
        .register(bind().await)
        .await
        .unwrap_or_else(|e| panic!("registration failed: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_appears_after_load_under_a_lease_of_the_configured_ttl() {
    let etcd = Etcd::start();
    let mut client = etcd_client(&etcd).await;
    let worker = load(etcd_config(&etcd.endpoint, "w-record", 3)).await;
    // Loaded and warm is not registered: the key appears only once the listener is handed over.
    assert!(record(&mut client, "w-record").await.is_none());
    let ready = register(worker).await;
    let kv = record(&mut client, "w-record")
        .await
        .expect("registered once register returns");

    let info = decode_record("w-record", kv.value()).unwrap();
    assert_eq!(info.rpc_addr, ready.rpc_addr());
    assert_eq!(info.state, WorkerState::Serving);
    assert_eq!(info.capacity, 1);
    assert_eq!(info.models.len(), 1);
    assert_eq!(
        (
            info.models[0].name.as_str(),
            info.models[0].version.as_str()
        ),
        ("logreg", "1")
    );
    assert_eq!(info.models[0].execution_provider, ExecutionProvider::Cpu);
    assert_eq!(info.models[0].inputs[0].name, "input");

    // The key lives under the worker's lease, granted with the configured TTL.
    assert_ne!(kv.lease(), 0);
    let registration = ready.registration().expect("etcd is configured");
    assert_eq!(registration.key(), "/chorus/v1/workers/w-record");
    assert_eq!(registration.lease_id(), Some(kv.lease()));
    let lease = client.lease_time_to_live(kv.lease(), None).await.unwrap();
    assert_eq!(lease.granted_ttl(), 2);
    assert!((1..=2).contains(&lease.ttl()), "ttl {}", lease.ttl());

    // Renewals keep it alive well past one TTL, and metadata reports the advertised address.
    let running = Running::start(ready).await;
    let meta = running.client.metadata(context::current()).await.unwrap();
    assert_eq!(meta.rpc_addr, running.addr.to_string());
    tokio::time::sleep(TTL + Duration::from_millis(1500)).await;
    let kv_later = record(&mut client, "w-record")
        .await
        .expect("still registered");
    assert_eq!(kv_later.lease(), kv.lease());
    assert_eq!(running.infer().await, Ok(()));
    running.shut_down().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_socket_is_registered_with_the_host_and_answers_as_tcp_does() {
    let etcd = Etcd::start();
    let mut client = etcd_client(&etcd).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w-local.sock");
    let socket = LocalSocket::bind(&path).await.unwrap();
    let worker = load(etcd_config(&etcd.endpoint, "w-local", 3))
        .await
        .with_local_socket(socket);
    let ready = register(worker).await;
    assert_eq!(ready.local_socket(), Some(path.as_path()));

    let kv = record(&mut client, "w-local").await.expect("registered");
    let link = decode_record("w-local", kv.value())
        .unwrap()
        .local_link
        .expect("the record names the socket");
    assert_eq!(link.socket, path.to_str().unwrap());
    assert_eq!(Some(link.host.as_str()), host_identity());

    let running = Running::start(ready).await;
    let local = connect_worker_unix(&path, DEFAULT_MAX_FRAME_BYTES, Duration::from_secs(5))
        .await
        .unwrap();
    let call = logreg_call(3, "local-socket-test");
    let over_unix = local
        .infer(context::current(), call.clone())
        .await
        .unwrap()
        .unwrap();
    let over_tcp = running
        .client
        .infer(context::current(), call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(over_unix.outputs, over_tcp.outputs);
    let meta = local.metadata(context::current()).await.unwrap();
    assert_eq!(meta.local_link, Some(link));

    running.shut_down().await.unwrap();
    assert!(!path.exists(), "the socket file goes with the worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_with_the_same_id_fails_fast_with_a_clear_error() {
    let etcd = Etcd::start();
    let mut client = etcd_client(&etcd).await;
    let config = etcd_config(&etcd.endpoint, "w-dup", 3);
    let first = Running::start(register(load(config.clone()).await).await).await;
    let held_by = record(&mut client, "w-dup").await.unwrap().lease();

    let second = load(config).await;
    let started = Instant::now();
    let error = second.register(bind().await).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(error, RegistrationError::AlreadyRegistered { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "worker id 'w-dup' is already registered in etcd (key /chorus/v1/workers/w-dup); choose another --worker-id or stop the other worker"
    );
    // The first worker keeps its registration and keeps serving.
    assert_eq!(record(&mut client, "w-dup").await.unwrap().lease(), held_by);
    assert_eq!(first.infer().await, Ok(()));
    first.shut_down().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_marks_draining_then_revokes_the_lease() {
    let etcd = Etcd::start();
    let mut client = etcd_client(&etcd).await;
    let running =
        Running::start(register(load(etcd_config(&etcd.endpoint, "w-stop", 3)).await).await).await;
    let lease = record(&mut client, "w-stop").await.unwrap().lease();
    let mut events = client
        .watch(worker_key("w-stop"), Some(WatchOptions::new()))
        .await
        .unwrap();
    // The first message only says the watch was created.
    events.message().await.unwrap();

    let started = Instant::now();
    running.shut_down().await.unwrap();
    let took = started.elapsed();

    let mut seen = Vec::new();
    while seen.last().map(|(t, _)| *t) != Some(EventType::Delete) {
        let message = tokio::time::timeout(Duration::from_secs(1), events.message())
            .await
            .expect("the record changes promptly")
            .unwrap()
            .unwrap();
        for event in message.events() {
            let state = event
                .kv()
                .filter(|_| event.event_type() == EventType::Put)
                .map(|kv| decode_record("w-stop", kv.value()).unwrap().state);
            seen.push((event.event_type(), state));
        }
    }
    assert_eq!(
        seen,
        [
            (EventType::Put, Some(WorkerState::Draining)),
            (EventType::Delete, None)
        ]
    );
    // Revoked, not expired: gone well before the TTL.
    assert!(took < TTL / 2, "shutdown took {took:?}");
    assert!(record(&mut client, "w-stop").await.is_none());
    assert_eq!(
        client.lease_time_to_live(lease, None).await.unwrap().ttl(),
        -1,
        "the lease is revoked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_does_not_stop_the_worker() {
    // Capture the keeper's logs: registration hands the test thread's subscriber to its thread.
    let captured = Captured::default();
    let _guard = tracing::subscriber::set_default(captured.subscriber());
    let mut etcd = Etcd::start();
    let mut client = etcd_client(&etcd).await;
    // The smallest give-up bound, outlasted by the outage: an unreachable etcd never counts.
    let running =
        Running::start(register(load(etcd_config(&etcd.endpoint, "w-outage", 1)).await).await)
            .await;
    let lease = record(&mut client, "w-outage").await.unwrap().lease();
    assert_eq!(running.infer().await, Ok(()));

    etcd.kill();
    let killed = Instant::now();
    let mut calls = 0;
    while killed.elapsed() < TTL * 3 {
        assert_eq!(
            running.infer().await,
            Ok(()),
            "a call {:?} into the etcd outage",
            killed.elapsed()
        );
        assert_eq!(running.state().await, WorkerState::Serving);
        assert!(
            !running.server.is_finished(),
            "serve returned {:?} into the etcd outage",
            killed.elapsed()
        );
        calls += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(calls >= 10, "only {calls} calls during the outage");

    etcd.resume();
    let resumed = Instant::now();
    let logs = &captured;
    // etcd elects itself leader (about 1 s), then gives every lease a full TTL and more.
    wait_until(TTL * 2, "a renewal after etcd resumed", || async move {
        logs.text().contains("etcd lease renewed again")
    })
    .await;
    let renewed = resumed.elapsed();
    let mut client = etcd_client(&etcd).await;
    // etcd kept the lease through the outage and the worker renews it: same lease, still there
    // two TTLs later (it would have expired by then without renewals).
    let kv = record(&mut client, "w-outage")
        .await
        .expect("the record survives the outage");
    assert_eq!(kv.lease(), lease);
    tokio::time::sleep(TTL * 2).await;
    let kv = record(&mut client, "w-outage")
        .await
        .expect("the record is still there two TTLs after etcd resumed");
    assert_eq!(kv.lease(), lease, "renewed under the same lease");
    assert_eq!(
        decode_record("w-outage", kv.value()).unwrap().state,
        WorkerState::Serving
    );
    assert!(client.lease_time_to_live(lease, None).await.unwrap().ttl() > 0);
    assert_eq!(running.infer().await, Ok(()));
    assert!(!running.server.is_finished());

    let logs = captured.text();
    let overdue = logs
        .lines()
        .filter(|l| l.contains("etcd lease renewal overdue: etcd unreachable, still serving"))
        .collect::<Vec<_>>();
    assert_eq!(overdue.len(), 1, "warned once:\n{logs}");
    assert!(overdue[0].contains("WARN") && overdue[0].contains("w-outage"));
    assert!(
        logs.lines()
            .any(|l| l.contains("INFO") && l.contains("etcd lease renewed again")),
        "{logs}"
    );
    assert!(!logs.contains("etcd lease lost"), "{logs}");
    eprintln!(
        "etcd outage: {calls} calls served during {:?} without etcd; renewed under the same lease {renewed:?} after etcd resumed",
        TTL * 3
    );
    if std::env::var_os("CHORUS_TEST_SHOW_LOGS").is_some() {
        eprintln!("{logs}");
    }
    running.shut_down().await.unwrap();
    assert!(record(&mut client, "w-outage").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_etcd_says_is_gone_refuses_work_then_re_registers() {
    let etcd = Etcd::start();
    let mut client = etcd_client(&etcd).await;
    let running =
        Running::start(register(load(etcd_config(&etcd.endpoint, "w-revoked", 3)).await).await)
            .await;
    let old_lease = record(&mut client, "w-revoked").await.unwrap().lease();
    assert_eq!(running.infer().await, Ok(()));

    client.lease_revoke(old_lease).await.unwrap();
    let revoked = Instant::now();
    // The worker learns at its next renewal (within TTL/3) and re-registers at once, so the
    // window without a lease is short: poll until the new lease shows. Meanwhile every call
    // either still succeeds (not noticed yet) or is refused as draining, which coordinators
    // retry elsewhere.
    let (mut served, mut refused) = (0, 0);
    let kv = loop {
        match running.infer().await {
            Ok(()) => served += 1,
            Err(error) => {
                assert_eq!(error, WorkerError::Draining);
                assert!(error.is_retryable());
                refused += 1;
            }
        }
        if let Some(kv) = record(&mut client, "w-revoked").await
            && kv.lease() != old_lease
        {
            break kv;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(5),
            "no re-registration within 5 s ({served} calls served, {refused} refused)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let reregistered = revoked.elapsed();
    assert_ne!(kv.lease(), 0);
    assert_eq!(
        decode_record("w-revoked", kv.value()).unwrap().state,
        WorkerState::Serving
    );
    assert!(
        client
            .lease_time_to_live(kv.lease(), None)
            .await
            .unwrap()
            .ttl()
            > 0
    );
    let worker = &running;
    wait_until(
        Duration::from_secs(2),
        "the worker to serve again",
        || async move { worker.state().await == WorkerState::Serving },
    )
    .await;
    assert_eq!(running.infer().await, Ok(()));
    // The new lease is kept alive.
    tokio::time::sleep(TTL + TTL / 2).await;
    assert_eq!(
        record(&mut client, "w-revoked").await.unwrap().lease(),
        kv.lease()
    );
    eprintln!(
        "revoked lease: re-registered {reregistered:?} after the revoke ({served} calls served, {refused} refused meanwhile)"
    );
    running.shut_down().await.unwrap();
    assert!(record(&mut client, "w-revoked").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_gives_up_when_it_cannot_re_register() {
    let etcd = Etcd::start();
    let mut client = etcd_client(&etcd).await;
    let ready = register(load(etcd_config(&etcd.endpoint, "w-taken", 2)).await)
        .await
        .with_metrics_listener(bind().await);
    let (metrics, metrics_addr) = (Arc::clone(ready.metrics()), ready.metrics_addr().unwrap());
    let running = Running::start(ready).await;
    assert!(metrics.encode().contains("\nchorus_worker_registered 1\n"));
    assert_eq!(http_get(metrics_addr, "/health").await.0, 200);
    let key = worker_key("w-taken");
    let worker_lease = record(&mut client, "w-taken").await.unwrap().lease();
    // Another lease takes the key first (so it is never free), then the worker's lease goes:
    // etcd says it is gone, and every re-registration finds the key held.
    let squatter = client.lease_grant(60, None).await.unwrap().id();
    client
        .put(
            key.as_str(),
            "someone else",
            Some(PutOptions::new().with_lease(squatter)),
        )
        .await
        .unwrap();
    client.lease_revoke(worker_lease).await.unwrap();
    let revoked = Instant::now();

    // Lost for sure now: new work is refused while it tries to re-register.
    let worker = &running;
    wait_until(
        TTL,
        "the worker to notice its lease is gone",
        || async move { worker.state().await == WorkerState::Draining },
    )
    .await;
    let noticed = revoked.elapsed();
    assert_eq!(running.infer().await, Err(WorkerError::Draining));
    assert!(metrics.encode().contains("\nchorus_worker_registered 0\n"));
    assert_eq!(
        http_get(metrics_addr, "/health").await,
        (503, "etcd lease lost\n".to_string())
    );

    let result = tokio::time::timeout(TTL * 4, running.server)
        .await
        .expect("serve gives up within the bound")
        .unwrap();
    let took = revoked.elapsed();
    let error = result.unwrap_err();
    let error = error
        .downcast_ref::<RegistrationError>()
        .unwrap_or_else(|| panic!("not a registration error: {error:#}"));
    assert!(
        matches!(error, RegistrationError::GaveUp { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("'w-taken' lost its etcd lease"),
        "{message}"
    );
    assert!(message.contains("held by another lease"), "{message}");
    // Two TTLs after etcd said the lease was gone, which the worker learns within TTL/3.
    assert!(
        took >= TTL * 2 && took < TTL * 2 + TTL / 3 + Duration::from_secs(1),
        "gave up after {took:?}"
    );
    // The other holder's key is untouched.
    let kv = record(&mut client, "w-taken").await.unwrap();
    assert_eq!(
        (kv.lease(), kv.value()),
        (squatter, b"someone else".as_slice())
    );
    eprintln!("give-up: loss noticed {noticed:?} and serve returned {took:?} after the revoke");
}

/// Log lines written by the code under test, kept for assertions.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// A text subscriber writing here.
    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + use<> {
        let writer = self.clone();
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish()
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// Current-thread runtime: the test's log subscriber is thread-local, and registration hands the
// caller's subscriber to its lease-keeper thread.
#[tokio::test]
async fn an_unreachable_etcd_at_start_up_is_retried_then_given_up() {
    let captured = Captured::default();
    let _guard = tracing::subscriber::set_default(captured.subscriber());

    // A port where nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let worker = load(etcd_config(&endpoint, "w-nowhere", 1)).await;
    let started = Instant::now();
    let error = worker.register(bind().await).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(error, RegistrationError::Unreachable { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(&endpoint), "{message}");
    assert!(message.contains("--etcd-give-up-ttls"), "{message}");
    assert!(took >= TTL && took < TTL * 2, "gave up after {took:?}");

    let logs = captured.text();
    let retries: Vec<_> = logs
        .lines()
        .filter(|l| l.contains("etcd unreachable, retrying") && l.contains(&endpoint))
        .collect();
    assert!(retries.len() >= 3, "{logs}");
    assert!(
        retries[0].contains("WARN") && retries[0].contains("attempt=1"),
        "{}",
        retries[0]
    );
    assert!(retries[1].contains("attempt=2"), "{}", retries[1]);
}

// Current-thread runtime, blocked on purpose: the lease lives on its own thread and runtime.
#[tokio::test]
async fn a_blocked_server_runtime_does_not_starve_the_lease() {
    let etcd = Etcd::start();
    let mut client = etcd_client(&etcd).await;
    let ready = register(load(etcd_config(&etcd.endpoint, "w-busy", 3)).await).await;
    let lease = record(&mut client, "w-busy").await.unwrap().lease();
    // Two TTLs of CPU-bound work (or a blocking call) on the runtime that serves RPCs.
    std::thread::sleep(TTL * 2);
    assert_eq!(ready.registration().unwrap().lease_id(), Some(lease));
    assert_eq!(record(&mut client, "w-busy").await.unwrap().lease(), lease);
    assert!(client.lease_time_to_live(lease, None).await.unwrap().ttl() > 0);
}
