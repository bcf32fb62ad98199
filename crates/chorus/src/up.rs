//! `chorus up`: a whole local cluster (workers, then a coordinator) as child processes, with a
//! real request answered once it is ready, kept running by [`crate::supervisor`] (a child that
//! exits is restarted) and stopped cleanly on Ctrl-C or SIGTERM.

use crate::child::{self, ChildSpec, GlobalFlags, Role};
use crate::cluster_config::ClusterConfig;
use crate::{placement, signals, supervisor};
use anyhow::{Context, bail};
use clap::Args;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub(crate) use crate::child::{CoordinatorAddrs, Process};

/// Flags of `chorus up`; each overrides the cluster file.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Local cluster description (TOML).
    #[arg(
        long,
        env = "CHORUS_CLUSTER_CONFIG",
        default_value = "config/cluster.toml"
    )]
    pub config: PathBuf,

    /// Address of the coordinator's HTTP gateway (overrides `http_addr`).
    #[arg(long, env = "CHORUS_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,

    /// Address of the coordinator's gRPC service (overrides `grpc_addr`).
    #[arg(long, env = "CHORUS_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,

    /// Address of the coordinator's admin listener, `/metrics` and `/chorus/workers`
    /// (overrides `admin_addr`).
    #[arg(long, env = "CHORUS_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,

    /// API key file for the coordinator (docs/security.md). `chorus up` cannot know a secret,
    /// so the sample request is then skipped.
    #[arg(long, env = "CHORUS_API_KEYS", value_name = "TOML")]
    pub api_keys: Option<PathBuf>,

    /// TLS on the coordinator's public ports, passed through (the sample request is then
    /// skipped: it has no CA to trust).
    #[command(flatten)]
    pub tls: chorus_coordinator::tls::GatewayTlsArgs,

    /// The coordinator's prediction log (`--prediction-log DIR` and its rotation and queue
    /// flags), passed through.
    #[command(flatten)]
    pub prediction_log: chorus_coordinator::prediction_log::PredictionLogArgs,

    /// Distributed traces, passed to every worker and to the coordinator.
    #[command(flatten)]
    pub otlp: chorus_common::telemetry::OtlpArgs,

    /// Do not send the sample request once the cluster is ready.
    #[arg(long)]
    pub no_sample: bool,

    /// Link the coordinator to the workers over TCP only. By default each worker also serves a
    /// Unix socket in a private temporary directory and the coordinator dials that (less
    /// kernel time per call); with `--rpc-tls-*` the links are TCP anyway.
    #[arg(long)]
    pub no_local_sockets: bool,

    /// Number of worker processes (overrides `workers`).
    #[arg(long)]
    pub workers: Option<usize>,

    /// Workers that serve each model (overrides `replication`).
    #[arg(long)]
    pub replication: Option<usize>,

    /// etcd endpoints (comma-separated): workers register there and the coordinator follows
    /// membership through it instead of a static worker list.
    #[arg(long, env = "CHORUS_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,

    /// TLS and authentication towards etcd (`--etcd-ca`, `--etcd-cert`, `--etcd-key`,
    /// `--etcd-user`, `--etcd-password-file`), given to every worker and to the coordinator.
    #[command(flatten)]
    pub etcd_connect: chorus_common::etcd_connect::EtcdConnectArgs,

    /// PEM certificate for mutual TLS on the worker links, given to every worker and to the
    /// coordinator (one certificate for the whole local cluster is fine): its subject
    /// alternative names must include `127.0.0.1`, the address workers listen on here, and it
    /// must allow both server and client use. With `--rpc-tls-key` and `--rpc-tls-ca`.
    #[arg(long, value_name = "PEM")]
    pub rpc_tls_cert: Option<PathBuf>,

    /// PEM private key of `--rpc-tls-cert`.
    #[arg(long, value_name = "PEM")]
    pub rpc_tls_key: Option<PathBuf>,

    /// PEM CA certificate that every process's certificate chains to.
    #[arg(long, value_name = "PEM")]
    pub rpc_tls_ca: Option<PathBuf>,

    /// Ensemble spec file the coordinator serves (overrides `ensembles`).
    #[arg(long, value_name = "TOML")]
    pub ensembles: Option<PathBuf>,

    /// Seconds to wait for each process to become ready before giving up.
    #[arg(long, default_value_t = 120)]
    pub ready_timeout_s: u64,

    /// A request body (OIP v2 JSON) sent once the cluster is ready, to show a real answer.
    #[arg(long, default_value = "fixtures/digits/sample-request.json")]
    pub sample_request: PathBuf,

    /// The model or ensemble the sample request goes to.
    #[arg(long, default_value = "digits_soft")]
    pub sample_model: String,
}

