//! The prediction log: what each sampled ensemble answer was, kept after it is answered (its
//! inputs, each member's output, the combined answer, who answered and how fast), as rotating
//! JSON Lines or Parquet files for feedback, re-weighting and analysis (docs/data.md).
//!
//! Rules, in the order a request meets them:
//! 1. Off unless `--prediction-log DIR` is given; then on for every ensemble, at the spec's
//!    `log_sample_rate` (default 1.0). Single-model requests are never logged: they have no
//!    members to compare, and a client that wants them logged can wrap the model in a
//!    one-member ensemble.
//! 2. The sampling decision comes first and costs one thread-local random draw (none at rates 0
//!    and 1); an unsampled request pays nothing else.
//! 3. A sampled request clones only handles (tensor data is `Bytes`: a refcount) into an
//!    [`Entry`] and `try_send`s it into a bounded queue, also bounded in bytes. A full queue
//!    drops the record and counts it (`chorus_prediction_log_dropped_total{reason="queue_full"}`):
//!    the request path never blocks, awaits, encodes or writes.
//! 4. One writer thread (blocking file I/O stays off the runtime) encodes each entry as a
//!    [`Record`] and appends it to the current file, which rotates on size and age: JSON Lines
//!    ([`sink`]) by default, Parquet ([`parquet`]) with `--prediction-log-format parquet`.
//!    Write errors drop the record, are counted and logged at most every few seconds.
//! 5. On shutdown the server [`Closer::close`]s the log: the writer drains its queue, flushes
//!    and fsyncs within a bounded time.

mod entry;
pub mod input_hash;
mod output;
pub mod parquet;
pub mod read;
pub mod record;
mod sink;
pub mod time;
mod writer;

pub use entry::Entry;
pub use record::{MemberRecord, Record, TensorRecord};
pub use sink::{LogFormat, Rotation, SinkSettings, file_name};
pub use writer::Closer;

use crate::metrics::PredictionLogCounters;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

/// The prediction log's flags, shared by `chorus coordinator` and `chorus up` (which passes
/// them through to the coordinator it starts).
#[derive(Debug, Clone, Args)]
pub struct PredictionLogArgs {
    /// Directory of the prediction log (JSON Lines or Parquet; docs/data.md): sampled ensemble
    /// answers with their inputs, members' outputs and latency. Created if missing; off unless
    /// given.
    #[arg(
        long = "prediction-log",
        env = "CHORUS_PREDICTION_LOG",
        value_name = "DIR"
    )]
    pub prediction_log: Option<PathBuf>,

    /// Start a new prediction log file once the current one holds this many bytes.
    #[arg(long, env = "CHORUS_PREDICTION_LOG_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub prediction_log_max_bytes: u64,

    /// Start a new prediction log file once the current one is this many seconds old.
    #[arg(
        long,
        env = "CHORUS_PREDICTION_LOG_MAX_AGE_SECS",
        default_value_t = 3600
    )]
    pub prediction_log_max_age_secs: u64,

    /// Compress each rotated prediction log file with zstd (`.jsonl.zst`); the file being
    /// written stays plain JSON Lines. With `--prediction-log-format parquet`: zstd pages.
    #[arg(long, env = "CHORUS_PREDICTION_LOG_ZSTD")]
    pub prediction_log_zstd: bool,

    /// Format of the prediction log's files: `jsonl` (JSON Lines, readable as written) or
    /// `parquet` (for analysis; a file is readable once rotated or closed at shutdown).
    #[arg(
        long,
        env = "CHORUS_PREDICTION_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Jsonl
    )]
    pub prediction_log_format: LogFormat,

    /// Records that may wait for the log's writer; beyond it new ones are dropped and counted.
    #[arg(long, env = "CHORUS_PREDICTION_LOG_QUEUE", default_value_t = 4096)]
    pub prediction_log_queue: usize,

    /// Tensor bytes that may wait for the log's writer (waiting records keep their request's
    /// tensors alive); beyond it new records are dropped and counted.
    #[arg(long, env = "CHORUS_PREDICTION_LOG_QUEUE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub prediction_log_queue_bytes: usize,
}

