//! `chorus logs tail|export`: reads a prediction log directory (`--prediction-log DIR`, plain
//! `.jsonl`, rotated `.jsonl.zst` and finished `.parquet` files, mixed or not) back as JSON
//! Lines, one record per line; `export --format parquet` writes one Parquet file instead
//! (docs/data.md).

use anyhow::Context;
use chorus_coordinator::prediction_log::parquet::{RecordFileWriter, read_records};
use chorus_coordinator::prediction_log::{LogFormat, Record, read, time};
use clap::{Args, Subcommand};
use serde::Deserialize;
use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often `tail --follow` looks for new records.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(subcommand)]
    command: LogsCommand,
}

#[derive(Debug, Subcommand)]
enum LogsCommand {
    /// Print the newest records of a prediction log directory, oldest first.
    Tail(TailArgs),
    /// Print (or write to a file) the records of a prediction log directory, filtered by time
    /// and ensemble, in the order they were written.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
struct TailArgs {
    /// The prediction log directory (`--prediction-log`).
    dir: PathBuf,
    /// How many records to print.
    #[arg(short = 'n', long, default_value_t = 10)]
    lines: usize,
    /// Keep printing records as they are written, until interrupted.
    #[arg(short, long)]
    follow: bool,
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// The prediction log directory (`--prediction-log`).
    dir: PathBuf,
    /// Only records at or after this time (RFC 3339, e.g. 2025-01-31T12:00:00Z).
    #[arg(long)]
    since: Option<String>,
    /// Only records before this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// Only records of this ensemble.
    #[arg(long)]
    ensemble: Option<String>,
    /// Write to this file instead of standard output (needed with `--format parquet`).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Format of the export: `jsonl` (one JSON record per line, as the log's JSON Lines files)
    /// or `parquet` (one Parquet file with the log's Parquet schema). Either reads both kinds of
    /// log file.
    #[arg(long, value_enum, default_value_t = LogFormat::Jsonl)]
    format: LogFormat,
}

pub fn main(args: LogsArgs) -> anyhow::Result<()> {
    match args.command {
        LogsCommand::Tail(args) => tail(args),
        LogsCommand::Export(args) => export(args),
    }
}

/// The fields export filters on; the rest of the line is passed through untouched.
#[derive(Deserialize)]
struct Filtered {
    unix_ms: i64,
    ensemble: String,
}

/// A file's whole lines (a line still being written is left for later) and their byte count.
fn complete_lines(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines = bytes[..end]
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .collect();
    (lines, end)
}

fn is_parquet(path: &Path) -> bool {
    read::is_parquet(&path.to_string_lossy())
}

/// A record as one JSON line without its newline.
fn json_line(record: &Record) -> Vec<u8> {
    let mut line = record.to_line();
    line.pop();
    line
}

/// One file's complete records as JSON lines, and (JSON Lines files) the byte offset after the
/// last complete line, where `--follow` resumes.
fn file_lines(path: &Path) -> anyhow::Result<(Vec<Vec<u8>>, u64)> {
    if is_parquet(path) {
        let records = read_records(path)?;
        return Ok((records.iter().map(json_line).collect(), 0));
    }
    let bytes = read_all(path)?;
    let (lines, end) = complete_lines(&bytes);
    Ok((lines.into_iter().map(<[u8]>::to_vec).collect(), end as u64))
}

fn read_all(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    read::open(path)
        .and_then(|mut reader| reader.read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(bytes)
}

fn log_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    read::files(dir).with_context(|| format!("cannot list the prediction log {}", dir.display()))
}

/// Writes `line` and a newline; `false` once the reader went away (a closed pipe).
fn emit(out: &mut impl Write, line: &[u8]) -> bool {
    out.write_all(line)
        .and_then(|()| out.write_all(b"\n"))
        .is_ok()
}

fn tail(args: TailArgs) -> anyhow::Result<()> {
    let files = log_files(&args.dir)?;
    let mut newest: VecDeque<Vec<u8>> = VecDeque::with_capacity(args.lines);
    // Where --follow resumes in each plain file.
    let mut offsets: BTreeMap<PathBuf, u64> = BTreeMap::new();
    for path in files.iter().rev() {
        let (lines, end) = file_lines(path)?;
        offsets.insert(path.clone(), end);
        for line in lines.into_iter().rev() {
            if newest.len() == args.lines {
                break;
            }
            newest.push_front(line);
        }
        if newest.len() == args.lines && !args.follow {
            break;
        }
    }
    let mut out = std::io::stdout().lock();
    for line in &newest {
        if !emit(&mut out, line) {
            return Ok(());
        }
    }
    out.flush().ok();
    if args.follow {
        follow(&args.dir, offsets, &mut out)?;
    }
    Ok(())
}

/// Prints lines appended to the plain files from `offsets` on, and new files, until the
/// output closes. A file rotated and compressed between two polls is read no further. A
/// Parquet file is printed whole when it appears (finished: rotated or closed).
fn follow(
    dir: &Path,
    mut offsets: BTreeMap<PathBuf, u64>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    loop {
        std::thread::sleep(FOLLOW_POLL);
        let files = log_files(dir)?;
        offsets.retain(|path, _| files.contains(path));
        for path in files.iter().filter(|p| is_parquet(p)) {
            if offsets.contains_key(path) {
                continue;
            }
            offsets.insert(path.clone(), 0);
            let Ok((lines, _)) = file_lines(path) else {
                continue;
            };
            for line in lines {
                if !emit(out, &line) {
                    return Ok(());
                }
            }
        }
        for path in files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        {
            let offset = offsets.entry(path.clone()).or_insert(0);
            let Ok(mut file) = std::fs::File::open(path) else {
                continue;
            };
            let mut bytes = Vec::new();
            if file.seek(SeekFrom::Start(*offset)).is_err() || file.read_to_end(&mut bytes).is_err()
            {
                continue;
            }
            let (lines, end) = complete_lines(&bytes);
            *offset += end as u64;
            for line in lines {
                if !emit(out, line) {
                    return Ok(());
                }
            }
        }
        if out.flush().is_err() {
            return Ok(());
        }
    }
}

fn export(args: ExportArgs) -> anyhow::Result<()> {
    let bound = |flag: &str, value: &Option<String>| -> anyhow::Result<Option<i64>> {
        value
            .as_deref()
            .map(|v| time::parse_rfc3339(v).map_err(|e| anyhow::anyhow!("--{flag}: {e}")))
            .transpose()
    };
    let since = bound("since", &args.since)?;
    let until = bound("until", &args.until)?;
    let files = log_files(&args.dir)?;
    // `--output` is written under a temporary name beside it and renamed into place once the
    // export is whole: a failed export leaves no file that looks finished (the temporary one is
    // removed when `pending` is dropped).
    let mut pending: Option<(tempfile::TempPath, PathBuf)> = None;
    let mut create = |path: &Path| -> anyhow::Result<std::io::BufWriter<std::fs::File>> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let (file, temp) = tempfile::Builder::new()
            .prefix(".chorus-export-")
            .tempfile_in(dir)
            .with_context(|| format!("cannot create --output {}", path.display()))?
            .into_parts();
        pending = Some((temp, path.to_path_buf()));
        Ok(std::io::BufWriter::new(file))
    };
    let mut out = match (args.format, &args.output) {
        (LogFormat::Jsonl, Some(path)) => Export::Jsonl(Box::new(create(path)?)),
        (LogFormat::Jsonl, None) => {
            Export::Jsonl(Box::new(std::io::BufWriter::new(std::io::stdout().lock())))
        }
        (LogFormat::Parquet, Some(path)) => {
            Export::Parquet(Box::new(RecordFileWriter::new(create(path)?, true)?))
        }
        (LogFormat::Parquet, None) => {
            anyhow::bail!("--format parquet writes a binary file: give it with --output FILE")
        }
    };
    let (mut exported, mut unreadable, mut bad_files) = (0u64, 0u64, 0u64);
    for path in &files {
        let lines = match file_lines(path) {
            Ok((lines, _)) => lines,
            // A damaged Parquet file is skipped, not the whole export.
            Err(e) if is_parquet(path) => {
                eprintln!("skipping {}: {e:#}", path.display());
                bad_files += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        for line in lines {
            let Ok(record) = serde_json::from_slice::<Filtered>(&line) else {
                unreadable += 1;
                continue;
            };
            let wanted = since.is_none_or(|t| record.unix_ms >= t)
                && until.is_none_or(|t| record.unix_ms < t)
                && args.ensemble.as_ref().is_none_or(|e| *e == record.ensemble);
            if !wanted {
                continue;
            }
            match &mut out {
                Export::Jsonl(out) => {
                    if !emit(out, &line) {
                        if let Some((_, path)) = &pending {
                            anyhow::bail!("cannot write the export to {}", path.display());
                        }
                        // Standard output's reader went away (`| head`): nothing more to do.
                        return Ok(());
                    }
                }
                Export::Parquet(out) => {
                    let Ok(record) = serde_json::from_slice::<Record>(&line) else {
                        unreadable += 1;
                        continue;
                    };
                    out.push(&record).context("cannot write the export")?;
                }
            }
            exported += 1;
        }
    }
    match out {
        Export::Jsonl(mut out) => out.flush().context("cannot write the export")?,
        Export::Parquet(out) => {
            out.finish()
                .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
                .and_then(|f| f.sync_all())
                .context("cannot write the export")?;
        }
    }
    if let Some((temp, path)) = pending {
        // A temporary file is private (0600); an export is an ordinary file.
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o644))
            .and_then(|()| temp.persist(&path).map_err(|e| e.error))
            .with_context(|| format!("cannot move the export into {}", path.display()))?;
    }
    let mut skipped = Vec::new();
    if unreadable > 0 {
        skipped.push(format!("{unreadable} unreadable lines skipped"));
    }
    if bad_files > 0 {
        skipped.push(format!("{bad_files} unreadable files skipped"));
    }
    eprintln!(
        "exported {exported} records from {} files{}",
        files.len(),
        if skipped.is_empty() {
            String::new()
        } else {
            format!(" ({})", skipped.join(", "))
        }
    );
    Ok(())
}

/// Where `export` writes.
enum Export<'a> {
    Jsonl(Box<dyn Write + 'a>),
    Parquet(Box<RecordFileWriter<std::io::BufWriter<std::fs::File>>>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_still_being_written_is_left_for_later() {
        let (lines, end) = complete_lines(b"{\"a\":1}\n{\"b\":2}\n{\"c\"");
        assert_eq!(lines, [&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]]);
        assert_eq!(end, 16);
        assert_eq!(complete_lines(b"partial").1, 0);
    }
}
