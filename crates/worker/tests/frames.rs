//! One frame carrying several calls (`infer_many`), and short models run inline, with real ONNX
//! Runtime and the repository's models: the answers must be exactly those of separate calls on
//! a worker that hands every run to its instance threads.

mod support;

use chorus_common::rpc::MAX_CALLS_PER_FRAME;
use chorus_common::{InferCall, Tensor, WorkerError, WorkerServiceClient};
use chorus_worker::{ProviderChoice, WorkerConfig};
use support::{config, load, serve};
use tarpc::context;

const MODELS: [&str; 3] = ["logreg", "mlp", "random_forest"];

/// Row `i` of features (different for every `i`), `rows` rows.
fn call(model: &str, i: usize, rows: usize) -> InferCall {
    let values: Vec<f32> = (0..rows * 64)
        .map(|k| ((i * 13 + k * 5) % 17) as f32)
        .collect();
    InferCall {
        model: model.into(),
        version: None,
        inputs: vec![Tensor::from_values("input", vec![rows as i64, 64], &values)],
        outputs: vec!["probabilities".into()],
        request_id: format!("frames-{model}-{i}"),
        trace_context: None,
    }
}

async fn one_by_one(client: &WorkerServiceClient, calls: &[InferCall]) -> Vec<Vec<Tensor>> {
    let mut answers = Vec::new();
    for c in calls {
        let reply = client
            .infer(context::current(), c.clone())
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{}: {e}", c.model));
        answers.push(reply.outputs);
    }
    answers
}

/// A worker that never runs a model inline: every run on an instance thread, as before.
fn handing_off() -> WorkerConfig {
    WorkerConfig {
        inline_max_run_us: 0,
        ..config(&MODELS, ProviderChoice::Cpu)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_answers_each_call_as_separate_calls_would() {
    let mut plain = serve(load(handing_off()).await).await;
    let mut framed = serve(load(config(&MODELS, ProviderChoice::Cpu)).await).await;
    for round in 0..20 {
        let calls: Vec<InferCall> = MODELS
            .iter()
            .enumerate()
            .map(|(m, model)| call(model, round * 3 + m, 1 + round % 3))
            .collect();
        let expected = one_by_one(&plain.client, &calls).await;
        let got = framed
            .client
            .infer_many(context::current(), calls)
            .await
            .unwrap();
        assert_eq!(got.len(), MODELS.len());
        for ((model, want), have) in MODELS.iter().zip(&expected).zip(got) {
            let have = have.unwrap_or_else(|e| panic!("{model}: {e}"));
            assert_eq!(have.model, *model);
            assert_eq!(&have.outputs, want, "{model} round {round}");
        }
    }
    plain.shut_down();
    framed.shut_down();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_runs_answer_exactly_as_instance_threads_do() {
    let mut plain = serve(load(handing_off()).await).await;
    let mut inline = serve(load(config(&MODELS, ProviderChoice::Cpu)).await).await;
    // Sequential single calls: after the first (measured) run of each model, the default limit
    // runs these small models inline.
    let calls: Vec<InferCall> = (0..60).map(|i| call(MODELS[i % 3], i, 1 + i % 4)).collect();
    let expected = one_by_one(&plain.client, &calls).await;
    let got = one_by_one(&inline.client, &calls).await;
    assert_eq!(expected, got);
    plain.shut_down();
    inline.shut_down();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_call_fails_alone_and_an_oversized_frame_is_refused_whole() {
    let mut served = serve(load(config(&MODELS, ProviderChoice::Cpu)).await).await;
    let calls = vec![
        call("logreg", 1, 1),
        call("no_such_model", 2, 1),
        call("mlp", 3, 1),
    ];
    let answers = served
        .client
        .infer_many(context::current(), calls)
        .await
        .unwrap();
    assert!(answers[0].is_ok(), "{:?}", answers[0]);
    assert!(
        matches!(&answers[1], Err(WorkerError::ModelNotFound { model, .. }) if model == "no_such_model"),
        "{:?}",
        answers[1]
    );
    assert!(answers[2].is_ok(), "{:?}", answers[2]);

    let too_many = vec![call("logreg", 1, 1); MAX_CALLS_PER_FRAME + 1];
    let answers = served
        .client
        .infer_many(context::current(), too_many)
        .await
        .unwrap();
    assert_eq!(answers.len(), MAX_CALLS_PER_FRAME + 1);
    for answer in answers {
        match answer {
            Err(WorkerError::InvalidInput(message)) => {
                assert!(message.contains("1025 calls"), "{message}")
            }
            other => panic!("an oversized frame must be refused, got {other:?}"),
        }
    }
    served.shut_down();
}
