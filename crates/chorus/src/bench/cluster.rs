//! `chorus bench --spawn`: a local cluster started and stopped with `chorus up`'s own code, on a
//! free port, with the benchmark's extra worker and coordinator flags.

use super::args::BenchArgs;
use super::procfs::Watched;
use crate::child::GlobalFlags;
use crate::cluster_config::ClusterConfig;
use crate::placement;
use crate::up::{self, Launch, Process};
use anyhow::Context;
use std::net::SocketAddr;
use std::time::Duration;

/// How long each spawned process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A running local cluster; [`SpawnedCluster::stop`] stops it (and dropping it kills it).
pub struct SpawnedCluster {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// The models each worker serves, by worker name.
    pub plan: Vec<(String, Vec<String>)>,
    processes: Vec<Process>,
    /// The workers' local sockets' directory, removed with the cluster.
    _sockets: Option<tempfile::TempDir>,
}

impl SpawnedCluster {
    /// Starts the cluster described by `--config`, with `--workers` and the extra flags.
    pub async fn start(args: &BenchArgs, global: GlobalFlags) -> anyhow::Result<SpawnedCluster> {
        let mut cluster = ClusterConfig::load(&args.config)?;
        cluster.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        cluster.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        cluster.admin_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        cluster.workers = args.workers.unwrap_or(cluster.workers);
        cluster.validate()?;
        let models = chorus_worker::repository::model_names(&cluster.model_repository)?;
        let plan = placement::place(&models, cluster.workers, cluster.replication);
        let exe = std::env::current_exe().context("cannot find the chorus executable")?;
        let sockets = up::local_socket_dir(args.no_local_sockets)?;
        let launch = Launch {
            exe: &exe,
            cluster: &cluster,
            plan: &plan,
            etcd: &[],
            global,
            ready_timeout: READY_TIMEOUT,
            local_sockets: sockets.as_ref().map(|dir| dir.path()),
            worker_args: &args.worker_args,
            coordinator_args: &args.coordinator_args,
        };
        let mut processes = Vec::new();
        match up::start_cluster(&launch, &mut processes).await {
            Ok(addrs) => Ok(SpawnedCluster {
                http_addr: addrs.http,
                grpc_addr: addrs.grpc,
                plan: plan
                    .into_iter()
                    .enumerate()
                    .filter(|(_, models)| !models.is_empty())
                    .map(|(index, models)| (format!("worker-{index}"), models))
                    .collect(),
                processes,
                _sockets: sockets,
            }),
            Err(e) => {
                up::stop_all(&mut processes).await;
                Err(e)
            }
        }
    }

    /// The coordinator and the workers, for resource reports.
    pub fn watched(&self) -> Vec<Watched> {
        let mut watched: Vec<Watched> = self
            .processes
            .iter()
            .filter_map(|p| {
                Some(Watched {
                    name: p.name.clone(),
                    pid: p.child.id()?,
                })
            })
            .collect();
        watched.sort_by_key(|w| (w.name != "coordinator", w.name.clone()));
        watched
    }

    /// Stops the coordinator, then the workers.
    pub async fn stop(mut self) {
        up::stop_all(&mut self.processes).await;
    }
}
