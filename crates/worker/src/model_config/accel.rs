//! The execution-provider and graph-optimisation keys of a model's `config.toml`, and the rules
//! that tie them together.
//!
//! Rules (each refusal names the key to change):
//! 1. GPU keys (`gpu_mem_limit_bytes`, `cuda_graph`, `cuda_tf32`, `tensorrt*`) next to
//!    `execution_provider = "cpu"` in the same file contradict it and are refused. When the CPU
//!    provider is only inherited from the worker flag (or CUDA falls back under `auto`) they are
//!    inert, so one model directory serves on CPU and GPU workers alike.
//! 2. `tensorrt_fp16` and `tensorrt_engine_cache_path` need `tensorrt = true`.
//! 3. `gpu_mem_limit_bytes` is positive: leave it out for no limit.
//! 4. `optimized_model_path` is refused with `tensorrt = true`: ORT cannot serialise a graph
//!    holding TensorRT's compiled nodes.
//! 5. Relative paths are relative to the model's directory (where `config.toml` lives).
//! 6. `io_binding` is not a GPU key: it works on every provider. It is off unless the file turns
//!    it on: the bound CUDA path has not yet run on a GPU (see `AccelSettings::io_binding_on`).

use crate::config::ProviderChoice;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// ONNX Runtime's graph-optimisation levels, by the names of its documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizationLevel {
    /// No graph rewrites: the graph runs as written.
    Disable,
    /// Semantics-preserving rewrites for every provider (constant folding, redundant nodes).
    Basic,
    /// Plus fusions for the CPU and CUDA providers (GEMM+activation, GELU, layer norm).
    Extended,
    /// Plus layout optimisations (NCHWc); ORT's default.
    All,
}

impl OptimizationLevel {
    pub fn to_ort(self) -> ort::session::builder::GraphOptimizationLevel {
        use ort::session::builder::GraphOptimizationLevel as Ort;
        match self {
            OptimizationLevel::Disable => Ort::Disable,
            OptimizationLevel::Basic => Ort::Level1,
            OptimizationLevel::Extended => Ort::Level2,
            OptimizationLevel::All => Ort::All,
        }
    }
}

/// TensorRT, registered ahead of CUDA: the nodes TensorRT cannot take run on CUDA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRt {
    /// Let TensorRT pick FP16 kernels (answers move by FP16 rounding).
    pub fp16: bool,
    /// Where TensorRT keeps built engines, so that a restart skips the build; none: no cache.
    pub engine_cache_path: Option<PathBuf>,
}

/// The keys as written in the file.
#[derive(Debug, Default, Deserialize)]
pub struct AccelKeys {
    pub gpu_mem_limit_bytes: Option<u64>,
    pub cuda_graph: Option<bool>,
    pub cuda_tf32: Option<bool>,
    pub tensorrt: Option<bool>,
    pub tensorrt_fp16: Option<bool>,
    pub tensorrt_engine_cache_path: Option<PathBuf>,
    pub graph_optimization_level: Option<OptimizationLevel>,
    pub optimized_model_path: Option<PathBuf>,
    pub io_binding: Option<bool>,
}

/// Effective provider and optimisation options of one model; none of them have worker flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccelSettings {
    /// Upper bound of the CUDA memory arena in bytes; none: ORT's default (no limit).
    pub gpu_mem_limit_bytes: Option<u64>,
    /// Capture the model as a CUDA graph on the first run and replay it afterwards.
    pub cuda_graph: bool,
    /// Whether CUDA may run FP32 matrix products in TF32 (10-bit mantissa); none: ORT's default.
    /// `false` keeps GPU answers within FP32 rounding of the CPU's.
    pub cuda_tf32: Option<bool>,
    pub tensorrt: Option<TensorRt>,
    /// None: ORT's default (`all`).
    pub graph_optimization_level: Option<OptimizationLevel>,
    /// Directory where ORT writes each version's optimised graph at load time.
    pub optimized_model_path: Option<PathBuf>,
    /// Run through an ORT `IoBinding` (inputs bound per run, outputs bound to host-readable
    /// memory of the session's device) instead of `Session::run`; none: by provider, rule 6.
    pub io_binding: Option<bool>,
}

