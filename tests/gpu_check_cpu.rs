//! `scripts/gpu-check.sh --execution-provider cpu` end to end, so that the CUDA check cannot rot
//! on machines without a GPU: the script starts its own reference and under-test clusters from
//! this build's `chorus`, compares every sample ensemble's and model's answers (with the
//! generated GPU-sized `gpu_mlp` alone and in `gpu_soft`), and benchmarks.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// The script's own budget is under 3 minutes on 2 cores (`gpu_mlp` adds about 15 s: generation,
/// two loads, 16 comparison requests and a one-second benchmark pair); the test waits longer.
const LIMIT: Duration = Duration::from_secs(240);

#[test]
fn gpu_check_runs_green_on_cpu() {
    let out = tempfile::tempdir().unwrap();
    let stdout_path = out.path().join("stdout");
    let mut child = Command::new("bash")
        .arg(repo_root().join("scripts/gpu-check.sh"))
        .args([
            "--execution-provider=cpu",
            "--duration",
            "500ms",
            "--warmup",
            "200ms",
            "--concurrency",
            "2",
            "--bench-models",
            "digits_soft,digits_soft_int8,mlp_fp16,gpu_mlp",
        ])
        .env("CHORUS_BIN", chorus_bin())
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("bash starts");
    let give_up = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > give_up {
            // SIGTERM: the script's trap stops the clusters it started.
            child_signal(&child, libc::SIGTERM);
            let _ = child.wait();
            panic!("gpu-check.sh did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap();
    assert!(
        status.success(),
        "gpu-check.sh failed ({status}):\n{stdout}"
    );

    // Every sample ensemble and every served model was compared, and within tolerance.
    let ensembles = std::fs::read_to_string(repo_root().join("config/ensembles.toml")).unwrap();
    let names = ensembles
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .map(|n| n.trim_end_matches('"').to_string())
        .chain(["logreg_int8", "mlp_int8_dyn", "mlp_fp16", "svc"].map(String::from))
        // The GPU-sized model and the ensemble the script adds for it.
        .chain(["gpu_mlp", "gpu_soft"].map(String::from));
    for name in names {
        let row = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("no comparison row for {name}:\n{stdout}"));
        assert!(row.ends_with(" ok"), "{row}");
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
    // The throughput table: a row per benchmarked target and rows value (1 and 32).
    let table: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| `")).collect();
    assert_eq!(table.len(), 8, "{stdout}");
    assert!(
        table
            .iter()
            .any(|l| l.starts_with("| `digits_soft_int8` | 32 |")),
        "{stdout}"
    );
    assert!(
        table.iter().any(|l| l.starts_with("| `gpu_mlp` | 32 |")),
        "{stdout}"
    );
}

fn child_signal(child: &std::process::Child, signal: i32) {
    // SAFETY: kill(2) on the child this test spawned and has not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}
