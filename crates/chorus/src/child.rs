//! One child process of `chorus up`: how to start it (and start it again with the same id,
//! flags and ports), how to read its ready line, and how to stop it.

use crate::{COORDINATOR_LISTENING, WORKER_READY};
use anyhow::{Context, bail};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long a child may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// What a child is, for its status line.
#[derive(Debug, Clone)]
pub(crate) enum Role {
    Worker { models: Vec<String> },
    Coordinator,
}

/// The global flags every child is started with, as given to `chorus up` or `chorus bench`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GlobalFlags {
    pub(crate) log_json: bool,
    /// `--runtime-threads`; 0 (one per core) is not passed.
    pub(crate) runtime_threads: usize,
    /// A child's threads when `runtime_threads` is 0: its share of the machine's cores (see
    /// [`GlobalFlags::sharing_cores`]), passed in the environment so that a flag given to one
    /// child (`--worker-arg=--runtime-threads=N`) still wins.
    pub(crate) shared_threads: usize,
}

impl GlobalFlags {
    /// These flags for `processes` children sharing this machine: without `--runtime-threads`,
    /// each gets an equal share of the cores (at least one), rather than one thread per core
    /// each. Every extra runtime thread of every process is one more to wake and park per
    /// request; on the 2-core machine one thread each answered 12 % sooner at concurrency 1
    /// for the same throughput at 64 (benchmarks.md, "Runtime threads under `chorus up`").
    pub(crate) fn sharing_cores(self, processes: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        GlobalFlags {
            shared_threads: (cores / processes.max(1)).max(1),
            ..self
        }
    }
}

/// How to start one child, again and again.
#[derive(Debug, Clone)]
pub(crate) struct ChildSpec {
    /// `worker-<n>` or `coordinator`: the same across restarts.
    pub(crate) name: String,
    pub(crate) role: Role,
    exe: PathBuf,
    global: GlobalFlags,
    /// Everything after the executable (`worker --listen=… …`).
    args: Vec<OsString>,
}

/// A child process we started, stopped by us (never left behind).
pub(crate) struct Process {
    pub(crate) name: String,
    pub(crate) child: Child,
    /// How to start it again.
    pub(crate) spec: ChildSpec,
}

/// Where a ready worker listens.
#[derive(Debug, Clone)]
pub(crate) struct WorkerAddrs {
    /// The address the coordinator dials (`--advertise-addr` or the bound address).
    pub(crate) rpc: String,
    /// The address it is bound to.
    pub(crate) listen: SocketAddr,
    pub(crate) metrics: Option<SocketAddr>,
    /// Its `--local-socket`, when it has one.
    pub(crate) local_socket: Option<String>,
}

impl WorkerAddrs {
    /// Where a coordinator on this host dials it: the local socket when there is one.
    pub(crate) fn dial(&self) -> String {
        match &self.local_socket {
            Some(path) => chorus_common::local_link::unix_addr(path),
            None => self.rpc.clone(),
        }
    }
}

/// Where a ready coordinator listens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CoordinatorAddrs {
    pub(crate) http: SocketAddr,
    pub(crate) grpc: SocketAddr,
    pub(crate) admin: SocketAddr,
}

impl ChildSpec {
    pub(crate) fn new(
        name: String,
        role: Role,
        exe: PathBuf,
        global: GlobalFlags,
        args: Vec<OsString>,
    ) -> Self {
        ChildSpec {
            name,
            role,
            exe,
            global,
            args,
        }
    }

    /// The status line prefix this child prints once ready.
    pub(crate) fn ready_prefix(&self) -> &'static str {
        match self.role {
            Role::Worker { .. } => WORKER_READY,
            Role::Coordinator => COORDINATOR_LISTENING,
        }
    }

    /// Starts it: own process group (so a terminal's Ctrl-C reaches only `chorus up`, which
    /// stops the children in order), stdout piped for its status line, stderr shared for logs.
    pub(crate) fn spawn(&self) -> anyhow::Result<(Child, ChildStdout)> {
        let mut command = Command::new(&self.exe);
        if self.global.log_json {
            command.arg("--log-json");
        }
        if self.global.runtime_threads > 0 {
            command.arg(format!("--runtime-threads={}", self.global.runtime_threads));
        } else if self.global.shared_threads > 0 {
            command.env(
                "CHORUS_RUNTIME_THREADS",
                self.global.shared_threads.to_string(),
            );
        }
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGTERM the child if
        // this process dies without stopping it (e.g. SIGKILL), so no child outlives `chorus up`.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.name))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        Ok((child, stdout))
    }

    /// Pins `--<flag>=…` to `addr`, if the child has that flag, so that a restart listens where
    /// the first start did: the coordinator's worker list and the user's clients stay valid.
    pub(crate) fn pin(&mut self, flag: &str, addr: SocketAddr) {
        let prefix = format!("--{flag}=");
        for arg in &mut self.args {
            if arg.to_str().is_some_and(|a| a.starts_with(&prefix)) {
                *arg = format!("{prefix}{addr}").into();
            }
        }
    }

    /// Pins the ports a worker got at its first start (see [`ChildSpec::pin`]).
    pub(crate) fn pin_worker(&mut self, addrs: &WorkerAddrs) {
        self.pin("listen", addrs.listen);
        if let Some(metrics) = addrs.metrics {
            self.pin("metrics-addr", metrics);
        }
    }

    /// Pins the ports a coordinator got at its first start.
    pub(crate) fn pin_coordinator(&mut self, addrs: &CoordinatorAddrs) {
        self.pin("http-addr", addrs.http);
        self.pin("grpc-addr", addrs.grpc);
        self.pin("admin-addr", addrs.admin);
    }

    /// The line `chorus up` prints for a ready child (the tests read it too).
    pub(crate) fn describe(&self, pid: u32, ready_line: &str) -> anyhow::Result<String> {
        match &self.role {
            Role::Worker { models } => {
                let addrs = worker_addrs(ready_line)?;
                let metrics = addrs
                    .metrics
                    .map(|m| format!("  metrics {m}"))
                    .unwrap_or_default();
                // The address the coordinator dials, when it is not the TCP one.
                let local = addrs
                    .local_socket
                    .as_deref()
                    .map(|path| format!("  local {}", chorus_common::local_link::unix_addr(path)))
                    .unwrap_or_default();
                Ok(format!(
                    "{}  pid {pid}  rpc {}{local}{metrics}  models {}",
                    self.name,
                    addrs.rpc,
                    models.join(",")
                ))
            }
            Role::Coordinator => {
                let addrs = coordinator_addrs(ready_line)?;
                Ok(format!(
                    "{}  pid {pid}  http {}  grpc {}  admin {}",
                    self.name, addrs.http, addrs.grpc, addrs.admin
                ))
            }
        }
    }
}

