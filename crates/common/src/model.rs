//! Model and worker descriptions: what a worker serves and how to call it.

use crate::tensor::DataType;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Name, datatype and shape of one model input or output; `-1` marks a variable dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

/// The execution provider a model's sessions actually run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExecutionProvider {
    Cpu,
    Cuda { device_id: i32 },
}

impl fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecutionProvider::Cpu => f.write_str("cpu"),
            ExecutionProvider::Cuda { device_id } => write!(f, "cuda:{device_id}"),
        }
    }
}

/// Platform string reported for ONNX Runtime models, as Triton's ONNX backend names it.
pub const ONNX_PLATFORM: &str = "onnxruntime_onnx";

/// One servable model version on a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub platform: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub execution_provider: ExecutionProvider,
    /// Whether float inputs may hold NaN or infinity (rejected by default).
    pub allow_non_finite: bool,
    /// Largest element count accepted in one input tensor.
    pub max_input_elements: u64,
    /// Class names, by index, for Triton's classification extension (the model directory's
    /// `labels.txt`); empty when the model has none.
    pub labels: Vec<String>,
}

/// Whether a worker takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WorkerState {
    /// Loaded, warmed and taking work.
    Serving,
    /// Finishing in-flight work before it exits; route nothing new to it.
    Draining,
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkerState::Serving => "serving",
            WorkerState::Draining => "draining",
        })
    }
}

/// What a worker says about itself in answer to `metadata`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub worker_id: String,
    pub rpc_addr: String,
    pub state: WorkerState,
    /// How many inference calls the worker runs at once across its models' instances.
    pub capacity: u32,
    pub models: Vec<ModelInfo>,
    /// A Unix socket serving the same RPCs, for coordinators on the same host (see
    /// [`crate::local_link`]). Absent from the records of workers started without one.
    #[serde(default)]
    pub local_link: Option<LocalLink>,
}

/// Where a worker also listens on a Unix socket, and on which host: a coordinator dials it
/// instead of the TCP address when its own [`crate::local_link::host_identity`] is `host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalLink {
    /// The socket's absolute path.
    pub socket: String,
    /// The kernel and mount namespace the path belongs to.
    pub host: String,
}
