//! The prediction log with real processes (docs/data.md): every answered ensemble request,
//! over REST and gRPC, is in the files exactly once with its members' outputs, after a SIGTERM;
//! `log_sample_rate = 0` logs nothing and `log_inputs = false` keeps inputs out; `chorus logs`
//! reads the files back; a directory that cannot be written drops and counts records while
//! every request is still answered; a path that is not a directory stops start-up. Every record
//! has an `input_hash`, the same for the same input (over REST or gRPC), inputs kept or not.

mod support;

use chorus_coordinator::access::digest_hex;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::grpc::{Grpc, raw_request};
use support::{
    Expected, Http, Proc, admin_addr, chorus, grpc_addr, run_to_exit, spawn_coordinator,
    start_worker, wait_until,
};

const KEY: &str = "prediction-log-secret-0123456789";

/// `pair` is logged whole, `quiet` not at all, `private` without its inputs.
const SPECS: &str = r#"
version = 1

[[ensemble]]
name = "pair"
combiner = "soft_vote"
deadline_ms = 5000
[[ensemble.member]]
model = "logreg"
[[ensemble.member]]
model = "mlp"

[[ensemble]]
name = "quiet"
combiner = "soft_vote"
deadline_ms = 5000
log_sample_rate = 0
[[ensemble.member]]
model = "logreg"
[[ensemble.member]]
model = "mlp"

[[ensemble]]
name = "private"
combiner = "soft_vote"
deadline_ms = 5000
log_inputs = false
[[ensemble.member]]
model = "logreg"
[[ensemble.member]]
model = "mlp"
"#;

struct Logged {
    _workers: Vec<Proc>,
    coordinator: Proc,
    http: Http,
    admin: Http,
}

/// Two workers (logreg, mlp) and a coordinator logging to `log` with `extra` flags, with the
/// specs above and one API key (`analyst`).
fn start(scratch: &Path, log: &Path, extra: &[&str]) -> Logged {
    let specs = scratch.join("ensembles.toml");
    std::fs::write(&specs, SPECS).unwrap();
    let keys = scratch.join("keys.toml");
    let key_file = format!(
        "[[key]]\nid = \"analyst\"\nsha256 = \"{}\"\n",
        digest_hex(KEY)
    );
    std::fs::write(&keys, key_file).unwrap();
    let workers = vec![
        start_worker("w-logreg", &["logreg"]),
        start_worker("w-mlp", &["mlp"]),
    ];
    let addrs: Vec<String> = workers.iter().map(|w| w.field("rpc_addr")).collect();
    let mut args: Vec<String> = vec![
        format!("--ensembles={}", specs.display()),
        format!("--api-keys={}", keys.display()),
        format!("--worker={}", addrs.join(",")),
        "--ping-interval-ms=200".into(),
        format!("--prediction-log={}", log.display()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let coordinator = spawn_coordinator(&args);
    let http = Http::new(coordinator.field("http_addr").parse().unwrap());
    let admin = Http::new(admin_addr(&coordinator));
    wait_until("readiness", Duration::from_secs(60), || {
        (http.get("/v2/health/ready").0 == 200).then_some(())
    });
    Logged {
        _workers: workers,
        coordinator,
        http,
        admin,
    }
}

/// One REST request for `model` with the client id `id`; panics unless it is answered.
fn rest(http: &Http, model: &str, id: &str, row: &[f32]) {
    let body = json!({
        "id": id,
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}],
    });
    let reply = http.post(
        &format!("/v2/models/{model}/infer"),
        &[
            ("content-type", "application/json".to_string()),
            ("authorization", format!("Bearer {KEY}")),
        ],
        body.to_string().into_bytes(),
    );
    reply.expect_status(200);
    assert_eq!(reply.json()["id"], id);
}

fn grpc(client: &Grpc, model: &str, id: &str, row: &[f32]) {
    let mut message = raw_request(model, &[row.to_vec()]);
    message.id = id.to_string();
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    let answer = client.infer_with(request).expect("gRPC answer");
    assert_eq!(answer.id, id);
}