impl PredictionLogArgs {
    /// The sink's settings, or `None` when the log is off.
    pub fn settings(&self) -> Option<SinkSettings> {
        let dir = self.prediction_log.clone()?;
        Some(SinkSettings {
            dir,
            rotation: Rotation {
                max_bytes: self.prediction_log_max_bytes.max(1),
                max_age: Duration::from_secs(self.prediction_log_max_age_secs.max(1)),
            },
            zstd: self.prediction_log_zstd,
            format: self.prediction_log_format,
        })
    }

    /// The flags as given, for a coordinator started by `chorus up`; nothing when the log is off.
    pub fn to_flags(&self) -> Vec<String> {
        let Some(dir) = &self.prediction_log else {
            return Vec::new();
        };
        let mut flags = vec![
            format!("--prediction-log={}", dir.display()),
            format!(
                "--prediction-log-max-bytes={}",
                self.prediction_log_max_bytes
            ),
            format!(
                "--prediction-log-max-age-secs={}",
                self.prediction_log_max_age_secs
            ),
            format!("--prediction-log-queue={}", self.prediction_log_queue),
            format!(
                "--prediction-log-format={}",
                self.prediction_log_format.as_str()
            ),
            format!(
                "--prediction-log-queue-bytes={}",
                self.prediction_log_queue_bytes
            ),
        ];
        if self.prediction_log_zstd {
            flags.push("--prediction-log-zstd".to_string());
        }
        flags
    }

    /// Checks that the directory can be used (created if missing, a directory, writable), so
    /// that a bad path stops the coordinator at start-up rather than dropping every record.
    pub fn check(&self) -> anyhow::Result<()> {
        match self.settings() {
            Some(settings) => sink::check_dir(&settings.dir),
            None => Ok(()),
        }
    }
}

/// What an ensemble's spec says about logging (`log_sample_rate`, `log_inputs`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogPolicy {
    /// Share of answered requests logged, 0 to 1.
    pub sample_rate: f64,
    /// Whether records keep the request's inputs (off for privacy).
    pub inputs: bool,
}

impl Default for LogPolicy {
    fn default() -> Self {
        LogPolicy {
            sample_rate: 1.0,
            inputs: true,
        }
    }
}

impl LogPolicy {
    /// Whether this request is logged: always at 1, never at 0, else one random draw.
    pub fn sample(&self) -> bool {
        if self.sample_rate >= 1.0 {
            true
        } else if self.sample_rate <= 0.0 {
            false
        } else {
            rand::random::<f64>() < self.sample_rate
        }
    }
}

/// The request path's end of the log: a bounded queue to the writer thread.
#[derive(Debug, Clone)]
pub struct PredictionLog {
    queue: SyncSender<Entry>,
    /// Tensor bytes queued, against `max_queued_bytes`.
    queued_bytes: Arc<AtomicUsize>,
    max_queued_bytes: usize,
    counters: PredictionLogCounters,
}

impl PredictionLog {
    /// Opens the log in `settings.dir` and starts its writer thread; the [`Closer`] stops it.
    pub fn start(
        settings: SinkSettings,
        queue: usize,
        max_queued_bytes: usize,
        counters: PredictionLogCounters,
    ) -> anyhow::Result<(PredictionLog, Closer)> {
        sink::check_dir(&settings.dir)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(queue.max(1));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let closer = writer::spawn(settings, rx, Arc::clone(&queued_bytes), counters.clone())?;
        let log = PredictionLog {
            queue: tx,
            queued_bytes,
            max_queued_bytes,
            counters,
        };
        Ok((log, closer))
    }

