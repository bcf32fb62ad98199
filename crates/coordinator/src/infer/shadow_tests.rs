//! Versions and shadows in the core, against fake workers on tokio's paused clock: a slow or
//! failing shadow never delays or fails the primary, the shadow cap drops and counts, and
//! agreement is counted once the shadow answers.

use super::*;
use crate::testing::{Behaviour, FakeWorker, Harness, one_row};
use chorus_common::WorkerError;

const A: [f32; 3] = [0.6, 0.3, 0.1];
const B: [f32; 3] = [0.2, 0.7, 0.1];

/// `e` version 1 (member a) answers every unpinned request; version 2 (member `shadow_member`)
/// shadows it.
fn shadowed(shadow_member: &str) -> String {
    format!(
        "version = 1\n\
         [[ensemble]]\nname = \"e\"\nversion = 1\ncombiner = \"soft_vote\"\ndeadline_ms = 10000\n\
         traffic = {{ \"1\" = 1 }}\nshadow = 2\n[[ensemble.member]]\nmodel = \"a\"\n\
         [[ensemble]]\nname = \"e\"\nversion = 2\ncombiner = \"soft_vote\"\ndeadline_ms = 10000\n\
         [[ensemble.member]]\nmodel = \"{shadow_member}\"\n"
    )
}

fn shadow_count(h: &Harness, outcome: &str) -> f64 {
    let text = h.infer.metrics().encode().unwrap();
    let series =
        format!("chorus_shadow_agreement_total{{model=\"e\",version=\"2\",outcome=\"{outcome}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn run(h: &Harness) -> InferAnswer {
    let target = h.infer.resolve("e", None).unwrap();
    h.infer
        .infer(&target, one_row())
        .await
        .expect("the primary answers")
}

/// Lets spawned shadow tasks run to their end: 8 s, past the slow member's 5 (the paused
/// clock skips them).
async fn settle() {
    for _ in 0..80 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_shadow_neither_delays_the_primary_nor_passes_its_cap() {
    let workers = [
        FakeWorker::new("w-a", &[("a", Behaviour::answer(&A))]),
        FakeWorker::new("w-s", &[("s", Behaviour::slow(Duration::from_secs(5), &A))]),
    ];
    let h = Harness::start(&shadowed("s"), &workers).await;
    let h = Harness {
        infer: h.infer.with_shadow_max_inflight(1),
    };
    let started = Instant::now();
    let first = run(&h).await;
    let second = run(&h).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the primary waited for its shadow"
    );
    assert_eq!(first.model_version, "1");
    assert_eq!(second.model_version, "1");
    assert_eq!(
        shadow_count(&h, "dropped"),
        1.0,
        "the second is over the cap of 1"
    );
    assert_eq!(shadow_count(&h, "agree"), 0.0, "not answered yet");
    settle().await;
    assert_eq!(shadow_count(&h, "agree"), 1.0);
    // The slot is free again.
    run(&h).await;
    settle().await;
    assert_eq!(shadow_count(&h, "agree"), 2.0);
}

#[tokio::test(start_paused = true)]
async fn a_failing_or_disagreeing_shadow_is_counted_and_never_returned() {
    let workers = [
        FakeWorker::new("w-a", &[("a", Behaviour::answer(&A))]),
        FakeWorker::new(
            "w-s",
            &[("s", Behaviour::fail(WorkerError::Internal("broken".into())))],
        ),
        FakeWorker::new("w-b", &[("b", Behaviour::answer(&B))]),
    ];
    let h = Harness::start(&shadowed("s"), &workers).await;
    let answer = run(&h).await;
    assert_eq!(answer.model_version, "1");
    settle().await;
    assert_eq!(shadow_count(&h, "failed"), 1.0);

    let h = Harness::start(&shadowed("b"), &workers).await;
    let answer = run(&h).await;
    let label = answer.outputs.iter().find(|t| t.name == "label").unwrap();
    assert_eq!(
        label.to_values::<i64>().unwrap(),
        vec![0],
        "a's class, not b's"
    );
    settle().await;
    assert_eq!(shadow_count(&h, "disagree"), 1.0);
    // A pinned request is the version asked for, and is not shadowed.
    let target = h.infer.resolve("e", Some("2")).unwrap();
    let pinned = h.infer.infer(&target, one_row()).await.unwrap();
    assert_eq!(pinned.model_version, "2");
    settle().await;
    assert_eq!(shadow_count(&h, "disagree"), 1.0);
    assert!(h.infer.resolve("e", Some("3")).is_err());
}
