//! Server behaviour that needs control over how long a model run takes: drain on shutdown,
//! deadlines while queued, overload. A stand-in runner replaces ONNX Runtime here.

mod support;

use chorus_common::model::ONNX_PLATFORM;
use chorus_common::transport::{DEFAULT_MAX_FRAME_BYTES, connect_worker};
use chorus_common::validate::InputPolicy;
use chorus_common::{
    DataType, ExecutionProvider, InferCall, ModelInfo, Tensor, TensorSpec, WorkerError, WorkerState,
};
use chorus_worker::metrics::Metrics;
use chorus_worker::pool::{InstancePool, Job, JobResult, Runner};
use chorus_worker::registry::{LoadedModel, Registry};
use chorus_worker::server;
use chorus_worker::service::Shared;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use support::wait_until;
use tarpc::context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Says it has started, then answers its input back once given a permit.
struct Gated {
    started: mpsc::Sender<()>,
    permits: Arc<Mutex<mpsc::Receiver<()>>>,
}

impl Runner for Gated {
    fn run(&mut self, inputs: &[Tensor], _: &[String]) -> JobResult {
        let _ = self.started.send(());
        let _ = self.permits.lock().unwrap().recv();
        Ok(vec![Tensor {
            name: "y".into(),
            ..inputs[0].clone()
        }])
    }
}

fn spec(name: &str) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype: DataType::Fp32,
        shape: vec![-1, 2],
    }
}

/// A model run in progress: its start is announced, its end waits for a permit.
struct Gate {
    permits: mpsc::Sender<()>,
    started: mpsc::Receiver<()>,
}

impl Gate {
    /// Waits (blocking, briefly) until the instance has started a run.
    fn wait_started(&self) {
        self.started
            .recv_timeout(Duration::from_secs(5))
            .expect("the instance starts a run");
    }

    fn release(&self) {
        self.permits.send(()).unwrap();
    }
}

/// A registry with one gated model "slow" (one instance, `queue` waiting places).
fn gated_registry(queue: usize) -> (Registry, Gate) {
    let (permits, gate) = mpsc::channel();
    let (announce, started) = mpsc::channel();
    let runner = Gated {
        started: announce,
        permits: Arc::new(Mutex::new(gate)),
    };
    let mut registry = Registry::default();
    registry.insert(
        1,
        LoadedModel {
            info: ModelInfo {
                name: "slow".into(),
                version: "1".into(),
                platform: ONNX_PLATFORM.into(),
                inputs: vec![spec("x")],
                outputs: vec![spec("y")],
                execution_provider: ExecutionProvider::Cpu,
                allow_non_finite: false,
                max_input_elements: 1000,
                labels: Vec::new(),
            },
            policy: InputPolicy {
                allow_non_finite: false,
                max_elements: 1000,
            },
            pool: InstancePool::start(
                "model 'slow' version 1".into(),
                "slow-1",
                vec![Box::new(runner)],
                queue,
            )
            .unwrap(),
        },
    );
    (registry, Gate { permits, started })
}

