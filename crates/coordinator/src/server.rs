//! Wiring: specs, membership, pool, catalog and the HTTP gateway, served until `shutdown`.

use crate::catalog::Catalog;
use crate::config::CoordinatorConfig;
use crate::http::{self, App};
use crate::membership;
use crate::pool::{Pool, PoolSettings};
use crate::spec;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::info;

/// Serves the coordinator on `listener` until `shutdown` completes. The caller binds the
/// listener (tests hand in port 0) and owns signal handling.
pub async fn run(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let specs = spec::load(&config.ensembles)?;
    info!(path = %config.ensembles.display(), ensembles = specs.len(), "ensemble specs loaded");
    let pool = Pool::new(PoolSettings {
        max_frame_bytes: config.max_frame_bytes,
        ping_interval: config.ping_interval(),
        eject_after_failures: config.eject_after_failures.max(1),
        connect_timeout: Duration::from_secs(2),
    });
    let follower = pool.follow(membership::static_list(&config.workers));
    let app = Arc::new(App::new(
        Catalog::new(specs, Arc::clone(&pool)),
        config.max_body_bytes,
        config.model_deadline(),
    ));
    info!(addr = %listener.local_addr()?, workers = config.workers.len(), "coordinator serving");
    axum::serve(listener, http::router(app))
        .with_graceful_shutdown(shutdown)
        .await?;
    follower.abort();
    info!("coordinator stopped");
    Ok(())
}
