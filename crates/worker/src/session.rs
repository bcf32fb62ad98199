//! ONNX Runtime sessions: creation on the chosen execution provider, signatures, warm-up and runs.

mod arena;
mod binding;

pub use arena::ArenaProbe;

use binding::Binding;

use crate::config::ProviderChoice;
use crate::convert;
use crate::model_config::{AccelSettings, ModelSettings};
use crate::pool::{BatchError, BatchMember, Runner};
use crate::signature;
use chorus_common::{ExecutionProvider, Tensor, TensorSpec, WorkerError};
use ort::environment::Environment;
use ort::ep;
use ort::session::builder::SessionBuilder;
use ort::session::{Session, SessionOutputs};
use ort::value::DynValue;
use prometheus_client::metrics::gauge::Gauge;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
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
    arena: Option<ArenaGauge>,
    /// Present when the model's `io_binding` is on.
    binding: Option<Binding>,
}

/// How often, at most, a run reads the arena's statistics: they cost a few string conversions.
const ARENA_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// A session's arena probe and the gauge it feeds.
struct ArenaGauge {
    probe: ArenaProbe,
    gauge: Gauge,
    sampled: Instant,
}

/// Which model file a session is for, and the names it is logged under.
#[derive(Debug, Clone, Copy)]
pub struct SessionTarget<'a> {
    pub model: &'a str,
    pub version: u64,
    pub path: &'a Path,
}

