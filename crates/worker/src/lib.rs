//! Chorus worker: loads ONNX models from a Triton-style repository into ONNX Runtime sessions
//! (CPU or CUDA), and serves them over tarpc as `chorus_common::WorkerService`.
//!
//! The binary parses a [`WorkerConfig`], calls [`LoadedWorker::load`] (blocking: finds the ORT
//! library, loads and warms every model), binds a listener, hands it to
//! [`LoadedWorker::register`] (which registers the worker in etcd when `--etcd` is given),
//! optionally binds the `/metrics` listener and hands it to [`ReadyWorker::with_metrics_listener`],
//! and serves with [`ReadyWorker::serve`] until a shutdown future resolves. The binary reloads
//! the model repository on SIGHUP through [`ReadyWorker::reload_handle`] (see [`reload`]).

pub mod batch;
pub mod closable;
pub mod config;
pub mod convert;
pub mod error;
pub mod http;
pub mod loader;
pub mod local_socket;
pub mod metrics;
pub mod model_config;
pub mod ort_library;
pub mod pool;
pub mod registration;
pub mod registry;
pub mod reload;
pub mod repository;
pub mod rows;
pub mod rpc_tls;
pub mod server;
pub mod service;
pub mod session;
pub mod signature;

pub use config::{ProviderChoice, WorkerConfig};
pub use error::LoadError;
pub use registration::{Membership, RegistrationConfig, RegistrationError, RegistrationHandle};

use chorus_common::ModelInfo;
use local_socket::LocalSocket;
use metrics::Metrics;
use registration::Registration;
use registry::Registry;
use reload::{ReloadHandle, ReloadSettings, Reloader};
use server::LinkSettings;
use service::Shared;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A worker whose models are loaded and warmed up, ready to serve.
#[derive(Debug)]
pub struct LoadedWorker {
    worker_id: String,
    registry: Registry,
    reloader: Arc<Reloader>,
    metrics: Arc<Metrics>,
    links: LinkSettings,
    drain_timeout: Duration,
    advertise_addr: Option<String>,
    registration: Option<RegistrationConfig>,
    /// `--local-socket`, bound.
    local: Option<LocalSocket>,
}

impl LoadedWorker {
    /// Finds the ONNX Runtime library, loads the configured models and warms them up. Blocking:
    /// call it before starting to serve, or inside `spawn_blocking`.
    pub fn load(config: &WorkerConfig) -> Result<LoadedWorker, LoadError> {
        // TLS files first: a bad certificate should not wait for every model to load.
        let tls = config.rpc_tls.acceptor()?;
        let metrics = Arc::new(Metrics::new());
        let catalog = loader::load_catalog(config, &metrics)?;
        let reloader = Reloader::new(
            ReloadSettings::from_config(config),
            Arc::clone(&metrics),
            catalog.stamps,
        );
        Ok(LoadedWorker {
            worker_id: config.resolved_worker_id(),
            registry: catalog.registry,
            reloader: Arc::new(reloader),
            metrics,
            links: LinkSettings {
                max_frame_bytes: config.max_frame_bytes,
                tls,
            },
            drain_timeout: config.drain_timeout(),
            advertise_addr: config.advertise_addr.clone(),
            registration: config.registration(),
            local: None,
        })
    }

