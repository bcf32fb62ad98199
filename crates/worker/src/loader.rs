//! Turns a worker configuration into a registry of loaded, warmed model versions.

use crate::config::WorkerConfig;
use crate::error::LoadError;
use crate::model_config::ModelSettings;
use crate::ort_library;
use crate::pool::{InstancePool, Runner};
use crate::registry::{LoadedModel, Registry};
use crate::repository::{self, ModelSource, VersionSource};
use crate::session::{ModelSession, ProviderRequest, SessionError};
use chorus_common::model::ONNX_PLATFORM;
use chorus_common::validate::InputPolicy;
use chorus_common::{ExecutionProvider, ModelInfo};
use ort::environment::Environment;
use std::time::Instant;
use tracing::info;

/// Scans the repository, creates every session on its provider and warms it up. Blocking.
pub fn load_registry(config: &WorkerConfig) -> Result<Registry, LoadError> {
    config.validate()?;
    let defaults = ModelSettings::defaults(config);
    // Scan before touching ORT so that layout and config mistakes are reported even where the
    // library is missing.
    let sources = repository::scan(&config.model_repository, &config.models, &defaults)?;
    let env = ort_library::environment()?;
    let mut registry = Registry::default();
    for source in &sources {
        for version in &source.versions {
            let loaded = load_version(&env, source, version, config.queue_capacity)?;
            registry.insert(version.version, loaded);
        }
    }
    Ok(registry)
}

fn load_version(
    env: &Environment,
    source: &ModelSource,
    version: &VersionSource,
    queue_capacity: usize,
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
    for _ in 0..settings.instances {
        let mut session = ModelSession::create(
            env,
            &source.name,
            version.version,
            &version.path,
            settings.intra_op_threads,
            request,
        )
        .map_err(|e| match e {
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
    let pool = InstancePool::start(label, &thread_name, runners, queue_capacity).map_err(
        |source_err| LoadError::Thread {
            model: source.name.clone(),
            version: version.version,
            source: source_err,
        },
    )?;
    log_loaded(source, version, provider, started);
    Ok(LoadedModel {
        info: ModelInfo {
            name: source.name.clone(),
            version: version.version.to_string(),
            platform: ONNX_PLATFORM.to_string(),
            inputs,
            outputs,
            execution_provider: provider,
            allow_non_finite: settings.allow_non_finite,
            max_input_elements: settings.max_input_elements,
        },
        policy: InputPolicy {
            allow_non_finite: settings.allow_non_finite,
            max_elements: settings.max_input_elements,
        },
        pool,
    })
}

fn log_loaded(
    source: &ModelSource,
    version: &VersionSource,
    provider: ExecutionProvider,
    started: Instant,
) {
    info!(
        model = %source.name,
        version = %version.version,
        provider = %provider,
        instances = source.settings.instances,
        load_ms = started.elapsed().as_millis() as u64,
        "model loaded"
    );
}
