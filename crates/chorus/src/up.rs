//! `chorus up`: a whole local cluster (workers, then a coordinator) as child processes, with a
//! real request answered once it is ready, stopped cleanly on Ctrl-C or SIGTERM.

use crate::cluster_config::ClusterConfig;
use crate::{COORDINATOR_LISTENING, WORKER_READY, placement, signals};
use anyhow::{Context, bail};
use clap::Args;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

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

/// A child process we started, stopped by us (never left behind).
pub(crate) struct Process {
    pub(crate) name: String,
    pub(crate) child: Child,
}

pub async fn run(args: UpArgs, log_json: bool) -> anyhow::Result<()> {
    // Installed first: a Ctrl-C at any moment from here on stops the cluster cleanly.
    let shutdown = signals::Shutdown::install().context("cannot watch SIGINT/SIGTERM")?;
    let mut cluster = ClusterConfig::load(&args.config)?;
    cluster.http_addr = args.http_addr.unwrap_or(cluster.http_addr);
    cluster.grpc_addr = args.grpc_addr.unwrap_or(cluster.grpc_addr);
    cluster.workers = args.workers.unwrap_or(cluster.workers);
    cluster.replication = args.replication.unwrap_or(cluster.replication);
    cluster.validate()?;
    let ready_timeout = Duration::from_secs(args.ready_timeout_s);

    let models = chorus_worker::repository::model_names(&cluster.model_repository)?;
    let plan = placement::place(&models, cluster.workers, cluster.replication);
    let exe = std::env::current_exe().context("cannot find the chorus executable")?;
    let mut processes: Vec<Process> = Vec::new();

    let launch = Launch {
        exe: &exe,
        cluster: &cluster,
        plan: &plan,
        etcd: &args.etcd,
        log_json,
        ready_timeout,
        worker_args: &[],
        coordinator_args: &[],
    };
    let started = start_cluster(&launch, &mut processes).await;
    let outcome = match started {
        Ok(addrs) => {
            print_banner(addrs, &args);
            if let Err(e) = send_sample(addrs.http, &args).await {
                eprintln!("sample request failed: {e:#}");
            }
            serve_until_stopped(&mut processes, shutdown).await
        }
        Err(e) => Err(e),
    };
    stop_all(&mut processes).await;
    outcome
}

/// Everything needed to start the cluster's processes.
pub(crate) struct Launch<'a> {
    pub(crate) exe: &'a Path,
    pub(crate) cluster: &'a ClusterConfig,
    /// Models per worker.
    pub(crate) plan: &'a [Vec<String>],
    /// etcd endpoints; empty for static membership.
    pub(crate) etcd: &'a [String],
    pub(crate) log_json: bool,
    pub(crate) ready_timeout: Duration,
    /// Extra flags for every worker and for the coordinator (`chorus bench` passes its own).
    pub(crate) worker_args: &'a [String],
    pub(crate) coordinator_args: &'a [String],
}

/// Where the started coordinator listens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CoordinatorAddrs {
    pub(crate) http: SocketAddr,
    pub(crate) grpc: SocketAddr,
}

/// Starts the workers, then the coordinator; returns the coordinator's addresses once it
/// reports ready. Every process started is pushed onto `processes`, also on failure.
pub(crate) async fn start_cluster(
    launch: &Launch<'_>,
    processes: &mut Vec<Process>,
) -> anyhow::Result<CoordinatorAddrs> {
    let Launch {
        exe,
        cluster,
        plan,
        etcd,
        log_json,
        ready_timeout,
        worker_args,
        coordinator_args,
    } = *launch;
    let mut pending = Vec::new();
    for (index, models) in plan.iter().enumerate().filter(|(_, m)| !m.is_empty()) {
        let worker_id = format!("worker-{index}");
        let mut command = child_command(exe, log_json);
        command
            .arg("worker")
            .arg("--listen=127.0.0.1:0")
            .arg(format!("--worker-id={worker_id}"))
            .arg("--model-repository")
            .arg(&cluster.model_repository)
            .arg(format!("--models={}", models.join(",")))
            .args(worker_args);
        if !etcd.is_empty() {
            command.arg(format!("--etcd={}", etcd.join(",")));
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {worker_id}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        processes.push(Process {
            name: worker_id.clone(),
            child,
        });
        pending.push((worker_id, models.clone(), stdout));
    }
    // Workers load in parallel; wait for each one's ready line.
    let mut worker_addrs = Vec::new();
    for (worker_id, models, stdout) in pending {
        let line = wait_for_line(stdout, WORKER_READY, &worker_id, ready_timeout).await?;
        let addr =
            field(&line, "rpc_addr").with_context(|| format!("{worker_id} printed {line:?}"))?;
        let pid = processes
            .iter()
            .find(|p| p.name == worker_id)
            .and_then(|p| p.child.id())
            .unwrap_or_default();
        println!(
            "{worker_id}  pid {pid}  rpc {addr}  models {}",
            models.join(",")
        );
        worker_addrs.push(addr);
    }

    let mut command = child_command(exe, log_json);
    command
        .arg("coordinator")
        .arg(format!("--http-addr={}", cluster.http_addr))
        .arg(format!("--grpc-addr={}", cluster.grpc_addr))
        .arg("--ensembles")
        .arg(&cluster.ensembles)
        .args(coordinator_args);
    if etcd.is_empty() {
        command.arg(format!("--worker={}", worker_addrs.join(",")));
    } else {
        command.arg(format!("--etcd={}", etcd.join(",")));
    }
    let mut child = command.spawn().context("cannot start the coordinator")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let pid = child.id().unwrap_or_default();
    processes.push(Process {
        name: "coordinator".into(),
        child,
    });
    let line = wait_for_line(stdout, COORDINATOR_LISTENING, "coordinator", ready_timeout).await?;
    let addr = |key: &str| -> anyhow::Result<SocketAddr> {
        field(&line, key)
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("coordinator printed {line:?}"))
    };
    let addrs = CoordinatorAddrs {
        http: addr("http_addr")?,
        grpc: addr("grpc_addr")?,
    };
    println!(
        "coordinator  pid {pid}  http {}  grpc {}",
        addrs.http, addrs.grpc
    );
    wait_until_ready(addrs.http, ready_timeout).await?;
    Ok(addrs)
}

