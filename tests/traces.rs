//! Distributed traces with real processes (docs/operations.md, "Distributed traces"): a worker
//! per member and a coordinator export to an OTLP/HTTP receiver run by this test; one REST
//! request carrying a client's `traceparent` becomes one trace (the client's trace id) with the
//! coordinator's request, member and attempt spans and each member's worker call, queue wait and
//! run, every parent link inside the trace, and the request id on every span. A `traceparent`
//! in gRPC metadata works the same way. A malformed `traceparent` starts a trace of its own and
//! the request is answered, and its spans reach the collector when the processes stop on SIGTERM
//! (the exporters are flushed); without `--otlp-endpoint` requests with trace headers are
//! answered as usual. A client's `tracestate` (header or metadata) is the `trace_state` of every
//! span of its request, the workers' included; one over the W3C bounds is dropped alone. A
//! `ModelStreamInfer` stream opened with a `traceparent` is one trace with a request span per
//! message; without one each message is a trace of its own.

mod support;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::json;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::grpc::{Grpc, raw_request};
use support::{Http, Proc, grpc_addr, spawn_coordinator, start_worker_with, wait_until};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

const SPECS: &str = r#"
version = 1

[[ensemble]]
name = "pair"
combiner = "soft_vote"
deadline_ms = 5000
[[ensemble.member]]
model = "logreg"
[[ensemble.member]]
model = "mlp"
"#;

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    /// The W3C `tracestate` the span was exported with (`""` for none).
    trace_state: String,
    attributes: HashMap<String, String>,
}

impl Exported {
    fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

/// A minimal OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body, answered 200.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Exported>>>,
}

impl Collector {
    fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&spans);
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let sink = Arc::clone(&sink);
                std::thread::spawn(move || serve(stream, &sink));
            }
        });
        Collector { url, spans }
    }

    fn spans(&self) -> Vec<Exported> {
        self.spans.lock().unwrap().clone()
    }
}

/// Serves one keep-alive connection: requests until the client closes it.
fn serve(stream: TcpStream, sink: &Mutex<Vec<Exported>>) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        assert!(
            request_line.starts_with("POST /v1/traces "),
            "unexpected export request: {request_line:?}"
        );
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        sink.lock().unwrap().extend(flatten(request));
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn text(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<Exported> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = text(
            &resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default(),
        );
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(Exported {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    trace_state: span.trace_state,
                    attributes: text(&span.attributes),
                });
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Traced {
    workers: Vec<Proc>,
    coordinator: Proc,
    http: Http,
}

/// A worker per member and a coordinator, all with `extra` flags.
fn start(scratch: &Path, extra: &[String]) -> Traced {
    let specs = scratch.join("ensembles.toml");
    std::fs::write(&specs, SPECS).unwrap();
    let workers = vec![
        start_worker_with("w-logreg", &["logreg"], extra),
        start_worker_with("w-mlp", &["mlp"], extra),
    ];
    let addrs: Vec<String> = workers.iter().map(|w| w.field("rpc_addr")).collect();
    let mut args = vec![
        format!("--ensembles={}", specs.display()),
        format!("--worker={}", addrs.join(",")),
        "--ping-interval-ms=200".to_string(),
    ];
    args.extend_from_slice(extra);
    let coordinator = spawn_coordinator(&args);
    let http = Http::new(coordinator.field("http_addr").parse().unwrap());
    wait_until("readiness", Duration::from_secs(60), || {
        (http.get("/v2/models/pair/ready").0 == 200).then_some(())
    });
    Traced {
        workers,
        coordinator,
        http,
    }
}

/// One REST request to `pair` with the client id `id` and `headers`; panics unless answered.
fn infer(http: &Http, id: &str, headers: &[(&str, String)]) {
    let row = vec![0.5f32; 64];
    let body = json!({
        "id": id,
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}],
    });
    let mut all = vec![("content-type", "application/json".to_string())];
    all.extend(headers.iter().cloned());
    let reply = http.post("/v2/models/pair/infer", &all, body.to_string().into_bytes());
    reply.expect_status(200);
}

/// The spans of the trace of request `id` once they are all in: the coordinator's request span,
/// and both workers' calls each with its run.
fn wait_for_trace(collector: &Collector, id: &str) -> Vec<Exported> {
    wait_until(
        &format!("the spans of request {id}"),
        Duration::from_secs(30),
        || {
            let spans = collector.spans();
            let request = spans
                .iter()
                .find(|s| s.name == "infer" && s.attr("request_id") == id)?;
            let trace: Vec<Exported> = spans
                .iter()
                .filter(|s| s.trace_id == request.trace_id)
                .cloned()
                .collect();
            let runs = trace.iter().filter(|s| s.name == "model.run").count();
            let calls = trace.iter().filter(|s| s.name == "worker.infer").count();
            (runs == 2 && calls == 2).then_some(trace)
        },
    )
}

