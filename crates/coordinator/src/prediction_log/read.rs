//! Reading a prediction log directory back (`chorus logs`, and anything that joins on it):
//! its files oldest first, plain or zstd-compressed, line by line; Parquet files through
//! `parquet::read_records`.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Whether `name` is one of the log's files (a rotated `.jsonl.zst`, a `.jsonl`, or a finished
/// `.parquet`; never a `.parquet.part` still being written).
pub fn is_log_file(name: &str) -> bool {
    name.starts_with("predictions-")
        && (name.ends_with(".jsonl") || name.ends_with(".jsonl.zst") || is_parquet(name))
}

/// Whether `name` is a finished Parquet log file.
pub fn is_parquet(name: &str) -> bool {
    name.ends_with(".parquet")
}

/// The log's files in `dir`, oldest first: names sort by the writing coordinator's start time,
/// then by sequence number.
pub fn files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| is_log_file(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    files.sort_by(|a, b| {
        let key = |p: &PathBuf| p.to_string_lossy().trim_end_matches(".zst").to_string();
        key(a).cmp(&key(b))
    });
    Ok(files)
}

/// A reader of one file's lines, decompressing `.zst` files.
pub fn open(path: &Path) -> io::Result<Box<dyn BufRead>> {
    let file = File::open(path)?;
    if path.extension().is_some_and(|e| e == "zst") {
        Ok(Box::new(BufReader::new(zstd::stream::Decoder::new(file)?)))
    } else {
        Ok(Box::new(BufReader::new(file)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_sort_oldest_first_whatever_their_compression() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "predictions-20240101T000000Z-000002.jsonl",
            "predictions-20240101T000000Z-000001.jsonl.zst",
            "predictions-20231231T000000Z-000009.jsonl.zst",
            "predictions-20240101T000000Z-000003.jsonl.zst.part",
            "predictions-20240101T000000Z-000004.parquet",
            "predictions-20240101T000000Z-000005.parquet.part",
            "notes.txt",
        ];
        for name in names {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let found: Vec<String> = files(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(found, [names[2], names[1], names[0], names[4]]);
        let zst = dir.path().join("predictions-x.jsonl.zst");
        std::fs::write(&zst, zstd::encode_all(&b"{\"a\":1}\n"[..], 3).unwrap()).unwrap();
        let lines: Vec<String> = open(&zst).unwrap().lines().map(Result::unwrap).collect();
        assert_eq!(lines, ["{\"a\":1}"]);
    }
}