/// A `chorus` child: own process group (so a terminal's Ctrl-C reaches only us and we stop the
/// children in order), stdout piped for its status line, stderr shared for logs.
fn child_command(exe: &Path, log_json: bool) -> Command {
    let mut command = Command::new(exe);
    if log_json {
        command.arg("--log-json");
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGTERM the child if this
    // process dies without stopping it (e.g. SIGKILL), so no worker outlives `chorus up`.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    command
}

/// Reads a child's stdout until a line starting with `prefix`; then keeps draining it in the
/// background so the child never blocks on a full pipe.
async fn wait_for_line(
    stdout: ChildStdout,
    prefix: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(timeout, async {
        while let Some(line) = lines.next_line().await? {
            if line.starts_with(prefix) {
                return Ok(Some(line));
            }
            println!("[{name}] {line}");
        }
        Ok::<_, std::io::Error>(None)
    })
    .await;
    match found {
        Err(_) => bail!("{name} did not become ready within {}s", timeout.as_secs()),
        Ok(Err(e)) => bail!("cannot read {name}'s output: {e}"),
        Ok(Ok(None)) => bail!("{name} exited before becoming ready (see its log above)"),
        Ok(Ok(Some(line))) => {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Ok(line)
        }
    }
}

/// The value of `key=value` in a status line.
fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
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

/// Waits for Ctrl-C/SIGTERM; a child that exits on its own ends the cluster with an error.
async fn serve_until_stopped(
    processes: &mut [Process],
    shutdown: signals::Shutdown,
) -> anyhow::Result<()> {
    let any_exit = first_exit(processes);
    tokio::select! {
        _ = shutdown.wait() => Ok(()),
        (name, status) = any_exit => bail!("{name} exited unexpectedly ({status}); stopping the cluster"),
    }
}

async fn first_exit(processes: &mut [Process]) -> (String, String) {
    loop {
        for process in processes.iter_mut() {
            if let Ok(Some(status)) = process.child.try_wait() {
                return (process.name.clone(), status.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops the coordinator first (no new requests), then the workers, each with SIGTERM and a
/// grace period, then SIGKILL.
pub(crate) async fn stop_all(processes: &mut [Process]) {
    const GRACE: Duration = Duration::from_secs(15);
    processes.sort_by_key(|p| p.name != "coordinator");
    for process in processes.iter_mut() {
        if let Some(pid) = process.child.id() {
            // SAFETY: plain kill(2) on a PID we spawned and have not yet reaped.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(GRACE, process.child.wait()).await {
            Ok(Ok(status)) => println!("{} stopped ({status})", process.name),
            _ => {
                let _ = process.child.kill().await;
                println!("{} killed after {}s", process.name, GRACE.as_secs());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_from_status_lines() {
        let line = "chorus-worker ready rpc_addr=127.0.0.1:4000 worker_id=w-1";
        assert_eq!(field(line, "rpc_addr").as_deref(), Some("127.0.0.1:4000"));
        assert_eq!(field(line, "worker_id").as_deref(), Some("w-1"));
        assert_eq!(field(line, "nope"), None);
    }
}