#[test]
fn one_request_is_one_trace_across_the_coordinator_and_its_workers() {
    let scratch = tempfile::tempdir().unwrap();
    let collector = Collector::start();
    let cluster = start(
        scratch.path(),
        &[format!("--otlp-endpoint={}", collector.url)],
    );
    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    infer(
        &cluster.http,
        "traced-1",
        &[
            ("traceparent", traceparent),
            ("tracestate", "client=1".to_string()),
        ],
    );
    let trace = wait_for_trace(&collector, "traced-1");

    assert!(trace.iter().all(|s| s.trace_id == TRACE_ID), "{trace:#?}");
    let by_id: HashMap<&str, &Exported> = trace.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let named =
        |name: &str| -> Vec<&Exported> { trace.iter().filter(|s| s.name == name).collect() };
    let parent_of = |span: &Exported| -> &Exported {
        by_id
            .get(span.parent.as_str())
            .unwrap_or_else(|| panic!("the parent of {span:?} is not in the trace"))
    };

    // The coordinator: the request span is the child of the client's span.
    let request = named("infer")
        .into_iter()
        .find(|s| s.service == "chorus-coordinator")
        .expect("the request span");
    assert_eq!(request.parent, CLIENT_SPAN);
    assert_eq!(request.attr("model"), "pair");
    // A member span per member under the request, an attempt span under each.
    let members = named("member");
    assert_eq!(members.len(), 2, "{members:#?}");
    let mut member_models: Vec<&str> = members.iter().map(|s| s.attr("member")).collect();
    member_models.sort();
    assert_eq!(member_models, ["logreg", "mlp"]);
    for member in &members {
        assert_eq!(member.service, "chorus-coordinator");
        assert_eq!(member.parent, request.span_id);
    }
    let attempts = named("member.attempt");
    assert!(attempts.len() >= 2, "{attempts:#?}");
    for attempt in &attempts {
        assert_eq!(parent_of(attempt).name, "member");
        assert_eq!(attempt.attr("attempt"), "first");
    }

    // Each member's worker: its call is the child of an attempt span sent to that worker, with
    // the queue wait and the run under it.
    let calls = named("worker.infer");
    let mut workers: Vec<&str> = calls.iter().map(|s| s.attr("worker_id")).collect();
    workers.sort();
    assert_eq!(workers, ["w-logreg", "w-mlp"]);
    for call in &calls {
        assert_eq!(call.service, "chorus-worker");
        let attempt = parent_of(call);
        assert_eq!(attempt.name, "member.attempt");
        // The coordinator names a statically listed worker by its RPC address.
        let worker = cluster
            .workers
            .iter()
            .find(|w| w.field("worker_id") == call.attr("worker_id"))
            .unwrap();
        assert_eq!(attempt.attr("worker"), worker.field("rpc_addr"));
        assert_eq!(attempt.attr("member"), call.attr("model"));
    }
    for name in ["queue", "model.run"] {
        let spans = named(name);
        assert_eq!(spans.len(), 2, "{name}: {spans:#?}");
        for span in spans {
            assert_eq!(span.service, "chorus-worker");
            assert_eq!(parent_of(span).name, "worker.infer", "{name}");
        }
    }
    // The request id on every span, and the client's tracestate, the workers' spans included.
    for span in &trace {
        assert_eq!(span.attr("request_id"), "traced-1", "{span:?}");
        assert_eq!(span.trace_state, "client=1", "{span:?}");
    }

    // Over gRPC, the context comes in metadata.
    let grpc_trace = "0af7651916cd43dd8448eb211c80319c";
    let mut message = raw_request("pair", &[vec![0.5f32; 64]]);
    message.id = "traced-grpc".to_string();
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{grpc_trace}-b7ad6b7169203331-01")
            .parse()
            .unwrap(),
    );
    // Blanks and an empty member are allowed by the grammar and dropped.
    request.metadata_mut().insert(
        "tracestate",
        "rojo=00f067aa0ba902b7 , ,congo=t61rcWkgMzE"
            .parse()
            .unwrap(),
    );
    Grpc::connect(grpc_addr(&cluster.coordinator))
        .infer_with(request)
        .expect("gRPC answer");
    let over_grpc = wait_for_trace(&collector, "traced-grpc");
    let root = over_grpc.iter().find(|s| s.name == "infer").unwrap();
    assert_eq!(root.trace_id, grpc_trace);
    assert_eq!(root.parent, "b7ad6b7169203331");
    assert_eq!(root.attr("protocol"), "grpc");
    for span in &over_grpc {
        assert_eq!(
            span.trace_state, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
            "{span:?}"
        );
    }

    // A malformed traceparent is ignored: answered, and traced as a trace of its own. Its spans
    // are still in the exporters' 5 s batches when the processes are stopped at once: a
    // graceful stop flushes them.
    infer(
        &cluster.http,
        "traced-2",
        &[("traceparent", "00-not-a-trace-context".to_string())],
    );
    let mut cluster = cluster;
    let procs = std::iter::once(&mut cluster.coordinator).chain(cluster.workers.iter_mut());
    let mut procs: Vec<&mut Proc> = procs.collect();
    for proc in &procs {
        proc.signal(libc::SIGTERM);
    }
    for proc in &mut procs {
        assert!(proc.wait_exit(Duration::from_secs(30)).success());
    }
    let own = wait_for_trace(&collector, "traced-2");
    let root = own.iter().find(|s| s.name == "infer").unwrap();
    assert_ne!(root.trace_id, TRACE_ID);
    assert!(root.parent.is_empty(), "{root:?}");
}

