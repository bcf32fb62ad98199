use super::*;
use crate::access::{Access, Credentials, digest_hex};
use crate::infer::ErrorKind;
use crate::metrics::Metrics;

fn admission(max_inflight: usize, max_queue: usize) -> Admission {
    Admission::new(
        AdmissionSettings {
            max_inflight,
            max_queue,
            max_queue_wait: Duration::from_millis(50),
            adaptive: None,
            max_inflight_bytes: 1 << 30,
        },
        Metrics::new().admission().clone(),
    )
}

fn throttled(e: InferError) -> Duration {
    assert_eq!(e.kind(), ErrorKind::Overloaded, "{e}");
    e.retry_after()
        .expect("a throttled request says when to retry")
}

#[test]
fn a_key_over_its_rate_is_told_when_to_retry() {
    let access = Access::parse(
        &format!(
            "[[key]]\nid = \"k\"\nsha256 = \"{}\"\nrate_limit = 1.0\nburst = 2\n",
            digest_hex("s")
        ),
        "keys",
    )
    .unwrap();
    let caller = access
        .authenticate(Credentials {
            authorization: Some("Bearer s"),
            api_key: None,
        })
        .unwrap();
    let admission = admission(0, 0);
    admission.check_rates(&caller, "m", None).unwrap();
    admission.check_rates(&caller, "m", None).unwrap();
    let e = admission.check_rates(&caller, "m", None).unwrap_err();
    assert!(e.to_string().contains("API key 'k'"), "{e}");
    assert!(throttled(e) <= Duration::from_secs(1));
    // Another caller is not affected.
    admission
        .check_rates(&Caller::default(), "m", None)
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_ensemble_over_its_concurrency_is_refused_fast_and_others_are_not() {
    let admission = admission(0, 0);
    let limits = EnsembleLimits {
        max_inflight: Some(1),
        ..EnsembleLimits::default()
    };
    let deadline = Duration::from_secs(1);
    let held = admission
        .admit("e", Some(&limits), 0, deadline)
        .await
        .unwrap();
    let started = Instant::now();
    let e = admission
        .admit("e", Some(&limits), 0, deadline)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("ensemble 'e'"), "{e}");
    throttled(e);
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "a full queue answers at once"
    );
    admission
        .admit("other", Some(&limits), 0, deadline)
        .await
        .unwrap();
    drop(held);
    admission
        .admit("e", Some(&limits), 0, deadline)
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn waiting_is_bounded_by_half_the_deadline_and_the_queue_wait() {
    let admission = admission(1, 4);
    let _held = admission
        .admit("m", None, 0, Duration::from_secs(1))
        .await
        .unwrap();
    let started = Instant::now();
    let e = admission
        .admit("m", None, 0, Duration::from_millis(40))
        .await
        .unwrap_err();
    throttled(e);
    assert_eq!(started.elapsed(), Duration::from_millis(20));
    let started = Instant::now();
    admission
        .admit("m", None, 0, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_millis(50));
}

#[test]
fn an_ensemble_over_its_rate_is_refused_and_others_are_not() {
    let admission = admission(0, 0);
    let limits = EnsembleLimits {
        rate_limit: Some(1.0),
        burst: Some(1),
        ..EnsembleLimits::default()
    };
    let caller = Caller::default();
    admission.check_rates(&caller, "e", Some(&limits)).unwrap();
    let e = admission
        .check_rates(&caller, "e", Some(&limits))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("ensemble 'e' is over its rate limit"),
        "{e}"
    );
    throttled(e);
    admission
        .check_rates(&caller, "other", Some(&limits))
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_changed_spec_limit_takes_effect() {
    let admission = admission(0, 0);
    let one = EnsembleLimits {
        max_inflight: Some(1),
        ..EnsembleLimits::default()
    };
    let two = EnsembleLimits {
        max_inflight: Some(2),
        ..EnsembleLimits::default()
    };
    let d = Duration::from_secs(1);
    let _a = admission.admit("e", Some(&one), 0, d).await.unwrap();
    assert!(admission.admit("e", Some(&one), 0, d).await.is_err());
    let _b = admission.admit("e", Some(&two), 0, d).await.unwrap();
}
