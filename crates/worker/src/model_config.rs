//! A model's `config.toml`: per-model settings over the worker's defaults.

mod accel;
mod version_policy;

pub use accel::{AccelSettings, OptimizationLevel, TensorRt};
pub use version_policy::VersionPolicy;

use crate::batch::{BatchPolicy, MAX_BATCH_SIZE, MAX_QUEUE_DELAY_US};
use crate::config::{ProviderChoice, WorkerConfig};
use crate::error::LoadError;
use crate::pool::MAX_INLINE_MAX_RUN_US;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

/// Default largest element count of one input tensor.
pub const DEFAULT_MAX_INPUT_ELEMENTS: u64 = 1 << 22;

/// The file as written; every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelConfigFile {
    instances: Option<u32>,
    intra_op_threads: Option<usize>,
    execution_provider: Option<ProviderChoice>,
    device_id: Option<i32>,
    require_provider: Option<bool>,
    allow_non_finite: Option<bool>,
    max_input_elements: Option<u64>,
    max_batch_size: Option<u32>,
    max_queue_delay_us: Option<u64>,
    preferred_batch_sizes: Option<Vec<u32>>,
    inline_max_run_us: Option<u64>,
    gpu_mem_limit_bytes: Option<u64>,
    cuda_graph: Option<bool>,
    cuda_tf32: Option<bool>,
    tensorrt: Option<bool>,
    tensorrt_fp16: Option<bool>,
    tensorrt_engine_cache_path: Option<std::path::PathBuf>,
    graph_optimization_level: Option<OptimizationLevel>,
    optimized_model_path: Option<std::path::PathBuf>,
    io_binding: Option<bool>,
    version_policy: Option<VersionPolicy>,
}

/// Effective settings of one model, after the file is merged over the worker defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSettings {
    /// Sessions (and threads) per model version.
    pub instances: u32,
    pub intra_op_threads: usize,
    pub provider: ProviderChoice,
    pub device_id: i32,
    /// Fail loading rather than fall back to CPU when `cuda` cannot be used.
    pub require_provider: bool,
    pub allow_non_finite: bool,
    pub max_input_elements: u64,
    /// Largest dynamic batch in rows; 0 or 1: batching off.
    pub max_batch_size: u32,
    /// How long the first request of a batch may wait for others, in microseconds.
    pub max_queue_delay_us: u64,
    /// Batch sizes dispatched without waiting, ascending and distinct.
    pub preferred_batch_sizes: Vec<u32>,
    /// Longest recent run time, in microseconds, at which a call runs on the thread that
    /// received it instead of an instance thread (0: never; ignored with batching on).
    pub inline_max_run_us: u64,
    /// Provider and graph-optimisation options (`model_config/accel.rs`).
    pub accel: AccelSettings,
    /// Which version directories are loaded (`model_config/version_policy.rs`); per model only,
    /// with Triton's default (the newest version).
    pub version_policy: VersionPolicy,
}

impl ModelSettings {
    /// The worker-wide defaults that a model without `config.toml` gets.
    pub fn defaults(config: &WorkerConfig) -> Self {
        ModelSettings {
            instances: config.instances,
            intra_op_threads: config.intra_op_threads,
            provider: config.execution_provider,
            device_id: config.device_id,
            require_provider: config.require_provider,
            allow_non_finite: false,
            max_input_elements: DEFAULT_MAX_INPUT_ELEMENTS,
            max_batch_size: config.max_batch_size,
            max_queue_delay_us: config.max_queue_delay_us,
            preferred_batch_sizes: Vec::new(),
            inline_max_run_us: config.inline_max_run_us,
            accel: AccelSettings::default(),
            version_policy: VersionPolicy::default(),
        }
    }

    /// The dynamic batcher's policy for this model.
    pub fn batch_policy(&self) -> BatchPolicy {
        BatchPolicy {
            max_batch_size: self.max_batch_size as usize,
            max_queue_delay: Duration::from_micros(self.max_queue_delay_us),
            preferred_batch_sizes: self
                .preferred_batch_sizes
                .iter()
                .map(|&s| s as usize)
                .collect(),
        }
    }

