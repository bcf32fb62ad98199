//! Triton's own Python HTTP client, unmodified, against a real Chorus cluster: health, metadata,
//! repository index and infer (JSON and binary tensors) for ensembles and member models.

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
        "{} is missing: run scripts/install-deps.sh (or set CHORUS_TEST_PYTHON to a Python with tritonclient[http])",
        venv.display()
    );
    venv
}

#[test]
fn tritonclient_http_works_unmodified() {
    let cluster = Cluster::start();
    let output = Command::new(python())
        .arg(repo_root().join("tests/clients/triton_check.py"))
        .arg(cluster.http.addr.to_string())
        .arg(repo_root().join("fixtures/digits/expected.json"))
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "triton_check.py failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("tritonclient checks passed"), "{stdout}");
}
