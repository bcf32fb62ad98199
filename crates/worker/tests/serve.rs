//! In-process worker tests with real ONNX Runtime and the repository's real models: load, serve on
//! 127.0.0.1:0, call over tarpc, shut down.

mod support;

use chorus_common::{
    DataType, ExecutionProvider, InferCall, Tensor, TensorSpec, WorkerError, WorkerState,
};
use chorus_worker::ProviderChoice;
use std::time::{Duration, Instant};
use support::{config, features, load, serve};
use tarpc::context;

fn call(model: &str, inputs: Vec<Tensor>) -> InferCall {
    InferCall {
        model: model.into(),
        version: None,
        inputs,
        outputs: vec![],
        request_id: "test-1".into(),
        trace_context: None,
    }
}

fn rows(n: usize) -> Tensor {
    Tensor::from_values("input", vec![n as i64, 64], &features(n, 64))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logreg_is_served_end_to_end() {
    let worker = load(config(&["logreg"], ProviderChoice::Cpu)).await;
    assert_eq!(worker.capacity(), 1);
    let mut served = serve(worker).await;
    let client = served.client.clone();

    // Metadata: signatures as the model declares them, on the CPU provider.
    let info = client.metadata(context::current()).await.unwrap();
    assert_eq!(info.worker_id, "test-worker");
    assert_eq!(info.rpc_addr, served.addr.to_string());
    assert_eq!(info.state, WorkerState::Serving);
    assert_eq!(info.capacity, 1);
    assert_eq!(info.models.len(), 1);
    let model = &info.models[0];
    assert_eq!(
        (model.name.as_str(), model.version.as_str()),
        ("logreg", "1")
    );
    assert_eq!(model.execution_provider, ExecutionProvider::Cpu);
    assert_eq!(
        model.inputs,
        vec![TensorSpec {
            name: "input".into(),
            datatype: DataType::Fp32,
            shape: vec![-1, 64]
        }]
    );
    assert_eq!(
        model.outputs,
        vec![
            TensorSpec {
                name: "label".into(),
                datatype: DataType::Int64,
                shape: vec![-1]
            },
            TensorSpec {
                name: "probabilities".into(),
                datatype: DataType::Fp32,
                shape: vec![-1, 10]
            },
        ]
    );
    assert!(!model.allow_non_finite);

    // Two rows: every output, in declared order.
    let reply = client
        .infer(context::current(), call("logreg", vec![rows(2)]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (reply.model.as_str(), reply.version.as_str()),
        ("logreg", "1")
    );
    let names: Vec<_> = reply.outputs.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["label", "probabilities"]);
    let labels = reply.outputs[0].to_values::<i64>().unwrap();
    assert_eq!(reply.outputs[0].shape, vec![2]);
    assert!(labels.iter().all(|l| (0..10).contains(l)), "{labels:?}");
    let probs = reply.outputs[1].to_values::<f32>().unwrap();
    assert_eq!(reply.outputs[1].shape, vec![2, 10]);
    for row in probs.chunks(10) {
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "row sums to {sum}");
    }

    // Requested outputs come back in the requested order, pinned version works.
    let mut pinned = call("logreg", vec![rows(1)]);
    pinned.version = Some("1".into());
    pinned.outputs = vec!["probabilities".into(), "label".into()];
    let reply = client
        .infer(context::current(), pinned)
        .await
        .unwrap()
        .unwrap();
    let names: Vec<_> = reply.outputs.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["probabilities", "label"]);

    // Bad input is the client's fault, named precisely.
    let wrong_dtype = Tensor::from_values("input", vec![1, 64], &[0i64; 64]);
    let wrong_dim = Tensor::from_values("input", vec![1, 63], &[0.0f32; 63]);
    let mut nan = features(1, 64);
    nan[5] = f32::NAN;
    let nan = Tensor::from_values("input", vec![1, 64], &nan);
    for (bad, needle) in [
        (wrong_dtype, "datatype"),
        (wrong_dim, "dimension 1"),
        (nan, "non-finite"),
    ] {
        match client
            .infer(context::current(), call("logreg", vec![bad]))
            .await
            .unwrap()
        {
            Err(WorkerError::InvalidInput(msg)) => assert!(msg.contains(needle), "{msg}"),
            other => panic!("expected InvalidInput containing {needle}, got {other:?}"),
        }
    }

    // Unknown model and version.
    let reply = client
        .infer(context::current(), call("nope", vec![rows(1)]))
        .await
        .unwrap();
    assert!(matches!(reply, Err(WorkerError::ModelNotFound { ref model, .. }) if model == "nope"));
    let mut v2 = call("logreg", vec![rows(1)]);
    v2.version = Some("2".into());
    let reply = client.infer(context::current(), v2).await.unwrap();
    assert!(
        matches!(reply, Err(WorkerError::ModelNotFound { .. })),
        "{reply:?}"
    );

    // Unknown requested output.
    let mut unknown_output = call("logreg", vec![rows(1)]);
    unknown_output.outputs = vec!["logits".into()];
    match client
        .infer(context::current(), unknown_output)
        .await
        .unwrap()
    {
        Err(WorkerError::InvalidInput(msg)) => assert!(msg.contains("logits"), "{msg}"),
        other => panic!("expected InvalidInput, got {other:?}"),
    }

    // A deadline already past: refused by the worker, or by tarpc before it gets there.
    let mut expired = context::current();
    expired.deadline = Instant::now() - Duration::from_millis(1);
    match client.infer(expired, call("logreg", vec![rows(1)])).await {
        Ok(Err(WorkerError::DeadlineExceeded)) | Err(tarpc::client::RpcError::DeadlineExceeded) => {
        }
        other => panic!("expected a deadline error, got {other:?}"),
    }

    // Ping answers with the worker's state and load.
    let pong = client.ping(context::current()).await.unwrap();
    assert_eq!(pong.worker_id, "test-worker");
    assert_eq!(pong.state, WorkerState::Serving);
    assert_eq!(pong.in_flight, 0);

    // Many concurrent calls on one connection all succeed.
    let calls = (0..32).map(|_| {
        let client = client.clone();
        async move {
            client
                .infer(context::current(), call("logreg", vec![rows(3)]))
                .await
        }
    });
    for result in futures::future::join_all(calls).await {
        assert_eq!(result.unwrap().unwrap().outputs[0].shape, vec![3]);
    }

    // Shutdown drains (nothing in flight) and returns.
    served.shut_down();
    tokio::time::timeout(Duration::from_secs(10), &mut served.server)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
    assert!(client.ping(context::current()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_repository_model_loads_and_answers() {
    let worker = load(config(&[], ProviderChoice::Auto)).await;
    let models = worker.models();
    let names: Vec<_> = models.iter().map(|m| m.name.as_str()).collect();
    for expected in ["gboost", "logreg", "mlp", "random_forest", "stacker", "svc"] {
        assert!(names.contains(&expected), "{names:?}");
    }
    let mut served = serve(worker).await;
    for model in &models {
        // Each model under its own input name (exports from other tools name it otherwise).
        let declared = &model.inputs[0];
        let width = declared.shape[1];
        let input =
            Tensor::from_values(&declared.name, vec![3, width], &features(3, width as usize));
        let reply = served
            .client
            .infer(context::current(), call(&model.name, vec![input]))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{}: {e}", model.name));
        assert_eq!(reply.outputs.len(), model.outputs.len(), "{}", model.name);
        for (output, declared) in reply.outputs.iter().zip(&model.outputs) {
            assert_eq!(output.shape[0], 3, "{}: {}", model.name, output.name);
            assert_eq!(output.shape.len(), declared.shape.len(), "{}", model.name);
        }
        // The digits classifiers: a label and ten class probabilities per row.
        if model.inputs[0].name == "input" && width == 64 && model.name != "stacker" {
            assert_eq!(reply.outputs[0].shape, vec![3], "{}", model.name);
            assert_eq!(reply.outputs[1].shape, vec![3, 10], "{}", model.name);
        }
    }
    served.shut_down();
    served.server.await.unwrap().unwrap();
}

/// A peer's request whose deadline is decades away (as a malicious or broken client could send;
/// tarpc's timer wheel panics on it) is answered like any other, and the connection lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_an_absurd_deadline_is_answered_on_a_live_connection() {
    use chorus_common::rpc::{WorkerServiceRequest, WorkerServiceResponse};
    use chorus_common::transport::{DEFAULT_MAX_FRAME_BYTES, framed};
    use futures::{SinkExt, StreamExt};
    use tarpc::{ClientMessage, Request, Response};

    let mut served = serve(load(config(&["logreg"], ProviderChoice::Cpu)).await).await;
    let stream = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    let mut raw = framed::<Response<WorkerServiceResponse>, ClientMessage<WorkerServiceRequest>>(
        stream,
        DEFAULT_MAX_FRAME_BYTES,
    )
    .unwrap();
    for id in 1..=2 {
        let mut ctx = context::current();
        ctx.deadline = Instant::now() + Duration::from_secs(50 * 365 * 86_400);
        let request = Request {
            context: ctx,
            id,
            message: WorkerServiceRequest::Infer {
                call: call("logreg", vec![rows(1)]),
            },
        };
        raw.send(ClientMessage::Request(request)).await.unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), raw.next())
            .await
            .expect("an answer within 10 s")
            .expect("the connection is still open")
            .unwrap();
        assert_eq!(response.request_id, id);
        match response.message.expect("no server error") {
            WorkerServiceResponse::Infer(Ok(reply)) => assert_eq!(reply.model, "logreg"),
            other => panic!("expected an inference reply, got {other:?}"),
        }
    }
    // The worker as a whole is unaffected.
    assert!(served.client.ping(context::current()).await.is_ok());
    served.shut_down();
}
