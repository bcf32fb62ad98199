//! The worker's `/metrics` and `/health` listener on 127.0.0.1:0, with a real model behind it.

mod support;

use chorus_common::transport::{DEFAULT_MAX_FRAME_BYTES, connect_worker};
use chorus_common::{InferCall, Tensor};
use chorus_worker::ProviderChoice;
use std::time::Duration;
use support::{config, features, http_get as get, load};
use tarpc::context;
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_answer_while_the_worker_serves() {
    let worker = load(config(&["logreg"], ProviderChoice::Cpu)).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rpc_addr = listener.local_addr().unwrap();
    let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ready = worker
        .register(listener)
        .await
        .unwrap()
        .with_metrics_listener(metrics_listener);
    let metrics_addr = ready.metrics_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ready.serve(async {
        let _ = stopped.await;
    }));

    let (status, body) = get(metrics_addr, "/health").await;
    assert_eq!((status, body.as_str()), (200, "serving\n"));

    let client = connect_worker(rpc_addr, DEFAULT_MAX_FRAME_BYTES, Duration::from_secs(5))
        .await
        .unwrap();
    for (model, input) in [
        (
            "logreg",
            Tensor::from_values("input", vec![2, 64], &features(2, 64)),
        ),
        (
            "nope",
            Tensor::from_values("input", vec![1, 64], &features(1, 64)),
        ),
        (
            "logreg",
            Tensor::from_values("input", vec![1, 63], &features(1, 63)),
        ),
    ] {
        let call = InferCall {
            model: model.into(),
            version: None,
            inputs: vec![input],
            outputs: vec![],
            request_id: "metrics-test".into(),
            trace_context: None,
        };
        let _ = client.infer(context::current(), call).await.unwrap();
    }

    let (status, text) = get(metrics_addr, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        r#"chorus_worker_requests_total{model="logreg",version="1",outcome="ok"} 1"#,
        r#"chorus_worker_requests_total{model="logreg",version="1",outcome="invalid_input"} 1"#,
        r#"chorus_worker_requests_total{model="",version="",outcome="model_not_found"} 1"#,
        r#"chorus_worker_execution_provider{model="logreg",version="1",provider="cpu"} 1"#,
        r#"chorus_worker_batch_size_sum{model="logreg"} 2.0"#,
        r#"chorus_worker_inference_duration_seconds_count{model="logreg"} 1"#,
        r#"chorus_worker_queue_duration_seconds_count{model="logreg"} 1"#,
        r#"chorus_worker_queue_depth{model="logreg"} 0"#,
        "chorus_worker_inflight 0",
        "chorus_worker_registered 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }

    // The listener stops with the worker.
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(metrics_addr).await.is_err());
}
