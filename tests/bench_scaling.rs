//! `scripts/bench-scaling.sh`, the scaling table's generator (docs/benchmarks.md), in its quick
//! mode on a small grid: it must build its repository and spec, spawn real clusters, and print
//! one row per cell with answered requests and no errors.

mod support;

use std::process::Command;
use support::{chorus_bin, repo_root};

#[test]
fn the_scaling_script_prints_a_row_per_cell_with_no_errors() {
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().join("scaling");
    let output = Command::new("timeout")
        .arg("300")
        .arg("bash")
        .arg(repo_root().join("scripts/bench-scaling.sh"))
        .arg("--quick")
        .current_dir(repo_root())
        .env("CHORUS", chorus_bin())
        .env("OUT", &out_dir)
        .env("MEMBERS", "1 3")
        .env("WORKERS", "1 2")
        .env("CONCURRENCY", "4")
        .env("RUST_LOG", "warn")
        .output()
        .expect("bash runs the script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the script failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| members"))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    let cells: Vec<(&str, &str)> = rows.iter().map(|r| (r[0], r[1])).collect();
    assert_eq!(
        cells,
        [("1", "1"), ("1", "2"), ("3", "1"), ("3", "2")],
        "{stdout}"
    );
    for row in &rows {
        let requests_per_s: f64 = row[2].parse().unwrap();
        assert!(requests_per_s > 0.0, "no answers in {row:?}");
        assert_eq!(row[5], "0", "errors in {row:?}");
        assert_ne!(row[6], "-", "no coordinator CPU figure in {row:?}");
    }
    assert_eq!(
        std::fs::read_to_string(out_dir.join("table.md")).unwrap(),
        stdout.as_ref()
    );
}