/// Without `--otlp-endpoint` no exporter exists (nothing could reach a collector), so what this
/// checks is that trace headers, valid or not, change nothing about serving.
#[test]
fn without_an_endpoint_trace_headers_change_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let cluster = start(scratch.path(), &[]);
    infer(
        &cluster.http,
        "untraced-1",
        &[("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))],
    );
    infer(
        &cluster.http,
        "untraced-2",
        &[("traceparent", "garbage".to_string())],
    );
    infer(&cluster.http, "untraced-3", &[]);
}

/// The spans of the trace `trace_id` once both messages' requests, worker calls and runs are in.
fn wait_for_stream_trace(collector: &Collector, trace_id: &str) -> Vec<Exported> {
    wait_until(
        &format!("the spans of trace {trace_id}"),
        Duration::from_secs(30),
        || {
            let trace: Vec<Exported> = collector
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            let count = |name: &str| trace.iter().filter(|s| s.name == name).count();
            (count("infer") == 2 && count("worker.infer") == 4 && count("model.run") == 4)
                .then_some(trace)
        },
    )
}

/// Sends `ids` as messages of one `ModelStreamInfer` stream with `metadata`; panics unless each
/// is answered.
fn stream(cluster: &Traced, ids: &[&str], metadata: &[(&'static str, String)]) {
    let messages: Vec<_> = ids
        .iter()
        .map(|id| {
            let mut message = raw_request("pair", &[vec![0.5f32; 64]]);
            message.id = id.to_string();
            message
        })
        .collect();
    let mut request = tonic::Request::new(futures::stream::iter(messages));
    for (name, value) in metadata {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    let answers = Grpc::connect(grpc_addr(&cluster.coordinator)).with(|mut client| async move {
        let mut answers = client.model_stream_infer(request).await?.into_inner();
        let mut all = Vec::new();
        while let Some(answer) = answers.message().await? {
            all.push(answer);
        }
        Ok::<_, tonic::Status>(all)
    });
    let answers = answers.expect("the stream's answers");
    assert_eq!(answers.len(), ids.len(), "{answers:?}");
    for answer in answers {
        assert_eq!(answer.error_message, "", "{answer:?}");
    }
}

#[test]
fn a_stream_with_a_traceparent_is_one_trace_with_a_span_per_message() {
    let scratch = tempfile::tempdir().unwrap();
    let collector = Collector::start();
    let cluster = start(
        scratch.path(),
        &[format!("--otlp-endpoint={}", collector.url)],
    );
    let stream_trace = "5a1f0c2e9d8b7a6f5e4d3c2b1a098765";
    let stream_span = "1234567890abcdef";
    // 33 list members: over the W3C bound, so the tracestate is dropped and the traceparent
    // still counts.
    let too_many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    stream(
        &cluster,
        &["stream-1", "stream-2"],
        &[
            ("traceparent", format!("00-{stream_trace}-{stream_span}-01")),
            ("tracestate", too_many.join(",")),
        ],
    );
    let trace = wait_for_stream_trace(&collector, stream_trace);
    let requests: Vec<&Exported> = trace.iter().filter(|s| s.name == "infer").collect();
    let mut ids: Vec<&str> = requests.iter().map(|s| s.attr("request_id")).collect();
    ids.sort();
    assert_eq!(ids, ["stream-1", "stream-2"]);
    for request in &requests {
        assert_eq!(request.service, "chorus-coordinator");
        assert_eq!(request.parent, stream_span, "{request:?}");
        assert_eq!(request.attr("protocol"), "grpc");
    }
    assert!(trace.iter().all(|s| s.trace_state.is_empty()), "{trace:#?}");
    // Each message's worker calls are in its own part of the trace: its request id on them.
    for id in ["stream-1", "stream-2"] {
        let calls = trace
            .iter()
            .filter(|s| s.name == "worker.infer" && s.attr("request_id") == id)
            .count();
        assert_eq!(calls, 2, "{id}");
    }

    // Without a traceparent, each message is a trace of its own.
    stream(&cluster, &["alone-1", "alone-2"], &[]);
    let first = wait_for_trace(&collector, "alone-1");
    let second = wait_for_trace(&collector, "alone-2");
    let root = |trace: &[Exported]| trace.iter().find(|s| s.name == "infer").unwrap().clone();
    let (first, second) = (root(&first), root(&second));
    assert_ne!(first.trace_id, second.trace_id);
    assert!(first.parent.is_empty() && second.parent.is_empty());
}
