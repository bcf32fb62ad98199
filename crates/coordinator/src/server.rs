//! Wiring: specs, membership, pool, catalog and the HTTP gateway, served until `shutdown`.

use crate::catalog::Catalog;
use crate::config::CoordinatorConfig;
use crate::http::{self, App, Limits};
use crate::membership::{self, etcd::EtcdSource};
use crate::pool::{Pool, PoolSettings};
use crate::router::Router;
use crate::spec::{self, EnsembleSpec};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Serves the coordinator on `listener` until `shutdown` completes. The caller binds the
/// listener (tests hand in port 0) and owns signal handling.
pub async fn run(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let etcd = config.etcd_endpoints()?;
    let specs = load_specs(&config, etcd.is_some())?;
    let pool = Pool::new(PoolSettings {
        max_frame_bytes: config.max_frame_bytes,
        ping_interval: config.ping_interval(),
        eject_after_failures: config.eject_after_failures.max(1),
        connect_timeout: Duration::from_secs(2),
    });
    let router = Arc::new(Router::new(Arc::clone(&pool), config.router_settings()));
    let catalog = Catalog::new(specs, Arc::clone(&pool));
    let sources = Sources::start(&config, etcd, &pool, &catalog);
    let app = Arc::new(App::new(
        catalog,
        router,
        Limits::new(
            config.max_body_bytes,
            config.max_frame_bytes,
            config.model_deadline(),
        ),
    ));
    info!(addr = %listener.local_addr()?, workers = config.workers.len(), etcd = ?config.etcd, "coordinator serving");
    axum::serve(listener, http::router(app))
        .with_graceful_shutdown(shutdown)
        .await?;
    sources.stop();
    info!("coordinator stopped");
    Ok(())
}

/// The spec file's ensembles. Without etcd the file is required; with etcd it is optional, since
/// etcd can hold every spec.
fn load_specs(config: &CoordinatorConfig, etcd: bool) -> anyhow::Result<Vec<EnsembleSpec>> {
    let path = &config.ensembles;
    if etcd && !path.exists() {
        if path.as_path() == std::path::Path::new(crate::config::DEFAULT_ENSEMBLES) {
            info!(path = %path.display(), "no ensemble spec file; ensembles come from etcd only");
        } else {
            warn!(path = %path.display(), "ensemble spec file not found; ensembles come from etcd only");
        }
        return Ok(Vec::new());
    }
    let specs = spec::load(path)?;
    info!(path = %path.display(), ensembles = specs.len(), "ensemble specs loaded");
    Ok(specs)
}

/// What feeds the pool and the catalog: the static list, or etcd's workers and specs.
struct Sources {
    followers: Vec<JoinHandle<()>>,
    etcd: Vec<EtcdSource>,
}

impl Sources {
    fn start(
        config: &CoordinatorConfig,
        etcd: Option<Vec<String>>,
        pool: &Arc<Pool>,
        catalog: &Catalog,
    ) -> Self {
        let Some(endpoints) = etcd else {
            return Sources {
                followers: vec![pool.follow(membership::static_list(&config.workers))],
                etcd: Vec::new(),
            };
        };
        let settings = config.etcd_settings();
        let (workers, workers_source) =
            membership::etcd::watch(endpoints.clone(), settings.clone());
        let (specs, specs_source) = membership::etcd::watch_ensembles(endpoints, settings);
        Sources {
            followers: vec![pool.follow(workers), catalog.follow_specs(specs)],
            etcd: vec![workers_source, specs_source],
        }
    }

    fn stop(self) {
        for follower in self.followers {
            follower.abort();
        }
        // Dropping a source stops its task.
        drop(self.etcd);
    }
}
