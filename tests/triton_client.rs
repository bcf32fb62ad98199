//! Triton's own Python clients, unmodified, against a real Chorus cluster: health, metadata,
//! repository index, model configuration, statistics and infer for ensembles and member models,
//! over HTTP (JSON and binary tensors) and gRPC (raw and typed contents, streaming).

mod support;

use std::process::Command;
use support::*;

/// The Python that has `tritonclient` (scripts/install-deps.sh puts it in `.venv`).
fn python() -> std::path::PathBuf {
    if let Ok(python) = std::env::var("CHORUS_TEST_PYTHON") {
        return python.into();
    }
    let venv = repo_root().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run scripts/install-deps.sh (or set CHORUS_TEST_PYTHON to a Python with tritonclient[http,grpc])",
        venv.display()
    );
    venv
}

/// Runs `tests/clients/<script>` with `args` and the expectations file; it must pass and say
/// `done`.
fn run_check(script: &str, args: &[String], done: &str) {
    let output = Command::new(python())
        .arg(repo_root().join("tests/clients").join(script))
        .args(args)
        .arg(repo_root().join("fixtures/digits/expected.json"))
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(done), "{stdout}");
}

#[test]
fn tritonclient_http_works_unmodified() {
    let cluster = Cluster::start();
    run_check(
        "triton_check.py",
        &[cluster.http.addr.to_string()],
        "tritonclient checks passed",
    );
}

#[test]
fn tritonclient_grpc_works_unmodified() {
    let cluster = Cluster::start();
    let output = Command::new(python())
        .arg(repo_root().join("tests/clients/triton_grpc_check.py"))
        .arg(cluster.grpc.to_string())
        .arg(cluster.http.addr.to_string())
        .arg(repo_root().join("fixtures/digits/expected.json"))
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "triton_grpc_check.py failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("tritonclient.grpc checks passed"),
        "{stdout}"
    );
}
