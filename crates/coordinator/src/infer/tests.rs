//! The core in process: fan-out, quorum, retries, hedging, deadlines and cancellation against
//! fake workers on tarpc's in-memory transport, on tokio's paused clock (no sockets, no sleeps:
//! a straggler's five seconds are a timer that the clock skips).

use super::*;
use crate::testing::{Behaviour, FakeWorker, Harness, one_row};
use chorus_common::WorkerError;
use std::sync::atomic::Ordering;

/// `trio`: soft vote of a, b, c, two needed, under `deadline_ms`.
fn trio(deadline_ms: u64) -> String {
    format!(
        "version = 1\n[[ensemble]]\nname = \"trio\"\ncombiner = \"soft_vote\"\n\
         deadline_ms = {deadline_ms}\nmin_members = 2\n\
         [[ensemble.member]]\nmodel = \"a\"\n[[ensemble.member]]\nmodel = \"b\"\n\
         [[ensemble.member]]\nmodel = \"c\"\n"
    )
}

/// The usual trio: a 100 ms deadline.
fn trio_spec() -> String {
    trio(100)
}

const A: [f32; 3] = [0.6, 0.3, 0.1];
const B: [f32; 3] = [0.2, 0.7, 0.1];
const C: [f32; 3] = [0.1, 0.2, 0.7];

fn probabilities(answer: &InferAnswer) -> Vec<f32> {
    answer
        .outputs
        .iter()
        .find(|t| t.name == "probabilities")
        .expect("probabilities")
        .to_values::<f32>()
        .unwrap()
}

fn report(answer: &InferAnswer) -> &crate::ensemble::MemberReport {
    answer.members.as_ref().expect("an ensemble answer")
}

/// One worker per member of `trio`.
fn three_workers(a: Behaviour, b: Behaviour, c: Behaviour) -> Vec<FakeWorker> {
    vec![
        FakeWorker::new("w-a", &[("a", a)]),
        FakeWorker::new("w-b", &[("b", b)]),
        FakeWorker::new("w-c", &[("c", c)]),
    ]
}

#[tokio::test(start_paused = true)]
async fn every_member_answers_and_the_vote_is_their_mean() {
    let workers = three_workers(
        Behaviour::answer(&A),
        Behaviour::answer(&B),
        Behaviour::answer(&C),
    );
    let h = Harness::start(&trio_spec(), &workers).await;
    let answer = h.infer("trio").await.unwrap();
    let mean: Vec<f32> = (0..3).map(|i| (A[i] + B[i] + C[i]) / 3.0).collect();
    for (got, want) in probabilities(&answer).iter().zip(&mean) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
    assert_eq!(report(&answer).used, vec!["a", "b", "c"]);
    assert!(!report(&answer).degraded());
    assert_eq!(answer.model_version, "1");
    assert!(
        answer.id.starts_with(h.infer.request_ids().prefix()),
        "a generated id: {}",
        answer.id
    );
    let label = answer.outputs.iter().find(|t| t.name == "label").unwrap();
    assert_eq!(
        label.to_values::<i64>().unwrap(),
        vec![1],
        "argmax of [0.3, 0.4, 0.3]"
    );
}

#[tokio::test(start_paused = true)]
async fn a_late_member_is_left_out_and_named() {
    let workers = three_workers(
        Behaviour::answer(&A),
        Behaviour::answer(&B),
        Behaviour::slow(Duration::from_secs(5), &C),
    );
    let h = Harness::start(&trio_spec(), &workers).await;
    let started = Instant::now();
    let answer = h.infer("trio").await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_millis(150),
        "answered at the deadline, not after the straggler: {waited:?}"
    );
    let r = report(&answer);
    assert_eq!(r.used, vec!["a", "b"]);
    assert_eq!(r.late, vec!["c"]);
    assert!(r.degraded());
    let mean: Vec<f32> = (0..3).map(|i| (A[i] + B[i]) / 2.0).collect();
    for (got, want) in probabilities(&answer).iter().zip(&mean) {
        assert!(
            (got - want).abs() < 1e-6,
            "weights renormalised over a and b"
        );
    }
    let degraded = answer
        .parameters
        .iter()
        .find(|(name, _)| *name == "degraded")
        .unwrap();
    assert_eq!(degraded.1, ParameterValue::Bool(true));
}

#[tokio::test(start_paused = true)]
async fn below_quorum_is_unavailable_and_names_the_failed_members() {
    let broken = || Behaviour::fail(WorkerError::Internal("out of memory".into()));
    let workers = three_workers(Behaviour::answer(&A), broken(), broken());
    let h = Harness::start(&trio_spec(), &workers).await;
    let error = h.infer("trio").await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    let message = error.to_string();
    assert!(
        message.contains("needs 2 members to answer but 1 did") && message.contains("b, c"),
        "{message}"
    );
}

