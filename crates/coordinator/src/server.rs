//! Wiring: specs, membership, pool, catalog, the inference core and its two front doors (REST
//! and gRPC), served until `shutdown`.

use crate::catalog::Catalog;
use crate::config::CoordinatorConfig;
use crate::infer::{Infer, Limits};
use crate::membership::{self, etcd::EtcdSource, etcd::SourceState};
use crate::metrics::{ClusterView, Metrics};
use crate::pool::{Pool, PoolSettings};
use crate::prediction_log::PredictionLog;
use crate::router::Router;
use crate::spec::{self, EnsembleSpec};
use crate::tls::GatewayTls;
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
    /// OIP v2 REST.
    pub http: TcpListener,
    /// OIP v2 gRPC.
    pub grpc: TcpListener,
    /// `/metrics`, `/chorus/*` and health, for operators.
    pub admin: TcpListener,
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
    let access = config.access()?;
    warn_if_open(&access, &listeners)?;
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
        config.rpc_tls.connector()?,
    );
    let router = Arc::new(Router::new(
        Arc::clone(&pool),
        config.router_settings(),
        Arc::clone(&metrics),
    ));
    let catalog = Catalog::new(specs, Arc::clone(&pool));
    let spec_reload = reload_specs_on_hangup(&config, etcd.is_some(), &catalog);
    let weights_backend = config.feedback.backend(etcd.clone().map(|endpoints| {
        (
            endpoints,
            config.etcd_settings().with_connect(&config.etcd_connect),
        )
    }));
    let mut sources = Sources::start(&config, etcd, &pool, &catalog);
    // Specs that do not fit the models workers describe show in the log, not only in answers.
    sources
        .followers
        .push(catalog.warn_underivable(Duration::from_secs(1)));
    observe_cluster(&metrics, &pool, &sources);
    sources.wait_for_first_view(&pool, FIRST_VIEW_TIMEOUT).await;
    let mut app = Infer::new(
        catalog,
        router,
        Limits::new(
            config.max_body_bytes,
            config.max_frame_bytes,
            config.model_deadline(),
        ),
        access,
        config.admission(),
    )
    .with_feedback(crate::feedback::Feedback::start(
        &config.feedback,
        weights_backend,
        Arc::clone(&metrics),
    ));
    app = app.with_strict_readiness(config.strict_readiness);
    let log_closer = match config.prediction_log.settings() {
        Some(settings) => {
            let args = &config.prediction_log;
            let (log, closer) = PredictionLog::start(
                settings,
                args.prediction_log_queue,
                args.prediction_log_queue_bytes,
                metrics.prediction_log().clone(),
            )?;
            app = app.with_prediction_log(log);
            Some(closer)
        }
        None => None,
    };
    let app = Arc::new(app);
    // With etcd: feedback other coordinators relay for this one's answers (docs/data.md).
    let feedback_inbox = app.feedback().inbox(&app);
    info!(
        http = %listeners.http.local_addr()?,
        grpc = %listeners.grpc.local_addr()?,
        admin = %listeners.admin.local_addr()?,
        api_keys = app.access().len(),
        tls = config.tls.mode(),
        max_inflight = config.max_inflight,
        workers = config.workers.len(),
        etcd = ?config.etcd,
        request_ids = %format!("{}-*", app.request_ids().prefix()),
        "coordinator serving"
    );
    let shutdown = shutdown.shared();
    let limits = config.client_limits();
    let tls = gateway_tls(&config)?;
    let tls_watch = tls.as_ref().map(GatewayTls::watch);
    let rest = http::serve(
        "http",
        listeners.http,
        http::router(Arc::clone(&app)),
        limits,
        tls.clone(),
        shutdown.clone(),
    )
    .map(|served| served.map_err(anyhow::Error::from));
    // The admin port stays plain HTTP: Prometheus and kubelet probes scrape it in-cluster, and
    // it is bound where only they reach it (docs/security.md).
    let admin = http::serve(
        "admin",
        listeners.admin,
        http::admin_router(Arc::clone(&app)),
        limits,
        None,
        shutdown.clone(),
    )
    .map(|served| served.map_err(anyhow::Error::from));
    let grpc = grpc::serve(listeners.grpc, app, limits, tls, shutdown)
        .map(|served| served.map_err(anyhow::Error::from));
    let served = tokio::try_join!(rest, grpc, admin);
    if let Some(watch) = tls_watch {
        watch.abort();
    }
    // After the front doors stopped (so the answers they finished are queued), before exit.
    if let Some(closer) = log_closer {
        closer.close(PREDICTION_LOG_CLOSE_TIMEOUT).await;
    }
    sources.stop();
    spec_reload.abort();
    drop(feedback_inbox);
    served?;
    info!("coordinator stopped");
    Ok(())
}