pub async fn run(args: UpArgs, global: GlobalFlags) -> anyhow::Result<()> {
    // Installed first: a Ctrl-C at any moment from here on stops the cluster cleanly.
    let shutdown = signals::Shutdown::install().context("cannot watch SIGINT/SIGTERM")?;
    let mut cluster = ClusterConfig::load(&args.config)?;
    cluster.http_addr = args.http_addr.unwrap_or(cluster.http_addr);
    cluster.grpc_addr = args.grpc_addr.unwrap_or(cluster.grpc_addr);
    cluster.admin_addr = args.admin_addr.unwrap_or(cluster.admin_addr);
    cluster.workers = args.workers.unwrap_or(cluster.workers);
    cluster.replication = args.replication.unwrap_or(cluster.replication);
    cluster.ensembles = args.ensembles.clone().unwrap_or(cluster.ensembles);
    cluster.validate()?;
    let ready_timeout = Duration::from_secs(args.ready_timeout_s);
    check_before_start(&cluster).await?;

    let models = chorus_worker::repository::model_names(&cluster.model_repository)?;
    let plan = placement::place(&models, cluster.workers, cluster.replication);
    let exe = std::env::current_exe().context("cannot find the chorus executable")?;
    let mut processes: Vec<Process> = Vec::new();

    // Workers and the coordinator take the same --rpc-tls-* flags.
    let rpc_tls = rpc_tls_args(&args)?;
    let etcd_connect = etcd_connect_args(&args)?;
    // Any free port at the first start; a restarted worker gets the same one back.
    let mut worker_args = vec!["--metrics-addr=127.0.0.1:0".to_string()];
    worker_args.extend(rpc_tls.iter().cloned());
    worker_args.extend(etcd_connect.iter().cloned());
    worker_args.extend(args.otlp.to_flags());
    let mut coordinator_args = rpc_tls.clone();
    coordinator_args.extend(args.otlp.to_flags());
    coordinator_args.extend(gateway_args(&args));
    coordinator_args.extend(etcd_connect);
    let sockets = local_socket_dir(args.no_local_sockets || !rpc_tls.is_empty())?;
    let launch = Launch {
        exe: &exe,
        cluster: &cluster,
        plan: &plan,
        etcd: &args.etcd,
        global,
        ready_timeout,
        local_sockets: sockets.as_ref().map(|dir| dir.path()),
        worker_args: &worker_args,
        coordinator_args: &coordinator_args,
    };
    let started = start_cluster(&launch, &mut processes).await;
    let outcome = match started {
        Ok(addrs) => {
            print_banner(addrs, &args);
            match sample_skipped(&args) {
                Some(why) => println!("sample request skipped: {why}"),
                None => {
                    if let Err(e) = send_sample(addrs.http, &args).await {
                        eprintln!("sample request failed: {e:#}");
                    }
                }
            }
            // The supervisor owns the processes from here on and stops them itself.
            let processes = std::mem::take(&mut processes);
            supervisor::supervise(processes, shutdown, worker_restart_floor(&args.etcd))
                .await
                .map_err(anyhow::Error::from)
        }
        Err(e) => Err(e),
    };
    stop_all(&mut processes).await;
    outcome
}

/// A private directory (mode 0700, removed when dropped) for the workers' Unix sockets, unless
/// `tcp_only` (`--no-local-sockets`, or mutual TLS on the links: the sockets are plaintext).
pub(crate) fn local_socket_dir(tcp_only: bool) -> anyhow::Result<Option<tempfile::TempDir>> {
    if tcp_only {
        return Ok(None);
    }
    let dir = tempfile::Builder::new()
        .prefix("chorus-up-")
        .tempdir()
        .context("cannot create a directory for the workers' local sockets")?;
    Ok(Some(dir))
}

/// `chorus validate` over the cluster's repository and spec file, before any process is
/// spawned: a spec that names a missing model or a model that cannot load is refused with every
/// problem listed, rather than found by a worker crashing or an ensemble never getting ready.
async fn check_before_start(cluster: &ClusterConfig) -> anyhow::Result<()> {
    let (repository, ensembles) = (cluster.model_repository.clone(), cluster.ensembles.clone());
    // Loads every model version once: blocking work.
    let report =
        tokio::task::spawn_blocking(move || crate::validate::check(&repository, &ensembles))
            .await
            .context("the start-up check panicked")?;
    for finding in &report.findings {
        eprintln!("{finding}");
    }
    if report.errors() > 0 {
        bail!(
            "not starting: {} problem(s) in {} and {} (listed above; `chorus validate` checks again without starting)",
            report.errors(),
            cluster.model_repository.display(),
            cluster.ensembles.display()
        );
    }
    Ok(())
}

