//! Instance threads: each owns one session and takes work from its model version's bounded queue,
//! one job or one dynamic batch of jobs at a time.
//!
//! Handle + thread, as in text-embeddings-inference's `BackendThread`: the async side only ever
//! `try_send`s (a full queue is an immediate `Overloaded`, never a blocked runtime), and the
//! blocking ONNX Runtime call happens on a plain OS thread. What runs next, and when, is decided
//! by [`BatchState`] (see `batch`); the threads only move jobs in and out of it and wait as long
//! as it says. The idle instance holding the queue's lock forms the next batch, so no extra
//! thread or hop sits between a request and its run. Jobs whose caller has gone or whose deadline
//! has passed are skipped rather than run.

mod inline;

pub use inline::{DEFAULT_INLINE_MAX_RUN_US, InlineGate, MAX_INLINE_MAX_RUN_US};

use crate::batch::{BatchPolicy, BatchState, Batchable, Dropped, Step};
use crate::metrics::ModelMetrics;
use crate::rows;
use chorus_common::trace;
use chorus_common::{DataType, Tensor, WorkerError};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel,
};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tracing::{Span, debug, debug_span, field, warn};

/// The answer an instance thread sends back.
pub type JobResult = Result<Vec<Tensor>, WorkerError>;

/// One request in a batched run.
#[derive(Debug, Clone, Copy)]
pub struct BatchMember<'a> {
    /// Its inputs, in the same order (names, datatypes, non-batch dims) as every other member's.
    pub inputs: &'a [Tensor],
    /// The outputs it wants, in its order; empty means all, in declared order.
    pub outputs: &'a [String],
    /// Its rows (dimension 0 of every input).
    pub rows: usize,
}

/// Why a batched run gave no per-request answers; its requests are then run one by one.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchError {
    /// An output's dimension 0 is not the batch's rows: the model is not batch-major, so
    /// batching is turned off for it.
    NotBatchMajor(String),
    /// The run itself failed.
    Failed(WorkerError),
}

