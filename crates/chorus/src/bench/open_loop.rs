//! Open-loop HTTP load: requests are due on a fixed schedule whatever the answers, and each
//! latency runs from the request's *scheduled* time, so queueing delay (in the server or in the
//! generator) is not hidden — no coordinated omission. At most `max_outstanding` requests are in
//! flight, one per connection; a request that falls due while all are busy is dropped and counted.
//!
//! The schedule is paced by one plain thread with `thread::sleep` (tokio's timer ticks in
//! milliseconds, coarser than the gaps between requests); it hands each due request to an idle
//! connection task and never waits for an answer.

use super::client::{Client, judge, open_clients};
use super::closed_loop::HttpRun;
use super::stats::{Failure, Recorder};
use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Request `i` is due `i / rate` seconds after the start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    rate: f64,
}

impl Schedule {
    pub fn new(rate: f64) -> Schedule {
        assert!(rate.is_finite() && rate > 0.0, "rate must be positive");
        Schedule { rate }
    }

    /// When request `i` is due, after the start.
    pub fn offset(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// How many requests are due strictly before `span` has passed: the `i` with `i / rate <
    /// span`. A count that is a whole number up to float noise is taken as whole.
    pub fn due_before(&self, span: Duration) -> u64 {
        let exact = span.as_secs_f64() * self.rate;
        (exact - 1e-9).ceil().max(0.0) as u64
    }
}

/// What the pacing thread saw, over the measured requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Pacing {
    /// Requests due in the measured time.
    pub scheduled: u64,
    /// Of those, handed to a connection.
    pub sent: u64,
    /// How late the pacing thread handed requests over (µs): large values mean the generator,
    /// not the server, fell behind (its lateness still counts in the latencies).
    pub lag_us_p50: u64,
    pub lag_us_p99: u64,
    pub lag_us_max: u64,
}

/// One request handed to a connection.
#[derive(Debug, Clone, Copy)]
struct Due {
    index: u64,
    at: Instant,
    measured: bool,
}

/// Runs the schedule at `rate` for the warm-up and the measured time.
pub async fn run(
    run: &HttpRun,
    rate: f64,
    max_outstanding: usize,
) -> anyhow::Result<(Recorder, Pacing)> {
    let (free_tx, free_rx) = mpsc::unbounded_channel::<usize>();
    let mut slots = Vec::with_capacity(max_outstanding);
    let mut tasks = JoinSet::new();
    let clients = open_clients(
        &run.endpoint,
        run.protocol,
        max_outstanding,
        run.grpc_connections,
    )
    .await
    .with_context(|| format!("cannot reach {}", run.endpoint.url_of(run.protocol)))?;
    for (slot, client) in clients.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Due>(1);
        slots.push(tx);
        free_tx.send(slot).expect("the receiver is alive");
        tasks.spawn(connection_loop(
            run.clone(),
            client,
            slot,
            rx,
            free_tx.clone(),
        ));
    }
    drop(free_tx);
    let schedule = Schedule::new(rate);
    let (warmup, duration) = (run.warmup, run.duration);
    let pacer =
        tokio::task::spawn_blocking(move || pace(schedule, warmup, duration, slots, free_rx));
    let (dropped, pacing) = pacer.await.context("the pacing thread panicked")?;
    let mut total = dropped;
    while let Some(recorder) = tasks.join_next().await {
        total.merge(&recorder.context("a benchmark connection panicked")?);
    }
    Ok((total, pacing))
}