/// How long a starting coordinator waits for its first view of the cluster (etcd listed once,
/// every worker probed once) before serving anyway. Requests that arrive meanwhile wait in the
/// listener's backlog rather than getting a 503 from an empty view.
const FIRST_VIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// How long shutdown waits for the prediction log to write what is queued, flush and fsync.
const PREDICTION_LOG_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks the configuration as [`run`] will use it, so that a binary can refuse a bad config
/// before it binds and announces anything.
pub fn check(config: &CoordinatorConfig) -> anyhow::Result<()> {
    let etcd = config.etcd_endpoints()?;
    config.access()?;
    gateway_tls(config)?;
    config.rpc_tls.connector()?;
    config.prediction_log.check()?;
    load_specs(config, etcd.is_some()).map(drop)
}

/// The gateway's certificates, if `--tls-cert` and `--tls-key` are given.
fn gateway_tls(config: &CoordinatorConfig) -> anyhow::Result<Option<Arc<GatewayTls>>> {
    Ok(match config.tls.files()? {
        Some(files) => Some(GatewayTls::load(files)?),
        None => None,
    })
}

/// Running without keys is fine on loopback (a laptop, `chorus up`), and a mistake anywhere
/// else unless something in front authenticates: say so once, at start-up.
fn warn_if_open(access: &crate::access::Access, listeners: &Listeners) -> anyhow::Result<()> {
    let public = [&listeners.http, &listeners.grpc];
    if access.is_open() {
        for listener in public {
            let addr = listener.local_addr()?;
            if !addr.ip().is_loopback() {
                warn!(
                    addr = %addr,
                    "no --api-keys: anyone who can reach this address may call every model (docs/security.md)"
                );
            }
        }
    }
    Ok(())
}

/// Reloads the spec file on SIGHUP (docs/operations.md#canary-shadow-and-rollback): a file that
/// loads replaces the file's ensembles at once, all versions and splits together; one that does
/// not is logged and the specs in use stay. Requests already running keep the spec they started
/// with. The handler is installed before this returns, so a SIGHUP after start-up never takes
/// the signal's default action (exit).
fn reload_specs_on_hangup(
    config: &CoordinatorConfig,
    etcd: bool,
    catalog: &Catalog,
) -> JoinHandle<()> {
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let (reloads, follower) = {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        (tx, catalog.follow_file_specs(rx))
    };
    let path = config.ensembles.clone();
    tokio::spawn(async move {
        let _follower = AbortOnDrop(follower);
        let mut hangups = match hangups {
            Ok(hangups) => hangups,
            Err(e) => {
                warn!(error = %e, "cannot watch SIGHUP; the ensemble spec file will not be reloaded");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            match load_spec_file(&path, etcd) {
                Ok(specs) => {
                    info!(path = %path.display(), ensembles = specs.len(), reason = "SIGHUP", "ensemble spec file reloaded");
                    if reloads.send(specs).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!(path = %path.display(), reason = "SIGHUP", error = %e, "ensemble spec file not reloaded; keeping the specs in use")
                }
            }
        }
    })
}

/// Aborts a task when dropped (with the task that owns it).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The spec file's ensembles. Without etcd the file is required; with etcd it is optional, since
/// etcd can hold every spec.
fn load_specs(config: &CoordinatorConfig, etcd: bool) -> anyhow::Result<Vec<EnsembleSpec>> {
    load_spec_file(&config.ensembles, etcd)
}

fn load_spec_file(path: &std::path::Path, etcd: bool) -> anyhow::Result<Vec<EnsembleSpec>> {
    if etcd && !path.exists() {
        if path == std::path::Path::new(crate::config::DEFAULT_ENSEMBLES) {
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
        let settings = config.etcd_settings().with_connect(&config.etcd_connect);
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
