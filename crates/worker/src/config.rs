//! The worker's one typed configuration: command-line flags with `CHORUS_WORKER_*` fallbacks.

use crate::batch::{MAX_BATCH_SIZE, MAX_QUEUE_DELAY_US};
use crate::error::LoadError;
use crate::pool::{DEFAULT_INLINE_MAX_RUN_US, MAX_INLINE_MAX_RUN_US};
use crate::registration::RegistrationConfig;
use crate::rpc_tls::RpcTlsArgs;
use chorus_common::etcd_connect::EtcdConnectArgs;
use chorus_common::membership::is_valid_worker_id;
use chorus_common::transport::DEFAULT_MAX_FRAME_BYTES;
use clap::{Args, ValueEnum};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Largest accepted `--queue-capacity`; the queue's slots are allocated when a model loads.
pub const MAX_QUEUE_CAPACITY: usize = 100_000;

/// Default `--lease-ttl-secs`.
pub const DEFAULT_LEASE_TTL_SECS: u64 = 10;
/// etcd grants no lease shorter than this (a request for less is granted this).
pub const MIN_LEASE_TTL_SECS: u64 = 2;
/// Longest accepted `--lease-ttl-secs` (a day; longer leases make a dead worker linger).
pub const MAX_LEASE_TTL_SECS: u64 = 86_400;
/// Default `--etcd-give-up-ttls`.
pub const DEFAULT_ETCD_GIVE_UP_TTLS: u32 = 3;

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

    /// etcd endpoints to register in, comma-separated (e.g. `http://etcd-0:2379,http://etcd-1:2379`);
    /// empty means no etcd: coordinators then list this worker statically.
    #[arg(long = "etcd", env = "CHORUS_WORKER_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,

    /// TTL of the worker's etcd lease in seconds (at least 2); it is renewed every TTL/3, and
    /// coordinators forget a worker about one TTL after it stops renewing.
    #[arg(long, env = "CHORUS_WORKER_LEASE_TTL_SECS", default_value_t = DEFAULT_LEASE_TTL_SECS)]
    pub lease_ttl_secs: u64,

    /// Address (`host:port`) that coordinators dial, registered in etcd and reported in metadata;
    /// defaults to the listener's address, or `<hostname>:<port>` when it listens on 0.0.0.0 or [::].
    #[arg(long, env = "CHORUS_WORKER_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,

    /// Lease TTLs to keep trying to register in etcd, at start-up or after etcd said the lease is
    /// gone, before the worker exits with an error for its supervisor to restart it. An etcd that
    /// cannot be reached while the worker is registered never counts: it keeps serving and retrying.
    #[arg(long, env = "CHORUS_WORKER_ETCD_GIVE_UP_TTLS", default_value_t = DEFAULT_ETCD_GIVE_UP_TTLS)]
    pub etcd_give_up_ttls: u32,

    /// Default largest dynamic batch, in rows, for models whose config.toml does not say:
    /// concurrent requests for a model are joined along dimension 0 into one ONNX Runtime run
    /// of up to this many rows. 0 or 1 turns batching off.
    #[arg(long, env = "CHORUS_WORKER_MAX_BATCH_SIZE", default_value_t = 0)]
    pub max_batch_size: u32,

    /// Default time, in microseconds, that the first request of a batch may wait for others to
    /// join it (0: take only what is already queued when an instance is free). At most 1000000.
    #[arg(long, env = "CHORUS_WORKER_MAX_QUEUE_DELAY_US", default_value_t = 0)]
    pub max_queue_delay_us: u64,

    /// Default longest recent run time, in microseconds, at which a model runs on the thread
    /// that received the call instead of being handed to an instance thread (the hand-off costs
    /// more than a small model's run). Only for models that do not batch, only when nothing
    /// waits in their queue. 0: always hand off. At most 10000.
    #[arg(long, env = "CHORUS_WORKER_INLINE_MAX_RUN_US", default_value_t = DEFAULT_INLINE_MAX_RUN_US)]
    pub inline_max_run_us: u64,

    /// Address of the HTTP listener serving Prometheus `/metrics` and `/health` (e.g.
    /// `0.0.0.0:8002`, Triton's metrics port; port 0 for any port). None by default.
    #[arg(long, env = "CHORUS_WORKER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Also serve the RPCs on a Unix socket at this path, for coordinators on the same host
    /// (they dial it instead of TCP: about half the kernel time per call). Plaintext: the
    /// directory's permissions decide who may connect; not with `--rpc-tls-*`. A stale socket
    /// left by a killed worker is replaced; one another process serves is refused. `chorus up`
    /// gives each worker one in a private directory.
    #[arg(long, env = "CHORUS_WORKER_LOCAL_SOCKET", value_name = "PATH")]
    pub local_socket: Option<PathBuf>,

    /// Mutual TLS on the RPC listener (`--rpc-tls-cert`, `--rpc-tls-key`, `--rpc-tls-ca`).
    #[command(flatten)]
    pub rpc_tls: RpcTlsArgs,

    /// TLS and authentication towards etcd (`--etcd-ca`, `--etcd-cert`, `--etcd-key`,
    /// `--etcd-user`, `--etcd-password-file`). Their environment variables are the
    /// coordinator's, `CHORUS_ETCD_*`, not `CHORUS_WORKER_ETCD_*`: one struct serves both.
    #[command(flatten)]
    pub etcd_connect: EtcdConnectArgs,

    /// Distributed traces (`--otlp-endpoint URL`; docs/operations.md).
    #[command(flatten)]
    pub otlp: chorus_common::telemetry::OtlpArgs,
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
            etcd: Vec::new(),
            lease_ttl_secs: DEFAULT_LEASE_TTL_SECS,
            advertise_addr: None,
            etcd_give_up_ttls: DEFAULT_ETCD_GIVE_UP_TTLS,
            max_batch_size: 0,
            max_queue_delay_us: 0,
            inline_max_run_us: DEFAULT_INLINE_MAX_RUN_US,
            metrics_addr: None,
            local_socket: None,
            rpc_tls: RpcTlsArgs::default(),
            etcd_connect: EtcdConnectArgs::default(),
            otlp: Default::default(),
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
        if !(MIN_LEASE_TTL_SECS..=MAX_LEASE_TTL_SECS).contains(&self.lease_ttl_secs) {
            return bad("--lease-ttl-secs must be between 2 (etcd's minimum) and 86400");
        }
        if self.max_batch_size > MAX_BATCH_SIZE {
            return bad("--max-batch-size must be at most 65536 (0 or 1 turns batching off)");
        }
        if self.max_queue_delay_us > MAX_QUEUE_DELAY_US {
            return bad("--max-queue-delay-us must be at most 1000000 (one second)");
        }
        if self.inline_max_run_us > MAX_INLINE_MAX_RUN_US {
            return bad("--inline-max-run-us must be at most 10000 (0 turns inline runs off)");
        }
        if !(1..=1000).contains(&self.etcd_give_up_ttls) {
            return bad("--etcd-give-up-ttls must be between 1 and 1000");
        }
        if let Some(addr) = &self.advertise_addr {
            let port = addr
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p != 0) {
                return bad(
                    "--advertise-addr must be host:port with a non-zero port, e.g. worker-3.example:9000",
                );
            }
        }
        self.rpc_tls.files()?;
        if self.local_socket.is_some() && self.rpc_tls.files()?.is_some() {
            return bad(
                "--local-socket serves plaintext and cannot be combined with --rpc-tls-*: drop one of them",
            );
        }
        if let Some(registration) = self.registration() {
            // Reads the CA, certificate, key and password now: a bad one stops the worker
            // before it loads models.
            self.etcd_connect
                .connect_options(&registration.endpoints)
                .map_err(|e| LoadError::Config(e.to_string()))?;
        }
        let id = self.resolved_worker_id();
        if self.registration().is_some() && !is_valid_worker_id(&id) {
            return Err(LoadError::Config(format!(
                "worker id '{id}' is not usable: give --worker-id 1 to 128 printable ASCII characters without spaces or '/'"
            )));
        }
        Ok(())
    }

    /// The etcd registration settings, or `None` when no `--etcd` endpoint is configured.
    pub fn registration(&self) -> Option<RegistrationConfig> {
        // Blank entries (e.g. CHORUS_WORKER_ETCD="") are ignored: empty means no etcd.
        let endpoints: Vec<String> = self
            .etcd
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return None;
        }
        Some(RegistrationConfig {
            endpoints,
            lease_ttl: Duration::from_secs(self.lease_ttl_secs),
            give_up_ttls: self.etcd_give_up_ttls,
            connect: self.etcd_connect.clone(),
        })
    }

    /// The address other processes should dial, given the listener's local address:
    /// `--advertise-addr`, else the listener's address unless it is unspecified (0.0.0.0 or
    /// [::]), in which case `<hostname>:<port>`.
    pub fn advertised_addr(&self, local: SocketAddr) -> String {
        advertised_addr(self.advertise_addr.as_deref(), local)
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

/// See [`WorkerConfig::advertised_addr`].
pub(crate) fn advertised_addr(configured: Option<&str>, local: SocketAddr) -> String {
    match configured.map(str::trim).filter(|a| !a.is_empty()) {
        Some(addr) => addr.to_string(),
        None if local.ip().is_unspecified() => format!("{}:{}", hostname(), local.port()),
        None => local.to_string(),
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
    fn batching_and_metrics_flags_parse() {
        let c = parse(&[
            "--max-batch-size=32",
            "--max-queue-delay-us",
            "200",
            "--metrics-addr",
            "127.0.0.1:8002",
        ])
        .unwrap();
        assert_eq!(c.max_batch_size, 32);
        assert_eq!(c.max_queue_delay_us, 200);
        assert_eq!(
            c.metrics_addr,
            Some(SocketAddr::from(([127, 0, 0, 1], 8002)))
        );
        c.validate().unwrap();
        for (bad, flag) in [
            (
                WorkerConfig {
                    max_batch_size: 1 << 20,
                    ..WorkerConfig::default()
                },
                "--max-batch-size",
            ),
            (
                WorkerConfig {
                    max_queue_delay_us: 5_000_000,
                    ..WorkerConfig::default()
                },
                "--max-queue-delay-us",
            ),
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
        }
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
    fn etcd_flags_parse_and_make_a_registration() {
        assert_eq!(parse(&[]).unwrap().registration(), None);
        let c = parse(&[
            "--etcd",
            "http://etcd-0:2379,etcd-1:2379",
            "--lease-ttl-secs",
            "2",
            "--etcd-give-up-ttls",
            "5",
            "--advertise-addr",
            "worker-3.example:9000",
        ])
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.registration(),
            Some(RegistrationConfig {
                endpoints: vec!["http://etcd-0:2379".into(), "etcd-1:2379".into()],
                lease_ttl: Duration::from_secs(2),
                give_up_ttls: 5,
                connect: EtcdConnectArgs::default(),
            })
        );
        let local = SocketAddr::from(([127, 0, 0, 1], 4000));
        assert_eq!(c.advertised_addr(local), "worker-3.example:9000");
    }

    #[test]
    fn etcd_tls_and_auth_flags_parse_and_are_checked_against_the_endpoints() {
        let c = parse(&[
            "--etcd=http://127.0.0.1:2379",
            "--etcd-ca=/etc/chorus/etcd-ca.pem",
            "--etcd-user=chorus-worker",
            "--etcd-password-file=/run/secrets/etcd",
        ])
        .unwrap();
        assert_eq!(c.etcd_connect.etcd_user.as_deref(), Some("chorus-worker"));
        assert_eq!(c.registration().unwrap().connect, c.etcd_connect);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("write it as https://127.0.0.1:2379"), "{e}");
        let https = parse(&[
            "--etcd=https://127.0.0.1:2379",
            "--etcd-ca=/nonexistent/etcd-ca.pem",
        ])
        .unwrap();
        let e = https.validate().unwrap_err().to_string();
        assert!(
            e.contains("cannot read") && e.contains("etcd-ca.pem"),
            "{e}"
        );
        // Without --etcd they are not used, so not checked.
        let unused = WorkerConfig {
            etcd: Vec::new(),
            ..https
        };
        unused.validate().unwrap();
    }

    #[test]
    fn blank_etcd_endpoints_mean_no_etcd() {
        let blank = WorkerConfig {
            etcd: vec!["".into(), " ".into()],
            ..WorkerConfig::default()
        };
        blank.validate().unwrap();
        assert_eq!(blank.registration(), None);
        let some = WorkerConfig {
            etcd: vec![" a:1 ".into(), "".into(), "b:2".into()],
            ..WorkerConfig::default()
        };
        assert_eq!(some.registration().unwrap().endpoints, ["a:1", "b:2"]);
    }

    #[test]
    fn bad_etcd_settings_name_their_flag() {
        let check = |c: WorkerConfig, flag: &str| {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
        };
        let etcd = || WorkerConfig {
            etcd: vec!["http://127.0.0.1:2379".into()],
            ..WorkerConfig::default()
        };
        check(
            WorkerConfig {
                lease_ttl_secs: 1,
                ..etcd()
            },
            "--lease-ttl-secs",
        );
        check(
            WorkerConfig {
                etcd_give_up_ttls: 0,
                ..etcd()
            },
            "--etcd-give-up-ttls",
        );
        for bad in ["worker-3", ":9000", "host:0", "host:port"] {
            check(
                WorkerConfig {
                    advertise_addr: Some(bad.into()),
                    ..etcd()
                },
                "--advertise-addr",
            );
        }
        check(
            WorkerConfig {
                worker_id: Some("a/b".into()),
                ..etcd()
            },
            "--worker-id",
        );
        // Without etcd the id is only a label, as before.
        WorkerConfig {
            worker_id: Some("a/b".into()),
            ..WorkerConfig::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn the_advertised_address_replaces_an_unspecified_host_with_the_hostname() {
        let c = WorkerConfig::default();
        let loopback = SocketAddr::from(([127, 0, 0, 1], 4000));
        assert_eq!(c.advertised_addr(loopback), "127.0.0.1:4000");
        let any = SocketAddr::from(([0, 0, 0, 0], 4000));
        assert_eq!(c.advertised_addr(any), format!("{}:4000", hostname()));
        let any6: SocketAddr = "[::]:4001".parse().unwrap();
        assert_eq!(c.advertised_addr(any6), format!("{}:4001", hostname()));
        let v6: SocketAddr = "[::1]:4001".parse().unwrap();
        assert_eq!(c.advertised_addr(v6), "[::1]:4001");
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
