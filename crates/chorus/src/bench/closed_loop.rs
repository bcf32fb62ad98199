//! Closed-loop load: N clients, each with its own keep-alive connection (HTTP/1.1 or HTTP/2),
//! each sending its next request as soon as the previous one is answered.

use super::args::Protocol;
use super::client::{Client, Endpoint, judge, open_clients};
use super::payload::Payload;
use super::stats::Recorder;
use anyhow::Context;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// What every Chorus run shares: where and how to send, what to send, and for how long.
#[derive(Debug, Clone)]
pub struct HttpRun {
    pub endpoint: Endpoint,
    pub protocol: Protocol,
    /// gRPC only: HTTP/2 connections the clients share.
    pub grpc_connections: usize,
    /// Distinct pre-encoded bodies; clients cycle through them.
    pub payloads: Arc<Vec<Payload>>,
    pub timeout: Duration,
    /// Check every Nth answer of each client against the fixture (0: never).
    pub verify_every: u64,
    pub warmup: Duration,
    pub duration: Duration,
}

/// The measured part of a run: requests *sent* in `[from, until)` count, and are waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: Instant,
    pub until: Instant,
}

impl Window {
    pub fn starting_now(warmup: Duration, duration: Duration) -> Window {
        let from = Instant::now() + warmup;
        Window {
            from,
            until: from + duration,
        }
    }
}

impl HttpRun {
    /// Whether a client's `n`th request (from 0) is checked.
    pub fn checks(&self, n: u64) -> bool {
        self.verify_every > 0 && n.is_multiple_of(self.verify_every)
    }
}

/// Runs `concurrency` clients for the warm-up and the measured time; returns the merged recording.
pub async fn run(run: &HttpRun, concurrency: usize) -> anyhow::Result<Recorder> {
    let clients = open_clients(
        &run.endpoint,
        run.protocol,
        concurrency,
        run.grpc_connections,
    )
    .await
    .with_context(|| format!("cannot reach {}", run.endpoint.url_of(run.protocol)))?;
    let window = Window::starting_now(run.warmup, run.duration);
    let mut tasks = JoinSet::new();
    for (index, client) in clients.into_iter().enumerate() {
        let run = run.clone();
        // Clients start at different bodies so that they do not send the same rows in step.
        let first = index * run.payloads.len() / concurrency;
        tasks.spawn(client_loop(run, client, first, window));
    }
    let mut total = Recorder::new();
    while let Some(recorder) = tasks.join_next().await {
        total.merge(&recorder.context("a benchmark client panicked")?);
    }
    Ok(total)
}

async fn client_loop(run: HttpRun, mut client: Client, first: usize, window: Window) -> Recorder {
    let mut recorder = Recorder::new();
    let payloads = &run.payloads;
    for n in 0u64.. {
        let sent = Instant::now();
        if sent >= window.until {
            break;
        }
        let payload = &payloads[(first + n as usize) % payloads.len()];
        let answer = client.send(payload, run.timeout, run.checks(n)).await;
        let latency = sent.elapsed();
        if sent >= window.from {
            match judge(answer, payload.expected.as_deref()) {
                Ok(()) => recorder.answered(latency, payload.rows),
                Err(failure) => recorder.failed_after(failure, latency),
            }
        }
    }
    recorder
}
