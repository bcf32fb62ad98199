//! The batching rules, driven with explicit instants: no threads, no sleeps.

use super::*;

/// A stand-in job: an id, rows, a "shape" for compatibility, times and a gone flag.
#[derive(Debug, Clone, PartialEq, Eq)]
struct J {
    id: u32,
    rows: Option<usize>,
    shape: u32,
    enqueued: Instant,
    deadline: Instant,
    gone: bool,
}

impl Batchable for J {
    fn rows(&self) -> Option<usize> {
        self.rows
    }
    fn compatible(&self, other: &Self) -> bool {
        self.shape == other.shape
    }
    fn enqueued(&self) -> Instant {
        self.enqueued
    }
    fn deadline(&self) -> Instant {
        self.deadline
    }
    fn caller_gone(&self) -> bool {
        self.gone
    }
}

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

/// A clock origin, and jobs queued relative to it with a one-second deadline.
struct Clock(Instant);

impl Clock {
    fn new() -> Self {
        Clock(Instant::now())
    }
    fn at(&self, micros: u64) -> Instant {
        self.0 + us(micros)
    }
    fn job(&self, id: u32, rows: usize, queued_at_us: u64) -> J {
        J {
            id,
            rows: Some(rows),
            shape: 0,
            enqueued: self.at(queued_at_us),
            deadline: self.at(queued_at_us + 1_000_000),
            gone: false,
        }
    }
}

fn policy(max: usize, delay_us: u64, preferred: &[usize]) -> BatchPolicy {
    BatchPolicy {
        max_batch_size: max,
        max_queue_delay: us(delay_us),
        preferred_batch_sizes: preferred.to_vec(),
    }
}

fn state(policy: BatchPolicy, jobs: impl IntoIterator<Item = J>) -> BatchState<J> {
    let mut s = BatchState::new(policy);
    for j in jobs {
        s.push(j);
    }
    s
}

/// The ids of a `Run` step and its reason; panics on any other step.
fn run(poll: Poll<J>) -> (Vec<u32>, Reason) {
    match poll.step {
        Step::Run(jobs, reason) => (jobs.iter().map(|j| j.id).collect(), reason),
        other => panic!("expected a run, got {other:?}"),
    }
}

#[test]
fn an_empty_queue_is_idle() {
    let c = Clock::new();
    let mut s = state(policy(8, 100, &[]), []);
    let p = s.poll(c.at(0));
    assert_eq!(p.step, Step::Idle);
    assert!(p.dropped.is_empty());
    s.close();
    assert_eq!(s.poll(c.at(0)).step, Step::Idle);
}

#[test]
fn batching_off_runs_each_job_alone_in_order_without_waiting() {
    let c = Clock::new();
    for off in [policy(0, 100, &[]), policy(1, 100, &[]), BatchPolicy::off()] {
        assert!(!off.enabled());
        let mut s = state(off, [c.job(1, 1, 0), c.job(2, 1, 0), c.job(3, 4, 0)]);
        for id in 1..=3 {
            assert_eq!(run(s.poll(c.at(0))), (vec![id], Reason::Alone));
        }
        assert_eq!(s.poll(c.at(0)).step, Step::Idle);
    }
}

#[test]
fn a_lone_job_waits_for_company_until_its_delay() {
    let c = Clock::new();
    let mut s = state(policy(8, 100, &[]), [c.job(1, 1, 10)]);
    assert_eq!(s.poll(c.at(10)).step, Step::Wait(c.at(110)));
    assert_eq!(s.poll(c.at(109)).step, Step::Wait(c.at(110)));
    // A newcomer joins; the wait is still counted from the oldest job.
    s.push(c.job(2, 2, 50));
    assert_eq!(s.poll(c.at(60)).step, Step::Wait(c.at(110)));
    assert_eq!(run(s.poll(c.at(110))), (vec![1, 2], Reason::Delay));
    assert!(s.is_empty());
}

#[test]
fn a_zero_delay_takes_whatever_is_queued_at_once() {
    let c = Clock::new();
    let mut s = state(
        policy(8, 0, &[]),
        [c.job(1, 1, 0), c.job(2, 3, 1), c.job(3, 1, 2)],
    );
    assert_eq!(run(s.poll(c.at(2))), (vec![1, 2, 3], Reason::Delay));
}

#[test]
fn a_full_batch_goes_at_once_and_the_rest_waits() {
    let c = Clock::new();
    let mut s = state(
        policy(4, 1000, &[]),
        [c.job(1, 1, 0), c.job(2, 3, 0), c.job(3, 1, 0)],
    );
    assert_eq!(run(s.poll(c.at(1))), (vec![1, 2], Reason::Full));
    assert_eq!(s.len(), 1);
    assert_eq!(s.poll(c.at(1)).step, Step::Wait(c.at(1000)));
}