/// What an instance thread runs: one session (or, in tests, a stand-in).
pub trait Runner: Send + 'static {
    /// Runs the model on already validated inputs; returns `outputs` (all outputs when empty).
    fn run(&mut self, inputs: &[Tensor], outputs: &[String]) -> Result<Vec<Tensor>, WorkerError>;

    /// Runs `members` as one: their inputs joined along dimension 0, one run, every output split
    /// back by each member's rows. Returns each member's outputs, as [`Runner::run`] would.
    ///
    /// This default joins and splits wire tensors around [`Runner::run`] (a copy each way);
    /// ONNX Runtime sessions join straight into the input buffer instead.
    fn run_batch(&mut self, members: &[BatchMember<'_>]) -> Result<Vec<Vec<Tensor>>, BatchError> {
        let internal = |e: String| BatchError::Failed(WorkerError::Internal(e));
        let first = members
            .first()
            .ok_or_else(|| internal("empty batch".into()))?;
        let joined = (0..first.inputs.len())
            .map(|i| rows::join(&members.iter().map(|m| &m.inputs[i]).collect::<Vec<_>>()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(internal)?;
        let outputs = self.run(&joined, &[]).map_err(BatchError::Failed)?;
        let rows: Vec<usize> = members.iter().map(|m| m.rows).collect();
        let mut per_member: Vec<Vec<Tensor>> = members.iter().map(|_| Vec::new()).collect();
        for output in &outputs {
            let pieces = rows::split(output, &rows).map_err(BatchError::NotBatchMajor)?;
            for (mine, piece) in per_member.iter_mut().zip(pieces) {
                mine.push(piece);
            }
        }
        per_member
            .into_iter()
            .zip(members)
            .map(|(all, member)| select_outputs(all, member.outputs).map_err(internal))
            .collect()
    }
}

/// `wanted` out of `all` (every output, in declared order), in the order wanted.
pub fn select_outputs(all: Vec<Tensor>, wanted: &[String]) -> Result<Vec<Tensor>, String> {
    chorus_common::tensor::select_by_name(all, wanted)
        .map_err(|name| format!("the model returned no output '{name}'"))
}

/// One queued model run.
#[derive(Debug)]
pub struct Job {
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<String>,
    /// The caller's deadline; past it, the job is answered `DeadlineExceeded` instead of run.
    pub deadline: Instant,
    pub reply: oneshot::Sender<JobResult>,
    enqueued: Instant,
    rows: Option<usize>,
    /// The request's span, for what the instance thread logs about it.
    span: Span,
    /// Open from queueing to the start of the run: the queue wait in the request's trace
    /// (disabled unless traces are exported).
    queued: Span,
    /// The request id for the run's span; set only while traces are exported.
    request_id: Option<String>,
}

impl Job {
    /// A job queued now, in the current span. Its inputs must already be validated.
    pub fn new(
        inputs: Vec<Tensor>,
        outputs: Vec<String>,
        deadline: Instant,
        reply: oneshot::Sender<JobResult>,
    ) -> Self {
        let rows = batch_rows(&inputs);
        Job {
            inputs,
            outputs,
            deadline,
            reply,
            enqueued: Instant::now(),
            rows,
            span: Span::current(),
            queued: debug_span!(target: trace::TARGET, "queue", request_id = field::Empty),
            request_id: None,
        }
    }

    /// Names the request on the job's trace spans (queue wait, run); nothing with traces off.
    pub fn traced(mut self, request_id: &str) -> Self {
        if trace::enabled() && !self.queued.is_disabled() {
            self.queued.record("request_id", request_id);
            self.request_id = Some(request_id.to_string());
        }
        self
    }
}

/// The rows a job can contribute to a batch: dimension 0, when every input has the same one
/// and none is `BYTES` (whose element boundaries ONNX Runtime string tensors need per element).
fn batch_rows(inputs: &[Tensor]) -> Option<usize> {
    let rows = rows::rows_of(inputs.first()?)?;
    let batchable = inputs
        .iter()
        .all(|t| rows::rows_of(t) == Some(rows) && t.datatype != DataType::Bytes);
    (batchable && rows > 0).then_some(rows)
}

impl Batchable for Job {
    fn rows(&self) -> Option<usize> {
        self.rows
    }

    fn compatible(&self, other: &Self) -> bool {
        self.rows.is_some()
            && other.rows.is_some()
            && self.inputs.len() == other.inputs.len()
            && self.inputs.iter().zip(&other.inputs).all(|(a, b)| {
                a.name == b.name && a.datatype == b.datatype && a.shape[1..] == b.shape[1..]
            })
    }

    fn enqueued(&self) -> Instant {
        self.enqueued
    }

    fn deadline(&self) -> Instant {
        self.deadline
    }

    fn caller_gone(&self) -> bool {
        self.reply.is_closed()
    }
}

/// How a pool queues and batches.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Jobs that may wait before new ones are refused as overloaded.
    pub capacity: usize,
    pub batching: BatchPolicy,
    pub metrics: ModelMetrics,
    /// Longest recent run time at which a call runs on its caller's thread (see `inline`);
    /// zero keeps every run on the instance threads. Only without batching.
    pub inline_max_run: Duration,
}

/// The queue and threads of one model version. Dropping it closes the queue; the threads then
/// run what is still queued and exit.
#[derive(Debug)]
pub struct InstancePool {
    label: String,
    queue: SyncSender<Job>,
    /// Jobs submitted and not yet dispatched or dropped (in the channel or the batcher).
    depth: Arc<AtomicUsize>,
    capacity: usize,
    instances: u32,
    batching: BatchPolicy,
    metrics: ModelMetrics,
    shared: Arc<Shared>,
}

/// One session, used by its instance thread and by inline runs (see `inline`), one at a time.
/// Emptied by its thread when the pool stops, so that the session is dropped there and not on
/// whichever thread lets the pool go last.
type Slot = Mutex<Option<Box<dyn Runner>>>;

/// What the instance threads of one pool share.
struct Shared {
    label: String,
    queue: Mutex<Queue>,
    depth: Arc<AtomicUsize>,
    metrics: ModelMetrics,
    slots: Vec<Slot>,
    inline: InlineGate,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("label", &self.label)
            .field("instances", &self.slots.len())
            .field("inline", &self.inline)
            .finish_non_exhaustive()
    }
}

struct Queue {
    receiver: Receiver<Job>,
    state: BatchState<Job>,
}

