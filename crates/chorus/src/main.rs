//! The `chorus` command: `up` starts a local cluster, `worker` and `coordinator` run one process
//! each for real deployments, `bench` measures a cluster against the in-process floor.

mod admin;
mod bench;
mod child;
mod cluster_config;
mod logs;
mod placement;
mod reload;
mod restart;
mod signals;
mod supervisor;
mod up;
mod validate;

use anyhow::Context;
use chorus_coordinator::CoordinatorConfig;
use chorus_worker::local_socket::LocalSocket;
use chorus_worker::{LoadedWorker, WorkerConfig};
use clap::{Parser, Subcommand};
use std::io::Write;
use tokio::net::TcpListener;

/// Chorus: distributed ensemble serving for ONNX models over the Open Inference Protocol v2.
#[derive(Debug, Parser)]
#[command(name = "chorus", version, about)]
struct Cli {
    /// Log JSON lines instead of text (all subcommands).
    #[arg(long, global = true, env = "CHORUS_LOG_JSON")]
    log_json: bool,

    /// Threads of the async runtime (`worker`, `coordinator`, `up`; `chorus up` passes it on to
    /// the processes it starts). 0: one per core, except for the processes `chorus up` and
    /// `bench --spawn` start, which each get their share of the cores (cores / processes, at
    /// least 1): on a machine shared by several processes, fewer threads mean fewer wake-ups
    /// and hand-offs per request; see docs/benchmarks.md for what it changes.
    #[arg(
        long,
        global = true,
        env = "CHORUS_RUNTIME_THREADS",
        default_value_t = 0
    )]
    runtime_threads: usize,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a local cluster (a coordinator and several workers as child processes) and serve
    /// until Ctrl-C.
    Up(up::UpArgs),
    /// Run one worker: load the model repository, serve it over tarpc.
    Worker(WorkerConfig),
    /// Run one coordinator: the OIP v2 gateway (REST and gRPC) in front of workers.
    Coordinator(CoordinatorConfig),
    /// Benchmark a coordinator over HTTP (closed or open loop, JSON or binary tensors) and/or the
    /// in-process floor (the same ensemble on ONNX Runtime, no network); see docs/benchmarks.md.
    Bench(Box<bench::BenchArgs>),
    /// Show the cluster as a coordinator sees it: readiness, workers, ensembles (members,
    /// weights, quorum), from its admin port.
    Status(admin::AdminArgs),
    /// List the models the cluster serves, their versions and replicas in rotation.
    Models(admin::AdminArgs),
    /// Read a prediction log directory (`--prediction-log`): `tail` the newest records,
    /// `export` them filtered by time and ensemble.
    Logs(logs::LogsArgs),
    /// Drain one worker through a coordinator's admin port: every coordinator stops routing to
    /// it, calls in flight finish, and it keeps running until you stop it.
    Drain(admin::DrainArgs),
    /// Reload workers' model repositories without a restart (`POST /admin/reload` on each
    /// worker's `--metrics-addr`, as SIGHUP does): new models and versions load beside the
    /// serving ones, removed ones unload once their calls end.
    Reload(reload::ReloadArgs),
    /// Check a model repository and an ensemble spec file offline (every model loaded with ONNX
    /// Runtime, every ensemble checked as the coordinator does); prints every problem with its
    /// file, field and fix, and exits non-zero on any.
    Validate(validate::ValidateArgs),
}

/// Line a worker prints on stdout once its models are warm and its RPC port is open;
/// `chorus up` and the tests read it to learn the port.
pub const WORKER_READY: &str = "chorus-worker ready";
/// Line a coordinator prints on stdout once its HTTP and gRPC ports are open.
pub const COORDINATOR_LISTENING: &str = "chorus-coordinator listening";