    /// Reads `path` if it exists; a missing file means the defaults.
    pub fn load(path: &Path, defaults: &ModelSettings) -> Result<Self, LoadError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path, defaults),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(defaults.clone()),
            Err(e) => Err(LoadError::ModelConfig {
                path: path.to_path_buf(),
                message: format!("cannot read: {e}"),
            }),
        }
    }

    /// Parses `text` (the contents of `path`) over `defaults` and checks the values.
    pub fn parse(text: &str, path: &Path, defaults: &ModelSettings) -> Result<Self, LoadError> {
        let error = |message: String| LoadError::ModelConfig {
            path: path.to_path_buf(),
            message,
        };
        // toml's message names the key and shows the offending line.
        let file: ModelConfigFile = toml::from_str(text).map_err(|e| error(e.to_string()))?;
        let provider = file.execution_provider.unwrap_or(defaults.provider);
        if file.require_provider == Some(true) && provider == ProviderChoice::Auto {
            return Err(error(
                "`require_provider = true` needs `execution_provider = \"cuda\"`: \"auto\" falls back to CPU by design"
                    .into(),
            ));
        }
        let accel = accel::AccelKeys {
            gpu_mem_limit_bytes: file.gpu_mem_limit_bytes,
            cuda_graph: file.cuda_graph,
            cuda_tf32: file.cuda_tf32,
            tensorrt: file.tensorrt,
            tensorrt_fp16: file.tensorrt_fp16,
            tensorrt_engine_cache_path: file.tensorrt_engine_cache_path,
            graph_optimization_level: file.graph_optimization_level,
            optimized_model_path: file.optimized_model_path,
            io_binding: file.io_binding,
        }
        // These keys have no worker flags: a model without them gets ORT's defaults.
        .resolve(
            file.execution_provider,
            path.parent().unwrap_or(Path::new(".")),
        )
        .map_err(error)?;
        let version_policy = file
            .version_policy
            .unwrap_or_else(|| defaults.version_policy.clone());
        version_policy.validate().map_err(error)?;
        let settings = ModelSettings {
            accel,
            version_policy,
            instances: file.instances.unwrap_or(defaults.instances),
            intra_op_threads: file.intra_op_threads.unwrap_or(defaults.intra_op_threads),
            provider,
            device_id: file.device_id.unwrap_or(defaults.device_id),
            // An inherited worker-wide requirement does not apply to a model that opted into auto.
            require_provider: provider != ProviderChoice::Auto
                && file.require_provider.unwrap_or(defaults.require_provider),
            allow_non_finite: file.allow_non_finite.unwrap_or(defaults.allow_non_finite),
            max_input_elements: file
                .max_input_elements
                .unwrap_or(defaults.max_input_elements),
            max_batch_size: file.max_batch_size.unwrap_or(defaults.max_batch_size),
            max_queue_delay_us: file
                .max_queue_delay_us
                .unwrap_or(defaults.max_queue_delay_us),
            preferred_batch_sizes: {
                let mut sizes = file
                    .preferred_batch_sizes
                    .unwrap_or_else(|| defaults.preferred_batch_sizes.clone());
                sizes.sort_unstable();
                sizes.dedup();
                sizes
            },
            inline_max_run_us: file.inline_max_run_us.unwrap_or(defaults.inline_max_run_us),
        };
        if settings.instances == 0 {
            return Err(error("`instances` must be at least 1".into()));
        }
        if settings.device_id < 0 {
            return Err(error(format!(
                "`device_id` is {}: it must be 0 or more",
                settings.device_id
            )));
        }
        if settings.max_input_elements == 0 {
            return Err(error("`max_input_elements` must be at least 1".into()));
        }
        if settings.max_batch_size > MAX_BATCH_SIZE {
            return Err(error(format!(
                "`max_batch_size` is {}: it must be at most {MAX_BATCH_SIZE} rows (0 or 1 turns batching off)",
                settings.max_batch_size
            )));
        }
        if settings.max_queue_delay_us > MAX_QUEUE_DELAY_US {
            return Err(error(format!(
                "`max_queue_delay_us` is {}: it must be at most {MAX_QUEUE_DELAY_US} (one second)",
                settings.max_queue_delay_us
            )));
        }
        if settings.inline_max_run_us > MAX_INLINE_MAX_RUN_US {
            return Err(error(format!(
                "`inline_max_run_us` is {}: it must be at most {MAX_INLINE_MAX_RUN_US} (0 turns inline runs off)",
                settings.inline_max_run_us
            )));
        }
        if let Some(&bad) = settings
            .preferred_batch_sizes
            .iter()
            .find(|&&size| size < 2 || size > settings.max_batch_size)
        {
            return Err(error(format!(
                "`preferred_batch_sizes` holds {bad}: each must be between 2 and `max_batch_size` ({}); batching needs `max_batch_size` of 2 or more",
                settings.max_batch_size
            )));
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> ModelSettings {
        ModelSettings::defaults(&WorkerConfig::default())
    }

    fn parse(text: &str) -> Result<ModelSettings, LoadError> {
        ModelSettings::parse(text, Path::new("models/m/config.toml"), &defaults())
    }

    #[test]
    fn empty_file_gives_the_worker_defaults() {
        let s = parse("").unwrap();
        assert_eq!(s, defaults());
        assert_eq!(s.instances, 1);
        assert_eq!(s.provider, ProviderChoice::Auto);
        assert!(!s.allow_non_finite);
        assert_eq!(s.max_input_elements, 1 << 22);
    }

    #[test]
    fn every_key_overrides() {
        let s = parse(
            r#"
            instances = 2
            intra_op_threads = 4
            execution_provider = "cuda"
            device_id = 1
            require_provider = true
            allow_non_finite = true
            max_input_elements = 100
            max_batch_size = 32
            max_queue_delay_us = 250
            preferred_batch_sizes = [16, 8, 16]
            inline_max_run_us = 40
            gpu_mem_limit_bytes = 1073741824
            cuda_graph = true
            tensorrt = true
            tensorrt_fp16 = true
            tensorrt_engine_cache_path = "trt"
            graph_optimization_level = "basic"
            version_policy = { specific = [1, 3] }
            "#,
        )
        .unwrap();
        assert_eq!(
            s,
            ModelSettings {
                instances: 2,
                intra_op_threads: 4,
                provider: ProviderChoice::Cuda,
                device_id: 1,
                require_provider: true,
                allow_non_finite: true,
                max_input_elements: 100,
                max_batch_size: 32,
                max_queue_delay_us: 250,
                preferred_batch_sizes: vec![8, 16],
                inline_max_run_us: 40,
                accel: AccelSettings {
                    gpu_mem_limit_bytes: Some(1 << 30),
                    cuda_graph: true,
                    cuda_tf32: None,
                    tensorrt: Some(TensorRt {
                        fp16: true,
                        engine_cache_path: Some("models/m/trt".into()),
                    }),
                    graph_optimization_level: Some(OptimizationLevel::Basic),
                    optimized_model_path: None,
                    io_binding: None,
                },
                version_policy: VersionPolicy::Specific(vec![1, 3]),
            }
        );
        let policy = s.batch_policy();
        assert!(policy.enabled());
        assert_eq!(policy.max_queue_delay, Duration::from_micros(250));
        assert_eq!(policy.preferred_batch_sizes, [8, 16]);
    }

    #[test]
    fn the_generated_fixture_config_parses() {
        let s = parse("# comment\ninstances = 1\nintra_op_threads = 1\n").unwrap();
        assert_eq!(s.instances, 1);
    }

    #[test]
    fn unknown_keys_are_refused_naming_file_and_key() {
        let e = parse("instances = 1\nmax_batch_delay = 8\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("models/m/config.toml"), "{e}");
        assert!(e.contains("max_batch_delay"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_naming_file_and_key() {
        for (text, key) in [
            ("instances = 0", "instances"),
            ("instances = -1", "instances"),
            ("instances = \"two\"", "instances"),
            ("execution_provider = \"tpu\"", "execution_provider"),
            ("device_id = -2", "device_id"),
            ("max_input_elements = 0", "max_input_elements"),
            ("require_provider = \"yes\"", "require_provider"),
            (
                "execution_provider = \"auto\"\nrequire_provider = true",
                "require_provider",
            ),
            ("instances = ", "instances"),
            ("max_batch_size = 70000", "max_batch_size"),
            ("max_batch_size = -1", "max_batch_size"),
            ("max_queue_delay_us = 2000000", "max_queue_delay_us"),
            ("preferred_batch_sizes = [4]", "preferred_batch_sizes"),
            (
                "max_batch_size = 8\npreferred_batch_sizes = [4, 16]",
                "preferred_batch_sizes",
            ),
            (
                "max_batch_size = 8\npreferred_batch_sizes = [1]",
                "preferred_batch_sizes",
            ),
            (
                "graph_optimization_level = \"fast\"",
                "graph_optimization_level",
            ),
            (
                "execution_provider = \"cpu\"\ncuda_graph = true",
                "cuda_graph",
            ),
            ("tensorrt_fp16 = true", "tensorrt_fp16"),
            ("gpu_mem_limit_bytes = 0", "gpu_mem_limit_bytes"),
            ("version_policy = { latest = 0 }", "version_policy"),
            ("version_policy = { specific = [] }", "version_policy"),
            ("version_policy = \"newest\"", "version_policy"),
            ("inline_max_run_us = 10001", "inline_max_run_us"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains("models/m/config.toml"), "{text}: {e}");
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn inherited_requirement_does_not_bind_an_auto_model() {
        let strict = ModelSettings {
            provider: ProviderChoice::Cuda,
            require_provider: true,
            ..defaults()
        };
        let s = ModelSettings::parse(
            "execution_provider = \"auto\"",
            Path::new("c.toml"),
            &strict,
        )
        .unwrap();
        assert!(!s.require_provider);
        let s = ModelSettings::parse("", Path::new("c.toml"), &strict).unwrap();
        assert!(s.require_provider);
    }

    #[test]
    fn batching_is_off_by_default_and_the_worker_flags_are_the_defaults() {
        assert!(!parse("").unwrap().batch_policy().enabled());
        let worker = WorkerConfig {
            max_batch_size: 16,
            max_queue_delay_us: 100,
            ..WorkerConfig::default()
        };
        let defaults = ModelSettings::defaults(&worker);
        let s = ModelSettings::parse("", Path::new("c.toml"), &defaults).unwrap();
        assert_eq!((s.max_batch_size, s.max_queue_delay_us), (16, 100));
        // A model can opt out of a worker-wide batching default.
        let s = ModelSettings::parse("max_batch_size = 0", Path::new("c.toml"), &defaults).unwrap();
        assert!(!s.batch_policy().enabled());
    }

    #[test]
    fn missing_file_means_defaults() {
        let tmp = tempfile::tempdir().unwrap();
        let s = ModelSettings::load(&tmp.path().join("config.toml"), &defaults()).unwrap();
        assert_eq!(s, defaults());
    }
}
