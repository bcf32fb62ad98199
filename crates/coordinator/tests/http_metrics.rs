//! `GET /metrics` and request tracing, in process: a real coordinator (`run` on port 0) in front of
//! a fake worker (the real RPC contract over TCP, answers chosen by the test). Good, bad, unknown
//! and degraded requests, over REST and gRPC, must each show up in the counters with the right
//! labels, and one request's member calls must be traceable in the logs by its id, on both sides
//! of the RPC.

use chorus_common::transport::framed;
use chorus_common::{
    DataType, ExecutionProvider, InferCall, InferReply, ModelInfo, Pong, Tensor, TensorSpec,
    WorkerError, WorkerInfo, WorkerService, WorkerState,
};
use chorus_coordinator::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use chorus_coordinator::grpc::proto::{ModelInferRequest, model_infer_request::InferInputTensor};
use chorus_coordinator::{CoordinatorConfig, Listeners};
use clap::Parser;
use futures::StreamExt;
use serde_json::{Value, json};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};
use tokio::net::TcpListener;

/// The fake worker's models: `a` always answers; `b` fails while `failing` is set.
#[derive(Clone, Default)]
struct FakeWorker {
    failing: Arc<AtomicBool>,
    /// Request ids of the calls it received.
    seen: Arc<Mutex<Vec<String>>>,
}

fn model(name: &str) -> ModelInfo {
    let spec = |name: &str, cols| TensorSpec {
        name: name.into(),
        datatype: DataType::Fp32,
        shape: vec![-1, cols],
    };
    ModelInfo {
        name: name.into(),
        version: "1".into(),
        platform: "onnxruntime_onnx".into(),
        inputs: vec![spec("input", 4)],
        outputs: vec![spec("probabilities", 2)],
        execution_provider: ExecutionProvider::Cpu,
        allow_non_finite: false,
        max_input_elements: 1 << 20,
        labels: Vec::new(),
    }
}

impl WorkerService for FakeWorker {
    async fn metadata(self, _: Context) -> WorkerInfo {
        WorkerInfo {
            worker_id: "fake".into(),
            rpc_addr: String::new(),
            state: WorkerState::Serving,
            capacity: 4,
            models: vec![model("a"), model("b")],
            local_link: None,
        }
    }

    async fn infer(self, _: Context, call: InferCall) -> Result<InferReply, WorkerError> {
        self.seen.lock().unwrap().push(call.request_id.clone());
        if call.model == "b" && self.failing.load(Ordering::Relaxed) {
            return Err(WorkerError::Internal("b is broken".into()));
        }
        let rows = call.inputs[0].shape[0];
        let values: Vec<f32> = (0..rows).flat_map(|_| [0.25f32, 0.75]).collect();
        Ok(InferReply {
            model: call.model,
            version: "1".into(),
            outputs: vec![Tensor::from_values("probabilities", vec![rows, 2], &values)],
        })
    }

    async fn infer_many(
        self,
        ctx: Context,
        calls: Vec<InferCall>,
    ) -> Vec<Result<InferReply, WorkerError>> {
        futures::future::join_all(calls.into_iter().map(|call| self.clone().infer(ctx, call))).await
    }

    async fn ping(self, _: Context) -> Pong {
        Pong {
            worker_id: "fake".into(),
            state: WorkerState::Serving,
            in_flight: 0,
        }
    }

    async fn drain(self, _: Context) -> chorus_common::DrainReply {
        unimplemented!("these tests never drain")
    }
}

async fn start_fake_worker(worker: FakeWorker) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let transport = framed(stream, 1 << 20).unwrap();
            let worker = worker.clone();
            tokio::spawn(
                BaseChannel::with_defaults(transport)
                    .execute(worker.serve())
                    .for_each(|call| async {
                        tokio::spawn(call);
                    }),
            );
        }
    });
    addr
}

/// Everything this test binary logs, as text lines.
fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let writer = Arc::clone(&buffer);
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_env_filter("warn,chorus_coordinator=debug,chorus_request=debug")
        .with_writer(move || LogWriter(Arc::clone(&writer)))
        .init();
    buffer
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: CoordinatorConfig,
}

const SPECS: &str = r#"
version = 1
[[ensemble]]
name = "pair"
combiner = "soft_vote"
deadline_ms = 2000
min_members = 1
[[ensemble.member]]
model = "a"
[[ensemble.member]]
model = "b"
"#;

struct Client {
    http: reqwest::Client,
    base: String,
    /// The admin listener, where `/metrics` is served.
    admin: String,
}

impl Client {
    async fn infer(&self, model: &str, body: String) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/v2/models/{model}/infer", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn metrics(&self) -> String {
        let response = self
            .http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        response.text().await.unwrap()
    }
}

fn request(id: &str) -> String {
    json!({
        "id": id,
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]
    })
    .to_string()
}

/// One good gRPC request without an id; returns the id the answer carries.
async fn grpc_infer(url: &str) -> String {
    let mut client = GrpcInferenceServiceClient::connect(url.to_string())
        .await
        .unwrap();
    let raw: Vec<u8> = [1f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let request = ModelInferRequest {
        model_name: "pair".into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 4],
            ..Default::default()
        }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    };
    let answer = client.model_infer(request).await.unwrap().into_inner();
    assert_eq!(answer.model_name, "pair");
    answer.id
}

