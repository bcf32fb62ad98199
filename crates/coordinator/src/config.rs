//! The coordinator's one typed configuration: flags and `CHORUS_*` environment variables.

use crate::membership::etcd::EtcdSettings;
use crate::router::RouterSettings;
use chorus_common::transport::MAX_RPC_DEADLINE;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The ensemble spec file read when `--ensembles` is not given.
pub const DEFAULT_ENSEMBLES: &str = "config/ensembles.toml";

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

    /// Address the Open Inference Protocol v2 gRPC service listens on (Triton's convention:
    /// 8001).
    #[arg(
        long = "grpc-addr",
        env = "CHORUS_GRPC_ADDR",
        default_value = "127.0.0.1:8001"
    )]
    pub grpc_addr: SocketAddr,

    /// Address of the admin listener (Triton's metrics port, 8002): `/metrics`,
    /// `/chorus/workers` and health. It takes no API key: keep it where only operators and
    /// scrapers reach it.
    #[arg(
        long = "admin-addr",
        env = "CHORUS_ADMIN_ADDR",
        default_value = "127.0.0.1:8002"
    )]
    pub admin_addr: SocketAddr,

    /// API key file (TOML `[[key]]` tables: `id`, `sha256` of the secret, optional `models`,
    /// `rate_limit`, `burst`; docs/security.md). Without it anyone who reaches the public ports
    /// may call every model.
    #[arg(long = "api-keys", env = "CHORUS_API_KEYS")]
    pub api_keys: Option<PathBuf>,

    #[command(flatten)]
    pub tls: crate::tls::GatewayTlsArgs,

    /// Infer requests this coordinator serves at once (both protocols); more wait in a bounded
    /// priority queue or get 429 / RESOURCE_EXHAUSTED. 0 means no limit.
    #[arg(long, env = "CHORUS_MAX_INFLIGHT", default_value_t = 1024)]
    pub max_inflight: usize,

    /// Requests that may wait for a slot under `--max-inflight` (and under each ensemble's
    /// `max_inflight`); beyond it they are refused at once.
    #[arg(long, env = "CHORUS_MAX_QUEUE", default_value_t = 1024)]
    pub max_queue: usize,

    /// Longest a request waits for a slot, in milliseconds (never more than half of what is left
    /// of its deadline), before it is refused with 429.
    #[arg(long, env = "CHORUS_MAX_QUEUE_WAIT_MS", default_value_t = 50)]
    pub max_queue_wait_ms: u64,

    /// Request bytes held at once, both front doors together: REST bodies being read and
    /// requests being served. Beyond it requests wait (at most `--max-queue-wait-ms`) and are
    /// then refused with 429. Keep it well under the memory limit: a JSON request costs about
    /// three times its size while it is decoded.
    #[arg(long, env = "CHORUS_MAX_INFLIGHT_BODY_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub max_inflight_body_bytes: usize,

    /// Adapt the concurrency limit to observed latency (at most `--max-inflight`): it shrinks
    /// when answers take more than twice the recent best, so the excess is refused fast instead
    /// of queueing in the workers.
    #[arg(long, env = "CHORUS_ADAPTIVE_INFLIGHT")]
    pub adaptive_inflight: bool,

    /// Server readiness (`/v2/health/ready`, gRPC ServerReady) as Triton's
    /// `--strict-readiness`: `true` needs every version of every ensemble able to reach its
    /// quorum; `false` needs one ensemble or model able to answer, so one broken ensemble does
    /// not take the coordinator out of a load balancer (docs/decisions.md). Each ensemble's own
    /// ready endpoint says whether it can answer either way.
    #[arg(
        long,
        env = "CHORUS_STRICT_READINESS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub strict_readiness: bool,

    /// Ensemble specs (TOML, `version = 1`); see docs/configuration.md. With `--etcd` the file is
    /// optional: specs under /chorus/v1/ensembles/ in etcd apply on top of it.
    #[arg(long, env = "CHORUS_ENSEMBLES", default_value = DEFAULT_ENSEMBLES)]
    pub ensembles: PathBuf,

    /// Worker RPC addresses (host:port) making up the static membership; repeat the flag or
    /// separate with commas. `unix:/path` dials a worker's `--local-socket` on this host.
    #[arg(long = "worker", env = "CHORUS_WORKERS", value_delimiter = ',')]
    pub workers: Vec<String>,

    /// etcd endpoints (e.g. `http://etcd-0:2379,http://etcd-1:2379`): membership and ensemble
    /// specs then come from etcd, instead of `--worker`'s static list.
    #[arg(
        long = "etcd",
        env = "CHORUS_ETCD",
        value_delimiter = ',',
        conflicts_with = "workers"
    )]
    pub etcd: Vec<String>,

    /// With `--etcd`: seconds between full re-lists of etcd, on top of the watch (etcd 3.4's watch
    /// can miss events; a re-list repairs the view). Between 1 and 86400.
    #[arg(long, env = "CHORUS_ETCD_RELIST_SECS", default_value_t = 30)]
    pub etcd_relist_secs: u64,

    /// TLS and authentication towards etcd (`--etcd-ca`, `--etcd-cert`, `--etcd-key`,
    /// `--etcd-user`, `--etcd-password-file`; docs/security.md).
    #[command(flatten)]
    pub etcd_connect: chorus_common::etcd_connect::EtcdConnectArgs,

    /// Feedback and online member weights (`--feedback-window`, `--feedback-ttl-secs`,
    /// `--weights-file`; docs/data.md).
    #[command(flatten)]
    pub feedback: crate::feedback::FeedbackArgs,

    /// Largest request accepted, in bytes: an HTTP body (larger ones get 413) or a gRPC message
    /// (RESOURCE_EXHAUSTED).
    #[arg(long, env = "CHORUS_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Longest a REST client may take to send a request's headers, to send the next piece of its
    /// body (408), or to start its next request on an idle keep-alive connection (closed), in
    /// milliseconds: slow or silent clients cannot hold connections open.
    #[arg(long, env = "CHORUS_CLIENT_TIMEOUT_MS", default_value_t = 10_000)]
    pub client_timeout_ms: u64,

    /// Connections served at once on each front door (REST, gRPC); more wait in the listen
    /// backlog.
    #[arg(long, env = "CHORUS_MAX_CONNECTIONS", default_value_t = 8192)]
    pub max_connections: usize,

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

    /// Retries allowed per request on average (the retry budget's refill ratio); a failed member
    /// call is retried once on a different replica while the budget has tokens.
    #[arg(long, env = "CHORUS_RETRY_BUDGET_RATIO", default_value_t = 0.2)]
    pub retry_budget_ratio: f64,

    /// Hedged calls allowed per request on average; 0 turns hedging off. A member call not
    /// answered by its model's rolling p95 is duplicated to another replica.
    #[arg(long, env = "CHORUS_HEDGE_BUDGET_RATIO", default_value_t = 0.15)]
    pub hedge_budget_ratio: f64,

    /// Shortest hedging delay in microseconds, whatever the model's p95.
    #[arg(long, env = "CHORUS_HEDGE_MIN_DELAY_US", default_value_t = 500)]
    pub hedge_min_delay_us: u64,

    /// Failed pings in a row (an error, or no pong within the ping interval) after which a
    /// worker is taken out of rotation until it passes its probation.
    #[arg(long, env = "CHORUS_EJECT_AFTER_FAILURES", default_value_t = 3)]
    pub eject_after_failures: u32,

    /// Milliseconds a worker may answer nothing at all (no reply, no error, no pong) after it
    /// was asked something before it is taken out of rotation, at any load.
    #[arg(long, env = "CHORUS_EJECT_AFTER_SILENCE_MS", default_value_t = 1000)]
    pub eject_after_silence_ms: u64,

    /// Mutual TLS on the links to workers (`--rpc-tls-cert`, `--rpc-tls-key`, `--rpc-tls-ca`).
    #[command(flatten)]
    pub rpc_tls: crate::rpc_tls::RpcTlsArgs,

    /// The prediction log (`--prediction-log DIR` and its rotation and queue flags;
    /// docs/data.md).
    #[command(flatten)]
    pub prediction_log: crate::prediction_log::PredictionLogArgs,

    /// Distributed traces (`--otlp-endpoint URL`; docs/operations.md).
    #[command(flatten)]
    pub otlp: chorus_common::telemetry::OtlpArgs,
}

