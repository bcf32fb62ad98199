//! `chorus up` as a process manager: each child is watched by its own task and started again
//! (same id, flags and ports) when it exits, with the backoff of [`crate::restart`]. The cluster
//! stops only on Ctrl-C/SIGTERM or a crash loop, coordinator first so that no new request
//! arrives at a stopping worker.

use crate::child::{self, Process};
use crate::restart::{CRASH_LOOP_WINDOW, Decision, RestartPolicy};
use crate::signals::Shutdown;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Why supervision stopped the cluster.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SupervisionError {
    #[error(
        "{name} exited {exits} times within {window}s (last: {last_exit}): it is crash-looping, \
         so the cluster is stopping; its log above says why it cannot stay up",
        window = CRASH_LOOP_WINDOW.as_secs()
    )]
    CrashLoop {
        name: String,
        exits: usize,
        last_exit: String,
    },
    #[error("cannot restart {name}: {reason:#}")]
    Restart {
        name: String,
        // Not `source`: anyhow::Error is no std::error::Error.
        reason: anyhow::Error,
    },
}

/// A supervised child: how to tell its task to stop, and the task.
struct Watched {
    stop: watch::Sender<()>,
    task: JoinHandle<()>,
}

/// Keeps every process running until a shutdown signal or a crash loop, then stops them all:
/// the coordinator first, then the workers.
///
/// `worker_restart_floor` is the shortest wait before a worker is started again: with etcd, a
/// killed worker's record lives on until its lease expires, and a new instance under the same id
/// is refused until then, so restarting sooner only spends the crash-loop allowance.
pub(crate) async fn supervise(
    processes: Vec<Process>,
    shutdown: Shutdown,
    worker_restart_floor: Duration,
) -> Result<(), SupervisionError> {
    let (gave_up_tx, mut gave_up) = mpsc::channel(processes.len().max(1));
    let (mut coordinators, mut workers) = (Vec::new(), Vec::new());
    for process in processes {
        let (stop, stop_rx) = watch::channel(());
        let (group, floor) = match process.spec.role {
            child::Role::Coordinator => (&mut coordinators, Duration::ZERO),
            child::Role::Worker { .. } => (&mut workers, worker_restart_floor),
        };
        let task = tokio::spawn(keep_running(process, floor, stop_rx, gave_up_tx.clone()));
        group.push(Watched { stop, task });
    }
    drop(gave_up_tx);
    let outcome = tokio::select! {
        _ = shutdown.wait() => Ok(()),
        Some(error) = gave_up.recv() => Err(error),
    };
    for group in [coordinators, workers] {
        for watched in &group {
            let _ = watched.stop.send(());
        }
        for watched in group {
            let _ = watched.task.await;
        }
    }
    outcome
}

/// Runs one child until told to stop (then stops it) or until it crash-loops (then reports it).
async fn keep_running(
    mut process: Process,
    floor: Duration,
    mut stop: watch::Receiver<()>,
    gave_up: mpsc::Sender<SupervisionError>,
) {
    let mut policy = RestartPolicy::new(Instant::now());
    loop {
        let status = tokio::select! {
            status = process.child.wait() => status,
            _ = stop.changed() => {
                child::stop(&mut process).await;
                return;
            }
        };
        let last_exit = match status {
            Ok(status) => status.to_string(),
            Err(e) => format!("cannot wait for it: {e}"),
        };
        let name = process.name.clone();
        let delay = match policy.on_exit(Instant::now()) {
            Decision::RestartIn(delay) => delay.max(floor),
            Decision::GiveUp { exits } => {
                tracing::error!(child = %name, exits, last_exit = %last_exit, "crash loop");
                let error = SupervisionError::CrashLoop {
                    name,
                    exits,
                    last_exit,
                };
                let _ = gave_up.send(error).await;
                return;
            }
        };
        println!(
            "{name} exited ({last_exit}); restarting in {:.1} s",
            delay.as_secs_f64()
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
        match process.spec.spawn() {
            Ok((new_child, stdout)) => {
                policy.restarted(Instant::now());
                let pid = new_child.id().unwrap_or_default();
                process.child = new_child;
                tokio::spawn(announce_when_ready(process.spec.clone(), pid, stdout));
            }
            Err(reason) => {
                let _ = gave_up
                    .send(SupervisionError::Restart { name, reason })
                    .await;
                return;
            }
        }
    }
}

/// Prints a restarted child's status line (same format as at the first start) once it is
/// ready, and keeps draining its stdout. A child that never gets ready simply exits and is
/// handled by [`keep_running`].
async fn announce_when_ready(
    spec: child::ChildSpec,
    pid: u32,
    stdout: tokio::process::ChildStdout,
) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.starts_with(spec.ready_prefix()) {
            match spec.describe(pid, &line) {
                Ok(description) => println!("{description}"),
                Err(e) => println!("[{}] {line} ({e:#})", spec.name),
            }
        } else {
            println!("[{}] {line}", spec.name);
        }
    }
}