fn assert_has(text: &str, expected: &[&str]) {
    for line in expected {
        assert!(
            text.lines().any(|l| l == *line),
            "missing {line:?} in:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_status_and_degraded_answers() {
    let logs = capture_logs();
    let worker = FakeWorker::default();
    let worker_addr = start_fake_worker(worker.clone()).await;
    let specs = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(specs.path(), SPECS).unwrap();
    let config = Cli::parse_from([
        "coordinator".to_string(),
        format!("--ensembles={}", specs.path().display()),
        format!("--worker={worker_addr}"),
        "--ping-interval-ms=100".to_string(),
    ])
    .config;
    let listeners = Listeners {
        http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        grpc: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let client = Client {
        http: reqwest::Client::new(),
        base: format!("http://{}", listeners.http.local_addr().unwrap()),
        admin: format!("http://{}", listeners.admin.local_addr().unwrap()),
    };
    let grpc_url = format!("http://{}", listeners.grpc.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(chorus_coordinator::run(config, listeners, async {
        let _ = stopped.await;
    }));

    let give_up = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = client
            .http
            .get(format!("{}/v2/health/ready", client.base))
            .send()
            .await;
        if ready.is_ok_and(|r| r.status().as_u16() == 200) {
            break;
        }
        assert!(Instant::now() < give_up, "coordinator never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // One good request, one bad: each counted under its outcome; one more over gRPC.
    let (status, body) = client.infer("pair", request("good-1")).await;
    assert_eq!(status, 200);
    assert_eq!(body["id"], "good-1", "the client's id is echoed");
    let (status, _) = client.infer("pair", "{not json".into()).await;
    assert_eq!(status, 400);
    let grpc_id = grpc_infer(&grpc_url).await;
    assert!(
        !grpc_id.is_empty() && grpc_id != "good-1",
        "a request without an id gets a generated one: {grpc_id:?}"
    );
    let text = client.metrics().await;
    // Operator endpoints live on the admin port only.
    for path in ["/metrics", "/chorus/workers"] {
        let public = client
            .http
            .get(format!("{}{path}", client.base))
            .send()
            .await
            .unwrap();
        assert_eq!(public.status().as_u16(), 404, "{path} on the public port");
    }
    assert_has(
        &text,
        &[
            "chorus_requests_total{model=\"pair\",protocol=\"http\",outcome=\"ok\"} 1",
            "chorus_requests_total{model=\"pair\",protocol=\"http\",outcome=\"invalid_argument\"} 1",
            "chorus_requests_total{model=\"pair\",protocol=\"grpc\",outcome=\"ok\"} 1",
            "chorus_request_duration_seconds_count{model=\"pair\",protocol=\"http\"} 2",
            "chorus_request_duration_seconds_count{model=\"pair\",protocol=\"grpc\"} 1",
            "chorus_member_call_duration_seconds_count{model=\"a\",outcome=\"ok\"} 2",
            "chorus_member_call_duration_seconds_count{model=\"b\",outcome=\"ok\"} 2",
            "chorus_inflight_requests 0",
            "chorus_membership_workers{state=\"routable\"} 1",
            "chorus_membership_workers{state=\"unhealthy\"} 0",
            "chorus_membership_stale 0",
            &format!("chorus_member_calls_outstanding{{worker=\"{worker_addr}\"}} 0"),
            "chorus_model_execution_provider{model=\"a\",version=\"1\",provider=\"cpu\"} 1",
            "chorus_model_execution_provider{model=\"b\",version=\"1\",provider=\"cpu\"} 1",
        ],
    );
    assert!(
        !text.contains("chorus_degraded_responses_total{"),
        "nothing degraded yet: {text}"
    );

    // Unknown names share one label rather than minting a series each.
    let (status, _) = client.infer("no-such-model", request("x")).await;
    assert_eq!(status, 404);

    // Member b fails: the answer comes from a alone, degraded.
    worker.failing.store(true, Ordering::Relaxed);
    let (status, body) = client.infer("pair", request("degraded-1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["parameters"]["degraded"], json!(true), "{body}");
    let text = client.metrics().await;
    assert_has(
        &text,
        &[
            "chorus_requests_total{model=\"pair\",protocol=\"http\",outcome=\"ok\"} 2",
            "chorus_requests_total{model=\"_unknown\",protocol=\"http\",outcome=\"not_found\"} 1",
            "chorus_degraded_responses_total{model=\"pair\"} 1",
            "chorus_member_failures_total{model=\"b\",kind=\"failed\"} 1",
            "chorus_member_call_duration_seconds_count{model=\"b\",outcome=\"failed\"} 1",
            "chorus_member_call_duration_seconds_count{model=\"a\",outcome=\"ok\"} 3",
            "chorus_retries_total 0",
        ],
    );
    assert!(!text.contains("no-such-model"), "{text}");

    // The request id reached the worker, and the coordinator's member-call logs carry it, inside
    // the request's span.
    assert!(
        worker
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|id| *id == "degraded-1")
            .count()
            == 2
    );
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let failed = logs
        .lines()
        .find(|l| l.contains("member call failed") && l.contains("WARN"))
        .unwrap_or_else(|| panic!("no member-call warning in:\n{logs}"));
    for field in [
        // The request span's fields (`otel.kind` is there for the trace exporter).
        "infer{model=pair protocol=http ",
        "request_id=degraded-1}",
        "member=b",
        &format!("worker={worker_addr}"),
        "request_id=degraded-1",
    ] {
        assert!(failed.contains(field), "{field} missing from {failed:?}");
    }
    assert!(
        logs.lines().any(|l| l.contains("member call answered")
            && l.contains("infer{model=pair protocol=http ")
            && l.contains("request_id=good-1}")
            && l.contains("member=a")),
        "{logs}"
    );

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
