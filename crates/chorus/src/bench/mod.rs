//! `chorus bench`: drives a coordinator over OIP v2 REST or gRPC (closed loop at given concurrency
//! levels, open loop at fixed arrival rates; JSON/typed or binary/raw tensors; single- or
//! multi-row requests) and
//! measures the in-process floor, the same ensemble on ONNX Runtime with no network in between.
//! Prints each run's requests/s, rows/s, latency percentiles and errors, a Markdown table at the
//! end, and writes everything as JSON with `--json-out`. See docs/benchmarks.md.

mod args;
mod client;
mod closed_loop;
mod cluster;
mod floor;
mod grpc_client;
mod open_loop;
mod payload;
mod plan;
mod procfs;
mod report;
mod stats;

pub use args::BenchArgs;

use crate::child::GlobalFlags;
use crate::cluster_config::ClusterConfig;
use anyhow::{Context, bail};
use args::{Encoding, Protocol};
use client::Endpoint;
use closed_loop::HttpRun;
use cluster::SpawnedCluster;
use floor::Floor;
use payload::{Fixture, Payload};
use plan::{Load, RunSpec, Target};
use procfs::Watched;
use report::{BenchReport, Machine, RunReport};
use stats::Recorder;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs the benchmark on its own small runtime (the load generator must leave the cores to the
/// cluster it measures).
pub fn main(args: BenchArgs, global: GlobalFlags) -> anyhow::Result<()> {
    let runs = plan::expand(&args).map_err(anyhow::Error::msg)?;
    // One thread: a current-thread runtime, so that no wake-up ever crosses threads.
    let mut builder = if args.client_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(usize::from(args.client_threads));
        b
    };
    let runtime = builder
        .thread_name("bench-client")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(args, runs, global))
}

async fn run(args: BenchArgs, runs: Vec<RunSpec>, global: GlobalFlags) -> anyhow::Result<()> {
    let fixture = Fixture::load(&args.fixture, &args.model)?;
    if fixture.labels.is_none() && args.verify_every > 0 {
        eprintln!(
            "note: {} has no expected labels for '{}'; answers are not checked",
            args.fixture.display(),
            args.model
        );
    }
    let machine = Machine::this();
    println!(
        "chorus bench: {} runs of {} (+{} warm-up) each on {} cores ({})",
        runs.len(),
        humantime(args.duration),
        humantime(args.warmup),
        machine.nproc,
        machine.cpu_model
    );
    let floor = if runs.iter().any(|r| r.target == Target::Floor) {
        Some(load_floor(&args).await?)
    } else {
        None
    };
    let wants_chorus = runs.iter().any(|r| r.target != Target::Floor);
    let cluster = if wants_chorus && args.spawn {
        Some(SpawnedCluster::start(&args, global).await?)
    } else {
        None
    };
    let outcome = run_all(&args, &runs, &fixture, floor, cluster.as_ref()).await;
    let workers = cluster
        .as_ref()
        .map(|c| c.plan.iter().cloned().collect())
        .unwrap_or_default();
    if let Some(cluster) = cluster {
        cluster.stop().await;
    }
    let reports = outcome?;
    println!("\n{}", report::markdown(&reports));
    if let Some(path) = &args.json_out {
        let document = BenchReport {
            chorus_version: env!("CARGO_PKG_VERSION"),
            command: std::env::args().collect(),
            machine,
            workers,
            runs: reports,
        };
        let text = serde_json::to_string_pretty(&document)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("results written to {}", path.display());
    }
    Ok(())
}

async fn load_floor(args: &BenchArgs) -> anyhow::Result<Arc<Floor>> {
    let cluster = ClusterConfig::load(&args.config)?;
    let model = args.model.clone();
    let floor = tokio::task::spawn_blocking(move || {
        Floor::load(&cluster.model_repository, &cluster.ensembles, &model)
    })
    .await
    .context("loading the floor panicked")??;
    println!(
        "floor: {} loaded in process ({})",
        args.model,
        floor.member_names().join(", ")
    );
    Ok(Arc::new(floor))
}

