use super::*;
use crate::prediction_log::record::{MemberRecord, TensorRecord};
use crate::prediction_log::sink::{LogFormat, Rotation};
use parquet::file::reader::{FileReader, SerializedFileReader};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

fn tensor(name: &str, datatype: &str, shape: Vec<i64>, data: serde_json::Value) -> TensorRecord {
    TensorRecord {
        name: name.into(),
        datatype: datatype.into(),
        shape,
        data: Some(data),
        data_base64: None,
    }
}

/// A record of a two-row request to a three-member ensemble, `i` varying its id and values.
fn record(i: u32) -> Record {
    let p = |x: f32| json!([x, 1.0 - x, 0.125, 0.875]);
    Record {
        id: format!("req-{i}"),
        time: crate::prediction_log::time::format_rfc3339_ms(1_700_000_000_000 + i as i64),
        unix_ms: 1_700_000_000_000 + i as i64,
        ensemble: "digits_soft".into(),
        ensemble_version: "1".into(),
        protocol: i.is_multiple_of(2).then(|| "http".into()),
        key: i.is_multiple_of(3).then(|| format!("key-{i}")),
        latency_us: 1000 + u64::from(i),
        inputs: (i % 4 != 1).then(|| {
            vec![tensor(
                "input",
                "FP32",
                vec![2, 2],
                json!([0.5, i as f32, 16.0, 0.1]),
            )]
        }),
        input_hash: (i % 6 != 5).then(|| format!("{:032x}", u128::from(i) * 0x9e37_79b9)),
        members: vec![
            MemberRecord {
                model: "mlp".into(),
                version: Some("1".into()),
                status: "used".into(),
                output: Some(tensor("probabilities", "FP32", vec![2, 2], p(0.3))),
            },
            MemberRecord {
                model: "svc".into(),
                version: None,
                status: if i.is_multiple_of(5) {
                    "late"
                } else {
                    "failed"
                }
                .into(),
                output: None,
            },
            MemberRecord {
                model: "logreg".into(),
                version: None,
                status: "used".into(),
                output: Some(TensorRecord {
                    name: "raw".into(),
                    datatype: "BYTES".into(),
                    shape: vec![1],
                    data: None,
                    data_base64: Some("AgAAAP/+".into()),
                }),
            },
        ],
        outputs: vec![
            tensor(
                "probabilities",
                "FP32",
                vec![2, 2],
                p(0.1 + i as f32 / 1000.0),
            ),
            tensor("label", "INT64", vec![2], json!([1, i])),
        ],
        used: vec!["mlp".into(), "logreg".into()],
        failed: if i.is_multiple_of(5) {
            vec![]
        } else {
            vec!["svc".into()]
        },
        late: if i.is_multiple_of(5) {
            vec!["svc".into()]
        } else {
            vec![]
        },
        retried: vec![],
        hedged: if i.is_multiple_of(7) {
            vec!["mlp".into()]
        } else {
            vec![]
        },
    }
}

/// Compares record lists showing only the first difference (they are long). The written ones
/// go through JSON text first, as the JSON columns do: serde_json's default float parser may
/// land one ULP off the shortest representation, the same in both formats.
fn assert_same(read: &[Record], written: &[Record]) {
    for (i, (r, w)) in read.iter().zip(written).enumerate() {
        let w: Record = serde_json::from_slice(&w.to_line()).unwrap();
        assert_eq!(r, &w, "record {i}");
    }
    assert_eq!(read.len(), written.len());
}

fn settings(dir: &Path, max_bytes: u64, zstd: bool) -> SinkSettings {
    SinkSettings {
        dir: dir.to_path_buf(),
        rotation: Rotation {
            max_bytes,
            max_age: Duration::from_secs(60),
        },
        zstd,
        format: LogFormat::Parquet,
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
fn records_round_trip_through_a_file_across_row_groups() {
    for zstd in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        let mut writer = RecordFileWriter::new(File::create(&path).unwrap(), zstd).unwrap();
        let records: Vec<Record> = (0..ROW_GROUP_ROWS as u32 + 10).map(record).collect();
        for r in &records {
            writer.push(r).unwrap();
        }
        writer.finish().unwrap();
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        assert_eq!(
            reader.metadata().num_row_groups(),
            2,
            "a full group and the rest"
        );
        assert_same(&read_records(&path).unwrap(), &records);
    }
}

#[test]
fn the_typed_columns_hold_the_combined_answer() {
    use parquet::record::Field;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.parquet");
    let mut writer = RecordFileWriter::new(File::create(&path).unwrap(), false).unwrap();
    let mut no_label = record(1);
    no_label.outputs.retain(|t| t.name != "label");
    writer.push(&record(3)).unwrap();
    writer.push(&no_label).unwrap();
    writer.finish().unwrap();
    let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
    let rows: Vec<_> = reader
        .get_row_iter(None)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let column = |row: usize, name: &str| {
        rows[row]
            .get_column_iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, f)| f.clone())
            .unwrap()
    };
    assert_eq!(column(0, "time"), Field::TimestampMillis(1_700_000_000_003));
    let Field::ListInternal(label) = column(0, "label") else {
        panic!("label is a list");
    };
    assert_eq!(label.elements(), [Field::Long(1), Field::Long(3)]);
    let Field::ListInternal(p) = column(0, "probabilities") else {
        panic!("probabilities is a list");
    };
    assert_eq!(p.elements()[0], Field::Float(0.1 + 3.0 / 1000.0));
    assert_eq!(p.elements().len(), 4);
    assert_eq!(column(1, "label"), Field::Null);
    assert_eq!(column(1, "inputs"), Field::Null);
    assert_eq!(column(1, "key"), Field::Null);
    let Field::Str(members) = column(0, "members") else {
        panic!("members is JSON text");
    };
    let members: serde_json::Value = serde_json::from_str(&members).unwrap();
    assert_eq!(members[0]["output"]["data"][0], json!(0.30000001192092896));
}

