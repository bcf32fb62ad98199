//! The worker's Prometheus metrics (`chorus_worker_*`), served as text at `/metrics`.
//!
//! Per-model handles ([`ModelMetrics`]) are resolved once when a model loads, so the hot path
//! only bumps atomics and never looks a label set up.

use chorus_common::WorkerError;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Content type of [`Metrics::encode`]'s output (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How an inference call ended, the `outcome` label of `chorus_worker_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    InvalidInput,
    Overloaded,
    DeadlineExceeded,
    Draining,
    Internal,
    /// The call named a model or version this worker does not serve.
    ModelNotFound,
}

impl Outcome {
    /// The outcomes of calls that reached a loaded model version.
    pub const SERVED: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::InvalidInput,
        Outcome::Overloaded,
        Outcome::DeadlineExceeded,
        Outcome::Draining,
        Outcome::Internal,
    ];

    pub fn of<T>(result: &Result<T, WorkerError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Ok,
            Err(WorkerError::InvalidInput(_)) => Outcome::InvalidInput,
            Err(WorkerError::Overloaded(_)) => Outcome::Overloaded,
            Err(WorkerError::DeadlineExceeded) => Outcome::DeadlineExceeded,
            Err(WorkerError::Draining) => Outcome::Draining,
            Err(WorkerError::Internal(_)) => Outcome::Internal,
            Err(WorkerError::ModelNotFound { .. }) => Outcome::ModelNotFound,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::InvalidInput => "invalid_input",
            Outcome::Overloaded => "overloaded",
            Outcome::DeadlineExceeded => "deadline_exceeded",
            Outcome::Draining => "draining",
            Outcome::Internal => "internal",
            Outcome::ModelNotFound => "model_not_found",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    model: String,
    version: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProviderLabels {
    model: String,
    version: String,
    provider: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ArenaLabels {
    model: String,
    version: String,
    device: String,
    instance: String,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// Seconds from 5 µs to about 1.3 s: cheap models run in microseconds, batches in milliseconds.
fn duration_histogram() -> Histogram {
    Histogram::new([
        5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1,
        0.25, 0.5, 1.0,
    ])
}

/// Rows per run: powers of two up to 1024.
fn batch_histogram() -> Histogram {
    Histogram::new((0..=10).map(|p| f64::from(1u32 << p)))
}

/// Every metric a worker exports, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    inference: HistogramFamily<ModelLabel>,
    queue: HistogramFamily<ModelLabel>,
    batch_size: HistogramFamily<ModelLabel>,
    queue_depth: Family<ModelLabel, Gauge>,
    provider: Family<ProviderLabels, Gauge>,
    gpu_memory: Family<ArenaLabels, Gauge>,
    inflight: Gauge,
    registered: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("chorus_worker");
        let requests = Family::<RequestLabels, Counter>::default();
        let inference = HistogramFamily::new_with_constructor(duration_histogram as fn() -> _);
        let queue = HistogramFamily::new_with_constructor(duration_histogram as fn() -> _);
        let batch_size = HistogramFamily::new_with_constructor(batch_histogram as fn() -> _);
        let queue_depth = Family::<ModelLabel, Gauge>::default();
        let provider = Family::<ProviderLabels, Gauge>::default();
        let gpu_memory = Family::<ArenaLabels, Gauge>::default();
        let inflight = Gauge::default();
        let registered = Gauge::default();
        registry.register(
            "requests",
            "Inference calls answered, by model, version and outcome",
            requests.clone(),
        );
        registry.register(
            "inference_duration_seconds",
            "Time ONNX Runtime spent in one run (one request, or one batch of them)",
            inference.clone(),
        );
        registry.register(
            "queue_duration_seconds",
            "Time from a request's queueing to the start of the run that serves it",
            queue.clone(),
        );
        registry.register(
            "batch_size",
            "Rows per ONNX Runtime run",
            batch_size.clone(),
        );
        registry.register(
            "inflight",
            "Inference calls accepted and not yet answered",
            inflight.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests queued for a model, not yet running",
            queue_depth.clone(),
        );
        registry.register(
            "execution_provider",
            "Execution provider each model version runs on (always 1)",
            provider.clone(),
        );
        registry.register(
            "gpu_memory_in_use_bytes",
            "Bytes in use in the CUDA memory arena of each instance of a model version on a GPU, sampled at most once a second after a run",
            gpu_memory.clone(),
        );
        registry.register(
            "registered",
            "1 while the worker is registered (in etcd, or statically listed without etcd), 0 while its etcd lease is lost",
            registered.clone(),
        );
        Metrics {
            registry,
            requests,
            inference,
            queue,
            batch_size,
            queue_depth,
            provider,
            gpu_memory,
            inflight,
            registered,
        }
    }

    /// The handles of one model version, created (at zero) if need be.
    pub fn model(&self, model: &str, version: &str) -> ModelMetrics {
        let by_model = ModelLabel {
            model: model.to_string(),
        };
        let requests = Outcome::SERVED.map(|outcome| {
            self.requests.get_or_create_owned(&RequestLabels {
                model: model.to_string(),
                version: version.to_string(),
                outcome: outcome.as_str(),
            })
        });
        ModelMetrics {
            requests,
            inference: self.inference.get_or_create_owned(&by_model),
            queue: self.queue.get_or_create_owned(&by_model),
            batch_size: self.batch_size.get_or_create_owned(&by_model),
            queue_depth: self.queue_depth.get_or_create_owned(&by_model),
        }
    }

    /// Counts a call naming a model or version this worker does not serve. The model label is
    /// left empty: callers choose those names, and a label per name would grow without bound.
    pub fn count_unknown_model(&self, outcome: Outcome) {
        self.requests
            .get_or_create(&RequestLabels {
                model: String::new(),
                version: String::new(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Records the provider a model version runs on.
    pub fn set_provider(&self, model: &str, version: &str, provider: &str) {
        self.provider
            .get_or_create(&ProviderLabels {
                model: model.to_string(),
                version: version.to_string(),
                provider: provider.to_string(),
            })
            .set(1);
    }

    /// The GPU arena gauge of one instance of a model version on `device` (`cuda:<id>`).
    pub fn gpu_memory(&self, model: &str, version: &str, device: &str, instance: usize) -> Gauge {
        self.gpu_memory.get_or_create_owned(&ArenaLabels {
            model: model.to_string(),
            version: version.to_string(),
            device: device.to_string(),
            instance: instance.to_string(),
        })
    }

    pub fn inflight(&self) -> &Gauge {
        &self.inflight
    }

    pub fn set_registered(&self, registered: bool) {
        self.registered.set(i64::from(registered));
    }

    /// Every metric in the OpenMetrics text format, ending in `# EOF`.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// One model version's metric handles, cloned into its pool and its instance threads.
#[derive(Debug, Clone)]
pub struct ModelMetrics {
    /// By [`Outcome::SERVED`] order.
    requests: [Counter; Outcome::SERVED.len()],
    /// `chorus_worker_inference_duration_seconds{model}`.
    pub inference: Histogram,
    /// `chorus_worker_queue_duration_seconds{model}`.
    pub queue: Histogram,
    /// `chorus_worker_batch_size{model}`.
    pub batch_size: Histogram,
    /// `chorus_worker_queue_depth{model}` (shared by the model's versions).
    pub queue_depth: Gauge,
}

impl ModelMetrics {
    /// Handles registered nowhere, for pools built outside a worker (tests).
    pub fn detached() -> Self {
        ModelMetrics {
            requests: Default::default(),
            inference: duration_histogram(),
            queue: duration_histogram(),
            batch_size: batch_histogram(),
            queue_depth: Gauge::default(),
        }
    }

    /// Counts a call to this version. A version that was found cannot be `ModelNotFound`;
    /// such calls are counted by [`Metrics::count_unknown_model`].
    pub fn count(&self, outcome: Outcome) {
        if let Some(i) = Outcome::SERVED.iter().position(|&o| o == outcome) {
            self.requests[i].inc();
        }
    }

    pub fn observe_run(&self, elapsed: Duration, rows: usize) {
        self.inference.observe(elapsed.as_secs_f64());
        self.batch_size.observe(rows as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line starting with `series` (name and labels), if any.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    #[test]
    fn outcomes_follow_worker_errors() {
        let cases: [(Result<(), WorkerError>, &str); 7] = [
            (Ok(()), "ok"),
            (Err(WorkerError::InvalidInput("x".into())), "invalid_input"),
            (Err(WorkerError::Overloaded("x".into())), "overloaded"),
            (Err(WorkerError::DeadlineExceeded), "deadline_exceeded"),
            (Err(WorkerError::Draining), "draining"),
            (Err(WorkerError::Internal("x".into())), "internal"),
            (
                Err(WorkerError::ModelNotFound {
                    model: "m".into(),
                    version: None,
                }),
                "model_not_found",
            ),
        ];
        for (result, name) in cases {
            assert_eq!(Outcome::of(&result).as_str(), name);
        }
        assert!(!Outcome::SERVED.contains(&Outcome::ModelNotFound));
    }

    #[test]
    fn every_metric_is_encoded_with_its_labels() {
        let metrics = Metrics::new();
        let logreg = metrics.model("logreg", "1");
        logreg.count(Outcome::Ok);
        logreg.count(Outcome::Ok);
        logreg.count(Outcome::Overloaded);
        logreg.observe_run(Duration::from_micros(30), 8);
        logreg.queue.observe(0.0002);
        logreg.queue_depth.inc();
        metrics.count_unknown_model(Outcome::ModelNotFound);
        metrics.set_provider("logreg", "1", "cpu");
        metrics.inflight().inc();
        metrics.set_registered(true);
        let text = metrics.encode();

        let ok = r#"chorus_worker_requests_total{model="logreg",version="1",outcome="ok"}"#;
        assert_eq!(sample(&text, ok), Some(2.0), "{text}");
        let over =
            r#"chorus_worker_requests_total{model="logreg",version="1",outcome="overloaded"}"#;
        assert_eq!(sample(&text, over), Some(1.0));
        // Every outcome of a loaded model exists from the start, at zero.
        let internal =
            r#"chorus_worker_requests_total{model="logreg",version="1",outcome="internal"}"#;
        assert_eq!(sample(&text, internal), Some(0.0));
        let unknown =
            r#"chorus_worker_requests_total{model="",version="",outcome="model_not_found"}"#;
        assert_eq!(sample(&text, unknown), Some(1.0));
        let never =
            r#"chorus_worker_requests_total{model="logreg",version="1",outcome="model_not_found"}"#;
        assert_eq!(sample(&text, never), None);
        let runs = r#"chorus_worker_inference_duration_seconds_count{model="logreg"}"#;
        assert_eq!(sample(&text, runs), Some(1.0));
        let fast = r#"chorus_worker_inference_duration_seconds_bucket{le="5e-5",model="logreg"}"#;
        let fast_alt =
            r#"chorus_worker_inference_duration_seconds_bucket{le="0.00005",model="logreg"}"#;
        assert!(
            sample(&text, fast).or(sample(&text, fast_alt)) == Some(1.0),
            "{text}"
        );
        let rows = r#"chorus_worker_batch_size_sum{model="logreg"}"#;
        assert_eq!(sample(&text, rows), Some(8.0));
        let queued = r#"chorus_worker_queue_duration_seconds_count{model="logreg"}"#;
        assert_eq!(sample(&text, queued), Some(1.0));
        let depth = r#"chorus_worker_queue_depth{model="logreg"}"#;
        assert_eq!(sample(&text, depth), Some(1.0));
        let provider =
            r#"chorus_worker_execution_provider{model="logreg",version="1",provider="cpu"}"#;
        assert_eq!(sample(&text, provider), Some(1.0));
        metrics.gpu_memory("logreg", "1", "cuda:0", 0).set(4096);
        let text = metrics.encode();
        let arena = r#"chorus_worker_gpu_memory_in_use_bytes{model="logreg",version="1",device="cuda:0",instance="0"}"#;
        assert_eq!(sample(&text, arena), Some(4096.0));
        assert_eq!(sample(&text, "chorus_worker_inflight"), Some(1.0));
        assert_eq!(sample(&text, "chorus_worker_registered"), Some(1.0));
        for (name, kind) in [
            ("chorus_worker_requests", "counter"),
            ("chorus_worker_inference_duration_seconds", "histogram"),
            ("chorus_worker_queue_duration_seconds", "histogram"),
            ("chorus_worker_batch_size", "histogram"),
            ("chorus_worker_inflight", "gauge"),
            ("chorus_worker_queue_depth", "gauge"),
            ("chorus_worker_execution_provider", "gauge"),
            ("chorus_worker_gpu_memory_in_use_bytes", "gauge"),
            ("chorus_worker_registered", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}: {text}"
            );
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn versions_of_a_model_share_its_per_model_series() {
        let metrics = Metrics::new();
        let v1 = metrics.model("m", "1");
        let v2 = metrics.model("m", "2");
        v1.queue_depth.inc();
        v2.queue_depth.inc();
        v1.count(Outcome::Ok);
        let text = metrics.encode();
        assert_eq!(
            sample(&text, r#"chorus_worker_queue_depth{model="m"}"#),
            Some(2.0)
        );
        let v2_ok = r#"chorus_worker_requests_total{model="m",version="2",outcome="ok"}"#;
        assert_eq!(sample(&text, v2_ok), Some(0.0));
    }

    #[test]
    fn detached_handles_work_without_a_registry() {
        let m = ModelMetrics::detached();
        m.count(Outcome::Internal);
        m.observe_run(Duration::from_millis(1), 3);
        assert_eq!(m.batch_size.count(), 1);
        m.count(Outcome::ModelNotFound);
        assert_eq!(m.requests[5].get(), 1);
        assert_eq!(m.requests.iter().map(Counter::get).sum::<u64>(), 1);
    }
}