/// What a thread learnt from its last run, folded into the batcher when it next takes the lock.
#[derive(Debug, Default)]
struct Feedback {
    elapsed: Option<Duration>,
    not_batch_major: Option<String>,
}

impl InstancePool {
    /// Starts one thread per runner, all fed from one queue of `capacity` waiting jobs, without
    /// batching and with metrics registered nowhere. `label` names the model version in logs and
    /// errors; threads are `<thread_name>-<index>`.
    pub fn start(
        label: String,
        thread_name: &str,
        runners: Vec<Box<dyn Runner>>,
        capacity: usize,
    ) -> std::io::Result<Self> {
        let settings = PoolSettings {
            capacity,
            batching: BatchPolicy::off(),
            metrics: ModelMetrics::detached(),
            inline_max_run: Duration::ZERO,
        };
        Self::start_with(label, thread_name, runners, settings)
    }

    /// [`InstancePool::start`] with batching and metrics.
    pub fn start_with(
        label: String,
        thread_name: &str,
        runners: Vec<Box<dyn Runner>>,
        settings: PoolSettings,
    ) -> std::io::Result<Self> {
        let (queue, receiver) = sync_channel(settings.capacity);
        let depth = Arc::new(AtomicUsize::new(0));
        // std's receiver has one consumer; the instances share it (and the batcher) behind a
        // lock. Only the idle thread forming the next batch holds it, so it costs nothing while
        // every instance is busy.
        let shared = Arc::new(Shared {
            label: label.clone(),
            queue: Mutex::new(Queue {
                receiver,
                state: BatchState::new(settings.batching.clone()),
            }),
            depth: Arc::clone(&depth),
            metrics: settings.metrics.clone(),
            slots: runners.into_iter().map(|r| Mutex::new(Some(r))).collect(),
            // Inline runs skip the batcher, so they are for models that do not batch.
            inline: InlineGate::new(if settings.batching.enabled() {
                Duration::ZERO
            } else {
                settings.inline_max_run
            }),
        });
        let instances = shared.slots.len() as u32;
        for index in 0..shared.slots.len() {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("{thread_name}-{index}"))
                .spawn(move || instance_loop(&shared, index))?;
        }
        Ok(InstancePool {
            label,
            queue,
            depth,
            capacity: settings.capacity,
            instances,
            batching: settings.batching,
            metrics: settings.metrics,
            shared,
        })
    }

    /// Runs the model on the calling thread, if its recent runs are short (see `inline`),
    /// nothing waits in its queue and one of its sessions is idle; `None` otherwise, and the
    /// caller submits a [`Job`]. `inputs` must already be validated.
    pub fn try_run_inline(&self, inputs: &[Tensor], outputs: &[String]) -> Option<JobResult> {
        if !self.shared.inline.allows() || self.depth.load(Ordering::Acquire) != 0 {
            return None;
        }
        let (index, mut slot) =
            self.shared
                .slots
                .iter()
                .enumerate()
                .find_map(|(index, slot)| match slot.try_lock() {
                    Ok(guard) => Some((index, guard)),
                    Err(TryLockError::Poisoned(poisoned)) => Some((index, poisoned.into_inner())),
                    Err(TryLockError::WouldBlock) => None,
                })?;
        let runner = slot.as_mut()?;
        Some(
            self.shared
                .run_inline(index, runner.as_mut(), inputs, outputs),
        )
    }

    /// The recent single-job run time that decides inline runs, if one has been measured.
    pub fn recent_run(&self) -> Option<Duration> {
        self.shared.inline.recent_run()
    }

    /// Queues `job`, or refuses it at once when `capacity` jobs already wait.
    pub fn submit(&self, job: Job) -> Result<(), WorkerError> {
        let overloaded = || {
            WorkerError::Overloaded(format!(
                "{} has {} requests queued",
                self.label, self.capacity
            ))
        };
        if self.depth.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            return Err(overloaded());
        }
        // Counted before sending, so that the thread's decrement never comes first.
        self.metrics.queue_depth.inc();
        let refused = match self.queue.try_send(job) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(_)) => overloaded(),
            Err(TrySendError::Disconnected(_)) => {
                WorkerError::Internal(format!("{} has no running instances", self.label))
            }
        };
        self.depth.fetch_sub(1, Ordering::AcqRel);
        self.metrics.queue_depth.dec();
        Err(refused)
    }

    pub fn instances(&self) -> u32 {
        self.instances
    }

    /// How this version batches.
    pub fn batching(&self) -> &BatchPolicy {
        &self.batching
    }

    /// This version's metric handles.
    pub fn metrics(&self) -> &ModelMetrics {
        &self.metrics
    }
}