/// Every run in order; Chorus runs go to the spawned cluster or `--target`.
async fn run_all(
    args: &BenchArgs,
    runs: &[RunSpec],
    fixture: &Fixture,
    floor: Option<Arc<Floor>>,
    cluster: Option<&SpawnedCluster>,
) -> anyhow::Result<Vec<RunReport>> {
    let endpoint = match cluster {
        Some(c) => Some(Endpoint::new(c.http_addr, c.grpc_addr, &args.model)),
        None if runs.iter().any(|r| r.target != Target::Floor) => {
            Some(Endpoint::resolve(&args.target, &args.grpc_target, &args.model).await?)
        }
        None => None,
    };
    if let Some(endpoint) = &endpoint {
        preflight(endpoint, fixture, args).await?;
    }
    let mut watched = cluster.map(SpawnedCluster::watched).unwrap_or_default();
    watched.extend(args.watch_pid.iter().map(|&pid| Watched::by_pid(pid)));
    watched.push(Watched::this("bench (load generator)"));
    let floor_process = [Watched::this("floor (this process)")];
    let mut bodies: HashMap<(usize, Protocol, Encoding), Arc<Vec<Payload>>> = HashMap::new();
    let mut reports = Vec::with_capacity(runs.len());
    for (index, spec) in runs.iter().enumerate() {
        if index > 0 {
            tokio::time::sleep(args.pause).await;
        }
        let load_average = report::load_average();
        let watch: Arc<[Watched]> = match spec.target {
            Target::Floor => floor_process.as_slice().into(),
            Target::Chorus { .. } => watched.as_slice().into(),
        };
        let reset = procfs::reset_peaks(&watch);
        // CPU time is read when the warm-up ends, while the run goes on.
        let cpu_from = {
            let (watch, warmup) = (Arc::clone(&watch), args.warmup);
            tokio::spawn(async move {
                tokio::time::sleep(warmup).await;
                (Instant::now(), procfs::cpu_mark(&watch))
            })
        };
        let (recorder, pacing, url) = match spec.target {
            Target::Floor => {
                let floor = floor.as_ref().expect("loaded when the plan has floor runs");
                (run_floor(args, spec, fixture, floor).await?, None, None)
            }
            Target::Chorus { protocol, encoding } => {
                let endpoint = endpoint
                    .as_ref()
                    .expect("resolved when the plan has Chorus runs");
                let payloads = bodies
                    .entry((spec.rows, protocol, encoding))
                    .or_insert_with(|| {
                        Arc::new(fixture.payloads(
                            spec.rows,
                            protocol,
                            encoding,
                            args.compression,
                            &args.model,
                            &args.input_name,
                        ))
                    })
                    .clone();
                let (recorder, pacing) =
                    run_chorus(args, spec, endpoint, protocol, payloads).await?;
                (recorder, pacing, Some(endpoint.url_of(protocol)))
            }
        };
        let cpu_to = procfs::cpu_mark(&watch);
        let (cpu_from_at, cpu_from) = cpu_from.await.context("the CPU sampler panicked")?;
        let (results, errors) = recorder.summary(args.duration);
        let processes = procfs::usage(&watch, &reset, &cpu_from, &cpu_to, results.requests);
        let interference =
            procfs::interference(&cpu_from, &cpu_to, cpu_from_at.elapsed().as_secs_f64());
        let report = RunReport {
            label: args.label.clone(),
            target: spec.target,
            compression: args.compression,
            url,
            model: args.model.clone(),
            load: spec.load,
            rows: spec.rows,
            duration_s: args.duration.as_secs_f64(),
            warmup_s: args.warmup.as_secs_f64(),
            client_threads: (spec.target != Target::Floor).then_some(args.client_threads),
            max_outstanding: matches!(spec.load, Load::Open { .. }).then_some(args.max_outstanding),
            timeout_s: args.timeout.as_secs_f64(),
            load_average,
            results,
            errors,
            pacing,
            processes,
            interference,
        };
        println!("[{}/{}] {}", index + 1, runs.len(), report.line());
        reports.push(report);
    }
    Ok(reports)
}

/// One Chorus run, closed or open loop.
async fn run_chorus(
    args: &BenchArgs,
    spec: &RunSpec,
    endpoint: &Endpoint,
    protocol: Protocol,
    payloads: Arc<Vec<Payload>>,
) -> anyhow::Result<(Recorder, Option<open_loop::Pacing>)> {
    let http = HttpRun {
        endpoint: endpoint.clone(),
        protocol,
        grpc_connections: usize::from(args.grpc_connections),
        payloads,
        timeout: args.timeout,
        verify_every: args.verify_every,
        warmup: args.warmup,
        duration: args.duration,
    };
    Ok(match spec.load {
        Load::Closed { concurrency } => (closed_loop::run(&http, concurrency).await?, None),
        Load::Open { rate } => {
            let (recorder, pacing) = open_loop::run(&http, rate, args.max_outstanding).await?;
            (recorder, Some(pacing))
        }
    })
}

/// One floor run: the floor's threads block, so they run off the async runtime.
async fn run_floor(
    args: &BenchArgs,
    spec: &RunSpec,
    fixture: &Fixture,
    floor: &Arc<Floor>,
) -> anyhow::Result<Recorder> {
    let Load::Closed { concurrency } = spec.load else {
        bail!("the floor runs closed-loop only");
    };
    let inputs: floor::Inputs = Arc::new(fixture.tensors(spec.rows, &args.input_name));
    let floor = Arc::clone(floor);
    let (warmup, duration, verify) = (args.warmup, args.duration, args.verify_every);
    tokio::task::spawn_blocking(move || {
        floor::run(&floor, &inputs, concurrency, warmup, duration, verify)
    })
    .await
    .context("a floor run panicked")
}

/// One request before the runs, so that a wrong target, model or input fails with the server's
/// own words instead of a run full of errors; over gRPC too when a run uses it.
async fn preflight(endpoint: &Endpoint, fixture: &Fixture, args: &BenchArgs) -> anyhow::Result<()> {
    let payload = &fixture.bodies(1, Encoding::Json, &args.input_name)[0];
    let payload::Wire::Http { body, .. } = &payload.wire else {
        unreachable!("bodies() encodes HTTP requests");
    };
    let response = reqwest::Client::new()
        .post(endpoint.url())
        .header("content-type", "application/json")
        .body(body.clone())
        .timeout(args.timeout)
        .send()
        .await
        .with_context(|| format!("cannot reach {}", endpoint.url()))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        bail!(
            "{} answered {status} to a one-row request: {text}",
            endpoint.url()
        );
    }
    if args.protocol.contains(&Protocol::Grpc) {
        let payloads = fixture.payloads(
            1,
            Protocol::Grpc,
            Encoding::Binary,
            args::Compression::None,
            &args.model,
            &args.input_name,
        );
        let payload::Wire::Grpc(message) = &payloads[0].wire else {
            unreachable!("a gRPC payload");
        };
        let url = endpoint.url_of(Protocol::Grpc);
        let mut client = grpc_client::GrpcClient::new(endpoint.grpc);
        client
            .connect()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        if let client::Answer::Failed(failure) = client.send(message, args.timeout, false).await {
            bail!("{url} failed a one-row request: {failure:?}");
        }
    }
    Ok(())
}

/// `10s`, `500ms`.
fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