/// How long a starting coordinator waits for etcd to answer its credentials check; an etcd that
/// does not answer in time is only a warning (it keeps trying).
const ETCD_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The report is the output: no log lines (the scanner's warnings are findings in it).
    if let Command::Validate(args) = cli.command {
        return validate::main(args);
    }
    // Traces are exported by the processes that serve requests; `chorus up` passes the
    // endpoint on to its children instead.
    let otlp = match &cli.command {
        Command::Worker(config) => config.otlp.otlp("chorus-worker"),
        Command::Coordinator(config) => config.otlp.otlp("chorus-coordinator"),
        _ => None,
    };
    let telemetry = chorus_common::telemetry::init_with(cli.log_json, otlp.as_ref())?;
    let global = child::GlobalFlags {
        log_json: cli.log_json,
        runtime_threads: cli.runtime_threads,
        shared_threads: 0,
    };
    // The benchmark sizes its own runtime: its load generator must stay small.
    let command = match cli.command {
        Command::Bench(args) => return bench::main(*args, global),
        // Reading files needs no runtime.
        Command::Logs(args) => return logs::main(args),
        command => command,
    };
    let runtime = async_runtime(cli.runtime_threads).context("cannot start the async runtime")?;
    let result = runtime.block_on(async move {
        match command {
            Command::Up(args) => up::run(args, global).await,
            Command::Worker(config) => run_worker(config).await,
            Command::Coordinator(config) => run_coordinator(config).await,
            Command::Status(args) => admin::status(args).await,
            Command::Models(args) => admin::models(args).await,
            Command::Drain(args) => admin::drain(args).await,
            Command::Reload(args) => reload::run(args).await,
            Command::Bench(_) | Command::Logs(_) | Command::Validate(_) => {
                unreachable!("handled before the runtime starts")
            }
        }
    });
    // After a graceful stop (SIGTERM, Ctrl-C) or a failure: the last spans are exported, from
    // outside the runtime (the exporter's blocking client must not be dropped inside it).
    telemetry.shutdown();
    result
}

/// The multi-threaded runtime with `threads` worker threads (0: one per core, tokio's default).
fn async_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    builder.build()
}

async fn run_worker(config: WorkerConfig) -> anyhow::Result<()> {
    // Installed first: SIGHUP's default action kills the process, and an operator may send it
    // while the models still load.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot watch SIGHUP")?;
    let worker_id = config.resolved_worker_id();
    let load_config = config.clone();
    // Loading and warming models is blocking work: keep it off the async runtime.
    let loaded = tokio::task::spawn_blocking(move || LoadedWorker::load(&load_config))
        .await
        .context("model loading panicked")??;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    // Bound before registering, so that a taken port leaves nothing behind in etcd.
    let metrics = match config.metrics_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on --metrics-addr {addr}"))?,
        ),
        None => None,
    };
    let loaded = match &config.local_socket {
        Some(path) => loaded.with_local_socket(
            LocalSocket::bind(path)
                .await
                .with_context(|| format!("cannot listen on --local-socket {}", path.display()))?,
        ),
        None => loaded,
    };
    // With --etcd, ready means registered: the line comes only after the key is in etcd.
    let mut ready = loaded.register(listener).await?;
    let mut line = format!(
        "{WORKER_READY} rpc_addr={} worker_id={worker_id} listen_addr={}",
        ready.rpc_addr(),
        ready.listen_addr()?
    );
    if let Some(path) = ready.local_socket() {
        line.push_str(&format!(" local_socket={}", path.display()));
    }
    if let Some(metrics) = metrics {
        line.push_str(&format!(" metrics_addr={}", metrics.local_addr()?));
        ready = ready.with_metrics_listener(metrics);
    }
    announce(&line);
    let reloads = tokio::spawn(reload_on_hangup(hangups, ready.reload_handle()));
    let served = ready.serve(signals::shutdown()).await;
    reloads.abort();
    served
}

/// Reloads the model repository on every SIGHUP (one at a time; signals that arrive during a
/// reload make one more). The outcome is logged by the reload itself.
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    reload: chorus_worker::reload::ReloadHandle,
) {
    while hangups.recv().await.is_some() {
        tracing::info!(signal = "SIGHUP", "reloading the model repository");
        if let Err(e) = reload.reload().await {
            tracing::warn!(error = %e, "model repository reload refused");
        }
    }
}

async fn run_coordinator(config: CoordinatorConfig) -> anyhow::Result<()> {
    // A bad spec file or flag combination is refused before anything listens or is announced.
    chorus_coordinator::server::check(&config)?;
    if let Some(endpoints) = config.etcd_endpoints()? {
        // Bad etcd TLS files, a TLS/scheme mismatch or a refused password stop it here too.
        config
            .etcd_connect
            .check(&endpoints, ETCD_CHECK_TIMEOUT)
            .await?;
    }
    let http = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen on --http-addr {}", config.http_addr))?;
    let grpc = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on --grpc-addr {}", config.grpc_addr))?;
    let admin = TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("cannot listen on --admin-addr {}", config.admin_addr))?;
    announce(&format!(
        "{COORDINATOR_LISTENING} http_addr={} grpc_addr={} admin_addr={}",
        http.local_addr()?,
        grpc.local_addr()?,
        admin.local_addr()?
    ));
    let listeners = chorus_coordinator::Listeners { http, grpc, admin };
    chorus_coordinator::run(config, listeners, signals::shutdown()).await
}

/// Prints a machine-readable status line on stdout (logs go to stderr).
fn announce(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
