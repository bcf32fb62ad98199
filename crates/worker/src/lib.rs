//! Chorus worker: loads ONNX models from a Triton-style repository into ONNX Runtime sessions
//! (CPU or CUDA), and serves them over tarpc as `chorus_common::WorkerService`.
//!
//! The binary parses a [`WorkerConfig`], calls [`LoadedWorker::load`] (blocking: finds the ORT
//! library, loads and warms every model), binds a listener and hands it to
//! [`LoadedWorker::serve`] with a shutdown future.

pub mod closable;
pub mod config;
pub mod convert;
pub mod error;
pub mod loader;
pub mod model_config;
pub mod ort_library;
pub mod pool;
pub mod registry;
pub mod repository;
pub mod server;
pub mod service;
pub mod session;
pub mod signature;

pub use config::{ProviderChoice, WorkerConfig};
pub use error::LoadError;

use chorus_common::ModelInfo;
use registry::Registry;
use service::Shared;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A worker whose models are loaded and warmed up, ready to serve.
#[derive(Debug)]
pub struct LoadedWorker {
    worker_id: String,
    registry: Registry,
    max_frame_bytes: usize,
    drain_timeout: Duration,
}

impl LoadedWorker {
    /// Finds the ONNX Runtime library, loads the configured models and warms them up. Blocking:
    /// call it before starting to serve, or inside `spawn_blocking`.
    pub fn load(config: &WorkerConfig) -> Result<LoadedWorker, LoadError> {
        let registry = loader::load_registry(config)?;
        Ok(LoadedWorker {
            worker_id: config.resolved_worker_id(),
            registry,
            max_frame_bytes: config.max_frame_bytes,
            drain_timeout: config.drain_timeout(),
        })
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

    /// Serves RPCs on `listener` until `shutdown` resolves, then drains in-flight calls (bounded by
    /// the configured drain timeout) and returns. The worker's `rpc_addr` is the listener's
    /// local address.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let rpc_addr = listener.local_addr()?.to_string();
        let shared = Arc::new(Shared::new(self.worker_id, rpc_addr, self.registry));
        server::run(
            shared,
            listener,
            self.max_frame_bytes,
            self.drain_timeout,
            shutdown,
        )
        .await
    }
}