fn instance_loop(shared: &Shared, index: usize) {
    let mut feedback = Feedback::default();
    while let Some(jobs) = shared.next_batch(std::mem::take(&mut feedback)) {
        let mut slot = shared.slot(index);
        let Some(runner) = slot.as_mut() else {
            break;
        };
        feedback = shared.run(index, runner.as_mut(), jobs);
    }
    // The session is dropped here, on its own thread, however long that takes.
    drop(shared.slot(index).take());
    debug!(model = %shared.label, instance = index, "instance thread stopped");
}

impl Shared {
    fn slot(&self, index: usize) -> MutexGuard<'_, Option<Box<dyn Runner>>> {
        self.slots[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// One run on the caller's thread, counted as a run with no queue wait.
    fn run_inline(
        &self,
        index: usize,
        runner: &mut dyn Runner,
        inputs: &[Tensor],
        outputs: &[String],
    ) -> JobResult {
        self.metrics.queue.observe(0.0);
        let traced = debug_span!(target: trace::TARGET, "model.run", model = %self.label, instance = index, batch = 1, inline = true);
        let (result, elapsed) = self.run_once(index, runner, inputs, outputs, &Span::current());
        drop(traced);
        self.metrics
            .observe_run(elapsed, batch_rows(inputs).unwrap_or(1));
        result
    }

    /// One run of the model, a panic turned into an internal error (logged in `span`); returns
    /// the answer and the run's duration, which also feeds the inline gate.
    fn run_once(
        &self,
        index: usize,
        runner: &mut dyn Runner,
        inputs: &[Tensor],
        outputs: &[String],
        span: &Span,
    ) -> (JobResult, Duration) {
        let started = Instant::now();
        let result =
            catch_unwind(AssertUnwindSafe(|| runner.run(inputs, outputs))).unwrap_or_else(|_| {
                let _entered = span.enter();
                warn!(model = %self.label, instance = index, "model run panicked");
                Err(WorkerError::Internal(format!(
                    "{}: the model run panicked",
                    self.label
                )))
            });
        let elapsed = started.elapsed();
        self.inline.observe(elapsed);
        (result, elapsed)
    }

    /// Waits for the batcher to dispatch, moving jobs from the channel into it meanwhile.
    /// `None` once the queue is closed and empty.
    fn next_batch(&self, feedback: Feedback) -> Option<Vec<Job>> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let Queue { receiver, state } = &mut *queue;
        if let Some(elapsed) = feedback.elapsed {
            state.observe_run(elapsed);
        }
        if let Some(reason) = feedback.not_batch_major
            && state.policy().enabled()
        {
            warn!(
                model = %self.label,
                reason = %reason,
                "batching turned off: the model's outputs are not batch-major"
            );
            state.disable_batching();
        }
        loop {
            // Everything already queued joins the batcher first, without waiting.
            while !state.is_closed() {
                match receiver.try_recv() {
                    Ok(job) => state.push(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => state.close(),
                }
            }
            let now = Instant::now();
            let poll = state.poll(now);
            for (job, why) in poll.dropped {
                self.left_queue(1);
                answer_dropped(job, why);
            }
            match poll.step {
                Step::Run(jobs, _) => {
                    self.left_queue(jobs.len());
                    return Some(jobs);
                }
                Step::Idle if state.is_closed() => return None,
                Step::Idle => match receiver.recv() {
                    Ok(job) => state.push(job),
                    // Every sender is gone: the worker is shutting down.
                    Err(_) => state.close(),
                },
                Step::Wait(until) => {
                    match receiver.recv_timeout(until.saturating_duration_since(now)) {
                        Ok(job) => state.push(job),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => state.close(),
                    }
                }
            }
        }
    }

    fn left_queue(&self, jobs: usize) {
        self.depth.fetch_sub(jobs, Ordering::AcqRel);
        self.metrics.queue_depth.dec_by(jobs as i64);
    }

    /// Runs `jobs` (one, or a batch) and answers them.
    fn run(&self, index: usize, runner: &mut dyn Runner, mut jobs: Vec<Job>) -> Feedback {
        let started = Instant::now();
        for job in &mut jobs {
            let queued = started.saturating_duration_since(job.enqueued);
            self.metrics.queue.observe(queued.as_secs_f64());
            // The wait ends here: closing the span records its end.
            drop(std::mem::replace(&mut job.queued, Span::none()));
        }
        if jobs.len() == 1 {
            let job = jobs.into_iter().next().expect("one job");
            return Feedback {
                elapsed: Some(self.run_alone(index, runner, job)),
                not_batch_major: None,
            };
        }
        let members: Vec<BatchMember<'_>> = jobs
            .iter()
            .map(|job| BatchMember {
                inputs: &job.inputs,
                outputs: &job.outputs,
                rows: job.rows.unwrap_or(0),
            })
            .collect();
        let rows: usize = members.iter().map(|m| m.rows).sum();
        // One run span per request (each belongs to its own trace); no Vec with traces off.
        let traced: Vec<Span> = if trace::enabled() {
            jobs.iter()
                .map(|job| self.run_span(job, index, jobs.len()))
                .collect()
        } else {
            Vec::new()
        };
        let result = catch_unwind(AssertUnwindSafe(|| runner.run_batch(&members)));
        let elapsed = started.elapsed();
        drop(traced);
        drop(members);
        let failure = match result {
            Ok(Ok(answers)) if answers.len() == jobs.len() => {
                self.metrics.observe_run(elapsed, rows);
                debug!(
                    model = %self.label,
                    instance = index,
                    requests = jobs.len(),
                    rows,
                    run_us = elapsed.as_micros() as u64,
                    "batched run"
                );
                for (job, outputs) in jobs.into_iter().zip(answers) {
                    // The caller may have gone while the model ran; then nobody needs it.
                    let _ = job.reply.send(Ok(outputs));
                }
                return Feedback {
                    elapsed: Some(elapsed),
                    not_batch_major: None,
                };
            }
            Ok(Ok(answers)) => BatchError::Failed(WorkerError::Internal(format!(
                "{} answers for {} requests",
                answers.len(),
                jobs.len()
            ))),
            Ok(Err(e)) => e,
            Err(_) => BatchError::Failed(WorkerError::Internal("the batched run panicked".into())),
        };
        warn!(
            model = %self.label,
            instance = index,
            requests = jobs.len(),
            error = ?failure,
            "batched run failed, running its requests one by one"
        );
        for job in jobs {
            self.run_alone(index, runner, job);
        }
        Feedback {
            elapsed: None,
            not_batch_major: match failure {
                BatchError::NotBatchMajor(reason) => Some(reason),
                BatchError::Failed(_) => None,
            },
        }
    }

    /// Runs one job on its own and answers it; returns the run's duration.
    fn run_alone(&self, index: usize, runner: &mut dyn Runner, job: Job) -> Duration {
        let traced = self.run_span(&job, index, 1);
        let (result, elapsed) = self.run_once(index, runner, &job.inputs, &job.outputs, &job.span);
        drop(traced);
        self.metrics.observe_run(elapsed, job.rows.unwrap_or(1));
        let _ = job.reply.send(result);
        elapsed
    }

    /// The model run in the request's trace, a child of the call's span: open while the model
    /// runs (`batch` requests together). Disabled unless traces are exported.
    fn run_span(&self, job: &Job, index: usize, batch: usize) -> Span {
        debug_span!(target: trace::TARGET, parent: &job.span, "model.run", model = %self.label, instance = index, batch, request_id = job.request_id.as_deref().unwrap_or_default())
    }
}

fn answer_dropped(job: Job, why: Dropped) {
    let _entered = job.span.enter();
    match why {
        Dropped::Abandoned => debug!("skipping a job whose caller has gone"),
        Dropped::Expired => {
            debug!("skipping a job past its deadline");
            let _ = job.reply.send(Err(WorkerError::DeadlineExceeded));
        }
    }
}

#[cfg(test)]
mod tests;