    /// Serves on `socket` too, and registers it for coordinators on this host (see
    /// [`local_socket`]). Call before [`LoadedWorker::register`].
    pub fn with_local_socket(self, socket: LocalSocket) -> Self {
        LoadedWorker {
            local: Some(socket),
            ..self
        }
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Every model version served, with signatures and the provider each runs on.
    pub fn models(&self) -> Vec<ModelInfo> {
        self.registry.infos()
    }

    /// Calls the worker runs at once (the sum of every model version's instances).
    pub fn capacity(&self) -> u32 {
        self.registry.capacity()
    }

    /// The worker's metrics (what `/metrics` serves).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Takes the bound `listener` and, when etcd is configured, registers the worker under
    /// `/chorus/v1/workers/{worker_id}` with its advertised address, models and capacity
    /// (retrying an unreachable etcd for up to `--etcd-give-up-ttls` TTLs). Fails if another
    /// process holds the worker id. Without etcd it only works out the advertised address.
    pub async fn register(self, listener: TcpListener) -> Result<ReadyWorker, RegistrationError> {
        let local = listener.local_addr().map_err(RegistrationError::Listener)?;
        let rpc_addr = config::advertised_addr(self.advertise_addr.as_deref(), local);
        let link = self.local.as_ref().and_then(LocalSocket::link);
        let shared = Arc::new(
            Shared::new(self.worker_id, rpc_addr, self.registry, self.metrics)
                .with_local_link(link),
        );
        let registration = match self.registration {
            Some(config) => Some(Registration::start(config, shared.info()).await?),
            None => None,
        };
        if let Some(registration) = &registration {
            shared.set_drain_publisher(registration.drain_publisher());
            self.reloader.set_publisher(registration.models_publisher());
        }
        let reload = ReloadHandle::new(self.reloader, Arc::clone(&shared));
        // Registered in etcd, or listed statically by coordinators.
        shared.set_lease_lost(false);
        Ok(ReadyWorker {
            shared,
            reload,
            listener,
            local: self.local,
            metrics_listener: None,
            links: self.links,
            drain_timeout: self.drain_timeout,
            registration,
        })
    }

    /// [`LoadedWorker::register`], then [`ReadyWorker::serve`].
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        self.register(listener).await?.serve(shutdown).await
    }
}

/// A worker that is listening and, with etcd, registered: ready to serve.
#[derive(Debug)]
pub struct ReadyWorker {
    shared: Arc<Shared>,
    reload: ReloadHandle,
    listener: TcpListener,
    local: Option<LocalSocket>,
    metrics_listener: Option<TcpListener>,
    links: LinkSettings,
    drain_timeout: Duration,
    registration: Option<RegistrationHandle>,
}

impl ReadyWorker {
    /// The address other processes dial (`--advertise-addr` or the listener's), as registered
    /// in etcd and reported in metadata.
    pub fn rpc_addr(&self) -> &str {
        &self.shared.rpc_addr
    }

    pub fn worker_id(&self) -> &str {
        &self.shared.worker_id
    }

    /// The address the RPC listener is bound to (differs from [`ReadyWorker::rpc_addr`] behind
    /// a proxy or NAT).
    pub fn listen_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// The Unix socket's path, with `--local-socket`.
    pub fn local_socket(&self) -> Option<&std::path::Path> {
        self.local.as_ref().map(LocalSocket::path)
    }

    /// Reloads the model repository while the worker serves (what the binary calls on SIGHUP;
    /// `POST /admin/reload` on the metrics listener calls the same).
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    /// The etcd registration, when etcd is configured.
    pub fn registration(&self) -> Option<&RegistrationHandle> {
        self.registration.as_ref()
    }

    /// The worker's metrics (what `/metrics` serves).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Serves `/metrics`, `/health` and `POST /admin/reload` on `listener` while the worker
    /// serves (see [`http`]); `/health` answers 503 from the start of the drain.
    pub fn with_metrics_listener(mut self, listener: TcpListener) -> Self {
        self.metrics_listener = Some(listener);
        self
    }

    /// The address of the `/metrics` listener, when there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves RPCs until `shutdown` resolves, then (with etcd) marks the worker draining in etcd,
    /// drains in-flight calls (bounded by the configured drain timeout), revokes the lease and
    /// returns `Ok`. Returns an error if the etcd registration is lost for good.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let http = self.metrics_listener.map(|listener| {
            let state = http::HttpState::new(Arc::clone(&self.shared), Some(self.reload.clone()));
            tokio::spawn(http::serve(listener, state, async {
                let _ = http_stopped.await;
            }))
        });
        let result = server::run_registered(
            self.shared,
            server::Listeners {
                tcp: self.listener,
                local: self.local,
            },
            self.links,
            self.drain_timeout,
            self.registration,
            shutdown,
        )
        .await;
        let _ = stop_http.send(());
        if let Some(mut http) = http {
            // Scrapers keep connections open; do not let one hold the exit up.
            match tokio::time::timeout(Duration::from_secs(2), &mut http).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the metrics listener failed"),
                Ok(Err(e)) => tracing::warn!(error = %e, "the metrics listener panicked"),
                Err(_) => http.abort(),
            }
        }
        result
    }
}
