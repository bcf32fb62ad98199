//! Test doubles for the inference core's in-process tests: fake workers that speak the real
//! `WorkerService` contract over tarpc's in-memory transport (no sockets), each model's answer
//! (delay, failure, probabilities) set by the test, and a [`Harness`] that wires catalog, pool,
//! router and core around them. Meant for tokio's paused clock: fake delays are timers, so a
//! five-second straggler costs no real time.

use crate::catalog::Catalog;
use crate::infer::{Infer, InferRequest, Limits};
use crate::membership::MembershipChange;
use crate::metrics::Metrics;
use crate::pool::{Connector, Pool, PoolSettings};
use crate::router::{Router, RouterSettings};
use chorus_common::{
    DataType, DrainRecord, DrainReply, ExecutionProvider, InferCall, InferReply, ModelInfo, Pong,
    Tensor, TensorSpec, WorkerError, WorkerInfo, WorkerService, WorkerServiceClient, WorkerState,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};

/// Columns of every fake model's `probabilities` output.
pub const CLASSES: i64 = 3;

/// An ensemble spec file with one soft-vote ensemble, `pair`, over the one model `m`: the
/// smallest catalog a front-end test can route through.
pub const ONE_MEMBER_ENSEMBLE: &str = r#"
version = 1
[[ensemble]]
name = "pair"
combiner = "soft_vote"
deadline_ms = 1000
min_members = 1
[[ensemble.member]]
model = "m"
"#;

/// How a fake model answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// After `delay`, every row gets these probabilities.
    Answer { delay: Duration, row: Vec<f32> },
    /// After `delay`, this error.
    Fail { delay: Duration, error: WorkerError },
}

impl Behaviour {
    pub fn answer(row: &[f32]) -> Self {
        Behaviour::Answer {
            delay: Duration::ZERO,
            row: row.to_vec(),
        }
    }

    pub fn slow(delay: Duration, row: &[f32]) -> Self {
        Behaviour::Answer {
            delay,
            row: row.to_vec(),
        }
    }

    pub fn fail(error: WorkerError) -> Self {
        Behaviour::Fail {
            delay: Duration::ZERO,
            error,
        }
    }
}

/// One fake worker: its models' behaviours, and what it saw.
#[derive(Clone, Default)]
pub struct FakeWorker {
    id: String,
    behaviours: Arc<Mutex<HashMap<String, Behaviour>>>,
    /// Infer calls that arrived, and those that ran to the end (not cancelled).
    pub started: Arc<AtomicU32>,
    pub finished: Arc<AtomicU32>,
    /// `infer_many` frames that arrived (their calls count in `started` too).
    pub frames: Arc<AtomicU32>,
    /// While set, the worker answers nothing at all (calls, pings, metadata), as a
    /// partitioned or hung process would; calls that arrived meanwhile never answer.
    frozen: Arc<AtomicBool>,
    /// Drained (the `drain` RPC): refuses calls with `Draining` and says so in pongs.
    drained: Arc<AtomicBool>,
}

impl FakeWorker {
    pub fn new(id: &str, models: &[(&str, Behaviour)]) -> Self {
        let worker = FakeWorker {
            id: id.to_string(),
            ..FakeWorker::default()
        };
        for (model, behaviour) in models {
            worker.set(model, behaviour.clone());
        }
        worker
    }

    /// Changes how `model` answers from now on.
    pub fn set(&self, model: &str, behaviour: Behaviour) {
        self.behaviours
            .lock()
            .unwrap()
            .insert(model.to_string(), behaviour);
    }

    /// Silences the worker (or lets it answer again).
    pub fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }

    /// Never resolves while frozen: the call is lost in the partition.
    async fn stall_if_frozen(&self) {
        if self.frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }

    fn state(&self) -> WorkerState {
        if self.drained.load(Ordering::SeqCst) {
            WorkerState::Draining
        } else {
            WorkerState::Serving
        }
    }

    fn models(&self) -> Vec<ModelInfo> {
        let mut names: Vec<String> = self.behaviours.lock().unwrap().keys().cloned().collect();
        names.sort();
        names.iter().map(|name| model_info(name)).collect()
    }
}

/// A model that takes `input` FP32 `[-1, 2]` and answers `probabilities` FP32 `[-1, 3]`.
pub fn model_info(name: &str) -> ModelInfo {
    let spec = |name: &str, cols| TensorSpec {
        name: name.into(),
        datatype: DataType::Fp32,
        shape: vec![-1, cols],
    };
    ModelInfo {
        name: name.into(),
        version: "1".into(),
        platform: chorus_common::model::ONNX_PLATFORM.into(),
        inputs: vec![spec("input", 2)],
        outputs: vec![spec("probabilities", CLASSES)],
        execution_provider: ExecutionProvider::Cpu,
        allow_non_finite: false,
        max_input_elements: 1 << 20,
        labels: Vec::new(),
    }
}

impl WorkerService for FakeWorker {
    async fn metadata(self, _: Context) -> WorkerInfo {
        self.stall_if_frozen().await;
        WorkerInfo {
            worker_id: self.id.clone(),
            rpc_addr: self.id.clone(),
            state: self.state(),
            capacity: 8,
            models: self.models(),
            local_link: None,
        }
    }

