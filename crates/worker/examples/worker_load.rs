//! Drives one in-process worker over tarpc (loopback) with closed-loop clients and prints
//! requests/s, rows/s, latency percentiles and ONNX Runtime runs: a quick way to see what dynamic
//! batching does for the worker alone, without a coordinator in the way.
//!
//! ```text
//! cargo run --release -p chorus-worker --example worker_load -- --models logreg --concurrency 64
//! cargo run --release -p chorus-worker --example worker_load -- --models logreg --concurrency 64 \
//!     --max-batch-size 32 --max-queue-delay-us 0
//! ```

use chorus_common::transport::{DEFAULT_MAX_FRAME_BYTES, connect_worker};
use chorus_common::{InferCall, Tensor};
use chorus_worker::{LoadedWorker, WorkerConfig};
use clap::Parser;
use std::time::{Duration, Instant};
use tarpc::context;
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    worker: WorkerConfig,
    /// Concurrent closed-loop clients (each waits for its answer before sending again).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Rows per request.
    #[arg(long, default_value_t = 1)]
    rows: usize,
    /// Connections the clients share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Measured seconds (after one second of warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.worker.models.is_empty() {
        args.worker.models = vec!["logreg".into()];
    }
    args.worker.execution_provider = chorus_worker::ProviderChoice::Cpu;
    // As the binary does, so that each call's span costs what it costs in production.
    chorus_common::telemetry::init(false);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let model = args.worker.models[0].clone();
    let config = args.worker.clone();
    let worker = tokio::task::spawn_blocking(move || LoadedWorker::load(&config)).await??;
    let width = worker
        .models()
        .iter()
        .find(|m| m.name == model)
        .and_then(|m| m.inputs[0].shape.get(1).copied())
        .unwrap_or(64) as usize;
    let metrics = std::sync::Arc::clone(worker.metrics());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(worker.serve(listener, async {
        let _ = stopped.await;
    }));
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        clients.push(connect_worker(addr, DEFAULT_MAX_FRAME_BYTES, Duration::from_secs(5)).await?);
    }
    let values: Vec<f32> = (0..args.rows * width).map(|i| (i % 17) as f32).collect();
    let input = Tensor::from_values("input", vec![args.rows as i64, width as i64], &values);
    let warm_until = Instant::now() + Duration::from_secs(1);
    let end = warm_until + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|i| {
            let client = clients[i % clients.len()].clone();
            let (model, input) = (model.clone(), input.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < end {
                    let call = InferCall {
                        model: model.clone(),
                        version: None,
                        inputs: vec![input.clone()],
                        outputs: vec![],
                        request_id: String::new(),
                        trace_context: None,
                    };
                    let sent = Instant::now();
                    client.infer(context::current(), call).await??;
                    if sent >= warm_until {
                        latencies.push(sent.elapsed());
                    }
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let _ = stop.send(());
    server.await??;
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let rate = latencies.len() as f64 / args.seconds as f64;
    let text = metrics.encode();
    let value = |series: String| {
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str())?.strip_prefix(' '))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let runs = value(format!(
        r#"chorus_worker_batch_size_count{{model="{model}"}}"#
    ));
    let rows = value(format!(
        r#"chorus_worker_batch_size_sum{{model="{model}"}}"#
    ));
    println!(
        "{model} max_batch_size={} delay_us={} c={} rows={}: {rate:.0} req/s, {:.0} rows/s, p50 {:.3} ms, p99 {:.3} ms, {:.1} rows per ORT run",
        args.worker.max_batch_size,
        args.worker.max_queue_delay_us,
        args.concurrency,
        args.rows,
        rate * args.rows as f64,
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        if runs > 0.0 { rows / runs } else { 0.0 },
    );
    Ok(())
}