/// Every record in `dir`, by file (plain and zstd), oldest first.
fn records(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort_by_key(|p| p.to_string_lossy().trim_end_matches(".zst").to_string());
    let mut records = Vec::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("predictions-")
                && (name.ends_with(".jsonl") || name.ends_with(".jsonl.zst")),
            "unexpected file {name} in the log directory"
        );
        let bytes = std::fs::read(&path).unwrap();
        let text = if name.ends_with(".zst") {
            zstd::decode_all(&bytes[..]).unwrap()
        } else {
            bytes
        };
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{name}: a cut line"
        );
        records.extend(
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap()),
        );
    }
    records
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// A counter's value on the admin port's `/metrics` (0 when absent).
fn counter(admin: &Http, series: &str) -> f64 {
    let (status, text) = admin.get("/metrics");
    assert_eq!(status, 200);
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn every_answer_is_logged_once_with_its_members_and_survives_sigterm() {
    let scratch = tempfile::tempdir().unwrap();
    // Missing: the coordinator creates it. Small files, so that some rotate and compress.
    let dir = scratch.path().join("log/predictions");
    let mut cluster = start(
        scratch.path(),
        &dir,
        &["--prediction-log-max-bytes=20000", "--prediction-log-zstd"],
    );
    let rows = Expected::load().rows();
    let client = Grpc::connect(grpc_addr(&cluster.coordinator));
    let mut expected_inputs = BTreeMap::new();
    for (i, row) in rows.iter().take(20).enumerate() {
        let id = format!("rest-{i}");
        rest(&cluster.http, "pair", &id, row);
        expected_inputs.insert(id, row.clone());
    }
    for (i, row) in rows.iter().skip(20).take(10).enumerate() {
        let id = format!("grpc-{i}");
        grpc(&client, "pair", &id, row);
        expected_inputs.insert(id, row.clone());
    }
    for (i, row) in rows.iter().take(5).enumerate() {
        rest(&cluster.http, "quiet", &format!("quiet-{i}"), row);
    }
    for (i, row) in rows.iter().take(3).enumerate() {
        rest(&cluster.http, "private", &format!("private-{i}"), row);
    }
    // Straight to SIGTERM: whatever is still queued must be written before the process exits.
    cluster.coordinator.signal(libc::SIGTERM);
    let status = cluster.coordinator.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "coordinator exited with {status}");

    let records = records(&dir);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for record in &records {
        *seen
            .entry(record["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(seen.values().all(|&n| n == 1), "logged twice: {seen:?}");
    assert_eq!(records.len(), 33, "{seen:?}");
    assert!(
        !seen.keys().any(|id| id.starts_with("quiet-")),
        "log_sample_rate = 0"
    );
    let compressed = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .to_string_lossy()
                .ends_with(".jsonl.zst")
        })
        .count();
    assert!(compressed >= 1, "20 KB files rotate and compress");

    for record in &records {
        let id = record["id"].as_str().unwrap();
        assert_eq!(record["key"], "analyst", "{id}");
        assert!(record["unix_ms"].as_i64().unwrap() > 1_600_000_000_000);
        assert!(record["time"].as_str().unwrap().ends_with('Z'));
        assert!(record["latency_us"].as_u64().unwrap() > 0);
        assert_eq!(record["used"], json!(["logreg", "mlp"]), "{id}");
        // Each member's own probabilities are kept, and they are what was combined: a soft
        // vote of equal weights is their mean.
        let members = record["members"].as_array().unwrap();
        assert_eq!(members.len(), 2);
        let mut mean = vec![0.0; 10];
        for member in members {
            assert_eq!(member["status"], "used");
            assert_eq!(member["output"]["name"], "probabilities");
            assert_eq!(member["output"]["shape"], json!([1, 10]));
            for (m, p) in mean.iter_mut().zip(floats(&member["output"]["data"])) {
                *m += p / 2.0;
            }
        }
        let combined = record["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "probabilities")
            .expect("the combined probabilities");
        for (m, c) in mean.iter().zip(floats(&combined["data"])) {
            assert!((m - c).abs() < 1e-5, "{id}: mean {mean:?} vs {combined}");
        }
        if id.starts_with("private-") {
            assert_eq!(record["ensemble"], "private");
            assert!(
                record.get("inputs").is_none(),
                "log_inputs = false: {record}"
            );
        } else {
            assert_eq!(record["ensemble"], "pair");
            let protocol = if id.starts_with("rest-") {
                "http"
            } else {
                "grpc"
            };
            assert_eq!(record["protocol"], protocol);
            let input = &record["inputs"][0];
            assert_eq!(input["datatype"], "FP32");
            assert_eq!(input["shape"], json!([1, 64]));
            let sent: Vec<f64> = expected_inputs[id].iter().map(|&v| f64::from(v)).collect();
            assert_eq!(floats(&input["data"]), sent, "{id}");
        }
    }

    // `chorus logs` reads the same files back.
    let log = dir.to_string_lossy().into_owned();
    let (ok, out, err) = chorus(&["logs", "tail", &log, "-n", "3"]);
    assert!(ok, "{err}");
    let tail: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = tail.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["private-0", "private-1", "private-2"]);
    let (ok, out, err) = chorus(&["logs", "tail", &log, "-n", "100"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 33);
    assert_eq!(
        serde_json::from_str::<Value>(out.lines().next().unwrap()).unwrap()["id"],
        "rest-0",
        "oldest first, across compressed and plain files"
    );

    let exported = scratch.path().join("pair.jsonl");
    let (ok, _, err) = chorus(&[
        "logs",
        "export",
        &log,
        "--ensemble",
        "pair",
        "--since",
        "2000-01-01T00:00:00Z",
        "--output",
        &exported.to_string_lossy(),
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("exported 30 records"), "{err}");
    let text = std::fs::read_to_string(&exported).unwrap();
    assert_eq!(text.lines().count(), 30);
    assert!(text.lines().all(|l| l.contains("\"ensemble\":\"pair\"")));
    let last = records.last().unwrap()["unix_ms"].as_i64().unwrap();
    let (ok, out, err) = chorus(&["logs", "export", &log, "--since", "2999-01-01T00:00:00Z"]);
    assert!(ok && out.is_empty(), "{err}");
    let (ok, out, err) = chorus(&[
        "logs",
        "export",
        &log,
        "--until",
        "2000-01-01T00:00:00+01:00",
    ]);
    assert!(ok && out.is_empty(), "{err} (last record at {last})");
    let (ok, _, err) = chorus(&["logs", "export", &log, "--since", "yesterday"]);
    assert!(
        !ok && err.contains("--since") && err.contains("RFC 3339"),
        "{err}"
    );
}

#[test]
fn an_unwritable_log_drops_and_counts_while_every_request_is_answered() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("log");
    // One record per file: every record opens a file, so a broken directory shows at once.
    let cluster = start(scratch.path(), &dir, &["--prediction-log-max-bytes=1"]);
    let rows = Expected::load().rows();
    for (i, row) in rows.iter().take(3).enumerate() {
        rest(&cluster.http, "pair", &format!("before-{i}"), row);
    }
    let written = "chorus_prediction_log_written_total";
    wait_until("3 records written", Duration::from_secs(10), || {
        (counter(&cluster.admin, written) == 3.0).then_some(())
    });
    // A file where the directory was: opening the next file fails even for root, whom
    // permissions do not stop.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, "not a directory").unwrap();
    for (i, row) in rows.iter().take(10).enumerate() {
        rest(&cluster.http, "pair", &format!("after-{i}"), row);
    }
    let dropped = "chorus_prediction_log_dropped_total{reason=\"write_error\"}";
    wait_until("10 records dropped", Duration::from_secs(10), || {
        (counter(&cluster.admin, dropped) == 10.0).then_some(())
    });
    assert_eq!(counter(&cluster.admin, written), 3.0);
    assert!(counter(&cluster.admin, "chorus_prediction_log_io_errors_total") >= 10.0);
    assert_eq!(
        counter(
            &cluster.admin,
            "chorus_prediction_log_dropped_total{reason=\"queue_full\"}"
        ),
        0.0
    );
    // The directory comes back: the log heals without a restart.
    std::fs::remove_file(&dir).unwrap();
    rest(&cluster.http, "pair", "healed", &rows[0]);
    wait_until("the log to heal", Duration::from_secs(10), || {
        (counter(&cluster.admin, written) == 4.0).then_some(())
    });
}

#[test]
fn a_log_path_that_is_not_a_writable_directory_stops_start_up() {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let (status, stderr) = run_to_exit(
        &[
            "coordinator".into(),
            "--http-addr=127.0.0.1:0".into(),
            "--grpc-addr=127.0.0.1:0".into(),
            "--admin-addr=127.0.0.1:0".into(),
            "--worker=127.0.0.1:1".into(),
            format!("--prediction-log={}", file.display()),
        ],
        Duration::from_secs(30),
    );
    assert!(!status.success());
    assert!(
        stderr.contains("--prediction-log") && stderr.contains("not a directory"),
        "{stderr}"
    );
}

/// The Parquet log's rows in `dir`, file by file, read with the `parquet` crate's row reader
/// (not Chorus's): each row as a JSON object of its columns.
fn parquet_rows(dir: &Path) -> Vec<Value> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut rows = Vec::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("predictions-") && name.ends_with(".parquet"),
            "unexpected file {name}: a graceful stop leaves no .part file"
        );
        let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap())
            .unwrap_or_else(|e| panic!("{name} is not a finished Parquet file: {e}"));
        for row in reader.get_row_iter(None).unwrap() {
            let row = row.unwrap();
            let columns = row
                .get_column_iter()
                .map(|(name, field)| (name.clone(), field_json(field)));
            rows.push(Value::Object(columns.collect()));
        }
    }
    rows
}

