//! The coordinator's one typed configuration: flags and `CHORUS_*` environment variables.

use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything a coordinator needs to serve; parsed once by the binary and validated at start-up.
#[derive(Debug, Clone, Args)]
pub struct CoordinatorConfig {
    /// Address the Open Inference Protocol v2 HTTP gateway listens on (Triton's convention: 8000).
    #[arg(
        long = "http-addr",
        env = "CHORUS_HTTP_ADDR",
        default_value = "127.0.0.1:8000"
    )]
    pub http_addr: SocketAddr,

    /// Ensemble specs (TOML, `version = 1`); see docs/configuration.md.
    #[arg(
        long,
        env = "CHORUS_ENSEMBLES",
        default_value = "config/ensembles.toml"
    )]
    pub ensembles: PathBuf,

    /// Worker RPC addresses (host:port) making up the static membership; repeat the flag or
    /// separate with commas.
    #[arg(long = "worker", env = "CHORUS_WORKERS", value_delimiter = ',')]
    pub workers: Vec<String>,

    /// Largest request body accepted, in bytes; larger bodies get 413.
    #[arg(long, env = "CHORUS_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Deadline for single-model requests, in milliseconds (ensembles take theirs from the spec).
    /// A client may only lower it, with the OIP `timeout` parameter (microseconds).
    #[arg(long, env = "CHORUS_MODEL_DEADLINE_MS", default_value_t = 2000)]
    pub model_deadline_ms: u64,

    /// Largest RPC frame exchanged with workers, in bytes.
    #[arg(long, env = "CHORUS_MAX_FRAME_BYTES", default_value_t = chorus_common::transport::DEFAULT_MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,

    /// How often each worker is pinged, in milliseconds.
    #[arg(long, env = "CHORUS_PING_INTERVAL_MS", default_value_t = 1000)]
    pub ping_interval_ms: u64,

    /// Consecutive failed pings or calls after which a worker is taken out of rotation until a
    /// probe succeeds.
    #[arg(long, env = "CHORUS_EJECT_AFTER_FAILURES", default_value_t = 3)]
    pub eject_after_failures: u32,
}

impl CoordinatorConfig {
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms.max(10))
    }

    pub fn model_deadline(&self) -> Duration {
        Duration::from_millis(self.model_deadline_ms.max(1))
    }
}
