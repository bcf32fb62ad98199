//! Wiring: specs, membership, pool, catalog, the inference core and its two front doors (REST
//! and gRPC), served until `shutdown`.

use crate::catalog::Catalog;
use crate::config::CoordinatorConfig;
use crate::infer::{Infer, Limits};
use crate::membership::{self, etcd::EtcdSource, etcd::SourceState};
use crate::metrics::{ClusterView, Metrics};
use crate::pool::{Pool, PoolSettings};
use crate::router::Router;
use crate::spec::{self, EnsembleSpec};
use crate::{grpc, http};
use futures::FutureExt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// The coordinator's bound listeners (tests bind port 0).
pub struct Listeners {
    /// OIP v2 REST, plus `/metrics` and `/chorus/*`.
    pub http: TcpListener,
    /// OIP v2 gRPC.
    pub grpc: TcpListener,
}

/// Serves the coordinator on `listeners` until `shutdown` completes. The caller binds the
/// listeners and owns signal handling.
pub async fn run(
    config: CoordinatorConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let etcd = config.etcd_endpoints()?;
    let specs = load_specs(&config, etcd.is_some())?;
    let metrics = Arc::new(Metrics::new());
    let pool = Pool::new(
        PoolSettings {
            max_frame_bytes: config.max_frame_bytes,
            ping_interval: config.ping_interval(),
            eject_after_failures: config.eject_after_failures.max(1),
            silence_limit: config.silence_limit(),
            connect_timeout: Duration::from_secs(2),
        },
        Arc::clone(&metrics),
    );
    let router = Arc::new(Router::new(
        Arc::clone(&pool),
        config.router_settings(),
        Arc::clone(&metrics),
    ));
    let catalog = Catalog::new(specs, Arc::clone(&pool));
    let sources = Sources::start(&config, etcd, &pool, &catalog);
    observe_cluster(&metrics, &pool, &sources);
    sources.wait_for_first_view(&pool, FIRST_VIEW_TIMEOUT).await;
    let app = Arc::new(Infer::new(
        catalog,
        router,
        Limits::new(
            config.max_body_bytes,
            config.max_frame_bytes,
            config.model_deadline(),
        ),
    ));
    info!(
        http = %listeners.http.local_addr()?,
        grpc = %listeners.grpc.local_addr()?,
        workers = config.workers.len(),
        etcd = ?config.etcd,
        request_ids = %format!("{}-*", app.request_ids().prefix()),
        "coordinator serving"
    );
    let shutdown = shutdown.shared();
    let limits = config.client_limits();
    let rest = http::serve(
        listeners.http,
        http::router(Arc::clone(&app)),
        limits,
        shutdown.clone(),
    )
    .map(|served| served.map_err(anyhow::Error::from));
    let grpc = grpc::serve(listeners.grpc, app, limits.max_connections, shutdown)
        .map(|served| served.map_err(anyhow::Error::from));
    let served = tokio::try_join!(rest, grpc);
    sources.stop();
    served?;
    info!("coordinator stopped");
    Ok(())
}

/// How long a starting coordinator waits for its first view of the cluster (etcd listed once,
/// every worker probed once) before serving anyway. Requests that arrive meanwhile wait in the
/// listener's backlog rather than getting a 503 from an empty view.
const FIRST_VIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks the configuration as [`run`] will use it, so that a binary can refuse a bad config
/// before it binds and announces anything.
pub fn check(config: &CoordinatorConfig) -> anyhow::Result<()> {
    let etcd = config.etcd_endpoints()?;
    load_specs(config, etcd.is_some()).map(drop)
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

/// Points the scrape-time gauges at the pool and the membership sources. The pool holds the
/// metrics, so the metrics hold the pool weakly.
fn observe_cluster(metrics: &Metrics, pool: &Arc<Pool>, sources: &Sources) {
    let pool = Arc::downgrade(pool);
    let states: Vec<_> = sources.etcd.iter().map(EtcdSource::subscribe).collect();
    metrics.observe_cluster(move || {
        // Starting counts as stale too: nothing has been listed, so the view is not etcd's.
        let stale = states.iter().any(|s| *s.borrow() != SourceState::Live);
        pool.upgrade()
            .map(|pool| ClusterView::of(&pool, stale))
            .unwrap_or_default()
    });
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

    /// Waits (at most `timeout`) until etcd has been listed once and every worker known then has
    /// been probed once.
    async fn wait_for_first_view(&self, pool: &Pool, timeout: Duration) {
        let give_up = tokio::time::Instant::now() + timeout;
        for source in &self.etcd {
            let mut state = source.subscribe();
            let listed = state.wait_for(|s| *s != SourceState::Starting);
            let _ = tokio::time::timeout_at(give_up, listed).await;
        }
        if tokio::time::timeout_at(give_up, pool.probed_once())
            .await
            .is_err()
        {
            warn!(
                timeout_ms = timeout.as_millis() as u64,
                "serving before every worker was probed"
            );
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