impl ModelSession {
    /// Creates a session for `target` with the model's `settings` (threads, graph optimisation,
    /// provider options) on the provider `request` asks for.
    pub fn create(
        env: &Environment,
        target: SessionTarget<'_>,
        settings: &ModelSettings,
        request: ProviderRequest,
    ) -> Result<Self, SessionError> {
        let SessionTarget {
            model,
            version,
            path: model_path,
        } = target;
        let label = format!("model '{model}' version {version}");
        let builder = builder(env, target, settings)?;
        let accel = &settings.accel;
        let (session, provider) = match request {
            ProviderRequest::Cpu | ProviderRequest::Exactly(ExecutionProvider::Cpu) => {
                (commit(builder, model_path)?, ExecutionProvider::Cpu)
            }
            ProviderRequest::Exactly(ExecutionProvider::Cuda { device_id }) => {
                let session = commit_on_cuda(builder, model_path, device_id, accel).map_err(
                    |reason| {
                        SessionError::Other(format!(
                            "cannot create another instance on cuda:{device_id}, where the first runs: {reason}"
                        ))
                    },
                )?;
                (session, ExecutionProvider::Cuda { device_id })
            }
            ProviderRequest::Cuda {
                device_id,
                required,
            } => match commit_on_cuda(builder.clone(), model_path, device_id, accel) {
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
        // Bound to the memory of the provider obtained, not the one asked for.
        let binding = if accel.io_binding_on() {
            Some(Binding::new(&session, provider, &outputs).map_err(SessionError::Other)?)
        } else {
            None
        };
        Ok(ModelSession {
            label,
            session,
            provider,
            inputs,
            outputs,
            arena: None,
            binding,
        })
    }

    /// Feeds `gauge` with the bytes in use in this session's arena: the CUDA arena when the
    /// session runs on CUDA; with `cpu_too`, the CPU arena otherwise (tests). Does nothing on
    /// CPU without it.
    pub fn watch_arena(&mut self, gauge: Gauge, cpu_too: bool) -> Result<(), String> {
        let device = match self.provider {
            ExecutionProvider::Cuda { device_id } => Some(device_id),
            ExecutionProvider::Cpu if cpu_too => None,
            ExecutionProvider::Cpu => return Ok(()),
        };
        let probe = ArenaProbe::new(&self.session, device)?;
        gauge.set(clamp(probe.in_use_bytes()?));
        self.arena = Some(ArenaGauge {
            probe,
            gauge,
            sampled: Instant::now(),
        });
        Ok(())
    }

    /// After a run: refreshes the arena gauge if the last sample is old enough. A failing probe
    /// is dropped after one warning rather than retried on every run.
    fn sample_arena(&mut self) {
        let Some(arena) = &mut self.arena else {
            return;
        };
        if arena.sampled.elapsed() < ARENA_SAMPLE_EVERY {
            return;
        }
        arena.sampled = Instant::now();
        match arena.probe.in_use_bytes() {
            Ok(bytes) => {
                arena.gauge.set(clamp(bytes));
            }
            Err(e) => {
                warn!(session = %self.label, error = %e, "cannot read the memory arena's statistics; gauge stopped");
                self.arena = None;
            }
        }
    }

    pub fn provider(&self) -> ExecutionProvider {
        self.provider
    }

    /// Whether runs go through an ORT `IoBinding` (`session/binding.rs`).
    pub fn io_binding(&self) -> bool {
        self.binding.is_some()
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

/// Session options shared by every provider: threads, graph optimisation and where ORT writes
/// the optimised graph.
fn builder(
    env: &Environment,
    target: SessionTarget<'_>,
    settings: &ModelSettings,
) -> Result<SessionBuilder, SessionError> {
    let other = |what: &str, e: &dyn std::fmt::Display| SessionError::Other(format!("{what}: {e}"));
    let mut builder =
        Session::builder(env).map_err(|e| other("cannot create session options", &e))?;
    if settings.intra_op_threads > 0 {
        builder = builder
            .with_intra_threads(settings.intra_op_threads)
            .map_err(|e| other("cannot set intra-op threads", &e))?;
    }
    if let Some(level) = settings.accel.graph_optimization_level {
        builder = builder
            .with_optimization_level(level.to_ort())
            .map_err(|e| other("cannot set graph_optimization_level", &e))?;
    }
    if let Some(dir) = &settings.accel.optimized_model_path {
        let file = optimized_model_file(dir, target.model, target.version);
        std::fs::create_dir_all(dir).map_err(|e| {
            other(
                &format!("cannot create optimized_model_path {}", dir.display()),
                &e,
            )
        })?;
        builder = builder
            .with_optimized_model_path(&file)
            .map_err(|e| other("cannot set optimized_model_path", &e))?;
    }
    Ok(builder)
}

/// The file ORT writes version `version`'s optimised graph to, inside `optimized_model_path`:
/// one file per version, so that versions sharing a `config.toml` do not overwrite each other.
pub fn optimized_model_file(dir: &Path, model: &str, version: u64) -> PathBuf {
    dir.join(format!("{model}.{version}.optimized.onnx"))
}

/// Registers TensorRT (when asked) ahead of CUDA, each so that failure is an error rather than
/// ORT's default silent fallback to CPU, and commits. A failure at commit (bad device id,
/// missing CUDA libraries) counts as CUDA failing.
fn commit_on_cuda(
    builder: SessionBuilder,
    model_path: &Path,
    device_id: i32,
    accel: &AccelSettings,
) -> Result<Session, String> {
    let mut cuda = ep::CUDA::default()
        .with_device_id(device_id)
        .with_cuda_graph(accel.cuda_graph);
    if let Some(tf32) = accel.cuda_tf32 {
        cuda = cuda.with_tf32(tf32);
    }
    if let Some(limit) = accel.gpu_mem_limit_bytes {
        cuda = cuda.with_memory_limit(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    let mut providers = Vec::new();
    if let Some(trt) = &accel.tensorrt {
        let mut tensorrt = ep::TensorRT::default()
            .with_device_id(device_id)
            .with_fp16(trt.fp16)
            .with_cuda_graph(accel.cuda_graph);
        if let Some(cache) = &trt.engine_cache_path {
            tensorrt = tensorrt
                .with_engine_cache(true)
                .with_engine_cache_path(cache.display());
        }
        providers.push(tensorrt.build().error_on_failure());
    }
    providers.push(cuda.build().error_on_failure());
    let mut builder = builder
        .with_execution_providers(providers)
        .map_err(|e| e.to_string())?;
    builder
        .commit_from_file(model_path)
        .map_err(|e| e.to_string())
}

fn clamp(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

fn commit(mut builder: SessionBuilder, model_path: &Path) -> Result<Session, SessionError> {
    builder
        .commit_from_file(model_path)
        .map_err(|e| SessionError::Other(format!("cannot load {}: {e}", model_path.display())))
}

impl Runner for ModelSession {
    fn run(&mut self, inputs: &[Tensor], outputs: &[String]) -> Result<Vec<Tensor>, WorkerError> {
        let answer = self.run_once(inputs, outputs);
        self.after_run();
        answer
    }

    fn run_batch(&mut self, members: &[BatchMember<'_>]) -> Result<Vec<Vec<Tensor>>, BatchError> {
        let answer = self.run_batch_once(members);
        self.after_run();
        answer
    }
}

/// Runs `session` on `values`, through `binding` when there is one.
fn run_values<'s>(
    session: &'s mut Session,
    binding: Option<&'s mut Binding>,
    values: Vec<(&str, DynValue)>,
) -> Result<SessionOutputs<'s>, String> {
    match binding {
        Some(binding) => binding.run(session, values),
        None => session.run(values).map_err(|e| e.to_string()),
    }
}

impl ModelSession {
    fn after_run(&mut self) {
        if let Some(binding) = &mut self.binding {
            binding.release();
        }
        self.sample_arena();
    }

    fn run_once(
        &mut self,
        inputs: &[Tensor],
        outputs: &[String],
    ) -> Result<Vec<Tensor>, WorkerError> {
        let values = inputs
            .iter()
            .map(|t| convert::to_ort_value(t).map(|v| (t.name.as_str(), v)))
            .collect::<Result<Vec<_>, _>>()?;
        let label = &self.label;
        let results = run_values(&mut self.session, self.binding.as_mut(), values)
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
    fn run_batch_once(
        &mut self,
        members: &[BatchMember<'_>],
    ) -> Result<Vec<Vec<Tensor>>, BatchError> {
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
        let results =
            run_values(&mut self.session, self.binding.as_mut(), values).map_err(failed)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WorkerConfig;

    fn mlp() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mlp/1/model.onnx")
    }

    /// Settings parsed from `text` as `dir/config.toml`, on CPU.
    fn settings(text: &str, dir: &Path) -> ModelSettings {
        let defaults = ModelSettings::defaults(&WorkerConfig {
            execution_provider: ProviderChoice::Cpu,
            ..WorkerConfig::default()
        });
        ModelSettings::parse(text, &dir.join("config.toml"), &defaults).unwrap()
    }

    /// Loads the committed `mlp` at `level`, writing the optimised graph under `dir/opt`;
    /// returns the written file's bytes and the probabilities of one row.
    fn load_at(level: &str, dir: &Path) -> (Vec<u8>, Vec<f32>) {
        let env = crate::ort_library::environment()
            .expect("the ONNX Runtime library is needed for this test");
        let text =
            format!("graph_optimization_level = \"{level}\"\noptimized_model_path = \"opt\"");
        let settings = settings(&text, dir);
        let target = SessionTarget {
            model: "mlp",
            version: 1,
            path: &mlp(),
        };
        let request = ProviderRequest::from_settings(&settings);
        let mut session = ModelSession::create(&env, target, &settings, request).unwrap();
        let file = optimized_model_file(&dir.join("opt"), "mlp", 1);
        let written = std::fs::read(&file)
            .unwrap_or_else(|e| panic!("no optimised model at {}: {e}", file.display()));
        let row: Vec<f32> = (0..64).map(|i| (i % 17) as f32).collect();
        let input = Tensor::from_values("input", vec![1, 64], &row);
        let outputs = session.run(&[input], &["probabilities".into()]).unwrap();
        (written, outputs[0].to_values::<f32>().unwrap())
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn the_optimisation_level_reaches_ort_and_the_optimised_graph_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let (plain, p_plain) = load_at("disable", &tmp.path().join("a"));
        let (fused, p_fused) = load_at("all", &tmp.path().join("b"));
        // At `all`, ORT fuses the MLP's Gemm+Relu into its contrib FusedGemm; at `disable` it
        // writes the graph as it came.
        assert!(!contains(&plain, b"FusedGemm"));
        assert!(contains(&fused, b"FusedGemm"));
        // The written file is a model ORT loads again.
        let env = crate::ort_library::environment().unwrap();
        let again = tmp.path().join("b/opt/mlp.1.optimized.onnx");
        let target = SessionTarget {
            model: "mlp",
            version: 1,
            path: &again,
        };
        let s = settings("graph_optimization_level = \"disable\"", tmp.path());
        ModelSession::create(&env, target, &s, ProviderRequest::Cpu).unwrap();
        // Rewrites preserve the answer (up to float reassociation).
        for (a, b) in p_plain.iter().zip(&p_fused) {
            assert!((a - b).abs() < 1e-5, "{p_plain:?} vs {p_fused:?}");
        }
    }

    #[test]
    fn the_arena_gauge_reads_the_session_arena() {
        let env = crate::ort_library::environment().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let s = settings("", tmp.path());
        let target = SessionTarget {
            model: "mlp",
            version: 1,
            path: &mlp(),
        };
        let mut session = ModelSession::create(&env, target, &s, ProviderRequest::Cpu).unwrap();
        // On CPU the gauge is only fed when asked (the metric is for GPUs).
        let gauge = Gauge::default();
        session.watch_arena(gauge.clone(), false).unwrap();
        assert!(session.arena.is_none());
        // The same probe on the CPU arena: the weights live there, so it holds at least most
        // of the model file's bytes.
        session.watch_arena(gauge.clone(), true).unwrap();
        let file = std::fs::metadata(mlp()).unwrap().len() as i64;
        assert!(gauge.get() >= file * 3 / 4, "{} of {file}", gauge.get());
        // Runs keep it fed; a sample older than a second is refreshed.
        gauge.set(-1);
        session.arena.as_mut().unwrap().sampled -= ARENA_SAMPLE_EVERY;
        session.warm_up().unwrap();
        assert!(gauge.get() >= file * 3 / 4, "{}", gauge.get());
    }

    #[test]
    fn an_unwritable_optimized_model_path_fails_the_load_naming_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        // A file where the directory should be.
        std::fs::write(tmp.path().join("opt"), b"").unwrap();
        let env = crate::ort_library::environment().unwrap();
        let s = settings("optimized_model_path = \"opt\"", tmp.path());
        let target = SessionTarget {
            model: "mlp",
            version: 1,
            path: &mlp(),
        };
        let Err(SessionError::Other(e)) =
            ModelSession::create(&env, target, &s, ProviderRequest::Cpu)
        else {
            panic!("load succeeded with a file as optimized_model_path");
        };
        assert!(e.contains("optimized_model_path"), "{e}");
    }
}
