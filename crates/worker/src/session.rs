//! ONNX Runtime sessions: creation on the chosen execution provider, signatures, warm-up and runs.

use crate::config::ProviderChoice;
use crate::convert;
use crate::model_config::ModelSettings;
use crate::pool::{BatchError, BatchMember, Runner};
use crate::signature;
use chorus_common::{ExecutionProvider, Tensor, TensorSpec, WorkerError};
use ort::environment::Environment;
use ort::ep;
use ort::session::Session;
use ort::session::builder::SessionBuilder;
use std::path::Path;
use tracing::warn;

/// What a provider request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderRequest {
    Cpu,
    /// Use CUDA on this device; `required` turns a registration failure into an error.
    Cuda {
        device_id: i32,
        required: bool,
    },
    /// Strictly what was obtained earlier: later instances of a version match the first.
    Exactly(ExecutionProvider),
}

impl ProviderRequest {
    pub fn from_settings(settings: &ModelSettings) -> Self {
        match settings.provider {
            ProviderChoice::Cpu => ProviderRequest::Cpu,
            ProviderChoice::Cuda => ProviderRequest::Cuda {
                device_id: settings.device_id,
                required: settings.require_provider,
            },
            ProviderChoice::Auto => ProviderRequest::Cuda {
                device_id: settings.device_id,
                required: false,
            },
        }
    }
}

/// Why a session could not be made.
#[derive(Debug)]
pub enum SessionError {
    /// The provider was required and could not be registered or used.
    ProviderUnavailable {
        provider: String,
        reason: String,
    },
    Other(String),
}

/// One committed session with the provider it runs on and its signature.
pub struct ModelSession {
    label: String,
    session: Session,
    provider: ExecutionProvider,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl ModelSession {
    /// Creates a session for version `version` of `model` from `model_path`, with
    /// `intra_op_threads` (0: ORT's default) on the requested provider.
    pub fn create(
        env: &Environment,
        model: &str,
        version: u64,
        model_path: &Path,
        intra_op_threads: usize,
        request: ProviderRequest,
    ) -> Result<Self, SessionError> {
        let label = format!("model '{model}' version {version}");
        let other =
            |what: &str, e: &dyn std::fmt::Display| SessionError::Other(format!("{what}: {e}"));
        let mut builder =
            Session::builder(env).map_err(|e| other("cannot create session options", &e))?;
        if intra_op_threads > 0 {
            builder = builder
                .with_intra_threads(intra_op_threads)
                .map_err(|e| other("cannot set intra-op threads", &e))?;
        }
        let (session, provider) = match request {
            ProviderRequest::Cpu | ProviderRequest::Exactly(ExecutionProvider::Cpu) => {
                (commit(builder, model_path)?, ExecutionProvider::Cpu)
            }
            ProviderRequest::Exactly(ExecutionProvider::Cuda { device_id }) => {
                let session = commit_on_cuda(builder, model_path, device_id).map_err(|reason| {
                    SessionError::Other(format!(
                        "cannot create another instance on cuda:{device_id}, where the first runs: {reason}"
                    ))
                })?;
                (session, ExecutionProvider::Cuda { device_id })
            }
            ProviderRequest::Cuda {
                device_id,
                required,
            } => match commit_on_cuda(builder.clone(), model_path, device_id) {
                Ok(session) => (session, ExecutionProvider::Cuda { device_id }),
                Err(reason) if required => {
                    return Err(SessionError::ProviderUnavailable {
                        provider: format!("cuda:{device_id}"),
                        reason,
                    });
                }
                Err(reason) => {
                    warn!(
                        model,
                        version,
                        requested = %format!("cuda:{device_id}"),
                        fallback = "cpu",
                        reason = %reason,
                        "cuda execution provider unavailable, using cpu"
                    );
                    (commit(builder, model_path)?, ExecutionProvider::Cpu)
                }
            },
        };
        let inputs = signature::tensor_specs(session.inputs()).map_err(SessionError::Other)?;
        let outputs = signature::tensor_specs(session.outputs()).map_err(SessionError::Other)?;
        Ok(ModelSession {
            label,
            session,
            provider,
            inputs,
            outputs,
        })
    }

    pub fn provider(&self) -> ExecutionProvider {
        self.provider
    }

    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// One run on all-zero inputs (batch 1, dynamic dims 1), so that the first real request does
    /// not pay for ORT's lazy allocations and kernel selection.
    pub fn warm_up(&mut self) -> Result<(), WorkerError> {
        let inputs: Vec<Tensor> = self.inputs.iter().map(convert::zeros).collect();
        self.run(&inputs, &[]).map(|_| ())
    }
}

/// Registers CUDA so that failure is an error, not ORT's default silent fallback to CPU, and
/// commits. A failure at commit (bad device id, missing CUDA libraries) counts as CUDA failing.
fn commit_on_cuda(
    builder: SessionBuilder,
    model_path: &Path,
    device_id: i32,
) -> Result<Session, String> {
    let cuda = ep::CUDA::default()
        .with_device_id(device_id)
        .build()
        .error_on_failure();
    let mut builder = builder
        .with_execution_providers([cuda])
        .map_err(|e| e.to_string())?;
    builder
        .commit_from_file(model_path)
        .map_err(|e| e.to_string())
}

fn commit(mut builder: SessionBuilder, model_path: &Path) -> Result<Session, SessionError> {
    builder
        .commit_from_file(model_path)
        .map_err(|e| SessionError::Other(format!("cannot load {}: {e}", model_path.display())))
}

impl Runner for ModelSession {
    fn run(&mut self, inputs: &[Tensor], outputs: &[String]) -> Result<Vec<Tensor>, WorkerError> {
        let values = inputs
            .iter()
            .map(|t| convert::to_ort_value(t).map(|v| (t.name.as_str(), v)))
            .collect::<Result<Vec<_>, _>>()?;
        let label = &self.label;
        let results = self
            .session
            .run(values)
            .map_err(|e| WorkerError::Internal(format!("{label}: {e}")))?;
        let wanted: Vec<&str> = if outputs.is_empty() {
            self.outputs.iter().map(|s| s.name.as_str()).collect()
        } else {
            outputs.iter().map(String::as_str).collect()
        };
        wanted
            .into_iter()
            .map(|name| {
                let value = results.get(name).ok_or_else(|| {
                    WorkerError::Internal(format!(
                        "{label}: ONNX Runtime returned no output '{name}'"
                    ))
                })?;
                convert::from_ort_value(name, value)
                    .map_err(|e| WorkerError::Internal(format!("{label}: {e}")))
            })
            .collect()
    }