impl CoordinatorConfig {
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms.max(10))
    }

    pub fn silence_limit(&self) -> Duration {
        Duration::from_millis(self.eject_after_silence_ms.max(10))
    }

    /// What the REST front door allows one client (timeouts of at least 1 ms).
    pub fn client_limits(&self) -> crate::http::ClientLimits {
        crate::http::ClientLimits {
            timeout: Duration::from_millis(self.client_timeout_ms.max(1)),
            max_connections: self.max_connections.max(1),
        }
    }

    pub fn admission(&self) -> crate::admission::AdmissionSettings {
        crate::admission::AdmissionSettings {
            max_inflight: self.max_inflight,
            max_queue: self.max_queue,
            max_queue_wait: Duration::from_millis(self.max_queue_wait_ms.min(3_600_000)),
            adaptive: self
                .adaptive_inflight
                .then(crate::admission::AdaptiveSettings::default),
            max_inflight_bytes: self.max_inflight_body_bytes,
        }
    }

    /// The key file's keys, or open access without `--api-keys`.
    pub fn access(&self) -> anyhow::Result<crate::access::Access> {
        Ok(match &self.api_keys {
            Some(path) => crate::access::Access::load(path)?,
            None => crate::access::Access::open(),
        })
    }

    /// At least 1 ms, at most the longest deadline an RPC may carry.
    pub fn model_deadline(&self) -> Duration {
        Duration::from_millis(self.model_deadline_ms.max(1)).min(MAX_RPC_DEADLINE)
    }

    /// The etcd endpoints, or `None` for the static worker list. Giving both is an error (clap
    /// already refuses it on the command line; this catches configs built in code).
    pub fn etcd_endpoints(&self) -> anyhow::Result<Option<Vec<String>>> {
        let endpoints: Vec<String> = self
            .etcd
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Ok(None);
        }
        anyhow::ensure!(
            self.workers.is_empty(),
            "--etcd (CHORUS_ETCD) and --worker (CHORUS_WORKERS) cannot both be given: membership \
             comes from etcd or from the static worker list; drop one"
        );
        Ok(Some(endpoints))
    }

    pub fn etcd_settings(&self) -> EtcdSettings {
        EtcdSettings {
            relist_interval: Duration::from_secs(self.etcd_relist_secs.clamp(1, 86_400)),
            ..EtcdSettings::default()
        }
    }

    pub fn router_settings(&self) -> RouterSettings {
        RouterSettings {
            retry_ratio: self.retry_budget_ratio,
            hedge_ratio: self.hedge_budget_ratio,
            // Room for a burst of stuck calls (a frozen worker) on top of the steady-state tail
            // hedges that a p95 trigger sends by design (about 5 % of calls).
            budget_burst: 100.0,
            hedge_min_delay: Duration::from_micros(self.hedge_min_delay_us),
            hedge_min_samples: 20,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        config: CoordinatorConfig,
    }

    fn parse(args: &[&str]) -> Result<CoordinatorConfig, clap::Error> {
        Cli::try_parse_from(std::iter::once("coordinator").chain(args.iter().copied()))
            .map(|cli| cli.config)
    }

    #[test]
    fn etcd_takes_several_endpoints_and_excludes_the_static_list() {
        let config = parse(&[
            "--etcd",
            "http://a:2379, b:2379,",
            "--etcd-relist-secs",
            "5",
        ])
        .unwrap();
        assert_eq!(
            config.etcd_endpoints().unwrap(),
            Some(vec!["http://a:2379".to_string(), "b:2379".to_string()])
        );
        assert_eq!(
            config.etcd_settings().relist_interval,
            Duration::from_secs(5)
        );
        let error = parse(&["--etcd", "a:2379", "--worker", "w:1"]).unwrap_err();
        assert!(error.to_string().contains("--worker"), "{error}");

        let mut both = parse(&["--worker", "w:1"]).unwrap();
        assert_eq!(both.etcd_endpoints().unwrap(), None);
        both.etcd = vec!["a:2379".into()];
        let error = both.etcd_endpoints().unwrap_err().to_string();
        assert!(error.contains("cannot both be given"), "{error}");
    }
}
