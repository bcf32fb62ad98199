//! The writer thread's file sink in the chosen format: JSON Lines (`sink.rs`) or Parquet
//! (`parquet.rs`), behind one set of calls.

use super::parquet::ParquetSink;
use super::record::Record;
use super::sink::{LogFormat, Sink, SinkSettings};
use std::io;
use std::time::Instant;

pub enum Output {
    Jsonl(Sink),
    /// Boxed: its row-group buffers make it several times the JSON sink's size.
    Parquet(Box<ParquetSink>),
}

impl Output {
    pub fn new(settings: SinkSettings, start_ms: i64) -> Output {
        match settings.format {
            LogFormat::Jsonl => Output::Jsonl(Sink::new(settings, start_ms)),
            LogFormat::Parquet => Output::Parquet(Box::new(ParquetSink::new(settings, start_ms))),
        }
    }

    pub fn write(&mut self, record: &Record, now: Instant) -> io::Result<()> {
        match self {
            Output::Jsonl(sink) => sink.write(&record.to_line(), now),
            Output::Parquet(sink) => sink.write(record, now),
        }
    }

    /// Called whenever the queue runs dry: JSON Lines hands its lines to the OS; Parquet rows
    /// wait for their row group (`parquet.rs`, rule 2).
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Jsonl(sink) => sink.flush(),
            Output::Parquet(_) => Ok(()),
        }
    }

    pub fn rotate_if_due(&mut self, now: Instant) -> io::Result<()> {
        match self {
            Output::Jsonl(sink) => sink.rotate_if_due(now),
            Output::Parquet(sink) => sink.rotate_if_due(now),
        }
    }

    pub fn close(&mut self) -> io::Result<()> {
        match self {
            Output::Jsonl(sink) => sink.close(),
            Output::Parquet(sink) => sink.close(),
        }
    }
}