    /// Joins every member's inputs straight into one ORT buffer per input (one copy), runs once
    /// and copies each member's rows of each output it wants out of ORT's output buffer.
    fn run_batch(&mut self, members: &[BatchMember<'_>]) -> Result<Vec<Vec<Tensor>>, BatchError> {
        let label = &self.label;
        let failed = |e: String| BatchError::Failed(WorkerError::Internal(format!("{label}: {e}")));
        let first = members
            .first()
            .ok_or_else(|| failed("empty batch".into()))?;
        let values = first
            .inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                let parts: Vec<&Tensor> = members.iter().map(|m| &m.inputs[i]).collect();
                convert::to_ort_value_rows(&parts).map(|v| (input.name.as_str(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(BatchError::Failed)?;
        let results = self
            .session
            .run(values)
            .map_err(|e| failed(e.to_string()))?;
        let rows: Vec<usize> = members.iter().map(|m| m.rows).collect();
        // Each declared output, split into the pieces of the members that want it.
        let mut pieces: Vec<Vec<Option<Tensor>>> = Vec::with_capacity(self.outputs.len());
        for spec in &self.outputs {
            let wants: Vec<bool> = members
                .iter()
                .map(|m| m.outputs.is_empty() || m.outputs.contains(&spec.name))
                .collect();
            if !wants.contains(&true) {
                pieces.push(Vec::new());
                continue;
            }
            let value = results.get(spec.name.as_str()).ok_or_else(|| {
                failed(format!("ONNX Runtime returned no output '{}'", spec.name))
            })?;
            let split = convert::split_ort_value(&spec.name, value, &rows, &wants).map_err(
                |e| match e {
                    convert::SplitError::NotBatchMajor(reason) => BatchError::NotBatchMajor(reason),
                    convert::SplitError::Other(reason) => failed(reason),
                },
            )?;
            pieces.push(split);
        }
        members
            .iter()
            .enumerate()
            .map(|(j, member)| {
                let mut take = |name: &str| {
                    self.outputs
                        .iter()
                        .position(|s| s.name == name)
                        .and_then(|o| pieces[o].get_mut(j)?.take())
                        .ok_or_else(|| failed(format!("no output '{name}' for the request")))
                };
                if member.outputs.is_empty() {
                    self.outputs.iter().map(|s| take(&s.name)).collect()
                } else {
                    member.outputs.iter().map(|name| take(name)).collect()
                }
            })
            .collect()
    }
}