/// How long a restarted worker waits at least: with etcd, until the killed instance's lease has
/// expired (its TTL, from `CHORUS_WORKER_LEASE_TTL_SECS` as the children inherit it, plus a
/// second), since etcd refuses a second record under the same id until then.
fn worker_restart_floor(etcd: &[String]) -> Duration {
    if etcd.is_empty() {
        return Duration::ZERO;
    }
    let ttl = std::env::var("CHORUS_WORKER_LEASE_TTL_SECS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(chorus_worker::config::DEFAULT_LEASE_TTL_SECS);
    Duration::from_secs(ttl + 1)
}

/// The `--rpc-tls-*` flags for every child, or none; all three or none, checked here so that a
/// missing one is reported once rather than by every child.
fn rpc_tls_args(args: &UpArgs) -> anyhow::Result<Vec<String>> {
    let files = chorus_common::rpc_tls::RpcTlsFiles::from_flags(
        args.rpc_tls_cert.as_deref(),
        args.rpc_tls_key.as_deref(),
        args.rpc_tls_ca.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    Ok(files.map_or_else(Vec::new, |files| {
        vec![
            format!("--rpc-tls-cert={}", files.cert.display()),
            format!("--rpc-tls-key={}", files.key.display()),
            format!("--rpc-tls-ca={}", files.ca.display()),
        ]
    }))
}

/// The etcd TLS and authentication flags for every child, checked here (files, password,
/// endpoint schemes) so that a mistake is reported once rather than by every child. The
/// password itself stays in its file or in the environment the children inherit.
fn etcd_connect_args(args: &UpArgs) -> anyhow::Result<Vec<String>> {
    if args.etcd.is_empty() {
        return Ok(Vec::new());
    }
    args.etcd_connect.connect_options(&args.etcd)?;
    Ok(args.etcd_connect.to_flags())
}

/// The coordinator's gateway flags (keys, TLS), passed through as given.
fn gateway_args(args: &UpArgs) -> Vec<String> {
    let keys = args
        .api_keys
        .as_ref()
        .map(|p| format!("--api-keys={}", p.display()));
    keys.into_iter()
        .chain(args.tls.to_flags())
        .chain(args.prediction_log.to_flags())
        .collect()
}

/// Why the sample request is not sent, if it is not.
fn sample_skipped(args: &UpArgs) -> Option<&'static str> {
    if args.no_sample {
        Some("--no-sample")
    } else if args.api_keys.is_some() {
        Some("the coordinator requires API keys (--api-keys), and chorus up knows no secret")
    } else if args.tls.tls_cert.is_some() {
        Some("the coordinator serves TLS (--tls-cert); send it with your client and CA")
    } else {
        None
    }
}

/// Everything needed to start the cluster's processes.
pub(crate) struct Launch<'a> {
    pub(crate) exe: &'a Path,
    pub(crate) cluster: &'a ClusterConfig,
    /// Models per worker.
    pub(crate) plan: &'a [Vec<String>],
    /// etcd endpoints; empty for static membership.
    pub(crate) etcd: &'a [String],
    pub(crate) global: GlobalFlags,
    pub(crate) ready_timeout: Duration,
    /// Where each worker gets a `--local-socket` (`worker-N.sock`), which a static worker list
    /// then names; `None`: TCP only.
    pub(crate) local_sockets: Option<&'a Path>,
    /// Extra flags for every worker and for the coordinator (`chorus bench` passes its own).
    pub(crate) worker_args: &'a [String],
    pub(crate) coordinator_args: &'a [String],
}

