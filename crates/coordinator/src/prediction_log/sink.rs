//! The prediction log's JSON Lines files (the Parquet twin is `parquet.rs`): appended to
//! `predictions-<start>-<seq>.jsonl` in the log directory, rotated when a file reaches `max_bytes` or `max_age`, and (with zstd on)
//! compressed to `.jsonl.zst` once rotated. Plain blocking I/O: only the writer thread uses it.
//!
//! A failed write or open drops the file being written (the next record opens a new one), so a
//! directory that comes back, or space that is freed, heals the log without a restart.

use super::time;
use anyhow::Context;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// zstd level of rotated files: the library's default, about 4x on records at a few hundred
/// MB/s, so a 64 MiB file takes a fraction of a second of the writer's time.
const ZSTD_LEVEL: i32 = 3;

/// When a file is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub max_bytes: u64,
    pub max_age: Duration,
}

impl Rotation {
    /// Whether a file holding `bytes`, opened `age` ago, is full or old enough to rotate.
    pub fn due(&self, bytes: u64, age: Duration) -> bool {
        bytes >= self.max_bytes || age >= self.max_age
    }
}

/// The format of the log's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (`.jsonl`, rotated files optionally `.jsonl.zst`).
    #[default]
    Jsonl,
    /// Parquet files (`.parquet`), one row per record, readable once rotated or closed.
    Parquet,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Jsonl => "jsonl",
            LogFormat::Parquet => "parquet",
        }
    }
}

/// Where and how the log is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSettings {
    pub dir: PathBuf,
    pub rotation: Rotation,
    /// Compress rotated JSON Lines files; Parquet pages.
    pub zstd: bool,
    pub format: LogFormat,
}

/// The name, without extension, of the `seq`th file of a coordinator started at `start_ms`:
/// names sort in the order they were written.
pub fn file_stem(start_ms: i64, seq: u64) -> String {
    format!("predictions-{}-{seq:06}", time::format_compact(start_ms))
}

/// The name of the `seq`th JSON Lines file of a coordinator started at `start_ms`.
pub fn file_name(start_ms: i64, seq: u64) -> String {
    format!("{}.jsonl", file_stem(start_ms, seq))
}

/// Checks that `dir` exists (creating it) as a directory this process can write to.
pub fn check_dir(dir: &Path) -> anyhow::Result<()> {
    let shown = dir.display();
    anyhow::ensure!(
        !dir.exists() || dir.is_dir(),
        "--prediction-log {shown} is not a directory; give a directory for the log files"
    );
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--prediction-log {shown}: cannot create the directory"))?;
    let probe = dir.join(format!(".chorus-write-check-{}", std::process::id()));
    let written = File::create(&probe).and_then(|mut f| f.write_all(b"ok"));
    let _ = std::fs::remove_file(&probe);
    written.with_context(|| {
        format!("--prediction-log {shown}: cannot write there; give a writable directory")
    })
}

struct Current {
    path: PathBuf,
    file: BufWriter<File>,
    bytes: u64,
    opened: Instant,
}

/// The file being written and the rotation state.
pub struct Sink {
    settings: SinkSettings,
    start_ms: i64,
    next_seq: u64,
    current: Option<Current>,
}

impl Sink {
    /// A sink whose files are named after `start_ms` (the coordinator's start); no file is
    /// opened until the first record.
    pub fn new(settings: SinkSettings, start_ms: i64) -> Sink {
        Sink {
            settings,
            start_ms,
            next_seq: 1,
            current: None,
        }
    }

    /// Appends one line (a whole record), rotating first if the current file is due.
    pub fn write(&mut self, line: &[u8], now: Instant) -> io::Result<()> {
        self.rotate_if_due(now)?;
        if self.current.is_none() {
            self.current = Some(self.open(now)?);
        }
        let current = self.current.as_mut().expect("opened above");
        if let Err(e) = current.file.write_all(line) {
            self.current = None;
            return Err(e);
        }
        current.bytes += line.len() as u64;
        Ok(())
    }

    /// Hands buffered lines to the OS (readers see them; a crash of this process loses none).
    pub fn flush(&mut self) -> io::Result<()> {
        let Some(current) = self.current.as_mut() else {
            return Ok(());
        };
        let flushed = current.file.flush();
        if flushed.is_err() {
            self.current = None;
        }
        flushed
    }

    /// Rotates the current file if it is full or old (also called when idle, so that an old file
    /// is closed and compressed even when no record comes).
    pub fn rotate_if_due(&mut self, now: Instant) -> io::Result<()> {
        let due = self.current.as_ref().is_some_and(|c| {
            self.settings
                .rotation
                .due(c.bytes, now.saturating_duration_since(c.opened))
        });
        if due {
            let current = self.current.take().expect("checked above");
            let path = finish(current)?;
            // The plain file holds every record: a failed compression loses nothing.
            if self.settings.zstd
                && let Err(error) = compress(&path)
            {
                tracing::warn!(path = %path.display(), error = %error, "cannot compress a rotated prediction log file; it stays uncompressed");
            }
        }
        Ok(())
    }

