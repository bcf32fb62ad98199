//! A call's log lines carry its request id, model and version: through the `infer` span at debug
//! level (on the instance thread too), and on the failure warning itself at the default level.

use chorus_common::model::ONNX_PLATFORM;
use chorus_common::validate::InputPolicy;
use chorus_common::{
    DataType, ExecutionProvider, InferCall, ModelInfo, Tensor, TensorSpec, WorkerError,
};
use chorus_worker::metrics::Metrics;
use chorus_worker::pool::{InstancePool, JobResult, Runner};
use chorus_worker::registry::{LoadedModel, Registry};
use chorus_worker::service::Shared;
use std::io::Write;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Log output collected in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Panics on the marked input (value 13), and waits for a permit on the gate input (value 7).
struct Moody {
    gate: Mutex<mpsc::Receiver<()>>,
    started: mpsc::Sender<()>,
}

impl Runner for Moody {
    fn run(&mut self, inputs: &[Tensor], _: &[String]) -> JobResult {
        match inputs[0].to_values::<f32>().unwrap()[0] {
            13.0 => panic!("boom"),
            7.0 => {
                let _ = self.started.send(());
                let _ = self.gate.lock().unwrap().recv();
            }
            _ => {}
        }
        Ok(inputs.to_vec())
    }
}

fn call(request_id: &str, value: f32) -> InferCall {
    InferCall {
        model: "moody".into(),
        version: None,
        inputs: vec![Tensor::from_values("x", vec![1, 2], &[value, 0.0])],
        outputs: vec![],
        request_id: request_id.into(),
        trace_context: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_carry_the_request_id_model_and_version() {
    let logs = Captured::default();
    let (filter, reload) = tracing_subscriber::reload::Layer::new(EnvFilter::new("debug"));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(logs.clone()),
        )
        .init();

    let (permits, gate) = mpsc::channel();
    let (started_tx, started) = mpsc::channel();
    let spec = TensorSpec {
        name: "x".into(),
        datatype: DataType::Fp32,
        shape: vec![-1, 2],
    };
    let mut registry = Registry::default();
    registry.insert(
        3,
        LoadedModel {
            info: ModelInfo {
                name: "moody".into(),
                version: "3".into(),
                platform: ONNX_PLATFORM.into(),
                inputs: vec![spec.clone()],
                outputs: vec![spec],
                execution_provider: ExecutionProvider::Cpu,
                allow_non_finite: false,
                max_input_elements: 100,
                labels: Vec::new(),
            },
            policy: InputPolicy {
                allow_non_finite: false,
                max_elements: 100,
            },
            pool: InstancePool::start(
                "model 'moody' version 3".into(),
                "moody-3",
                vec![Box::new(Moody {
                    gate: Mutex::new(gate),
                    started: started_tx,
                })],
                8,
            )
            .unwrap(),
        },
    );
    let shared = Arc::new(Shared::new(
        "w".into(),
        "test".into(),
        registry,
        Arc::new(Metrics::new()),
    ));
    let later = || Instant::now() + Duration::from_secs(30);

    // Debug: answered, refused, and a job that expires in the queue behind a held run.
    assert!(shared.infer(later(), call("req-ok", 1.0)).await.is_ok());
    let held = tokio::spawn({
        let shared = Arc::clone(&shared);
        async move { shared.infer(later(), call("req-held", 7.0)).await }
    });
    tokio::task::spawn_blocking(move || started.recv_timeout(Duration::from_secs(5)))
        .await
        .unwrap()
        .unwrap();
    let short = Instant::now() + Duration::from_millis(50);
    let expiring = tokio::spawn({
        let shared = Arc::clone(&shared);
        async move {
            // Answered DeadlineExceeded at its deadline, while still queued.
            let _ = shared.infer(short, call("req-late", 1.0)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    expiring.await.unwrap();
    permits.send(()).unwrap();
    assert!(held.await.unwrap().is_ok());
    let mut unknown = call("req-unknown", 1.0);
    unknown.version = Some("9".into());
    assert!(shared.infer(later(), unknown).await.is_err());

    let text = logs.text();
    let line = |needle: &str, message: &str| {
        text.lines()
            .find(|l| l.contains(needle) && l.contains(message))
            .unwrap_or_else(|| panic!("no line with {needle} and {message:?} in\n{text}"))
            .to_string()
    };
    let answered = line("request_id=req-ok", "inference answered");
    assert!(answered.contains("model=moody version=3"), "{answered}");
    line("request_id=req-late", "inference refused");
    // Logged by the instance thread inside the request's span: the caller has gone by then. The
    // thread answers `req-held` before it takes the next job, so the line may come a moment later.
    let skipped = async {
        while !logs
            .text()
            .lines()
            .any(|l| l.contains("request_id=req-late") && l.contains("skipping a job"))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), skipped)
        .await
        .is_err()
    {
        panic!(
            "no line with request_id=req-late and \"skipping a job\" in\n{}",
            logs.text()
        );
    }
    line(
        "request_id=req-unknown model=moody version=9",
        "inference refused",
    );

    // At the default level the span is off, and the failure warning carries the fields itself.
    reload.reload(EnvFilter::new("info")).unwrap();
    let failed = shared.infer(later(), call("req-boom", 13.0)).await;
    assert!(
        matches!(failed, Err(WorkerError::Internal(_))),
        "{failed:?}"
    );
    let text = logs.text();
    let warned = text
        .lines()
        .find(|l| l.contains("inference failed"))
        .unwrap_or_else(|| panic!("no failure warning in\n{text}"));
    assert!(warned.contains("WARN"), "{warned}");
    assert!(
        warned.contains("request_id=req-boom") && warned.contains("model=moody"),
        "{warned}"
    );
    assert!(warned.contains("version=3"), "{warned}");
    assert!(
        !text.contains("request_id=req-boom version"),
        "no span at info"
    );
}
