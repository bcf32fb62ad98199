//! The worker's one typed configuration: command-line flags with `CHORUS_WORKER_*` fallbacks.

use crate::error::LoadError;
use chorus_common::transport::DEFAULT_MAX_FRAME_BYTES;
use clap::{Args, ValueEnum};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Largest accepted `--queue-capacity`; the queue's slots are allocated when a model loads.
pub const MAX_QUEUE_CAPACITY: usize = 100_000;

/// Which execution provider a model's sessions should run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderChoice {
    /// ONNX Runtime's CPU provider.
    Cpu,
    /// The CUDA provider; falls back to CPU with a warning unless the provider is required.
    Cuda,
    /// CUDA when it registers, CPU otherwise (logged and reported in metadata).
    Auto,
}

impl std::fmt::Display for ProviderChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProviderChoice::Cpu => "cpu",
            ProviderChoice::Cuda => "cuda",
            ProviderChoice::Auto => "auto",
        })
    }
}

/// Settings of `chorus worker`. Per-model `config.toml` files override the model defaults below.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct WorkerConfig {
    /// Address the worker's RPC server listens on (the binary binds it; use port 0 for any port).
    #[arg(
        long = "listen",
        env = "CHORUS_WORKER_LISTEN",
        default_value = "127.0.0.1:9000"
    )]
    pub listen: SocketAddr,

    /// Model repository: `<dir>/<model>/<version>/model.onnx`, with an optional
    /// `<dir>/<model>/config.toml` per model.
    #[arg(long, env = "CHORUS_WORKER_MODEL_REPOSITORY", default_value = "models")]
    pub model_repository: PathBuf,

    /// Models to load, comma-separated (e.g. `logreg,mlp`); every model in the repository when empty.
    #[arg(long, env = "CHORUS_WORKER_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,

    /// Identity reported in metadata, pings and membership; defaults to `<hostname>-<pid>`.
    #[arg(long, env = "CHORUS_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Default execution provider for models whose config.toml does not name one.
    #[arg(
        long,
        env = "CHORUS_WORKER_EXECUTION_PROVIDER",
        value_enum,
        default_value_t = ProviderChoice::Auto
    )]
    pub execution_provider: ProviderChoice,

    /// Default CUDA device id for models whose config.toml does not name one.
    #[arg(long, env = "CHORUS_WORKER_DEVICE_ID", default_value_t = 0)]
    pub device_id: i32,

    /// Fail start-up instead of falling back to CPU when `cuda` cannot be registered
    /// (default for models whose config.toml does not say; ignored for `auto`).
    #[arg(long, env = "CHORUS_WORKER_REQUIRE_PROVIDER")]
    pub require_provider: bool,

    /// Default number of ONNX Runtime sessions (each on its own thread) per model version.
    #[arg(long, env = "CHORUS_WORKER_INSTANCES", default_value_t = 1)]
    pub instances: u32,

    /// Default intra-op threads per session; 0 lets ONNX Runtime use every core.
    #[arg(long, env = "CHORUS_WORKER_INTRA_OP_THREADS", default_value_t = 1)]
    pub intra_op_threads: usize,

    /// Requests that may wait per model version before new ones are refused as overloaded.
    #[arg(long, env = "CHORUS_WORKER_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,

    /// Largest RPC frame accepted or sent, in bytes.
    #[arg(long, env = "CHORUS_WORKER_MAX_FRAME_BYTES", default_value_t = DEFAULT_MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,

    /// Seconds to wait for in-flight calls to finish after shutdown is requested.
    #[arg(long, env = "CHORUS_WORKER_DRAIN_TIMEOUT_SECS", default_value_t = 10)]
    pub drain_timeout_secs: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            model_repository: PathBuf::from("models"),
            models: Vec::new(),
            worker_id: None,
            execution_provider: ProviderChoice::Auto,
            device_id: 0,
            require_provider: false,
            instances: 1,
            intra_op_threads: 1,
            queue_capacity: 1024,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            drain_timeout_secs: 10,
        }
    }
}

impl WorkerConfig {
    /// Checks the values clap cannot check by type alone.
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |msg: &str| Err(LoadError::Config(msg.to_string()));
        if self.instances == 0 {
            return bad("--instances must be at least 1");
        }
        // std's bounded channel allocates every slot up front.
        if !(1..=MAX_QUEUE_CAPACITY).contains(&self.queue_capacity) {
            return bad("--queue-capacity must be between 1 and 100000");
        }
        if self.device_id < 0 {
            return bad("--device-id must be 0 or more");
        }
        if self.max_frame_bytes < 1024 {
            return bad("--max-frame-bytes must be at least 1024");
        }
        if self.require_provider && self.execution_provider == ProviderChoice::Auto {
            return bad(
                "--require-provider needs --execution-provider cuda (auto falls back to CPU by design)",
            );
        }
        Ok(())
    }

    /// The configured worker id, or `<hostname>-<pid>`.
    pub fn resolved_worker_id(&self) -> String {
        match &self.worker_id {
            Some(id) if !id.trim().is_empty() => id.trim().to_string(),
            _ => format!("{}-{}", hostname(), std::process::id()),
        }
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
}

/// The machine's host name without a libc call: the kernel's file first, then `$HOSTNAME`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerConfig,
    }

    fn parse(args: &[&str]) -> Result<WorkerConfig, clap::Error> {
        let argv = std::iter::once("chorus-worker").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.worker)
    }

    #[test]
    fn defaults_match_the_flag_defaults() {
        assert_eq!(parse(&[]).unwrap(), WorkerConfig::default());
        WorkerConfig::default().validate().unwrap();
    }

    #[test]
    fn flags_parse_into_typed_fields() {
        let c = parse(&[
            "--models",
            "logreg,mlp",
            "--execution-provider",
            "cuda",
            "--require-provider",
            "--device-id",
            "1",
            "--instances",
            "3",
            "--listen",
            "0.0.0.0:9100",
        ])
        .unwrap();
        assert_eq!(c.models, vec!["logreg", "mlp"]);
        assert_eq!(c.execution_provider, ProviderChoice::Cuda);
        assert!(c.require_provider);
        assert_eq!(c.device_id, 1);
        assert_eq!(c.instances, 3);
        assert_eq!(c.listen.port(), 9100);
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        assert!(parse(&["--execution-provider", "tpu"]).is_err());
        let zero = WorkerConfig {
            instances: 0,
            ..WorkerConfig::default()
        };
        assert!(
            zero.validate()
                .unwrap_err()
                .to_string()
                .contains("--instances")
        );
        let no_queue = WorkerConfig {
            queue_capacity: 0,
            ..WorkerConfig::default()
        };
        assert!(no_queue.validate().is_err());
        let huge_queue = WorkerConfig {
            queue_capacity: usize::MAX,
            ..WorkerConfig::default()
        };
        assert!(
            huge_queue
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--queue-capacity")
        );
        let contradictory = WorkerConfig {
            require_provider: true,
            ..WorkerConfig::default()
        };
        assert!(
            contradictory
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--require-provider")
        );
    }

    #[test]
    fn worker_id_defaults_to_host_and_pid() {
        let id = WorkerConfig::default().resolved_worker_id();
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
        let named = WorkerConfig {
            worker_id: Some("w7".into()),
            ..WorkerConfig::default()
        };
        assert_eq!(named.resolved_worker_id(), "w7");
    }
}