/// Reads a child's stdout until a line starting with `prefix`, echoing other lines; returns the
/// line and the rest of the output (see [`drain`]).
pub(crate) async fn wait_for_line(
    stdout: ChildStdout,
    prefix: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<(String, Lines<BufReader<ChildStdout>>)> {
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
        Ok(Ok(Some(line))) => Ok((line, lines)),
    }
}

/// Keeps reading a child's stdout in the background so it never blocks on a full pipe.
pub(crate) fn drain(mut lines: Lines<BufReader<ChildStdout>>) {
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
}

/// The value of `key=value` in a status line.
pub(crate) fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

fn parsed(line: &str, key: &str) -> anyhow::Result<SocketAddr> {
    field(line, key)
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no {key} in the status line {line:?}"))
}

/// The addresses in a worker's ready line.
pub(crate) fn worker_addrs(line: &str) -> anyhow::Result<WorkerAddrs> {
    Ok(WorkerAddrs {
        rpc: field(line, "rpc_addr").with_context(|| format!("no rpc_addr in {line:?}"))?,
        listen: parsed(line, "listen_addr")?,
        metrics: field(line, "metrics_addr").and_then(|a| a.parse().ok()),
        local_socket: field(line, "local_socket"),
    })
}

/// The addresses in a coordinator's listening line.
pub(crate) fn coordinator_addrs(line: &str) -> anyhow::Result<CoordinatorAddrs> {
    Ok(CoordinatorAddrs {
        http: parsed(line, "http_addr")?,
        grpc: parsed(line, "grpc_addr")?,
        admin: parsed(line, "admin_addr")?,
    })
}

/// SIGTERM, a grace period, then SIGKILL; prints how it ended.
pub(crate) async fn stop(process: &mut Process) {
    if let Some(pid) = process.child.id() {
        // SAFETY: plain kill(2) on a PID we spawned and have not yet reaped.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    match tokio::time::timeout(STOP_GRACE, process.child.wait()).await {
        Ok(Ok(status)) => println!("{} stopped ({status})", process.name),
        _ => {
            let _ = process.child.kill().await;
            println!("{} killed after {}s", process.name, STOP_GRACE.as_secs());
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

    #[test]
    fn pinning_replaces_port_zero_with_the_first_port() {
        let mut spec = ChildSpec::new(
            "worker-0".into(),
            Role::Worker {
                models: vec!["mlp".into()],
            },
            "chorus".into(),
            GlobalFlags::default(),
            [
                "worker",
                "--listen=127.0.0.1:0",
                "--metrics-addr=127.0.0.1:0",
            ]
            .map(OsString::from)
            .to_vec(),
        );
        let line = "chorus-worker ready rpc_addr=127.0.0.1:4000 worker_id=worker-0 \
                    listen_addr=127.0.0.1:4000 metrics_addr=127.0.0.1:4001";
        spec.pin_worker(&worker_addrs(line).unwrap());
        assert_eq!(
            spec.args,
            [
                "worker",
                "--listen=127.0.0.1:4000",
                "--metrics-addr=127.0.0.1:4001"
            ]
        );
        assert_eq!(
            spec.describe(7, line).unwrap(),
            "worker-0  pid 7  rpc 127.0.0.1:4000  metrics 127.0.0.1:4001  models mlp"
        );
    }

    #[test]
    fn children_share_the_cores_with_one_thread_at_least() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let flags = GlobalFlags::default();
        assert_eq!(flags.sharing_cores(1).shared_threads, cores);
        assert_eq!(flags.sharing_cores(cores * 3).shared_threads, 1);
        assert_eq!(
            flags.sharing_cores(0).shared_threads,
            cores,
            "no division by zero"
        );
    }

    #[test]
    fn a_worker_with_a_local_socket_is_dialled_there() {
        let tcp =
            "chorus-worker ready rpc_addr=127.0.0.1:4000 worker_id=w listen_addr=127.0.0.1:4000";
        assert_eq!(worker_addrs(tcp).unwrap().dial(), "127.0.0.1:4000");
        let local = format!("{tcp} local_socket=/tmp/chorus-up-x/w.sock");
        assert_eq!(
            worker_addrs(&local).unwrap().dial(),
            "unix:/tmp/chorus-up-x/w.sock"
        );
        let spec = ChildSpec::new(
            "w".into(),
            Role::Worker {
                models: vec!["mlp".into()],
            },
            "chorus".into(),
            GlobalFlags::default(),
            Vec::new(),
        );
        assert_eq!(
            spec.describe(7, &local).unwrap(),
            "w  pid 7  rpc 127.0.0.1:4000  local unix:/tmp/chorus-up-x/w.sock  models mlp"
        );
    }
}
