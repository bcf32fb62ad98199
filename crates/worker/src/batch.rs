//! The dynamic batcher's decisions: which queued requests run together in one ONNX Runtime run,
//! and when that run starts.
//!
//! A plain struct, as in text-generation-inference's `Queue` state: the instance threads in
//! `pool` only move jobs in and out of it and wait for as long as it says. Every rule is here and
//! is driven directly by the unit tests below with explicit `Instant`s, without threads or sleeps.
//!
//! Rules, applied by [`BatchState::poll`] to the jobs waiting, oldest first:
//! 1. A job whose caller has gone is dropped; a job whose deadline has passed is dropped (its
//!    caller is answered `DeadlineExceeded`). Neither ever runs.
//! 2. The oldest live job starts the batch. It runs alone, at once, when batching is off, when it
//!    cannot be batched (no common batch dimension, `BYTES` inputs) or when it has more rows than
//!    `max_batch_size`.
//! 3. Later jobs join in arrival order when they are compatible with it (same input names,
//!    datatypes and non-batch dimensions) and their rows still fit in `max_batch_size`.
//!    Incompatible jobs are passed over and wait for a batch of their own; the first compatible
//!    job that does not fit ends the batch, so a batch never overtakes an older compatible job.
//! 4. The batch is dispatched at once when it is full, when the next compatible job does not fit
//!    (waiting cannot make it bigger), when the queue is closed (shutdown), when its oldest job has
//!    waited `max_queue_delay`, or when waiting any longer would make one of its jobs miss its
//!    deadline (deadline minus the recent run time). Otherwise, when a prefix of it adds up to one
//!    of the `preferred_batch_sizes`, the largest such prefix is dispatched at once.
//! 5. Otherwise the caller waits for more jobs, until the earliest of those moments.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Largest accepted `max_batch_size` (rows).
pub const MAX_BATCH_SIZE: u32 = 1 << 16;
/// Largest accepted `max_queue_delay_us` (one second).
pub const MAX_QUEUE_DELAY_US: u64 = 1_000_000;

/// How a model version batches, from its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Largest batch in rows; 0 or 1 means batching is off.
    pub max_batch_size: usize,
    /// How long the oldest job of a batch may wait for company.
    pub max_queue_delay: Duration,
    /// Sizes at which a batch is dispatched without waiting, ascending, each in 2..=max.
    pub preferred_batch_sizes: Vec<usize>,
}

impl BatchPolicy {
    /// Every job runs alone, as soon as an instance is free.
    pub fn off() -> Self {
        BatchPolicy {
            max_batch_size: 0,
            max_queue_delay: Duration::ZERO,
            preferred_batch_sizes: Vec::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.max_batch_size > 1
    }
}

/// What the batcher needs to know about a queued job.
pub trait Batchable {
    /// Rows (dimension 0) the job contributes, or `None` when it can only run alone.
    fn rows(&self) -> Option<usize>;
    /// Whether the two jobs' inputs can be concatenated along dimension 0.
    fn compatible(&self, other: &Self) -> bool;
    /// When the job was queued.
    fn enqueued(&self) -> Instant;
    /// When its caller stops waiting.
    fn deadline(&self) -> Instant;
    /// Whether nobody waits for the answer any more.
    fn caller_gone(&self) -> bool;
}

/// Why a job left the queue without running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Its deadline passed while queued: answer `DeadlineExceeded`.
    Expired,
    /// Its caller has gone: nobody to answer.
    Abandoned,
}

/// Why a batch was dispatched when it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Batching is off, or the job cannot be batched or is larger than `max_batch_size`.
    Alone,
    /// The batch holds `max_batch_size` rows.
    Full,
    /// The next compatible job does not fit, so waiting cannot grow the batch.
    NoRoom,
    /// The oldest job has waited `max_queue_delay`.
    Delay,
    /// Waiting longer would make a job miss its deadline.
    Deadline,
    /// A prefix of the batch adds up to a preferred batch size.
    Preferred,
    /// The queue is closed: nothing more will come.
    Closed,
}

/// What the instance thread should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<J> {
    /// Nothing waits: block until a job arrives (or, once closed, stop).
    Idle,
    /// Wait for more jobs until this moment, then poll again.
    Wait(Instant),
    /// Run these jobs, oldest first, as one batch.
    Run(Vec<J>, Reason),
}

/// The outcome of one [`BatchState::poll`].
#[derive(Debug)]
pub struct Poll<J> {
    /// Jobs removed without running, to be answered (or not) by the caller.
    pub dropped: Vec<(J, Dropped)>,
    pub step: Step<J>,
}

/// The jobs waiting for one model version and the rules that batch them.
#[derive(Debug)]
pub struct BatchState<J> {
    policy: BatchPolicy,
    pending: VecDeque<J>,
    /// Recent run time (moving average), to dispatch early enough for deadlines.
    run_estimate: Duration,
    closed: bool,
}