#[test]
fn files_are_parts_until_finished_and_rotate_on_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = ParquetSink::new(settings(dir.path(), 64 * 1024, true), 1_700_000_000_000);
    let now = Instant::now();
    sink.write(&record(0), now).unwrap();
    assert_eq!(
        names(dir.path()),
        ["predictions-20231114T221320Z-000001.parquet.part"]
    );
    // About 1 KiB a record: a few files of 64 KiB.
    let records: Vec<Record> = (0..200).map(record).collect();
    for r in &records[1..] {
        sink.write(r, now).unwrap();
    }
    sink.close().unwrap();
    let files = names(dir.path());
    assert!(files.len() >= 2, "{files:?}");
    assert!(files.iter().all(|f| f.ends_with(".parquet")), "{files:?}");
    let read: Vec<Record> = files
        .iter()
        .flat_map(|f| read_records(&dir.path().join(f)).unwrap())
        .collect();
    assert_same(&read, &records);
}

#[test]
fn an_idle_file_is_finished_on_age_and_a_crashed_part_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = ParquetSink::new(settings(dir.path(), 1 << 30, false), 0);
    let start = Instant::now();
    sink.write(&record(7), start).unwrap();
    sink.rotate_if_due(start + Duration::from_secs(59)).unwrap();
    assert!(names(dir.path())[0].ends_with(".part"));
    sink.rotate_if_due(start + Duration::from_secs(60)).unwrap();
    assert_eq!(
        names(dir.path()),
        ["predictions-19700101T000000Z-000001.parquet"]
    );
    // A crash: the part file has rows but no footer.
    sink.write(&record(8), start).unwrap();
    let part = dir.path().join(&names(dir.path())[1]);
    sink.current
        .as_mut()
        .unwrap()
        .writer
        .write_row_group()
        .unwrap();
    std::mem::forget(sink);
    let e = read_records(&part).unwrap_err();
    assert!(e.to_string().contains(&*part.to_string_lossy()), "{e}");
}

#[test]
fn an_existing_name_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(file_name(0, 1)), "theirs").unwrap();
    std::fs::write(
        dir.path().join(format!("{}.part", file_name(0, 2))),
        "theirs",
    )
    .unwrap();
    let mut sink = ParquetSink::new(settings(dir.path(), 1 << 30, false), 0);
    sink.write(&record(1), Instant::now()).unwrap();
    sink.close().unwrap();
    assert_eq!(
        read_records(&dir.path().join(file_name(0, 3))).unwrap(),
        [record(1)]
    );
    assert_eq!(
        std::fs::read(dir.path().join(file_name(0, 1))).unwrap(),
        b"theirs"
    );
}

/// Not a check: the writer thread's time per record, JSON Lines against Parquet, for
/// docs/benchmarks.md. A digits_soft-like record: 64 input floats, two members' and the
/// combined 10 probabilities. `cargo test -p chorus-coordinator --lib writer_cost -- --ignored
/// --nocapture`
#[test]
#[ignore]
fn writer_cost_per_record() {
    use crate::prediction_log::sink::Sink;
    let probs = |k: f32| json!((0..10).map(|c| (c as f32 + k) / 55.0).collect::<Vec<f32>>());
    let record = |i: u32| Record {
        inputs: Some(vec![tensor(
            "input",
            "FP32",
            vec![1, 64],
            json!((0..64).map(|j| ((i + j) % 17) as f32).collect::<Vec<f32>>()),
        )]),
        members: ["logreg", "mlp"]
            .iter()
            .map(|m| MemberRecord {
                model: m.to_string(),
                version: None,
                status: "used".into(),
                output: Some(tensor(
                    "probabilities",
                    "FP32",
                    vec![1, 10],
                    probs(i as f32 / 7.0),
                )),
            })
            .collect(),
        outputs: vec![
            tensor("probabilities", "FP32", vec![1, 10], probs(0.5)),
            tensor("label", "INT64", vec![1], json!([i % 10])),
        ],
        used: vec!["logreg".into(), "mlp".into()],
        failed: vec![],
        late: vec![],
        hedged: vec![],
        ..self::record(i)
    };
    const N: u32 = 50_000;
    let records: Vec<Record> = (0..N).map(record).collect();
    for zstd in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = settings(dir.path(), 64 << 20, zstd);
        let now = Instant::now();
        let start = Instant::now();
        let mut parquet = ParquetSink::new(settings.clone(), 0);
        for r in &records {
            parquet.write(r, now).unwrap();
        }
        parquet.close().unwrap();
        let parquet_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(N);
        let parquet_bytes: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        let dir = tempfile::tempdir().unwrap();
        settings.dir = dir.path().to_path_buf();
        settings.format = LogFormat::Jsonl;
        let start = Instant::now();
        let mut jsonl = Sink::new(settings, 0);
        for r in &records {
            jsonl.write(&r.to_line(), now).unwrap();
        }
        jsonl.close().unwrap();
        let jsonl_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(N);
        let jsonl_bytes: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        println!(
            "zstd {zstd}: jsonl {jsonl_us:.1} µs/record {:.0} B/record; parquet {parquet_us:.1} µs/record {:.0} B/record",
            jsonl_bytes as f64 / f64::from(N),
            parquet_bytes as f64 / f64::from(N)
        );
    }
}