#[tokio::test(start_paused = true)]
async fn below_quorum_only_by_lateness_is_a_deadline() {
    let slow = || Behaviour::slow(Duration::from_secs(5), &B);
    let workers = three_workers(Behaviour::answer(&A), slow(), slow());
    let h = Harness::start(&trio_spec(), &workers).await;
    let error = h.infer("trio").await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::DeadlineExceeded, "{error}");
    assert!(error.to_string().contains("before the deadline"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn bad_input_a_worker_reports_is_the_clients_fault_not_an_outage() {
    let workers = three_workers(
        Behaviour::answer(&A),
        Behaviour::fail(WorkerError::InvalidInput("row 0 is not a digit".into())),
        Behaviour::answer(&C),
    );
    let h = Harness::start(&trio_spec(), &workers).await;
    let error = h.infer("trio").await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidArgument);
    assert_eq!(error.to_string(), "row 0 is not a digit");
}

/// `b` has two replicas; the first fails every call.
#[tokio::test(start_paused = true)]
async fn a_failed_call_is_retried_on_another_replica() {
    let workers = vec![
        FakeWorker::new("w-a", &[("a", Behaviour::answer(&A))]),
        FakeWorker::new(
            "w-b1",
            &[(
                "b",
                Behaviour::fail(WorkerError::Internal("gpu fell off".into())),
            )],
        ),
        FakeWorker::new("w-b2", &[("b", Behaviour::answer(&B))]),
        FakeWorker::new("w-c", &[("c", Behaviour::answer(&C))]),
    ];
    let h = Harness::start(&trio_spec(), &workers).await;
    let mut retried = 0;
    for _ in 0..32 {
        let answer = h.infer("trio").await.unwrap();
        let r = report(&answer);
        assert_eq!(r.used, vec!["a", "b", "c"], "b always answers in the end");
        if r.retried.contains(&"b".to_string()) {
            retried += 1;
        }
    }
    let failed_calls = workers[1].started.load(Ordering::SeqCst);
    assert!(
        failed_calls > 0,
        "replica choice never tried w-b1 in 32 requests"
    );
    assert_eq!(
        retried, failed_calls,
        "every call that failed on w-b1 was retried on w-b2"
    );
    assert_eq!(
        h.infer.router().routing_stats().retries,
        u64::from(failed_calls)
    );
}

/// `b` has two replicas; once the hedging delay is known (10 ms here), the first turns slow.
#[tokio::test(start_paused = true)]
async fn a_slow_call_is_hedged_and_the_hedge_wins() {
    let workers = vec![
        FakeWorker::new("w-a", &[("a", Behaviour::answer(&A))]),
        FakeWorker::new("w-b1", &[("b", Behaviour::answer(&B))]),
        FakeWorker::new("w-b2", &[("b", Behaviour::answer(&B))]),
        FakeWorker::new("w-c", &[("c", Behaviour::answer(&C))]),
    ];
    let h = Harness::start(&trio_spec(), &workers).await;
    h.infer("trio").await.unwrap();
    workers[1].set("b", Behaviour::slow(Duration::from_secs(5), &B));
    let calls_before = workers[1].started.load(Ordering::SeqCst);
    let mut hedged = 0;
    for _ in 0..16 {
        let started = Instant::now();
        let answer = h.infer("trio").await.unwrap();
        let r = report(&answer);
        assert_eq!(r.used, vec!["a", "b", "c"], "never late: the hedge answers");
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "{:?}",
            started.elapsed()
        );
        if r.hedged.contains(&"b".to_string()) {
            hedged += 1;
        }
    }
    let slow_calls = workers[1].started.load(Ordering::SeqCst) - calls_before;
    assert!(
        slow_calls > 0,
        "replica choice never tried w-b1 in 16 requests"
    );
    assert_eq!(
        hedged, slow_calls,
        "every call to the slow replica was hedged"
    );
    let stats = h.infer.router().routing_stats();
    assert_eq!(stats.hedges_won, u64::from(slow_calls));
    // The losers were cancelled: none of the slow calls ran to its end.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        workers[1].finished.load(Ordering::SeqCst),
        calls_before,
        "hedged-out calls are cancelled at the worker"
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_a_request_cancels_its_member_calls() {
    let slow = || Behaviour::slow(Duration::from_secs(5), &A);
    let workers = three_workers(slow(), slow(), slow());
    let h = Harness::start(&trio(60_000), &workers).await;
    let target = h.infer.resolve("trio", None).unwrap();
    let request = h.infer.infer(&target, one_row());
    // The client goes away after 50 ms.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), request)
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    for worker in &workers {
        assert_eq!(worker.started.load(Ordering::SeqCst), 1);
        assert_eq!(
            worker.finished.load(Ordering::SeqCst),
            0,
            "the call was cancelled, not run to the end"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_client_timeout_shortens_the_deadline_but_never_lengthens_it() {
    let workers = three_workers(
        Behaviour::answer(&A),
        Behaviour::answer(&B),
        Behaviour::slow(Duration::from_millis(30), &C),
    );
    let h = Harness::start(&trio_spec(), &workers).await;
    let target = h.infer.resolve("trio", None).unwrap();
    let mut request = one_row();
    request.timeout = Some(Duration::from_millis(20));
    let answer = h.infer.infer(&target, request).await.unwrap();
    assert_eq!(report(&answer).late, vec!["c"], "20 ms is too short for c");
    let mut request = one_row();
    request.timeout = Some(Duration::from_secs(u64::MAX / 4));
    let started = Instant::now();
    let answer = h.infer.infer(&target, request).await.unwrap();
    assert!(report(&answer).late.is_empty());
    assert!(started.elapsed() < Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn models_answer_directly_with_the_version_that_ran() {
    let workers = three_workers(
        Behaviour::answer(&A),
        Behaviour::answer(&B),
        Behaviour::answer(&C),
    );
    let h = Harness::start(&trio_spec(), &workers).await;
    let mut request = one_row();
    request.id = Some("mine".into());
    request.outputs = vec![RequestedOutput::named("probabilities")];
    let target = h.infer.resolve("b", None).unwrap();
    let answer = h.infer.infer(&target, request).await.unwrap();
    assert_eq!(answer.id, "mine");
    assert_eq!(answer.model_version, "1");
    assert!(answer.members.is_none() && answer.parameters.is_empty());
    assert_eq!(probabilities(&answer), B.to_vec());
    let error = h.infer.resolve("b", Some("7")).unwrap_err();
    assert_eq!(error.to_string(), "unknown model 'b' version 7");
    let error = h.infer.resolve("trio", Some("2")).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound);
}

#[tokio::test(start_paused = true)]
async fn statistics_count_ensembles_and_their_members() {
    let workers = three_workers(
        Behaviour::answer(&A),
        Behaviour::answer(&B),
        Behaviour::fail(WorkerError::Internal("broken".into())),
    );
    let h = Harness::start(&trio_spec(), &workers).await;
    h.infer("trio").await.unwrap();
    h.infer("trio").await.unwrap();
    let all = h.infer.statistics(None, None).unwrap();
    let of = |name: &str| all.iter().find(|s| s.name == name).unwrap().clone();
    assert_eq!(of("trio").execution_count, 2);
    assert_eq!(of("trio").inference_count, 2);
    assert_eq!(
        of("a").execution_count,
        2,
        "members count their ensemble's calls"
    );
    assert_eq!(of("c").execution_count, 0);
    assert_eq!(of("c").fail.count, 2);
    assert_eq!(of("a").queue.count, 2);
    let one = h.infer.statistics(Some("a"), Some("1")).unwrap();
    assert_eq!(one.len(), 1);
    assert!(h.infer.statistics(Some("nope"), None).is_err());
    assert!(h.infer.statistics(Some("trio"), Some("2")).is_err());
}

#[tokio::test(start_paused = true)]
async fn requests_are_checked_before_any_member_is_called() {
    let workers = three_workers(
        Behaviour::answer(&A),
        Behaviour::answer(&B),
        Behaviour::answer(&C),
    );
    let h = Harness::start(&trio_spec(), &workers).await;
    let target = h.infer.resolve("trio", None).unwrap();
    let mut request = one_row();
    request.inputs[0] = Tensor::from_values("input", vec![1, 3], &[0f32; 3]);
    let error = h.infer.infer(&target, request).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidArgument);
    assert!(error.to_string().contains("dimension 1"), "{error}");
    let mut request = one_row();
    request.outputs = vec![RequestedOutput::named("nope")];
    let error = h.infer.infer(&target, request).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("unknown requested output 'nope'"),
        "{error}"
    );
    for worker in &workers {
        assert_eq!(worker.started.load(Ordering::SeqCst), 0);
    }
}

/// A `trio` spec needing all three members: the only kind that shares frames.
fn all_needed(trio: String) -> String {
    trio.replace("min_members = 2", "min_members = 3")
}

/// `trio` with a and b on one worker (`w-ab`) and c on another.
fn a_and_b_together(a: Behaviour, b: Behaviour, c: Behaviour) -> Vec<FakeWorker> {
    vec![
        FakeWorker::new("w-ab", &[("a", a), ("b", b)]),
        FakeWorker::new("w-c", &[("c", c)]),
    ]
}

#[tokio::test(start_paused = true)]
async fn members_on_one_worker_travel_in_one_frame() {
    let workers = a_and_b_together(
        Behaviour::answer(&A),
        Behaviour::answer(&B),
        Behaviour::answer(&C),
    );
    let h = Harness::start(&all_needed(trio_spec()), &workers).await;
    // The first request times the members; until then each goes alone.
    h.infer("trio").await.unwrap();
    assert_eq!(workers[0].frames.load(Ordering::SeqCst), 0);
    for _ in 0..3 {
        let answer = h.infer("trio").await.unwrap();
        assert_eq!(report(&answer).used, vec!["a", "b", "c"]);
        let mean: Vec<f32> = (0..3).map(|i| (A[i] + B[i] + C[i]) / 3.0).collect();
        for (got, want) in probabilities(&answer).iter().zip(&mean) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }
    // One frame per request to the worker with two members; the lone member's calls go alone.
    assert_eq!(workers[0].frames.load(Ordering::SeqCst), 3);
    assert_eq!(workers[0].started.load(Ordering::SeqCst), 8);
    assert_eq!(workers[1].frames.load(Ordering::SeqCst), 0);
    assert_eq!(workers[1].started.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn a_straggling_member_never_holds_back_its_neighbour_on_the_same_worker() {
    let workers = a_and_b_together(
        Behaviour::answer(&A),
        Behaviour::slow(Duration::from_secs(5), &B),
        Behaviour::answer(&C),
    );
    let h = Harness::start(&trio_spec(), &workers).await;
    for _ in 0..5 {
        let answer = h.infer("trio").await.unwrap();
        let r = report(&answer);
        assert_eq!(
            r.used,
            vec!["a", "c"],
            "a answered beside its late neighbour"
        );
        assert_eq!(r.late, vec!["b"]);
    }
    assert_eq!(workers[0].frames.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn one_failed_call_in_a_frame_is_retried_alone_and_its_neighbour_is_used() {
    let overloaded = Behaviour::fail(WorkerError::Overloaded("queue full".into()));
    let workers = vec![
        FakeWorker::new("w-ab", &[("a", Behaviour::answer(&A)), ("b", overloaded)]),
        FakeWorker::new("w-b", &[("b", Behaviour::answer(&B))]),
        FakeWorker::new("w-c", &[("c", Behaviour::answer(&C))]),
    ];
    let h = Harness::start(&all_needed(trio_spec()), &workers).await;
    // Replica choice is random: ask until b's first attempt went to w-ab with a.
    for _ in 0..64 {
        let answer = h.infer("trio").await.unwrap();
        let r = report(&answer);
        assert_eq!(r.used, vec!["a", "b", "c"]);
        assert!(r.failed.is_empty(), "{r:?}");
        if workers[0].frames.load(Ordering::SeqCst) > 0 {
            assert_eq!(
                r.retried,
                vec!["b"],
                "b retried on w-b after w-ab refused it"
            );
            return;
        }
    }
    panic!("b's first attempt never shared w-ab's frame with a");
}

#[tokio::test(start_paused = true)]
async fn members_stuck_in_a_frozen_workers_frame_are_hedged_each() {
    let workers = vec![
        FakeWorker::new(
            "w-ab",
            &[("a", Behaviour::answer(&A)), ("b", Behaviour::answer(&B))],
        ),
        FakeWorker::new(
            "w-ab2",
            &[("a", Behaviour::answer(&A)), ("b", Behaviour::answer(&B))],
        ),
        FakeWorker::new("w-c", &[("c", Behaviour::answer(&C))]),
    ];
    let h = Harness::start(&all_needed(trio(1000)), &workers).await;
    // Latency samples first, so that hedging has a delay to go by.
    for _ in 0..4 {
        h.infer("trio").await.unwrap();
    }
    workers[0].freeze(true);
    for _ in 0..8 {
        let started = Instant::now();
        let answer = h.infer("trio").await.unwrap();
        assert_eq!(report(&answer).used, vec!["a", "b", "c"]);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "answered by hedges, not at the deadline: {:?}",
            started.elapsed()
        );
    }
    assert!(
        workers[0].frames.load(Ordering::SeqCst) + workers[1].frames.load(Ordering::SeqCst) >= 4,
        "a and b shared frames"
    );
}