impl AccelSettings {
    /// Whether a session runs through an `IoBinding`. On CUDA the binding lets ORT write
    /// outputs straight into pinned host memory, which the device copies to by DMA; on CPU it
    /// saves nothing. Off unless asked for, on every provider: a binding ORT refuses fails the
    /// model's load, and the CUDA path has only been checked on CPU so far (`scripts/gpu-check.sh`
    /// turns it on for the GPU check; the default turns on once that has passed on a GPU).
    pub fn io_binding_on(&self) -> bool {
        self.io_binding.unwrap_or(false)
    }
}

impl AccelKeys {
    /// Checks the keys against the rules above. `explicit_provider` is the file's own
    /// `execution_provider`, `model_dir` the directory relative paths start from.
    pub fn resolve(
        self,
        explicit_provider: Option<ProviderChoice>,
        model_dir: &Path,
    ) -> Result<AccelSettings, String> {
        let gpu_keys = [
            ("gpu_mem_limit_bytes", self.gpu_mem_limit_bytes.is_some()),
            ("cuda_graph", self.cuda_graph.is_some()),
            ("cuda_tf32", self.cuda_tf32.is_some()),
            ("tensorrt", self.tensorrt.is_some()),
            ("tensorrt_fp16", self.tensorrt_fp16.is_some()),
            (
                "tensorrt_engine_cache_path",
                self.tensorrt_engine_cache_path.is_some(),
            ),
        ];
        if explicit_provider == Some(ProviderChoice::Cpu)
            && let Some((key, _)) = gpu_keys.iter().find(|(_, set)| *set)
        {
            return Err(format!(
                "`{key}` is a GPU option but `execution_provider = \"cpu\"`: set `execution_provider` to \"cuda\" or \"auto\", or remove `{key}`"
            ));
        }
        let tensorrt = self.tensorrt.unwrap_or(false);
        for (key, set) in [
            ("tensorrt_fp16", self.tensorrt_fp16.is_some()),
            (
                "tensorrt_engine_cache_path",
                self.tensorrt_engine_cache_path.is_some(),
            ),
        ] {
            if set && !tensorrt {
                return Err(format!("`{key}` needs `tensorrt = true`"));
            }
        }
        if self.gpu_mem_limit_bytes == Some(0) {
            return Err(
                "`gpu_mem_limit_bytes` is 0: give a positive byte count, or leave it out for no limit"
                    .into(),
            );
        }
        if tensorrt && self.optimized_model_path.is_some() {
            return Err(
                "`optimized_model_path` cannot be used with `tensorrt = true`: ONNX Runtime cannot save a graph holding TensorRT engines; remove one of them"
                    .into(),
            );
        }
        let within = |p: PathBuf| model_dir.join(p);
        Ok(AccelSettings {
            gpu_mem_limit_bytes: self.gpu_mem_limit_bytes,
            cuda_graph: self.cuda_graph.unwrap_or(false),
            cuda_tf32: self.cuda_tf32,
            tensorrt: tensorrt.then(|| TensorRt {
                fp16: self.tensorrt_fp16.unwrap_or(false),
                engine_cache_path: self.tensorrt_engine_cache_path.map(within),
            }),
            graph_optimization_level: self.graph_optimization_level,
            optimized_model_path: self.optimized_model_path.map(within),
            io_binding: self.io_binding,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str, provider: Option<ProviderChoice>) -> Result<AccelSettings, String> {
        let keys: AccelKeys = toml::from_str(text).map_err(|e| e.to_string())?;
        keys.resolve(provider, Path::new("/repo/m"))
    }

    #[test]
    fn every_key_resolves_with_paths_under_the_model_directory() {
        let s = resolve(
            r#"
            gpu_mem_limit_bytes = 2147483648
            cuda_graph = true
            cuda_tf32 = false
            tensorrt = true
            tensorrt_fp16 = true
            tensorrt_engine_cache_path = "trt-cache"
            graph_optimization_level = "extended"
            io_binding = false
            "#,
            Some(ProviderChoice::Cuda),
        )
        .unwrap();
        assert_eq!(
            s,
            AccelSettings {
                gpu_mem_limit_bytes: Some(1 << 31),
                cuda_graph: true,
                cuda_tf32: Some(false),
                tensorrt: Some(TensorRt {
                    fp16: true,
                    engine_cache_path: Some(PathBuf::from("/repo/m/trt-cache")),
                }),
                graph_optimization_level: Some(OptimizationLevel::Extended),
                optimized_model_path: None,
                io_binding: Some(false),
            }
        );
        let s = resolve("optimized_model_path = \"/abs/opt\"", None).unwrap();
        assert_eq!(s.optimized_model_path, Some(PathBuf::from("/abs/opt")));
        assert_eq!(resolve("", None).unwrap(), AccelSettings::default());
    }

    #[test]
    fn io_binding_follows_the_provider_unless_set_and_is_allowed_on_cpu() {
        let auto = resolve("", None).unwrap();
        assert!(!auto.io_binding_on());
        let on = resolve("io_binding = true", Some(ProviderChoice::Cpu)).unwrap();
        assert!(on.io_binding_on());
        let off = resolve("io_binding = false", Some(ProviderChoice::Cuda)).unwrap();
        assert!(!off.io_binding_on());
        assert!(
            resolve("io_binding = 1", None)
                .unwrap_err()
                .contains("io_binding")
        );
    }

    #[test]
    fn levels_map_to_ort() {
        use ort::session::builder::GraphOptimizationLevel as Ort;
        for (name, ort) in [
            ("disable", Ort::Disable),
            ("basic", Ort::Level1),
            ("extended", Ort::Level2),
            ("all", Ort::All),
        ] {
            let s = resolve(&format!("graph_optimization_level = \"{name}\""), None).unwrap();
            assert_eq!(s.graph_optimization_level.unwrap().to_ort(), ort);
        }
    }

    #[test]
    fn gpu_keys_are_inert_unless_the_file_itself_says_cpu() {
        // Inherited cpu (a worker started with --execution-provider cpu) keeps the model loadable.
        assert!(resolve("cuda_graph = true", None).unwrap().cuda_graph);
        assert!(resolve("tensorrt = true", Some(ProviderChoice::Auto)).is_ok());
        for key in [
            "gpu_mem_limit_bytes = 1024",
            "cuda_graph = false",
            "cuda_tf32 = false",
            "tensorrt = true",
        ] {
            let e = resolve(key, Some(ProviderChoice::Cpu)).unwrap_err();
            let name = key.split(' ').next().unwrap();
            assert!(e.contains(name) && e.contains("execution_provider"), "{e}");
        }
    }

    #[test]
    fn inconsistent_values_are_refused_naming_the_key() {
        for (text, key) in [
            ("tensorrt_fp16 = true", "tensorrt_fp16"),
            (
                "tensorrt = false\ntensorrt_engine_cache_path = \"c\"",
                "tensorrt_engine_cache_path",
            ),
            ("gpu_mem_limit_bytes = 0", "gpu_mem_limit_bytes"),
            (
                "tensorrt = true\noptimized_model_path = \"o\"",
                "optimized_model_path",
            ),
            (
                "graph_optimization_level = \"max\"",
                "graph_optimization_level",
            ),
            ("graph_optimization_level = 2", "graph_optimization_level"),
        ] {
            let e = resolve(text, Some(ProviderChoice::Cuda)).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