#[test]
fn a_job_too_big_to_join_ends_the_batch_and_leads_the_next() {
    let c = Clock::new();
    let mut s = state(
        policy(8, 1000, &[]),
        [c.job(1, 3, 0), c.job(2, 6, 1), c.job(3, 1, 2)],
    );
    // 3 + 6 > 8: the batch cannot grow past job 2, and job 3 must not overtake it.
    assert_eq!(run(s.poll(c.at(5))), (vec![1], Reason::NoRoom));
    assert_eq!(s.poll(c.at(5)).step, Step::Wait(c.at(1001)));
    s.push(c.job(4, 2, 6));
    // 6 + 1 + 2 > 8: job 4 does not fit behind jobs 2 and 3, and leads the next batch.
    assert_eq!(run(s.poll(c.at(7))), (vec![2, 3], Reason::NoRoom));
    assert_eq!(s.poll(c.at(7)).step, Step::Wait(c.at(1006)));
}

#[test]
fn a_job_larger_than_the_maximum_runs_alone_at_once() {
    let c = Clock::new();
    let mut s = state(policy(8, 1000, &[]), [c.job(1, 20, 0), c.job(2, 1, 0)]);
    assert_eq!(run(s.poll(c.at(0))), (vec![1], Reason::Alone));
    assert_eq!(s.poll(c.at(0)).step, Step::Wait(c.at(1000)));
    // Exactly the maximum is a full batch of one.
    let mut s = state(policy(8, 1000, &[]), [c.job(3, 8, 0)]);
    assert_eq!(run(s.poll(c.at(0))), (vec![3], Reason::Full));
}

#[test]
fn jobs_that_cannot_be_batched_run_alone_and_are_passed_over() {
    let c = Clock::new();
    let unbatchable = J {
        rows: None,
        ..c.job(2, 1, 1)
    };
    let mut s = state(
        policy(8, 1000, &[]),
        [c.job(1, 1, 0), unbatchable, c.job(3, 1, 2)],
    );
    assert_eq!(run(s.poll(c.at(1000))), (vec![1, 3], Reason::Delay));
    assert_eq!(run(s.poll(c.at(1000))), (vec![2], Reason::Alone));
}

#[test]
fn incompatible_jobs_wait_for_a_batch_of_their_own() {
    let c = Clock::new();
    let other = |id, at| J {
        shape: 1,
        ..c.job(id, 1, at)
    };
    let mut s = state(
        policy(8, 100, &[]),
        [c.job(1, 1, 0), other(2, 10), c.job(3, 1, 20), other(4, 30)],
    );
    assert_eq!(run(s.poll(c.at(100))), (vec![1, 3], Reason::Delay));
    // The other shape's wait counts from its own oldest job.
    assert_eq!(s.poll(c.at(100)).step, Step::Wait(c.at(110)));
    assert_eq!(run(s.poll(c.at(110))), (vec![2, 4], Reason::Delay));
}

#[test]
fn a_preferred_size_dispatches_without_waiting() {
    let c = Clock::new();
    let mut s = state(policy(32, 1000, &[4, 8]), [c.job(1, 1, 0), c.job(2, 2, 0)]);
    assert_eq!(s.poll(c.at(1)).step, Step::Wait(c.at(1000)));
    s.push(c.job(3, 1, 2));
    assert_eq!(run(s.poll(c.at(3))), (vec![1, 2, 3], Reason::Preferred));
}

#[test]
fn the_largest_reachable_preferred_prefix_goes_and_the_rest_waits() {
    let c = Clock::new();
    let jobs = (1..=10).map(|id| c.job(id, 1, u64::from(id)));
    let mut s = state(policy(32, 1000, &[4, 8, 16]), jobs);
    // Ten single rows: 16 is out of reach, 8 is the largest preferred size reachable.
    assert_eq!(
        run(s.poll(c.at(20))),
        ((1..=8).collect(), Reason::Preferred)
    );
    assert_eq!(s.poll(c.at(20)).step, Step::Wait(c.at(1009)));
}

#[test]
fn a_preferred_size_skipped_over_by_a_multi_row_job_means_waiting() {
    let c = Clock::new();
    let mut s = state(policy(32, 1000, &[8]), [c.job(1, 6, 0), c.job(2, 4, 0)]);
    // 6, then 10: no prefix is exactly 8.
    assert_eq!(s.poll(c.at(1)).step, Step::Wait(c.at(1000)));
    assert_eq!(run(s.poll(c.at(1000))), (vec![1, 2], Reason::Delay));
}

#[test]
fn after_the_delay_everything_goes_even_past_a_preferred_size() {
    let c = Clock::new();
    let jobs = (1..=5).map(|id| c.job(id, 1, 0));
    let mut s = state(policy(32, 100, &[4]), jobs);
    assert_eq!(run(s.poll(c.at(100))), ((1..=5).collect(), Reason::Delay));
}