impl<J: Batchable> BatchState<J> {
    pub fn new(policy: BatchPolicy) -> Self {
        BatchState {
            policy,
            pending: VecDeque::new(),
            run_estimate: Duration::ZERO,
            closed: false,
        }
    }

    pub fn policy(&self) -> &BatchPolicy {
        &self.policy
    }

    /// Queues a job behind the others.
    pub fn push(&mut self, job: J) {
        self.pending.push_back(job);
    }

    /// Jobs waiting (not yet dispatched or dropped).
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// No job will be pushed any more: dispatch what waits without waiting for company.
    pub fn close(&mut self) {
        self.closed = true;
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Turns batching off from now on (the model turned out not to be batch-major).
    pub fn disable_batching(&mut self) {
        self.policy = BatchPolicy::off();
    }

    /// Folds the duration of a finished run into the estimate used for deadline pressure.
    pub fn observe_run(&mut self, elapsed: Duration) {
        self.run_estimate = if self.run_estimate.is_zero() {
            elapsed
        } else {
            (self.run_estimate * 7 + elapsed) / 8
        };
    }

    pub fn run_estimate(&self) -> Duration {
        self.run_estimate
    }

    /// Applies the rules (see the module documentation) at `now`.
    pub fn poll(&mut self, now: Instant) -> Poll<J> {
        let mut dropped = Vec::new();
        let step = self.step(now, &mut dropped);
        Poll { dropped, step }
    }

    fn step(&mut self, now: Instant, dropped: &mut Vec<(J, Dropped)>) -> Step<J> {
        // Rule 1 for the oldest jobs: the head must be live, since the wait is counted from it.
        while let Some(head) = self.pending.front() {
            match dead(head, now) {
                Some(why) => dropped.push((self.pending.pop_front().expect("has a head"), why)),
                None => break,
            }
        }
        let Some(head) = self.pending.front() else {
            return Step::Idle;
        };
        // Rule 2.
        let max = self.policy.max_batch_size;
        let head_rows = match head.rows() {
            Some(rows) if self.policy.enabled() && rows <= max => rows,
            _ => return self.take(&[0], Reason::Alone),
        };
        // Rule 3: members as indices into `pending`, ascending.
        let mut members = vec![0];
        let mut cumulative = vec![head_rows];
        let mut rows = head_rows;
        let mut ended = (rows == max).then_some(Reason::Full);
        let mut index = 1;
        while ended.is_none() && index < self.pending.len() {
            let job = &self.pending[index];
            if let Some(why) = dead(job, now) {
                let job = self.pending.remove(index).expect("index is in range");
                dropped.push((job, why));
                continue;
            }
            let head = &self.pending[0];
            match job.rows() {
                Some(more) if job.compatible(head) => {
                    if rows + more > max {
                        ended = Some(Reason::NoRoom);
                    } else {
                        rows += more;
                        members.push(index);
                        cumulative.push(rows);
                        if rows == max {
                            ended = Some(Reason::Full);
                        }
                    }
                }
                _ => {}
            }
            index += 1;
        }
        // Rule 4.
        if let Some(reason) = ended {
            return self.take(&members, reason);
        }
        if self.closed {
            return self.take(&members, Reason::Closed);
        }
        let due = self.pending[0].enqueued() + self.policy.max_queue_delay;
        if now >= due {
            return self.take(&members, Reason::Delay);
        }
        let pressure = members
            .iter()
            .map(|&i| self.pending[i].deadline())
            .min()
            .expect("a batch has a member")
            .checked_sub(self.run_estimate)
            .unwrap_or(now);
        if now >= pressure {
            return self.take(&members, Reason::Deadline);
        }
        // The longest prefix that is exactly a preferred size (`cumulative` only grows).
        let preferred = self
            .policy
            .preferred_batch_sizes
            .iter()
            .filter_map(|&size| cumulative.iter().position(|&c| c == size))
            .max();
        if let Some(last) = preferred {
            return self.take(&members[..=last], Reason::Preferred);
        }
        // Rule 5.
        Step::Wait(due.min(pressure))
    }

    /// Removes the jobs at `members` (ascending indices) and dispatches them.
    fn take(&mut self, members: &[usize], reason: Reason) -> Step<J> {
        let contiguous = members.iter().enumerate().all(|(n, &i)| n == i);
        let batch = if contiguous {
            self.pending.drain(..members.len()).collect()
        } else {
            let mut batch: Vec<J> = members
                .iter()
                .rev()
                .map(|&i| self.pending.remove(i).expect("member index is in range"))
                .collect();
            batch.reverse();
            batch
        };
        Step::Run(batch, reason)
    }
}

fn dead(job: &impl Batchable, now: Instant) -> Option<Dropped> {
    if job.caller_gone() {
        Some(Dropped::Abandoned)
    } else if now >= job.deadline() {
        Some(Dropped::Expired)
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