/// The pacing thread: hands each due request to an idle connection, or drops it. Returns the
/// dropped requests (as a recording) and the pacing figures. Ending drops `slots`, which ends the
/// connection tasks once their last answer is in.
fn pace(
    schedule: Schedule,
    warmup: Duration,
    duration: Duration,
    slots: Vec<mpsc::Sender<Due>>,
    mut free: mpsc::UnboundedReceiver<usize>,
) -> (Recorder, Pacing) {
    finer_sleeps();
    let total = schedule.due_before(warmup + duration);
    let first_measured = schedule.due_before(warmup);
    let mut dropped = Recorder::new();
    let mut lag_us =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds");
    let mut sent = 0u64;
    let start = Instant::now();
    for index in 0..total {
        let at = start + schedule.offset(index);
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        let measured = index >= first_measured;
        match free.try_recv() {
            Ok(slot) => {
                let lag = Instant::now().saturating_duration_since(at);
                let due = Due {
                    index,
                    at,
                    measured,
                };
                // The slot was idle, so its one-place channel is empty.
                if slots[slot].try_send(due).is_ok() && measured {
                    sent += 1;
                    lag_us.saturating_record((lag.as_micros() as u64).max(1));
                }
            }
            Err(_) if measured => dropped.failed(Failure::Dropped),
            Err(_) => {}
        }
    }
    let pacing = Pacing {
        scheduled: total - first_measured,
        sent,
        lag_us_p50: lag_us.value_at_quantile(0.5),
        lag_us_p99: lag_us.value_at_quantile(0.99),
        lag_us_max: lag_us.max(),
    };
    (dropped, pacing)
}

/// Linux rounds a sleeping thread's wake-up up by its timer slack (50 µs by default); ask for 1 µs
/// on the pacing thread so that requests leave close to their scheduled time.
fn finer_sleeps() {
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong);
    }
}

async fn connection_loop(
    run: HttpRun,
    mut client: Client,
    slot: usize,
    mut due: mpsc::Receiver<Due>,
    free: mpsc::UnboundedSender<usize>,
) -> Recorder {
    let mut recorder = Recorder::new();
    let mut n = 0u64;
    while let Some(request) = due.recv().await {
        let payload = &run.payloads[request.index as usize % run.payloads.len()];
        let answer = client.send(payload, run.timeout, run.checks(n)).await;
        n += 1;
        if request.measured {
            // From the scheduled time: any wait for the pacing thread or a connection counts.
            let latency = request.at.elapsed();
            match judge(answer, payload.expected.as_deref()) {
                Ok(()) => recorder.answered(latency, payload.rows),
                Err(failure) => recorder.failed_after(failure, latency),
            }
        }
        if free.send(slot).is_err() {
            break;
        }
    }
    recorder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_evenly_spaced_from_zero() {
        let s = Schedule::new(2000.0);
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(1), Duration::from_micros(500));
        assert_eq!(s.offset(2000), Duration::from_secs(1));
        // No drift over a long run: computed from the index, not accumulated.
        assert_eq!(s.offset(20_000_000), Duration::from_secs(10_000));
        let third = Schedule::new(3.0);
        assert_eq!(third.offset(3), Duration::from_secs(1));
    }

    #[test]
    fn due_before_counts_requests_strictly_inside_the_span() {
        let s = Schedule::new(2000.0);
        assert_eq!(s.due_before(Duration::ZERO), 0);
        // Due at 0, 0.5 ms: two requests before 1 ms, the one at 1 ms is not.
        assert_eq!(s.due_before(Duration::from_millis(1)), 2);
        assert_eq!(s.due_before(Duration::from_micros(1001)), 3);
        assert_eq!(s.due_before(Duration::from_secs(10)), 20_000);
        assert_eq!(s.due_before(Duration::from_secs(12)), 24_000);
        // A rate that is not a whole number: 0.1 s gaps at 10/s, three due before 0.25 s.
        assert_eq!(
            Schedule::new(10.0).due_before(Duration::from_millis(250)),
            3
        );
        assert_eq!(Schedule::new(3.0).due_before(Duration::from_secs(1)), 3);
        assert_eq!(Schedule::new(0.5).due_before(Duration::from_secs(5)), 3);
    }

    #[test]
    fn measured_requests_are_those_due_after_the_warmup() {
        // Warm-up 2 s, measured 10 s at 2000/s: 4000 warm-up requests then 20000 measured ones,
        // the first measured one due exactly at 2 s.
        let s = Schedule::new(2000.0);
        let (warmup, duration) = (Duration::from_secs(2), Duration::from_secs(10));
        let first = s.due_before(warmup);
        assert_eq!(first, 4000);
        assert_eq!(s.offset(first), warmup);
        assert_eq!(s.due_before(warmup + duration) - first, 20_000);
        assert!(s.offset(first - 1) < warmup);
    }
}