fn slow_call() -> InferCall {
    InferCall {
        model: "slow".into(),
        version: None,
        inputs: vec![Tensor::from_values("x", vec![1, 2], &[1.0f32, 2.0])],
        outputs: vec![],
        request_id: "r".into(),
        trace_context: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_calls_and_refuses_new_ones() {
    let (registry, gate) = gated_registry(8);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shared = Arc::new(Shared::new(
        "w".into(),
        addr.to_string(),
        registry,
        Arc::new(Metrics::new()),
    ));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server::run(
        Arc::clone(&shared),
        listener,
        DEFAULT_MAX_FRAME_BYTES,
        Duration::from_secs(10),
        async {
            let _ = stopped.await;
        },
    ));
    let client = connect_worker(addr, DEFAULT_MAX_FRAME_BYTES, Duration::from_secs(5))
        .await
        .unwrap();

    // One call held inside the model.
    let held = tokio::spawn({
        let client = client.clone();
        async move { client.infer(context::current(), slow_call()).await }
    });
    wait_until(Duration::from_secs(5), "the call to be in flight", || {
        let client = client.clone();
        async move { client.ping(context::current()).await.unwrap().in_flight == 1 }
    })
    .await;

    // Shutdown: the worker says it is draining and refuses new work, but keeps the held call.
    let _ = stop.send(());
    wait_until(Duration::from_secs(5), "the worker to drain", || {
        let client = client.clone();
        async move { client.ping(context::current()).await.unwrap().state == WorkerState::Draining }
    })
    .await;
    let info = client.metadata(context::current()).await.unwrap();
    assert_eq!(info.state, WorkerState::Draining);
    let refused = client.infer(context::current(), slow_call()).await.unwrap();
    assert_eq!(refused, Err(WorkerError::Draining));
    assert!(!server.is_finished());

    // Letting the held call finish completes it and ends the drain.
    gate.release();
    let reply = held.await.unwrap().unwrap().unwrap();
    assert_eq!(reply.outputs[0].name, "y");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns once drained")
        .unwrap()
        .unwrap();
    assert_eq!(shared.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_passing_in_the_queue_is_deadline_exceeded() {
    let (registry, gate) = gated_registry(8);
    let shared = Arc::new(Shared::new(
        "w".into(),
        "test".into(),
        registry,
        Arc::new(Metrics::new()),
    ));
    // Already expired: refused before queueing.
    let past = Instant::now() - Duration::from_millis(1);
    assert_eq!(
        shared.infer(past, slow_call()).await,
        Err(WorkerError::DeadlineExceeded)
    );
    // Expires while the instance is busy: the caller is answered at its deadline.
    let first = tokio::spawn({
        let shared = Arc::clone(&shared);
        async move {
            shared
                .infer(Instant::now() + Duration::from_secs(30), slow_call())
                .await
        }
    });
    gate.wait_started();
    let started = Instant::now();
    let late = shared
        .infer(Instant::now() + Duration::from_millis(100), slow_call())
        .await;
    assert_eq!(late, Err(WorkerError::DeadlineExceeded));
    assert!(started.elapsed() < Duration::from_secs(5));
    // The late job's caller has gone, so the instance skips it: one permit is enough.
    gate.release();
    assert!(first.await.unwrap().is_ok());
    assert_eq!(shared.in_flight(), 0);
    assert!(
        gate.started
            .recv_timeout(Duration::from_millis(200))
            .is_err(),
        "the abandoned job must not run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_overloaded_and_bad_calls_never_queue() {
    let (registry, gate) = gated_registry(1);
    let shared = Arc::new(Shared::new(
        "w".into(),
        "test".into(),
        registry,
        Arc::new(Metrics::new()),
    ));
    let deadline = || Instant::now() + Duration::from_secs(30);
    // One call occupies the instance...
    let running = tokio::spawn({
        let shared = Arc::clone(&shared);
        async move { shared.infer(deadline(), slow_call()).await }
    });
    gate.wait_started();
    // ...and a job queued directly takes the one waiting place.
    let (reply, queued) = oneshot::channel();
    let registry = shared.registry();
    let model = registry.resolve("slow", None).unwrap();
    model
        .pool
        .submit(Job::new(slow_call().inputs, vec![], deadline(), reply))
        .unwrap();
    match shared.infer(deadline(), slow_call()).await {
        Err(WorkerError::Overloaded(msg)) => assert!(msg.contains("slow"), "{msg}"),
        other => panic!("expected Overloaded, got {other:?}"),
    }
    // Invalid input and unknown models are answered without touching the queue.
    let mut bad = slow_call();
    bad.inputs[0].shape = vec![1, 3];
    assert!(matches!(
        shared.infer(deadline(), bad).await,
        Err(WorkerError::InvalidInput(_))
    ));
    let mut unknown = slow_call();
    unknown.model = "fast".into();
    assert!(matches!(
        shared.infer(deadline(), unknown).await,
        Err(WorkerError::ModelNotFound { .. })
    ));
    gate.release();
    gate.release();
    assert!(running.await.unwrap().is_ok());
    assert!(queued.await.unwrap().is_ok());
}