    async fn infer(self, _: Context, call: InferCall) -> Result<InferReply, WorkerError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.stall_if_frozen().await;
        if self.drained.load(Ordering::SeqCst) {
            self.finished.fetch_add(1, Ordering::SeqCst);
            return Err(WorkerError::Draining);
        }
        let behaviour = self.behaviours.lock().unwrap().get(&call.model).cloned();
        let result = match behaviour {
            None => Err(WorkerError::ModelNotFound {
                model: call.model.clone(),
                version: None,
            }),
            Some(Behaviour::Fail { delay, error }) => {
                tokio::time::sleep(delay).await;
                Err(error)
            }
            Some(Behaviour::Answer { delay, row }) => {
                tokio::time::sleep(delay).await;
                let rows = call.inputs[0].shape[0];
                let values: Vec<f32> = (0..rows).flat_map(|_| row.iter().copied()).collect();
                Ok(InferReply {
                    model: call.model.clone(),
                    version: "1".into(),
                    outputs: vec![Tensor::from_values(
                        "probabilities",
                        vec![rows, CLASSES],
                        &values,
                    )],
                })
            }
        };
        self.finished.fetch_add(1, Ordering::SeqCst);
        result
    }

    async fn infer_many(
        self,
        ctx: Context,
        calls: Vec<InferCall>,
    ) -> Vec<Result<InferReply, WorkerError>> {
        self.frames.fetch_add(1, Ordering::SeqCst);
        futures::future::join_all(calls.into_iter().map(|call| self.clone().infer(ctx, call))).await
    }

    async fn ping(self, _: Context) -> Pong {
        self.stall_if_frozen().await;
        Pong {
            worker_id: self.id.clone(),
            state: self.state(),
            in_flight: 0,
        }
    }

    async fn drain(self, _: Context) -> DrainReply {
        self.stall_if_frozen().await;
        let started = !self.drained.swap(true, Ordering::SeqCst);
        DrainReply {
            worker_id: self.id.clone(),
            state: WorkerState::Draining,
            in_flight: 0,
            started,
            record: DrainRecord::Static,
        }
    }
}

/// Connects a worker address (its id) to its fake over tarpc's in-memory channel.
#[derive(Default)]
pub struct InMemoryConnector {
    workers: Mutex<HashMap<String, FakeWorker>>,
}

impl Connector for InMemoryConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<WorkerServiceClient, String>> {
        let worker = self.workers.lock().unwrap().get(addr).cloned();
        Box::pin(async move {
            let worker = worker.ok_or_else(|| format!("no fake worker at {addr}"))?;
            let (client_side, server_side) = tarpc::transport::channel::unbounded();
            tokio::spawn(
                BaseChannel::with_defaults(server_side)
                    .execute(worker.serve())
                    .for_each(|call| async {
                        tokio::spawn(call);
                    }),
            );
            Ok(WorkerServiceClient::new(tarpc::client::Config::default(), client_side).spawn())
        })
    }
}

/// Router settings for tests: hedging after 10 ms once one call has been seen.
pub fn router_settings() -> RouterSettings {
    RouterSettings {
        retry_ratio: 1.0,
        hedge_ratio: 1.0,
        budget_burst: 100.0,
        hedge_min_delay: Duration::from_millis(10),
        hedge_min_samples: 1,
    }
}

/// The core in front of fake workers, every worker probed once.
pub struct Harness {
    pub infer: Infer,
}

impl Harness {
    pub async fn start(specs: &str, workers: &[FakeWorker]) -> Harness {
        Harness::start_with(specs, workers, router_settings()).await
    }

    pub async fn start_with(
        specs: &str,
        workers: &[FakeWorker],
        settings: RouterSettings,
    ) -> Harness {
        let connector = InMemoryConnector::default();
        for worker in workers {
            connector
                .workers
                .lock()
                .unwrap()
                .insert(worker.id.clone(), worker.clone());
        }
        let metrics = Arc::new(Metrics::new());
        let pool = Pool::with_connector(
            PoolSettings {
                max_frame_bytes: 1 << 20,
                ping_interval: Duration::from_secs(1),
                eject_after_failures: 3,
                silence_limit: Duration::from_secs(1),
                connect_timeout: Duration::from_secs(1),
            },
            Arc::clone(&metrics),
            Arc::new(connector),
        );
        for worker in workers {
            pool.apply(MembershipChange::Joined {
                worker_id: worker.id.clone(),
                addr: worker.id.clone(),
                state: WorkerState::Serving,
            });
        }
        pool.probed_once().await;
        let router = Arc::new(Router::new(Arc::clone(&pool), settings, metrics));
        let specs = crate::spec::parse(specs, "test").expect("valid test specs");
        let catalog = Catalog::new(specs, pool);
        let limits = Limits::new(1 << 20, 1 << 20, Duration::from_secs(2));
        Harness {
            infer: Infer::new(
                catalog,
                router,
                limits,
                crate::access::Access::open(),
                crate::admission::AdmissionSettings {
                    max_inflight: 0,
                    max_queue: 0,
                    max_queue_wait: Duration::ZERO,
                    adaptive: None,
                    max_inflight_bytes: 1 << 30,
                },
            ),
        }
    }

    /// Resolves and runs one single-row request on `model`.
    pub async fn infer(
        &self,
        model: &str,
    ) -> Result<crate::infer::InferAnswer, crate::infer::InferError> {
        let target = self.infer.resolve(model, None)?;
        self.infer.infer(&target, one_row()).await
    }
}

/// A one-row request for the fake models.
pub fn one_row() -> InferRequest {
    InferRequest {
        id: None,
        inputs: vec![Tensor::from_values("input", vec![1, 2], &[0.5f32, 0.5])],
        outputs: Vec::new(),
        timeout: None,
        priority: 0,
    }
}
