//! Turns a worker configuration into a registry of loaded, warmed model versions.

use crate::batch::BatchPolicy;
use crate::config::WorkerConfig;
use crate::error::LoadError;
use crate::metrics::Metrics;
use crate::model_config::ModelSettings;
use crate::ort_library;
use crate::pool::{InstancePool, PoolSettings, Runner};
use crate::registry::{LoadedModel, Registry};
use crate::reload::diff::VersionKey;
use crate::reload::stamp::VersionStamp;
use crate::repository::{self, ModelSource, VersionSource};
use crate::session::{ModelSession, ProviderRequest, SessionError, SessionTarget};
use chorus_common::model::ONNX_PLATFORM;
use chorus_common::validate::InputPolicy;
use chorus_common::{DataType, ExecutionProvider, ModelInfo, TensorSpec};
use ort::environment::Environment;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Scans the repository, creates every session on its provider and warms it up, with its
/// metrics in `metrics`. Blocking.
pub fn load_registry(config: &WorkerConfig, metrics: &Metrics) -> Result<Registry, LoadError> {
    load_catalog(config, metrics).map(|catalog| catalog.registry)
}

/// The registry, and what each version was loaded from (for reloads to compare).
#[derive(Debug)]
pub struct Catalog {
    pub registry: Registry,
    pub stamps: BTreeMap<VersionKey, VersionStamp>,
}

/// [`load_registry`], with each version's stamp, read before its files are: a file changed while
/// it loads is seen as changed by the next reload.
pub fn load_catalog(config: &WorkerConfig, metrics: &Metrics) -> Result<Catalog, LoadError> {
    config.validate()?;
    let defaults = ModelSettings::defaults(config);
    // Scan before touching ORT so that layout and config mistakes are reported even where the
    // library is missing.
    let sources = repository::scan(&config.model_repository, &config.models, &defaults)?;
    let env = ort_library::environment()?;
    let mut registry = Registry::default();
    let mut stamps = BTreeMap::new();
    for source in &sources {
        for version in &source.versions {
            let stamp =
                VersionStamp::read(source, version).map_err(|message| LoadError::Model {
                    model: source.name.clone(),
                    version: version.version,
                    message,
                })?;
            let loaded = load_version(&env, source, version, config.queue_capacity, metrics)?;
            registry.insert(version.version, loaded);
            stamps.insert((source.name.clone(), version.version), stamp);
        }
    }
    Ok(Catalog { registry, stamps })
}

/// Creates the sessions of one model version, warms them up and starts its pool. Blocking.
pub fn load_version(
    env: &Environment,
    source: &ModelSource,
    version: &VersionSource,
    queue_capacity: usize,
    metrics: &Metrics,
) -> Result<LoadedModel, LoadError> {
    let started = Instant::now();
    let settings = &source.settings;
    let label = format!("model '{}' version {}", source.name, version.version);
    let model_error = |message: String| LoadError::Model {
        model: source.name.clone(),
        version: version.version,
        message,
    };
    let mut request = ProviderRequest::from_settings(settings);
    let mut runners: Vec<Box<dyn Runner>> = Vec::new();
    let mut signature = None;
    let version_label = version.version.to_string();
    for instance in 0..settings.instances as usize {
        let target = SessionTarget {
            model: &source.name,
            version: version.version,
            path: &version.path,
        };
        let mut session =
            ModelSession::create(env, target, settings, request).map_err(|e| match e {
                SessionError::ProviderUnavailable { provider, reason } => {
                    LoadError::ProviderUnavailable {
                        model: source.name.clone(),
                        version: version.version,
                        provider,
                        reason,
                    }
                }
                SessionError::Other(message) => model_error(message),
            })?;
        session
            .warm_up()
            .map_err(|e| model_error(format!("warm-up run failed: {e}")))?;
        // Every instance of a version runs where the first one landed.
        request = ProviderRequest::Exactly(session.provider());
        if let ExecutionProvider::Cuda { .. } = session.provider() {
            let device = session.provider().to_string();
            let gauge = metrics.gpu_memory(&source.name, &version_label, &device, instance);
            // The gauge is telemetry: a build whose arena keeps no statistics still serves.
            if let Err(e) = session.watch_arena(gauge, false) {
                warn!(model = %source.name, version = %version.version, error = %e, "no gpu memory gauge for this model");
            }
        }
        signature.get_or_insert_with(|| {
            (
                session.inputs().to_vec(),
                session.outputs().to_vec(),
                session.provider(),
            )
        });
        runners.push(Box::new(session));
    }
    let Some((inputs, outputs, provider)) = signature else {
        return Err(model_error("no instances configured".into()));
    };
    let thread_name = format!("{}-{}", source.name, version.version);
    let batching = match not_batch_major(&inputs, &outputs) {
        Some(reason) if settings.batch_policy().enabled() => {
            warn!(
                model = %source.name,
                version = %version.version,
                reason = %reason,
                "batching turned off for this model: its signature is not batch-major"
            );
            BatchPolicy::off()
        }
        _ => settings.batch_policy(),
    };
    let model_metrics = metrics.model(&source.name, &version_label);
    metrics.set_provider(&source.name, &version_label, &provider.to_string());
    let pool_settings = PoolSettings {
        capacity: queue_capacity,
        batching,
        metrics: model_metrics,
        inline_max_run: Duration::from_micros(settings.inline_max_run_us),
    };
    let pool = InstancePool::start_with(label, &thread_name, runners, pool_settings).map_err(
        |source_err| LoadError::Thread {
            model: source.name.clone(),
            version: version.version,
            source: source_err,
        },
    )?;
    log_loaded(source, version, provider, pool.batching(), started);
    Ok(LoadedModel {
        info: model_info(source, version, inputs, outputs, provider),
        policy: InputPolicy {
            allow_non_finite: settings.allow_non_finite,
            max_elements: settings.max_input_elements,
        },
        pool,
    })
}

