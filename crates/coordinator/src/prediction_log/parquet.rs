//! The prediction log as Parquet files (`--prediction-log-format parquet`), for analysis with
//! pandas, pyarrow, DuckDB or Spark: one row per record, the schema in [`columns::SCHEMA`].
//!
//! Rules:
//! 1. A file is written as `predictions-<start>-<seq>.parquet.part` and renamed to `.parquet`
//!    once finished (footer written, fsynced): on rotation (size or age) and on a graceful stop.
//!    Readers list only `.parquet` files, so they never meet a file without its footer. A crash
//!    leaves at most the `.part` file being written, whose records are lost: Parquet is
//!    unreadable without its footer.
//! 2. Rows wait in memory, column by column, until [`ROW_GROUP_ROWS`] rows or
//!    [`ROW_GROUP_BYTES`] bytes make a row group, so the writer's memory is bounded whatever the
//!    rotation settings. Flushing when the queue runs dry does nothing here: a row group per
//!    quiet moment would make files of tiny row groups, and the footer is what makes rows
//!    readable anyway.
//! 3. `--prediction-log-zstd` compresses the pages with zstd; without it pages are plain. The
//!    file size that rotation compares with `--prediction-log-max-bytes` counts the bytes written
//!    plus the rows still buffered.

mod columns;
mod decode;

pub use decode::read_records;

use super::record::Record;
use super::sink::{SinkSettings, file_stem};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Rows per row group: large enough for column compression to work, small enough that a
/// file's rows are not all held in memory.
pub const ROW_GROUP_ROWS: usize = 4096;

/// Buffered bytes that close a row group early (records with large inputs).
pub const ROW_GROUP_BYTES: usize = 16 * 1024 * 1024;

/// zstd level of Parquet pages, as for rotated JSON Lines files.
const ZSTD_LEVEL: i32 = 3;

/// The name of the `seq`th Parquet file of a coordinator started at `start_ms`.
pub fn file_name(start_ms: i64, seq: u64) -> String {
    format!("{}.parquet", file_stem(start_ms, seq))
}

fn parquet_error(e: parquet::errors::ParquetError) -> io::Error {
    match e {
        parquet::errors::ParquetError::External(inner) => io::Error::other(inner),
        other => io::Error::other(other.to_string()),
    }
}

/// Writes records as one Parquet file into `W`.
pub struct RecordFileWriter<W: Write + Send> {
    file: SerializedFileWriter<W>,
    columns: columns::Columns,
}

impl<W: Write + Send> RecordFileWriter<W> {
    /// Starts a file (writes its magic bytes); `zstd` compresses its pages.
    pub fn new(out: W, zstd: bool) -> io::Result<Self> {
        let schema = Arc::new(parse_message_type(columns::SCHEMA).map_err(parquet_error)?);
        let compression = if zstd {
            Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL).map_err(parquet_error)?)
        } else {
            Compression::UNCOMPRESSED
        };
        let properties = WriterProperties::builder()
            .set_compression(compression)
            .set_created_by(format!("chorus {}", env!("CARGO_PKG_VERSION")))
            .build();
        let file =
            SerializedFileWriter::new(out, schema, Arc::new(properties)).map_err(parquet_error)?;
        Ok(RecordFileWriter {
            file,
            columns: columns::Columns::default(),
        })
    }

    /// Adds a record; writes a row group when enough are buffered.
    pub fn push(&mut self, record: &Record) -> io::Result<()> {
        self.columns.push(record);
        if self.columns.rows() >= ROW_GROUP_ROWS || self.columns.bytes() >= ROW_GROUP_BYTES {
            self.write_row_group()?;
        }
        Ok(())
    }

    /// Bytes written so far plus the rows still buffered.
    pub fn bytes(&self) -> u64 {
        (self.file.bytes_written() + self.columns.bytes()) as u64
    }

    fn write_row_group(&mut self) -> io::Result<()> {
        if self.columns.rows() == 0 {
            return Ok(());
        }
        let mut group = self.file.next_row_group().map_err(parquet_error)?;
        self.columns.write(&mut group).map_err(parquet_error)?;
        group.close().map_err(parquet_error)?;
        Ok(())
    }

    /// Writes the last row group and the footer; returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.write_row_group()?;
        self.file.into_inner().map_err(parquet_error)
    }
}

struct Current {
    /// Where the file is written, and where it goes once finished.
    part: PathBuf,
    path: PathBuf,
    writer: RecordFileWriter<BufWriter<File>>,
    opened: Instant,
}

/// The Parquet file being written and the rotation state (the Parquet twin of `sink::Sink`).
pub struct ParquetSink {
    settings: SinkSettings,
    start_ms: i64,
    next_seq: u64,
    current: Option<Current>,
}

impl ParquetSink {
    pub fn new(settings: SinkSettings, start_ms: i64) -> ParquetSink {
        ParquetSink {
            settings,
            start_ms,
            next_seq: 1,
            current: None,
        }
    }

    /// Adds one record, rotating first if the current file is due.
    pub fn write(&mut self, record: &Record, now: Instant) -> io::Result<()> {
        self.rotate_if_due(now)?;
        if self.current.is_none() {
            self.current = Some(self.open(now)?);
        }
        let current = self.current.as_mut().expect("opened above");
        if let Err(e) = current.writer.push(record) {
            // A failed row group leaves the file without a usable end: give it up.
            let lost = self.current.take().expect("written above");
            let _ = std::fs::remove_file(&lost.part);
            return Err(e);
        }
        Ok(())
    }

    /// Finishes the current file if it is full or old (also called when idle).
    pub fn rotate_if_due(&mut self, now: Instant) -> io::Result<()> {
        let due = self.current.as_ref().is_some_and(|c| {
            self.settings
                .rotation
                .due(c.writer.bytes(), now.saturating_duration_since(c.opened))
        });
        if due {
            finish(self.current.take().expect("checked above"))?;
        }
        Ok(())
    }

    /// Finishes the current file (graceful stop).
    pub fn close(&mut self) -> io::Result<()> {
        match self.current.take() {
            Some(current) => finish(current),
            None => Ok(()),
        }
    }

    fn open(&mut self, now: Instant) -> io::Result<Current> {
        std::fs::create_dir_all(&self.settings.dir)?;
        loop {
            let path = self
                .settings
                .dir
                .join(file_name(self.start_ms, self.next_seq));
            self.next_seq += 1;
            let mut part = path.clone().into_os_string();
            part.push(".part");
            let part = PathBuf::from(part);
            // Another coordinator started in the same second may own either name.
            if path.exists() {
                continue;
            }
            match OpenOptions::new().write(true).create_new(true).open(&part) {
                Ok(file) => {
                    let out = BufWriter::with_capacity(256 * 1024, file);
                    let writer = RecordFileWriter::new(out, self.settings.zstd)?;
                    return Ok(Current {
                        part,
                        path,
                        writer,
                        opened: now,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Writes the footer, fsyncs and renames the `.part` file to its final name.
fn finish(current: Current) -> io::Result<()> {
    let out = current.writer.finish()?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&current.part, &current.path)
}

#[cfg(test)]
mod tests;
