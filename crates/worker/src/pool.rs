//! Instance threads: each owns one session and takes jobs from its model version's bounded queue.
//!
//! Handle + thread, as in text-embeddings-inference's `BackendThread`: the async side only ever
//! `try_send`s (a full queue is an immediate `Overloaded`, never a blocked runtime), and the
//! blocking ONNX Runtime call happens on a plain OS thread. A job whose caller has gone or whose
//! deadline has passed is skipped rather than run.

use chorus_common::{Tensor, WorkerError};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tokio::sync::oneshot;
use tracing::{debug, warn};

/// What an instance thread runs: one session (or, in tests, a stand-in).
pub trait Runner: Send + 'static {
    /// Runs the model on already validated inputs; returns `outputs` (all outputs when empty).
    fn run(&mut self, inputs: &[Tensor], outputs: &[String]) -> Result<Vec<Tensor>, WorkerError>;
}

/// The answer an instance thread sends back.
pub type JobResult = Result<Vec<Tensor>, WorkerError>;

/// One queued model run.
#[derive(Debug)]
pub struct Job {
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<String>,
    /// The caller's deadline; past it, the job is answered `DeadlineExceeded` instead of run.
    pub deadline: Instant,
    pub reply: oneshot::Sender<JobResult>,
}

/// What an instance thread does with a job it has just taken off the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Triage {
    Run,
    /// The deadline has passed: answer `DeadlineExceeded` without running.
    Expired,
    /// Nobody is waiting for the answer (caller gone, RPC cancelled): drop it.
    Abandoned,
}

impl Job {
    pub fn triage(&self, now: Instant) -> Triage {
        if self.reply.is_closed() {
            Triage::Abandoned
        } else if now >= self.deadline {
            Triage::Expired
        } else {
            Triage::Run
        }
    }
}

/// The queue and threads of one model version. Dropping it closes the queue; each thread then
/// finishes its current job and exits.
#[derive(Debug)]
pub struct InstancePool {
    label: String,
    queue: SyncSender<Job>,
    capacity: usize,
    instances: u32,
}

impl InstancePool {
    /// Starts one thread per runner, all fed from one queue of `capacity` waiting jobs.
    /// `label` names the model version in logs and errors; threads are `<thread_name>-<index>`.
    pub fn start(
        label: String,
        thread_name: &str,
        runners: Vec<Box<dyn Runner>>,
        capacity: usize,
    ) -> std::io::Result<Self> {
        let (queue, receiver) = sync_channel(capacity);
        // std's receiver has one consumer; the instances share it behind a lock. Only the idle
        // thread waiting for work holds it, so it costs nothing while every instance is busy.
        let receiver = Arc::new(Mutex::new(receiver));
        let instances = runners.len() as u32;
        for (index, runner) in runners.into_iter().enumerate() {
            let receiver = Arc::clone(&receiver);
            let thread_label = label.clone();
            std::thread::Builder::new()
                .name(format!("{thread_name}-{index}"))
                .spawn(move || instance_loop(&thread_label, index, runner, &receiver))?;
        }
        Ok(InstancePool {
            label,
            queue,
            capacity,
            instances,
        })
    }

    /// Queues `job`, or refuses it at once when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), WorkerError> {
        match self.queue.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(WorkerError::Overloaded(format!(
                "{} has {} requests queued",
                self.label, self.capacity
            ))),
            Err(TrySendError::Disconnected(_)) => Err(WorkerError::Internal(format!(
                "{} has no running instances",
                self.label
            ))),
        }
    }

    pub fn instances(&self) -> u32 {
        self.instances
    }
}

