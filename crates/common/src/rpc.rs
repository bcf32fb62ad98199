//! The worker RPC contract (tarpc over TCP, bincode) and its message types.

use crate::error::WorkerError;
use crate::model::{WorkerInfo, WorkerState};
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// One model run asked of a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferCall {
    pub model: String,
    /// Pinned version; `None` means the newest version the worker serves.
    pub version: Option<String>,
    pub inputs: Vec<Tensor>,
    /// Outputs to return; empty means all of them.
    pub outputs: Vec<String>,
    /// The client-facing request id, so one request's member calls can be followed in logs.
    pub request_id: String,
    /// The W3C `traceparent` of the coordinator's span for this call and the request's
    /// `tracestate`, so that the worker's spans join the request's trace; `None` unless traces
    /// are exported (`--otlp-endpoint`). Its layout is bincode's, with no field tags: a change
    /// here (the `tracestate` was one) needs workers and coordinators upgraded together.
    pub trace_context: Option<crate::trace::TraceContext>,
}

/// A worker's answer to a successful [`InferCall`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferReply {
    pub model: String,
    pub version: String,
    pub outputs: Vec<Tensor>,
}

/// Answer to a ping: cheap, never touches a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pong {
    pub worker_id: String,
    pub state: WorkerState,
    /// Inference calls accepted and not yet answered.
    pub in_flight: u32,
}

/// Where an operator's drain left the worker's etcd record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DrainRecord {
    /// The worker is not registered in etcd (coordinators list it with `--worker`): each
    /// coordinator learns of the drain from the worker's pongs and `Draining` refusals.
    Static,
    /// The record says `draining` (while the lease is lost: it will when the worker
    /// re-registers), so every coordinator watching etcd stops routing here.
    Marked,
    /// etcd did not take the update (why); pongs and refusals still tell every coordinator.
    Failed(String),
}

/// A worker's answer to [`WorkerService::drain`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReply {
    pub worker_id: String,
    /// `Draining` from now on (until the process restarts).
    pub state: WorkerState,
    /// Inference calls accepted and not yet answered; the drain is complete at 0.
    pub in_flight: u32,
    /// False when the worker was draining already (the call changed nothing but the record).
    pub started: bool,
    pub record: DrainRecord,
}

/// Most calls one [`WorkerService::infer_many`] frame may carry: far above any ensemble's
/// members, and a bound on what one frame can make a worker run at once.
pub const MAX_CALLS_PER_FRAME: usize = 1024;

/// The service every worker serves. Each call carries a deadline in its tarpc context; a worker
/// drops work whose deadline has passed or whose caller has gone.
#[tarpc::service]
pub trait WorkerService {
    /// Describes the worker: its id, state, capacity and every model version it serves with
    /// input/output signatures and the execution provider each runs on.
    async fn metadata() -> WorkerInfo;
    /// Runs one model on the given inputs. Model failures and bad input come back as
    /// [`WorkerError`]; a transport failure is the client's `RpcError`.
    async fn infer(call: InferCall) -> Result<InferReply, WorkerError>;
    /// Runs several calls of one request in one frame each way (an ensemble's members that
    /// this worker serves): each as [`WorkerService::infer`] would, concurrently, answered
    /// together in the calls' order. At most [`MAX_CALLS_PER_FRAME`] calls; past that, every
    /// call is refused as invalid input.
    async fn infer_many(calls: Vec<InferCall>) -> Vec<Result<InferReply, WorkerError>>;
    /// Liveness and load probe.
    async fn ping() -> Pong;
    /// An operator's drain (`chorus drain`): from now on the worker refuses new inference with
    /// [`WorkerError::Draining`], lets the calls in flight finish and marks its etcd record
    /// `draining`, so that every coordinator stops routing to it. The process keeps running
    /// (an operator stops it afterwards); asking again only re-publishes the record.
    async fn drain() -> DrainReply;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ExecutionProvider, ModelInfo, TensorSpec};
    use crate::tensor::DataType;

    fn round_trip<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(v: T) {
        let back: T = bincode1::deserialize(&bincode1::serialize(&v).unwrap()).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn messages_round_trip_through_bincode() {
        round_trip(InferCall {
            model: "logreg".into(),
            version: Some("1".into()),
            inputs: vec![Tensor::from_values("input", vec![1, 2], &[1.0f32, 2.0])],
            outputs: vec!["label".into()],
            request_id: "r-1".into(),
            trace_context: Some(crate::trace::TraceContext {
                traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                tracestate: Some("vendor=1".into()),
            }),
        });
        round_trip(InferReply {
            model: "logreg".into(),
            version: "1".into(),
            outputs: vec![Tensor::from_values("label", vec![1], &[3i64])],
        });
        round_trip(Pong {
            worker_id: "w0".into(),
            state: WorkerState::Draining,
            in_flight: 4,
        });
        round_trip(WorkerInfo {
            worker_id: "w0".into(),
            rpc_addr: "127.0.0.1:9000".into(),
            state: WorkerState::Serving,
            capacity: 2,
            models: vec![ModelInfo {
                name: "m".into(),
                version: "1".into(),
                platform: crate::model::ONNX_PLATFORM.into(),
                inputs: vec![TensorSpec {
                    name: "input".into(),
                    datatype: DataType::Fp32,
                    shape: vec![-1, 64],
                }],
                outputs: vec![],
                execution_provider: ExecutionProvider::Cuda { device_id: 1 },
                allow_non_finite: false,
                max_input_elements: 1 << 20,
                labels: Vec::new(),
            }],
            local_link: Some(crate::model::LocalLink {
                socket: "/run/chorus/w0.sock".into(),
                host: "boot/mnt:[1]".into(),
            }),
        });
        for record in [
            DrainRecord::Static,
            DrainRecord::Marked,
            DrainRecord::Failed("etcd unreachable".into()),
        ] {
            round_trip(DrainReply {
                worker_id: "w0".into(),
                state: WorkerState::Draining,
                in_flight: 3,
                started: true,
                record,
            });
        }
        let r: Result<InferReply, WorkerError> = Err(WorkerError::DeadlineExceeded);
        round_trip(r);
    }
}
