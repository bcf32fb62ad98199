//! A model's `config.toml`: per-model settings over the worker's defaults.

use crate::config::{ProviderChoice, WorkerConfig};
use crate::error::LoadError;
use serde::Deserialize;
use std::path::Path;

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
        let settings = ModelSettings {
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
            }
        );
    }

    #[test]
    fn the_generated_fixture_config_parses() {
        let s = parse("# comment\ninstances = 1\nintra_op_threads = 1\n").unwrap();
        assert_eq!(s.instances, 1);
    }

    #[test]
    fn unknown_keys_are_refused_naming_file_and_key() {
        let e = parse("instances = 1\nmax_batch_size = 8\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("models/m/config.toml"), "{e}");
        assert!(e.contains("max_batch_size"), "{e}");
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
    fn missing_file_means_defaults() {
        let tmp = tempfile::tempdir().unwrap();
        let s = ModelSettings::load(&tmp.path().join("config.toml"), &defaults()).unwrap();
        assert_eq!(s, defaults());
    }
}
