//! Helpers shared by the worker's in-process tests: the repo's models, a served worker, polling.

#![allow(dead_code)]

use chorus_common::WorkerServiceClient;
use chorus_common::transport::{DEFAULT_MAX_FRAME_BYTES, connect_worker};
use chorus_worker::{LoadedWorker, ProviderChoice, WorkerConfig};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The repository's sample models (`<repo root>/models`).
pub fn model_repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

/// A worker configuration for `models` of the repo's model repository.
pub fn config(models: &[&str], provider: ProviderChoice) -> WorkerConfig {
    WorkerConfig {
        model_repository: model_repository(),
        models: models.iter().map(|m| m.to_string()).collect(),
        worker_id: Some("test-worker".into()),
        execution_provider: provider,
        ..WorkerConfig::default()
    }
}

/// A worker serving on 127.0.0.1:0, with its client and the means to stop it.
pub struct Served {
    pub addr: SocketAddr,
    pub client: WorkerServiceClient,
    stop: Option<oneshot::Sender<()>>,
    pub server: JoinHandle<anyhow::Result<()>>,
}

impl Served {
    /// Resolves the shutdown future handed to `serve`.
    pub fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn serve(worker: LoadedWorker) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(worker.serve(listener, async {
        let _ = stopped.await;
    }));
    let client = connect_worker(addr, DEFAULT_MAX_FRAME_BYTES, Duration::from_secs(5))
        .await
        .unwrap();
    Served {
        addr,
        client,
        stop: Some(stop),
        server,
    }
}

/// Loads on the blocking pool, as the binary does.
pub async fn load(config: WorkerConfig) -> LoadedWorker {
    tokio::task::spawn_blocking(move || LoadedWorker::load(&config))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("loading the worker failed: {e}"))
}

/// Polls `check` until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A plain HTTP/1.1 GET; returns the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a full response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// `rows` rows of 64 deterministic features in [0, 16] (the digits data's range).
pub fn features(rows: usize, width: usize) -> Vec<f32> {
    (0..rows * width).map(|i| ((i * 7) % 17) as f32).collect()
}