#[test]
fn deadline_pressure_dispatches_early() {
    let c = Clock::new();
    let mut s = state(policy(8, 10_000, &[]), []);
    s.observe_run(us(300));
    assert_eq!(s.run_estimate(), us(300));
    let urgent = J {
        deadline: c.at(1_000),
        ..c.job(2, 1, 0)
    };
    s.push(c.job(1, 1, 0));
    s.push(urgent);
    // Must start by 1000 - 300 = 700 µs to finish before job 2's deadline.
    assert_eq!(s.poll(c.at(100)).step, Step::Wait(c.at(700)));
    assert_eq!(run(s.poll(c.at(700))), (vec![1, 2], Reason::Deadline));
}

#[test]
fn a_deadline_closer_than_the_run_time_goes_at_once() {
    let c = Clock::new();
    let mut s = state(policy(8, 10_000, &[]), []);
    s.observe_run(us(2_000));
    s.push(J {
        deadline: c.at(1_000),
        ..c.job(1, 1, 0)
    });
    assert_eq!(run(s.poll(c.at(10))), (vec![1], Reason::Deadline));
}

#[test]
fn the_run_estimate_is_a_moving_average() {
    let mut s: BatchState<J> = BatchState::new(policy(8, 0, &[]));
    assert_eq!(s.run_estimate(), Duration::ZERO);
    s.observe_run(us(800));
    s.observe_run(us(0));
    assert_eq!(s.run_estimate(), us(700));
}

#[test]
fn expired_and_abandoned_jobs_are_dropped_and_never_run() {
    let c = Clock::new();
    let expired = J {
        deadline: c.at(50),
        ..c.job(1, 1, 0)
    };
    let gone = J {
        gone: true,
        ..c.job(2, 1, 0)
    };
    let gone_and_expired = J {
        gone: true,
        deadline: c.at(50),
        ..c.job(4, 1, 0)
    };
    let mut s = state(
        policy(8, 100, &[]),
        [
            expired,
            gone,
            c.job(3, 1, 0),
            gone_and_expired,
            c.job(5, 1, 0),
        ],
    );
    let p = s.poll(c.at(60));
    let dropped: Vec<_> = p.dropped.iter().map(|(j, why)| (j.id, *why)).collect();
    // A caller that has gone wins over an expired deadline: nobody to answer.
    assert_eq!(
        dropped,
        [
            (1, Dropped::Expired),
            (2, Dropped::Abandoned),
            (4, Dropped::Abandoned)
        ]
    );
    // The wait counts from the oldest *live* job.
    assert_eq!(p.step, Step::Wait(c.at(100)));
    assert_eq!(run(s.poll(c.at(100))), (vec![3, 5], Reason::Delay));
}

#[test]
fn a_queue_of_only_dead_jobs_is_idle() {
    let c = Clock::new();
    let mut s = state(policy(8, 100, &[]), [c.job(1, 1, 0)]);
    let p = s.poll(c.at(2_000_000));
    assert_eq!(p.dropped.len(), 1);
    assert_eq!(p.step, Step::Idle);
}

#[test]
fn closing_dispatches_without_waiting_until_empty() {
    let c = Clock::new();
    let other = J {
        shape: 1,
        ..c.job(2, 1, 0)
    };
    let mut s = state(policy(8, 1000, &[]), [c.job(1, 1, 0), other]);
    s.close();
    assert!(s.is_closed());
    assert_eq!(run(s.poll(c.at(1))), (vec![1], Reason::Closed));
    assert_eq!(run(s.poll(c.at(1))), (vec![2], Reason::Closed));
    assert_eq!(s.poll(c.at(1)).step, Step::Idle);
}

#[test]
fn disabling_batching_runs_the_rest_alone() {
    let c = Clock::new();
    let mut s = state(policy(8, 1000, &[]), [c.job(1, 1, 0), c.job(2, 1, 0)]);
    s.disable_batching();
    assert_eq!(s.policy(), &BatchPolicy::off());
    assert_eq!(run(s.poll(c.at(0))), (vec![1], Reason::Alone));
    assert_eq!(run(s.poll(c.at(0))), (vec![2], Reason::Alone));
}

#[test]
fn members_taken_from_the_middle_keep_their_order_and_leave_the_rest() {
    let c = Clock::new();
    let other = |id| J {
        shape: 9,
        ..c.job(id, 1, 0)
    };
    let mut s = state(
        policy(3, 1000, &[]),
        [
            c.job(1, 1, 0),
            other(2),
            c.job(3, 1, 0),
            other(4),
            c.job(5, 1, 0),
        ],
    );
    assert_eq!(run(s.poll(c.at(0))), (vec![1, 3, 5], Reason::Full));
    assert_eq!(s.len(), 2);
    assert_eq!(run(s.poll(c.at(1000))), (vec![2, 4], Reason::Delay));
}
