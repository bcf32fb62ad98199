//! A Parquet log file's rows back as [`Record`]s (for `chorus logs`), through the `parquet`
//! crate's row reader. Columns are found by name, so a file with extra columns still reads.

use super::super::record::Record;
use super::super::time;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use std::fs::File;
use std::io;
use std::path::Path;

/// Every record of the finished Parquet file at `path`, in the order written. A file without
/// its footer (the one a crashed coordinator was writing) is an error naming the file.
pub fn read_records(path: &Path) -> io::Result<Vec<Record>> {
    let bad = |e: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a readable Parquet log file: {e}", path.display()),
        )
    };
    let reader = SerializedFileReader::new(File::open(path)?).map_err(|e| bad(&e))?;
    let rows = reader.get_row_iter(None).map_err(|e| bad(&e))?;
    rows.map(|row| {
        let row = row.map_err(|e| bad(&e))?;
        record(&row).map_err(|e| bad(&e))
    })
    .collect()
}

fn record(row: &Row) -> Result<Record, String> {
    let mut r = Record {
        id: String::new(),
        time: String::new(),
        unix_ms: 0,
        ensemble: String::new(),
        ensemble_version: String::new(),
        protocol: None,
        key: None,
        latency_us: 0,
        inputs: None,
        input_hash: None,
        members: Vec::new(),
        outputs: Vec::new(),
        used: Vec::new(),
        failed: Vec::new(),
        late: Vec::new(),
        retried: Vec::new(),
        hedged: Vec::new(),
    };
    for (name, field) in row.get_column_iter() {
        let wrong = || format!("column `{name}` holds {field:?}");
        match (name.as_str(), field) {
            ("id", Field::Str(s)) => r.id = s.clone(),
            ("unix_ms", Field::Long(ms)) => r.unix_ms = *ms,
            ("ensemble", Field::Str(s)) => r.ensemble = s.clone(),
            ("ensemble_version", Field::Str(s)) => r.ensemble_version = s.clone(),
            ("protocol", field) => r.protocol = optional_string(field).ok_or_else(wrong)?,
            ("key", field) => r.key = optional_string(field).ok_or_else(wrong)?,
            ("input_hash", field) => r.input_hash = optional_string(field).ok_or_else(wrong)?,
            ("latency_us", Field::Long(us)) => r.latency_us = u64::try_from(*us).unwrap_or(0),
            ("used", field) => r.used = strings(field).ok_or_else(wrong)?,
            ("failed", field) => r.failed = strings(field).ok_or_else(wrong)?,
            ("late", field) => r.late = strings(field).ok_or_else(wrong)?,
            ("retried", field) => r.retried = strings(field).ok_or_else(wrong)?,
            ("hedged", field) => r.hedged = strings(field).ok_or_else(wrong)?,
            ("members", Field::Str(s)) => r.members = parse(name, s)?,
            ("outputs", Field::Str(s)) => r.outputs = parse(name, s)?,
            ("inputs", Field::Str(s)) => r.inputs = Some(parse(name, s)?),
            ("inputs", Field::Null) => r.inputs = None,
            // Derived from the JSON columns: nothing to read back.
            ("time" | "label" | "probabilities", _) => {}
            (
                "id" | "unix_ms" | "ensemble" | "ensemble_version" | "latency_us" | "members"
                | "outputs" | "inputs",
                _,
            ) => return Err(wrong()),
            _ => {}
        }
    }
    r.time = time::format_rfc3339_ms(r.unix_ms);
    Ok(r)
}

fn optional_string(field: &Field) -> Option<Option<String>> {
    match field {
        Field::Str(s) => Some(Some(s.clone())),
        Field::Null => Some(None),
        _ => None,
    }
}

fn strings(field: &Field) -> Option<Vec<String>> {
    let Field::ListInternal(list) = field else {
        return None;
    };
    list.elements()
        .iter()
        .map(|e| match e {
            Field::Str(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn parse<T: serde::de::DeserializeOwned>(name: &str, text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| format!("column `{name}`: {e}"))
}