    /// Flushes and fsyncs the current file and closes it (left uncompressed: shutdown must be
    /// quick, and readers take both forms).
    pub fn close(&mut self) -> io::Result<()> {
        match self.current.take() {
            Some(current) => finish(current).map(drop),
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
            // create_new: a file left by another coordinator started in the same second is
            // skipped, never appended to.
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(Current {
                        path,
                        file: BufWriter::with_capacity(256 * 1024, file),
                        bytes: 0,
                        opened: now,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Flushes and fsyncs a file; returns its path.
fn finish(current: Current) -> io::Result<PathBuf> {
    let file = current.file.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(current.path)
}

/// Replaces `path` by `path.zst`; the plain file stays if compression fails.
fn compress(path: &Path) -> io::Result<()> {
    let mut zst = path.as_os_str().to_owned();
    zst.push(".zst");
    let zst = PathBuf::from(zst);
    let mut part = zst.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let written = (|| {
        let mut input = File::open(path)?;
        let output = File::create(&part)?;
        let mut encoder = zstd::stream::Encoder::new(output, ZSTD_LEVEL)?;
        io::copy(&mut input, &mut encoder)?;
        encoder.finish()?.sync_all()?;
        std::fs::rename(&part, &zst)
    })();
    match written {
        Ok(()) => std::fs::remove_file(path),
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, max_bytes: u64, zstd: bool) -> SinkSettings {
        SinkSettings {
            dir: dir.to_path_buf(),
            rotation: Rotation {
                max_bytes,
                max_age: Duration::from_secs(60),
            },
            zstd,
            format: LogFormat::Jsonl,
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn rotation_is_due_on_size_or_age() {
        let rotation = Rotation {
            max_bytes: 100,
            max_age: Duration::from_secs(10),
        };
        assert!(!rotation.due(99, Duration::from_secs(9)));
        assert!(rotation.due(100, Duration::ZERO));
        assert!(rotation.due(0, Duration::from_secs(10)));
    }

    #[test]
    fn files_rotate_on_size_and_sort_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = Sink::new(settings(dir.path(), 10, false), 1_700_000_000_000);
        let now = Instant::now();
        for line in ["aaaaaa\n", "bbbbbb\n", "cccccc\n", "dddddd\n"] {
            sink.write(line.as_bytes(), now).unwrap();
        }
        sink.close().unwrap();
        assert_eq!(
            names(dir.path()),
            [
                "predictions-20231114T221320Z-000001.jsonl",
                "predictions-20231114T221320Z-000002.jsonl",
            ]
        );
        let first = std::fs::read_to_string(dir.path().join(&names(dir.path())[0])).unwrap();
        assert_eq!(
            first, "aaaaaa\nbbbbbb\n",
            "a file may pass the limit by one line"
        );
    }

    #[test]
    fn files_rotate_on_age_even_when_idle_and_compress() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = Sink::new(settings(dir.path(), 1 << 20, true), 0);
        let start = Instant::now();
        sink.write(b"{\"a\":1}\n", start).unwrap();
        sink.rotate_if_due(start + Duration::from_secs(59)).unwrap();
        assert_eq!(
            names(dir.path()),
            ["predictions-19700101T000000Z-000001.jsonl"]
        );
        sink.rotate_if_due(start + Duration::from_secs(60)).unwrap();
        assert_eq!(
            names(dir.path()),
            ["predictions-19700101T000000Z-000001.jsonl.zst"]
        );
        let compressed = std::fs::read(dir.path().join(&names(dir.path())[0])).unwrap();
        assert_eq!(zstd::decode_all(&compressed[..]).unwrap(), b"{\"a\":1}\n");
        // The next record opens the next file, which closing leaves plain.
        sink.write(b"{\"a\":2}\n", start + Duration::from_secs(61))
            .unwrap();
        sink.close().unwrap();
        assert_eq!(names(dir.path()).len(), 2);
        assert!(names(dir.path())[1].ends_with("000002.jsonl"));
    }

    #[test]
    fn an_existing_name_is_skipped_not_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(file_name(0, 1)), "theirs\n").unwrap();
        let mut sink = Sink::new(settings(dir.path(), 1 << 20, false), 0);
        sink.write(b"mine\n", Instant::now()).unwrap();
        sink.close().unwrap();
        let theirs = std::fs::read_to_string(dir.path().join(file_name(0, 1))).unwrap();
        assert_eq!(theirs, "theirs\n");
        let mine = std::fs::read_to_string(dir.path().join(file_name(0, 2))).unwrap();
        assert_eq!(mine, "mine\n");
    }

    #[test]
    fn a_directory_replaced_by_a_file_fails_writes_and_heals_when_it_comes_back() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("log");
        let mut sink = Sink::new(settings(&dir, 1, false), 0);
        let now = Instant::now();
        sink.write(b"one\n", now).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::write(&dir, "not a directory").unwrap();
        // Rotation finishes the old (unlinked) file, then opening the next one fails, even as
        // root.
        assert!(sink.write(b"two\n", now).is_err());
        assert!(sink.write(b"three\n", now).is_err());
        std::fs::remove_file(&dir).unwrap();
        sink.write(b"four\n", now).unwrap();
        sink.close().unwrap();
        let names = names(&dir);
        assert_eq!(names.len(), 1);
        assert_eq!(
            std::fs::read_to_string(dir.join(&names[0])).unwrap(),
            "four\n"
        );
    }

    #[test]
    fn check_dir_creates_and_refuses_a_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        check_dir(&dir).unwrap();
        assert!(dir.is_dir());
        assert!(names(&dir).is_empty(), "the probe file is removed");
        let file = root.path().join("file");
        std::fs::write(&file, "").unwrap();
        let error = format!("{:#}", check_dir(&file).unwrap_err());
        assert!(
            error.contains("--prediction-log") && error.contains("not a directory"),
            "{error}"
        );
    }
}