/// What a worker would report for one model version, without serving it: one CPU session is
/// created and warmed up as [`load_registry`] does, then dropped (no instance threads, no
/// metrics, no provider options, nothing written to `optimized_model_path`). Blocking. For
/// `chorus validate`, which checks specs against a repository offline.
pub fn describe_version(
    env: &Environment,
    source: &ModelSource,
    version: &VersionSource,
) -> Result<ModelInfo, LoadError> {
    let model_error = |message: String| LoadError::Model {
        model: source.name.clone(),
        version: version.version,
        message,
    };
    // The signature does not depend on the provider; CPU keeps validation off the GPU.
    let settings = ModelSettings {
        accel: Default::default(),
        ..source.settings.clone()
    };
    let target = SessionTarget {
        model: &source.name,
        version: version.version,
        path: &version.path,
    };
    let mut session = ModelSession::create(env, target, &settings, ProviderRequest::Cpu).map_err(
        |e| match e {
            SessionError::ProviderUnavailable { reason, .. } | SessionError::Other(reason) => {
                model_error(reason)
            }
        },
    )?;
    session
        .warm_up()
        .map_err(|e| model_error(format!("warm-up run failed: {e}")))?;
    Ok(model_info(
        source,
        version,
        session.inputs().to_vec(),
        session.outputs().to_vec(),
        session.provider(),
    ))
}

/// The description of a loaded version, as registered and sent to coordinators.
fn model_info(
    source: &ModelSource,
    version: &VersionSource,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    provider: ExecutionProvider,
) -> ModelInfo {
    ModelInfo {
        name: source.name.clone(),
        version: version.version.to_string(),
        platform: ONNX_PLATFORM.to_string(),
        inputs,
        outputs,
        execution_provider: provider,
        allow_non_finite: source.settings.allow_non_finite,
        max_input_elements: source.settings.max_input_elements,
        labels: source.labels.clone(),
    }
}

fn log_loaded(
    source: &ModelSource,
    version: &VersionSource,
    provider: ExecutionProvider,
    batching: &BatchPolicy,
    started: Instant,
) {
    info!(
        model = %source.name,
        version = %version.version,
        provider = %provider,
        instances = source.settings.instances,
        max_batch_size = batching.max_batch_size,
        max_queue_delay_us = batching.max_queue_delay.as_micros() as u64,
        load_ms = started.elapsed().as_millis() as u64,
        "model loaded"
    );
}

/// Why a model with this signature cannot be batched, if it cannot: every input and output must
/// have a variable dimension 0 (the rows), and inputs must not be `BYTES`.
pub fn not_batch_major(inputs: &[TensorSpec], outputs: &[TensorSpec]) -> Option<String> {
    let rows_vary = |spec: &TensorSpec| spec.shape.first().is_some_and(|&d| d < 0);
    if inputs.is_empty() {
        return Some("it has no inputs".into());
    }
    for spec in inputs {
        if spec.datatype == DataType::Bytes {
            return Some(format!("input '{}' is BYTES", spec.name));
        }
        if !rows_vary(spec) {
            return Some(format!(
                "input '{}' has shape {:?}, without a variable first dimension",
                spec.name, spec.shape
            ));
        }
    }
    outputs.iter().find(|spec| !rows_vary(spec)).map(|spec| {
        format!(
            "output '{}' has shape {:?}, without a variable first dimension",
            spec.name, spec.shape
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn batch_major_signatures_have_variable_rows_everywhere() {
        let input = [spec("input", DataType::Fp32, &[-1, 64])];
        let label = [spec("label", DataType::Int64, &[-1])];
        let both = [
            label[0].clone(),
            spec("probabilities", DataType::Fp32, &[-1, 10]),
        ];
        assert_eq!(not_batch_major(&input, &both), None);
        let why = |inputs: &[TensorSpec], outputs: &[TensorSpec]| {
            not_batch_major(inputs, outputs).unwrap_or_default()
        };
        let fixed = [spec("input", DataType::Fp32, &[1, 64])];
        assert!(why(&fixed, &label).contains("'input'"));
        let scalar_out = [spec("total", DataType::Fp32, &[])];
        assert!(why(&input, &scalar_out).contains("'total'"));
        let text = [spec("text", DataType::Bytes, &[-1])];
        assert!(why(&text, &label).contains("BYTES"));
        assert!(not_batch_major(&[], &label).is_some());
    }
}