fn instance_loop(
    label: &str,
    index: usize,
    mut runner: Box<dyn Runner>,
    receiver: &Mutex<Receiver<Job>>,
) {
    loop {
        let next = receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv();
        // Every sender is gone: the worker is shutting down.
        let Ok(job) = next else { break };
        match job.triage(Instant::now()) {
            Triage::Abandoned => {
                debug!(
                    model = label,
                    instance = index,
                    "skipping a job whose caller has gone"
                );
                continue;
            }
            Triage::Expired => {
                debug!(
                    model = label,
                    instance = index,
                    "skipping a job past its deadline"
                );
                let _ = job.reply.send(Err(WorkerError::DeadlineExceeded));
                continue;
            }
            Triage::Run => {}
        }
        let result = catch_unwind(AssertUnwindSafe(|| runner.run(&job.inputs, &job.outputs)))
            .unwrap_or_else(|_| {
                warn!(model = label, instance = index, "model run panicked");
                Err(WorkerError::Internal(format!(
                    "{label}: the model run panicked"
                )))
            });
        // The caller may have gone while the model ran; then nobody needs the answer.
        let _ = job.reply.send(result);
    }
    debug!(model = label, instance = index, "instance thread stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Echoes its inputs back, first waiting for a permit when gated.
    struct Echo {
        gate: Option<mpsc::Receiver<()>>,
    }

    impl Runner for Echo {
        fn run(&mut self, inputs: &[Tensor], _: &[String]) -> JobResult {
            if let Some(gate) = &self.gate {
                let _ = gate.recv();
            }
            Ok(inputs.to_vec())
        }
    }

    struct Panics;

    impl Runner for Panics {
        fn run(&mut self, _: &[Tensor], _: &[String]) -> JobResult {
            panic!("boom")
        }
    }

    fn job(deadline: Instant) -> (Job, oneshot::Receiver<JobResult>) {
        let (reply, rx) = oneshot::channel();
        let inputs = vec![Tensor::from_values("x", vec![1], &[1.0f32])];
        (
            Job {
                inputs,
                outputs: vec![],
                deadline,
                reply,
            },
            rx,
        )
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn triage_runs_live_jobs_and_skips_expired_or_abandoned_ones() {
        let now = Instant::now();
        let (live, _rx) = job(now + Duration::from_secs(1));
        assert_eq!(live.triage(now), Triage::Run);
        assert_eq!(live.triage(now + Duration::from_secs(1)), Triage::Expired);
        let (gone, rx) = job(now + Duration::from_secs(1));
        drop(rx);
        assert_eq!(gone.triage(now), Triage::Abandoned);
        // A caller that has gone wins over an expired deadline: nobody to answer.
        assert_eq!(gone.triage(now + Duration::from_secs(5)), Triage::Abandoned);
    }

    #[test]
    fn jobs_run_and_answer() {
        let pool =
            InstancePool::start("m v1".into(), "m-1", vec![Box::new(Echo { gate: None })], 4)
                .unwrap();
        let (j, rx) = job(later());
        pool.submit(j).unwrap();
        let out = rx.blocking_recv().unwrap().unwrap();
        assert_eq!(out[0].name, "x");
        assert_eq!(pool.instances(), 1);
    }

    #[test]
    fn expired_jobs_are_answered_without_running() {
        let pool = InstancePool::start("m v1".into(), "m-1", vec![Box::new(Panics)], 4).unwrap();
        let (j, rx) = job(Instant::now());
        pool.submit(j).unwrap();
        assert_eq!(
            rx.blocking_recv().unwrap(),
            Err(WorkerError::DeadlineExceeded)
        );
    }

    #[test]
    fn a_full_queue_answers_overloaded_at_once() {
        let (permits, gate) = mpsc::channel();
        let pool = InstancePool::start(
            "m v1".into(),
            "m-1",
            vec![Box::new(Echo { gate: Some(gate) })],
            1,
        )
        .unwrap();
        let mut receivers = Vec::new();
        let mut overloaded = 0;
        // One job is taken by the (blocked) instance and one waits in the queue; the rest
        // must be refused. The instance may not have taken the first yet, hence "at most 2".
        for _ in 0..5 {
            let (j, rx) = job(later());
            match pool.submit(j) {
                Ok(()) => receivers.push(rx),
                Err(WorkerError::Overloaded(msg)) => {
                    assert!(msg.contains("m v1"), "{msg}");
                    overloaded += 1;
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!(receivers.len() <= 2 && overloaded >= 3, "{overloaded}");
        for _ in 0..receivers.len() {
            permits.send(()).unwrap();
        }
        for rx in receivers {
            assert!(rx.blocking_recv().unwrap().is_ok());
        }
    }

    #[test]
    fn a_panicking_run_is_an_internal_error_and_the_thread_survives() {
        let pool = InstancePool::start("m v1".into(), "m-1", vec![Box::new(Panics)], 4).unwrap();
        for _ in 0..2 {
            let (j, rx) = job(later());
            pool.submit(j).unwrap();
            assert!(matches!(
                rx.blocking_recv().unwrap(),
                Err(WorkerError::Internal(_))
            ));
        }
    }

    #[test]
    fn abandoned_jobs_are_not_run() {
        let (permits, gate) = mpsc::channel();
        let pool = InstancePool::start(
            "m v1".into(),
            "m-1",
            vec![Box::new(Echo { gate: Some(gate) })],
            4,
        )
        .unwrap();
        // The first job occupies the instance; the second is abandoned while queued.
        let (first, first_rx) = job(later());
        pool.submit(first).unwrap();
        let (second, second_rx) = job(later());
        pool.submit(second).unwrap();
        drop(second_rx);
        let (third, third_rx) = job(later());
        pool.submit(third).unwrap();
        // Two permits: if the abandoned job ran it would eat the third's permit and the third
        // would hang; the test then fails by timing out instead of passing.
        permits.send(()).unwrap();
        permits.send(()).unwrap();
        assert!(first_rx.blocking_recv().unwrap().is_ok());
        assert!(third_rx.blocking_recv().unwrap().is_ok());
    }
}