/// A Parquet value as JSON, for the column types of the log's schema.
fn field_json(field: &parquet::record::Field) -> Value {
    use parquet::record::Field;
    match field {
        Field::Null => Value::Null,
        Field::Str(s) => json!(s),
        Field::Long(n) | Field::TimestampMillis(n) => json!(n),
        Field::Float(f) => json!(f64::from(*f)),
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(field_json).collect()),
        other => panic!("a column type the log does not write: {other:?}"),
    }
}

#[test]
fn the_parquet_log_holds_every_answer_once_with_its_members_after_sigterm() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("parquet-log");
    // About 1.5 KB a record: files of 30 KB rotate (and become readable) while requests run.
    let mut cluster = start(
        scratch.path(),
        &dir,
        &[
            "--prediction-log-format=parquet",
            "--prediction-log-max-bytes=30000",
            "--prediction-log-zstd",
        ],
    );
    let rows = Expected::load().rows();
    let client = Grpc::connect(grpc_addr(&cluster.coordinator));
    let mut sent = BTreeMap::new();
    for (i, row) in rows.iter().take(40).enumerate() {
        let id = format!("rest-{i}");
        rest(&cluster.http, "pair", &id, row);
        sent.insert(id, row.clone());
    }
    for (i, row) in rows.iter().skip(40).take(10).enumerate() {
        let id = format!("grpc-{i}");
        grpc(&client, "pair", &id, row);
        sent.insert(id, row.clone());
    }
    for (i, row) in rows.iter().take(5).enumerate() {
        rest(&cluster.http, "quiet", &format!("quiet-{i}"), row);
        let id = format!("private-{i}");
        rest(&cluster.http, "private", &id, row);
        sent.insert(id, row.clone());
    }
    // A rotated file is finished, hence readable, while the coordinator still runs.
    let finished = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .to_string_lossy()
                    .ends_with(".parquet")
            })
            .count()
    };
    wait_until("a rotated Parquet file", Duration::from_secs(10), || {
        (finished(&dir) >= 1).then_some(())
    });
    cluster.coordinator.signal(libc::SIGTERM);
    let status = cluster.coordinator.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "coordinator exited with {status}");
    assert!(
        finished(&dir) >= 2,
        "rotation and the graceful stop each finish a file"
    );

    let logged = parquet_rows(&dir);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for row in &logged {
        *seen
            .entry(row["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(seen.values().all(|&n| n == 1), "logged twice: {seen:?}");
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        sent.keys().collect::<Vec<_>>(),
        "every answered request of a logged ensemble, and nothing else"
    );
    for row in &logged {
        let id = row["id"].as_str().unwrap();
        assert_eq!(row["key"], "analyst", "{id}");
        assert!(row["latency_us"].as_i64().unwrap() > 0, "{id}");
        assert!(row["unix_ms"].as_i64().unwrap() > 1_600_000_000_000, "{id}");
        assert_eq!(row["used"], json!(["logreg", "mlp"]), "{id}");
        assert_eq!(row["failed"], json!([]), "{id}");
        assert_eq!(row["input_hash"].as_str().map(str::len), Some(32), "{id}");
        // The members' outputs (a JSON text column) and the combined answer (typed list
        // columns): a soft vote of equal weights is the members' mean, its label the argmax.
        let members: Value = serde_json::from_str(row["members"].as_str().unwrap()).unwrap();
        let members = members.as_array().unwrap();
        assert_eq!(members.len(), 2, "{id}");
        let mut mean = vec![0.0; 10];
        for member in members {
            assert_eq!(member["status"], "used", "{id}");
            assert_eq!(member["output"]["shape"], json!([1, 10]), "{id}");
            for (m, p) in mean.iter_mut().zip(floats(&member["output"]["data"])) {
                *m += p / 2.0;
            }
        }
        let combined = floats(&row["probabilities"]);
        assert_eq!(combined.len(), 10, "{id}");
        for (m, c) in mean.iter().zip(&combined) {
            assert!((m - c).abs() < 1e-5, "{id}: mean {mean:?} vs {combined:?}");
        }
        let argmax = (0..10)
            .max_by(|&a, &b| combined[a].total_cmp(&combined[b]))
            .unwrap();
        assert_eq!(row["label"], json!([argmax]), "{id}");
        if id.starts_with("private-") {
            assert_eq!(row["ensemble"], "private");
            assert_eq!(row["inputs"], Value::Null, "log_inputs = false");
        } else {
            assert_eq!(row["ensemble"], "pair");
            let inputs: Value = serde_json::from_str(row["inputs"].as_str().unwrap()).unwrap();
            let expected: Vec<f64> = sent[id].iter().map(|&v| f64::from(v)).collect();
            assert_eq!(floats(&inputs[0]["data"]), expected, "{id}");
        }
    }

    // pyarrow, when the environment has it, reads the directory as one table.
    let python = support::repo_root().join(".venv/bin/python");
    let has_pyarrow = std::process::Command::new(&python)
        .args(["-c", "import pyarrow.parquet"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has_pyarrow {
        let script = "import sys, json, pyarrow.parquet as pq\n\
            t = pq.read_table(sys.argv[1])\n\
            print(json.dumps({'rows': t.num_rows, 'ids': sorted(t.column('id').to_pylist()), \
            'time': str(t.schema.field('time').type), 'probabilities': str(t.schema.field('probabilities').type)}))";
        let out = std::process::Command::new(&python)
            .args(["-c", script, &dir.to_string_lossy()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(read["rows"], sent.len());
        assert_eq!(read["ids"], json!(sent.keys().collect::<Vec<_>>()));
        assert_eq!(read["time"], "timestamp[ms, tz=UTC]");
        assert_eq!(read["probabilities"], "list<element: float not null>");
    } else {
        eprintln!("pyarrow is not in .venv: the Python read of the Parquet log is skipped");
    }

    // `chorus logs` reads Parquet files back as JSON records, and exports either format.
    let log = dir.to_string_lossy().into_owned();
    let (ok, out, err) = chorus(&["logs", "tail", &log, "-n", "2"]);
    assert!(ok, "{err}");
    let ids: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, ["private-3", "private-4"], "the newest, oldest first");
    let exported = scratch.path().join("pair.parquet");
    let (ok, _, err) = chorus(&[
        "logs",
        "export",
        &log,
        "--ensemble",
        "pair",
        "--format",
        "parquet",
        "--output",
        &exported.to_string_lossy(),
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("exported 50 records"), "{err}");
    let again = scratch.path().join("again");
    std::fs::create_dir(&again).unwrap();
    std::fs::copy(&exported, again.join("predictions-export-000001.parquet")).unwrap();
    assert_eq!(parquet_rows(&again).len(), 50);
    let (ok, out, err) = chorus(&["logs", "export", &again.to_string_lossy()]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 50);
    assert!(out.lines().all(|l| l.contains("\"ensemble\":\"pair\"")));
    let (ok, _, err) = chorus(&["logs", "export", &log, "--format", "parquet"]);
    assert!(!ok && err.contains("--output"), "{err}");

    // An export that fails part-way (a damaged compressed file after a good one) leaves no
    // file at --output, and no temporary one beside it.
    std::fs::write(
        again.join("predictions-export-000002.jsonl.zst"),
        b"not zstd at all",
    )
    .unwrap();
    let failed = scratch.path().join("failed.parquet");
    let (ok, _, err) = chorus(&[
        "logs",
        "export",
        &again.to_string_lossy(),
        "--format",
        "parquet",
        "--output",
        &failed.to_string_lossy(),
    ]);
    assert!(!ok && err.contains("predictions-export-000002"), "{err}");
    assert!(!failed.exists(), "no partial export at --output");
    let leftovers: Vec<_> = std::fs::read_dir(scratch.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(".chorus-export-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let mode = std::fs::metadata(&exported).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "a finished export is an ordinary file");
}

/// `input_hash` is on every record, kept inputs or not: the same input sent over REST and over
/// gRPC hashes the same (the decoded tensor is hashed, not the wire form), to another ensemble
/// too, and a different input hashes differently.
#[test]
fn every_record_has_an_input_hash_even_without_its_inputs() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("log");
    let mut cluster = start(scratch.path(), &dir, &[]);
    let rows = Expected::load().rows();
    let client = Grpc::connect(grpc_addr(&cluster.coordinator));
    rest(&cluster.http, "private", "same-rest", &rows[0]);
    grpc(&client, "private", "same-grpc", &rows[0]);
    rest(&cluster.http, "pair", "same-kept", &rows[0]);
    rest(&cluster.http, "private", "other", &rows[1]);
    cluster.coordinator.signal(libc::SIGTERM);
    assert!(
        cluster
            .coordinator
            .wait_exit(Duration::from_secs(30))
            .success()
    );

    let hashes: BTreeMap<String, String> = records(&dir)
        .iter()
        .map(|record| {
            let id = record["id"].as_str().unwrap().to_string();
            let hash = record["input_hash"]
                .as_str()
                .unwrap_or_else(|| panic!("{id}: no input_hash in {record}"));
            assert!(
                hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
                "{id}: {hash}"
            );
            // Inputs are kept only by `pair`; the hash is there either way.
            assert_eq!(
                record.get("inputs").is_some(),
                id == "same-kept",
                "{record}"
            );
            (id, hash.to_string())
        })
        .collect();
    assert_eq!(hashes.len(), 4, "{hashes:?}");
    assert_eq!(hashes["same-rest"], hashes["same-grpc"]);
    assert_eq!(hashes["same-rest"], hashes["same-kept"]);
    assert_ne!(hashes["same-rest"], hashes["other"]);
}