/// Starts the workers, then the coordinator; returns the coordinator's addresses once it
/// reports ready. Every process started is pushed onto `processes`, also on failure, with the
/// ports it got pinned in its [`ChildSpec`] so that a restart listens where it did.
pub(crate) async fn start_cluster(
    launch: &Launch<'_>,
    processes: &mut Vec<Process>,
) -> anyhow::Result<CoordinatorAddrs> {
    let Launch {
        exe,
        cluster,
        plan,
        etcd,
        global,
        ready_timeout,
        local_sockets,
        worker_args,
        coordinator_args,
    } = *launch;
    let workers = plan.iter().filter(|models| !models.is_empty()).count();
    let global = global.sharing_cores(workers + 1);
    let mut pending = Vec::new();
    for (index, models) in plan.iter().enumerate().filter(|(_, m)| !m.is_empty()) {
        let name = format!("worker-{index}");
        let mut args: Vec<OsString> = vec![
            "worker".into(),
            "--listen=127.0.0.1:0".into(),
            format!("--worker-id={name}").into(),
            "--model-repository".into(),
            cluster.model_repository.clone().into(),
            format!("--models={}", models.join(",")).into(),
        ];
        if let Some(dir) = local_sockets {
            let mut flag = OsString::from("--local-socket=");
            flag.push(dir.join(format!("{name}.sock")));
            args.push(flag);
        }
        args.extend(worker_args.iter().map(OsString::from));
        if !etcd.is_empty() {
            args.push(format!("--etcd={}", etcd.join(",")).into());
        }
        let role = Role::Worker {
            models: models.clone(),
        };
        let spec = ChildSpec::new(name.clone(), role, exe.to_path_buf(), global, args);
        let (child, stdout) = spec.spawn()?;
        processes.push(Process { name, child, spec });
        pending.push((processes.len() - 1, stdout));
    }
    // Workers load in parallel; wait for each one's ready line.
    let mut worker_addrs = Vec::new();
    for (index, stdout) in pending {
        let process = &mut processes[index];
        let prefix = process.spec.ready_prefix();
        let (line, rest) =
            child::wait_for_line(stdout, prefix, &process.name, ready_timeout).await?;
        child::drain(rest);
        let addrs = child::worker_addrs(&line)
            .with_context(|| format!("{} printed {line:?}", process.name))?;
        process.spec.pin_worker(&addrs);
        let pid = process.child.id().unwrap_or_default();
        println!("{}", process.spec.describe(pid, &line)?);
        worker_addrs.push(addrs.dial());
    }

    let mut args: Vec<OsString> = vec![
        "coordinator".into(),
        format!("--http-addr={}", cluster.http_addr).into(),
        format!("--grpc-addr={}", cluster.grpc_addr).into(),
        format!("--admin-addr={}", cluster.admin_addr).into(),
        "--ensembles".into(),
        cluster.ensembles.clone().into(),
    ];
    args.extend(coordinator_args.iter().map(OsString::from));
    if etcd.is_empty() {
        args.push(format!("--worker={}", worker_addrs.join(",")).into());
    } else {
        args.push(format!("--etcd={}", etcd.join(",")).into());
    }
    let name = "coordinator".to_string();
    let spec = ChildSpec::new(
        name.clone(),
        Role::Coordinator,
        exe.to_path_buf(),
        global,
        args,
    );
    let (child, stdout) = spec.spawn()?;
    processes.push(Process { name, child, spec });
    let process = processes.last_mut().expect("just pushed");
    let prefix = process.spec.ready_prefix();
    let (line, rest) = child::wait_for_line(stdout, prefix, "coordinator", ready_timeout).await?;
    child::drain(rest);
    let addrs = child::coordinator_addrs(&line).context("the coordinator's status line")?;
    process.spec.pin_coordinator(&addrs);
    let pid = process.child.id().unwrap_or_default();
    println!("{}", process.spec.describe(pid, &line)?);
    // Readiness on the admin port: it is plain HTTP and needs no key whatever the public
    // ports require.
    wait_until_ready(addrs.admin, ready_timeout).await?;
    Ok(addrs)
}

async fn wait_until_ready(http_addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let url = format!("http://{http_addr}/v2/health/ready");
    let give_up = Instant::now() + timeout;
    loop {
        let answer = client
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if answer.is_ok_and(|response| response.status().is_success()) {
            return Ok(());
        }
        if Instant::now() > give_up {
            bail!(
                "the coordinator at {http_addr} did not report ready within {}s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_banner(addrs: CoordinatorAddrs, args: &UpArgs) {
    let http_addr = addrs.http;
    println!();
    println!(
        "Chorus is up: Open Inference Protocol v2 at http://{http_addr} (REST) and {} (gRPC)",
        addrs.grpc
    );
    println!(
        "  curl -s http://{http_addr}/v2/models/{}",
        args.sample_model
    );
    println!(
        "  curl -s http://{http_addr}/v2/models/{}/infer -d @{}",
        args.sample_model,
        args.sample_request.display()
    );
    println!(
        "  curl -s http://{}/metrics   (admin port: metrics, /chorus/workers)",
        addrs.admin
    );
    println!(
        "  live dashboard: http://{}/dashboard   cluster at a glance: chorus status --admin http://{}",
        addrs.admin, addrs.admin
    );
    println!("Press Ctrl-C to stop the cluster.");
}

/// Sends the sample request and prints the answer.
async fn send_sample(http_addr: SocketAddr, args: &UpArgs) -> anyhow::Result<()> {
    let body = std::fs::read(&args.sample_request)
        .with_context(|| format!("cannot read {}", args.sample_request.display()))?;
    let url = format!("http://{http_addr}/v2/models/{}/infer", args.sample_model);
    let response = reqwest::Client::new()
        .post(&url)
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    println!(
        "sample request to {} -> {status}: {text}",
        args.sample_model
    );
    if !status.is_success() {
        bail!("the sample request failed with {status}");
    }
    Ok(())
}

/// Stops the coordinator first (no new requests), then the workers, each with SIGTERM and a
/// grace period, then SIGKILL. Used when the cluster never got to supervision.
pub(crate) async fn stop_all(processes: &mut [Process]) {
    processes.sort_by_key(|p| p.name != "coordinator");
    for process in processes.iter_mut() {
        child::stop(process).await;
    }
}