    /// Queues `entry` for the writer, or drops and counts it when the queue is full. Never
    /// blocks.
    pub fn offer(&self, entry: Entry) {
        let bytes = entry.tensor_bytes();
        let before = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        // One record alone may exceed the byte bound: an empty queue always takes it.
        if before > 0 && before + bytes > self.max_queued_bytes {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.counters.queue_full.inc();
            return;
        }
        match self.queue.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                self.counters.queue_full.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_common::Tensor;
    use std::time::SystemTime;

    fn entry(floats: usize) -> Entry {
        let text = "version = 1\n[[ensemble]]\nname = \"e\"\ncombiner = \"soft_vote\"\ndeadline_ms = 100\n[[ensemble.member]]\nmodel = \"a\"\n";
        Entry {
            id: "r".into(),
            time: SystemTime::now(),
            spec: Arc::new(crate::spec::parse(text, "t").unwrap().remove(0)),
            protocol: None,
            caller: None,
            inputs: Some(vec![Tensor::from_values(
                "x",
                vec![floats as i64],
                &vec![0f32; floats],
            )]),
            keep_inputs: true,
            members: Vec::new(),
            outputs: Vec::new(),
            report: Default::default(),
            latency: Duration::ZERO,
        }
    }

    fn log(queue: usize, max_bytes: usize) -> (PredictionLog, std::sync::mpsc::Receiver<Entry>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(queue);
        let log = PredictionLog {
            queue: tx,
            queued_bytes: Arc::default(),
            max_queued_bytes: max_bytes,
            counters: PredictionLogCounters::default(),
        };
        (log, rx)
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let (log, rx) = log(2, usize::MAX);
        for _ in 0..5 {
            log.offer(entry(1));
        }
        assert_eq!(rx.try_iter().count(), 2);
        assert_eq!(log.counters.queue_full.get(), 3);
        assert_eq!(
            log.queued_bytes.load(Ordering::Relaxed),
            8,
            "two 4-byte entries wait"
        );
    }

    #[test]
    fn the_byte_bound_drops_but_an_empty_queue_takes_any_one_record() {
        let (log, rx) = log(100, 1000);
        log.offer(entry(1000)); // 4000 bytes, alone: taken.
        log.offer(entry(1)); // would pass the bound: dropped.
        assert_eq!(rx.try_iter().count(), 1);
        assert_eq!(log.counters.queue_full.get(), 1);
    }

    #[test]
    fn sampling_at_the_ends_is_exact_and_in_between_is_about_right() {
        let never = LogPolicy {
            sample_rate: 0.0,
            inputs: true,
        };
        assert!((0..1000).all(|_| LogPolicy::default().sample() && !never.sample()));
        let quarter = LogPolicy {
            sample_rate: 0.25,
            inputs: true,
        };
        let hits = (0..20_000).filter(|_| quarter.sample()).count();
        assert!((4000..6000).contains(&hits), "{hits}");
    }

    #[test]
    fn flags_pass_through_only_when_the_log_is_on() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            log: PredictionLogArgs,
        }
        let off = Cli::parse_from(["x"]).log;
        assert!(off.settings().is_none() && off.to_flags().is_empty());
        let on = Cli::parse_from(["x", "--prediction-log=/tmp/l", "--prediction-log-zstd"]).log;
        let settings = on.settings().unwrap();
        assert_eq!(settings.rotation.max_bytes, 64 * 1024 * 1024);
        assert_eq!(settings.rotation.max_age, Duration::from_secs(3600));
        assert!(settings.zstd);
        assert_eq!(settings.format, LogFormat::Jsonl);
        let parquet = Cli::parse_from([
            "x",
            "--prediction-log=/tmp/l",
            "--prediction-log-format=parquet",
        ])
        .log;
        let again = Cli::parse_from(std::iter::once("x".to_string()).chain(parquet.to_flags())).log;
        assert_eq!(again.settings().unwrap().format, LogFormat::Parquet);
        let again = Cli::parse_from(std::iter::once("x".to_string()).chain(on.to_flags())).log;
        assert_eq!(again.settings(), Some(settings));
    }
}
