//! The writer thread: takes entries off the queue, encodes them and appends them to the sink,
//! flushing whenever the queue runs dry; on close it drains the queue, flushes and fsyncs.

use super::entry::Entry;
use super::output::Output;
use super::record::Record;
use super::sink::SinkSettings;
use crate::metrics::PredictionLogCounters;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// How often an idle writer checks for close and for a file old enough to rotate.
const TICK: Duration = Duration::from_millis(100);

/// Entries written between flushes under sustained load (and between checks for close).
const BATCH: usize = 1024;

/// Shortest time between two warnings about write errors; the ones between are counted.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Stops the writer thread.
#[derive(Debug)]
pub struct Closer {
    closing: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Closer {
    /// Asks the writer to write what is queued, flush and fsync, and waits for it at most
    /// `timeout` (a stuck disk must not hold shutdown forever).
    pub async fn close(self, timeout: Duration) {
        self.closing.store(true, Ordering::Release);
        let thread = self.thread;
        let joined = tokio::task::spawn_blocking(move || thread.join());
        match tokio::time::timeout(timeout, joined).await {
            Ok(_) => info!("prediction log flushed and closed"),
            Err(_) => warn!(
                timeout_ms = timeout.as_millis() as u64,
                "prediction log writer did not finish in time; records still queued are lost"
            ),
        }
    }
}

/// Starts the writer thread over `queue`.
pub fn spawn(
    settings: SinkSettings,
    queue: Receiver<Entry>,
    queued_bytes: Arc<AtomicUsize>,
    counters: PredictionLogCounters,
) -> std::io::Result<Closer> {
    let start_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    info!(dir = %settings.dir.display(), format = settings.format.as_str(), zstd = settings.zstd, max_bytes = settings.rotation.max_bytes, max_age_s = settings.rotation.max_age.as_secs(), "prediction log on");
    let closing = Arc::new(AtomicBool::new(false));
    let writer = Writer {
        sink: Output::new(settings, start_ms),
        queued_bytes,
        counters,
        warned: None,
        unreported: 0,
    };
    let flag = Arc::clone(&closing);
    let thread = std::thread::Builder::new()
        .name("prediction-log".into())
        .spawn(move || writer.run(queue, &flag))?;
    Ok(Closer { closing, thread })
}

struct Writer {
    sink: Output,
    queued_bytes: Arc<AtomicUsize>,
    counters: PredictionLogCounters,
    /// When a write error was last logged.
    warned: Option<Instant>,
    /// Errors since then.
    unreported: u64,
}

impl Writer {
    fn run(mut self, queue: Receiver<Entry>, closing: &AtomicBool) {
        loop {
            match queue.recv_timeout(TICK) {
                Ok(entry) => {
                    self.write(entry);
                    for entry in queue.try_iter().take(BATCH - 1) {
                        self.write(entry);
                    }
                    let flushed = self.sink.flush();
                    self.check(flushed);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if closing.load(Ordering::Acquire) {
                // Whatever the request path queued before the servers stopped.
                for entry in queue.try_iter() {
                    self.write(entry);
                }
                break;
            }
            let rotated = self.sink.rotate_if_due(Instant::now());
            self.check(rotated);
        }
        let closed = self.sink.flush().and_then(|()| self.sink.close());
        self.check(closed);
    }

    fn write(&mut self, entry: Entry) {
        self.queued_bytes
            .fetch_sub(entry.tensor_bytes(), Ordering::Relaxed);
        let record = Record::of(&entry);
        drop(entry);
        match self.sink.write(&record, Instant::now()) {
            Ok(()) => {
                self.counters.written.inc();
            }
            Err(error) => {
                self.counters.write_error.inc();
                self.check(Err(error));
            }
        }
    }

    /// Counts and (at most every [`WARN_EVERY`]) logs an I/O error.
    fn check(&mut self, result: std::io::Result<()>) {
        let Err(error) = result else {
            return;
        };
        self.counters.io_errors.inc();
        self.unreported += 1;
        let now = Instant::now();
        if self
            .warned
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
        {
            warn!(error = %error, errors = self.unreported, "prediction log cannot write; records are dropped until it can");
            self.warned = Some(now);
            self.unreported = 0;
        }
    }
}
