//! `chorus validate` and the same check in `chorus up`, as a user runs them: the shipped
//! repository and specs are clean; a repository and spec with several problems get every one of
//! them listed (file, field, fix) and a non-zero exit; `chorus up` refuses such a spec before it
//! spawns a process.

mod support;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{chorus, repo_root, run_to_exit};

/// Copies version 1 of a shipped model into `repo/<name>/<version>/model.onnx` for each version.
fn copy_model(repo: &Path, from: &str, name: &str, versions: &[u32]) {
    for v in versions {
        let dir = repo.join(name).join(v.to_string());
        fs::create_dir_all(&dir).unwrap();
        fs::copy(
            repo_root().join("models").join(from).join("1/model.onnx"),
            dir.join("model.onnx"),
        )
        .unwrap();
    }
}

/// A repository with two good models (one with two versions under the default policy), a model
/// whose ONNX file is not ONNX, and a model carrying only a Triton config.pbtxt.
fn bad_repository(repo: &Path) {
    copy_model(repo, "logreg", "good_a", &[1]);
    copy_model(repo, "mlp", "good_b", &[1, 2]);
    fs::create_dir_all(repo.join("broken/1")).unwrap();
    fs::write(
        repo.join("broken/1/model.onnx"),
        b"this is not an onnx file",
    )
    .unwrap();
    copy_model(repo, "random_forest", "triton_style", &[1]);
    fs::write(
        repo.join("triton_style/config.pbtxt"),
        "max_batch_size: 8\ninstance_group [{ count: 2 }]\n",
    )
    .unwrap();
}

const BAD_SPEC: &str = r#"
version = 1

[[ensemble]]
name = "unknown_member"
combiner = "soft_vote"
deadline_ms = 1000
min_members = 1
[[ensemble.member]]
model = "good_a"
[[ensemble.member]]
model = "no_such_model"

[[ensemble]]
name = "missing_pin"
combiner = "soft_vote"
deadline_ms = 1000
min_members = 1
[[ensemble.member]]
model = "good_a"
version = "7"

[[ensemble]]
name = "unloaded_pin"
combiner = "soft_vote"
deadline_ms = 1000
min_members = 1
[[ensemble.member]]
model = "good_b"
version = "1"

[[ensemble]]
name = "uses_broken"
combiner = "soft_vote"
deadline_ms = 1000
min_members = 1
[[ensemble.member]]
model = "broken"
[[ensemble.member]]
model = "good_a"

[[ensemble]]
name = "fusion_without_meta"
combiner = "fusion"
deadline_ms = 1000
min_members = 1
meta_model = "no_such_meta"
[[ensemble.member]]
model = "good_a"

[[ensemble]]
name = "bad_output"
combiner = "average"
member_output = "no_such_output"
deadline_ms = 1000
min_members = 1
[[ensemble.member]]
model = "good_a"
[[ensemble.member]]
model = "good_b"
"#;

fn lines_with<'a>(stdout: &'a str, needle: &str) -> Vec<&'a str> {
    stdout.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn the_shipped_repository_and_specs_are_clean() {
    let (ok, stdout, stderr) = chorus(&["validate"]);
    assert!(ok, "chorus validate failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("0 errors") && stdout.contains("ensembles"),
        "{stdout}"
    );
    // The same files named by flags, with no cluster file to read.
    let (ok, stdout, stderr) = chorus(&[
        "validate",
        "--config=/nonexistent/cluster.toml",
        "--model-repository=models",
        "--ensembles=config/ensembles.toml",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
}

#[test]
fn every_problem_is_listed_with_its_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    bad_repository(&repo);
    let spec = tmp.path().join("ensembles.toml");
    fs::write(&spec, BAD_SPEC).unwrap();
    let (ok, stdout, stderr) = chorus(&[
        "validate",
        &format!("--model-repository={}", repo.display()),
        &format!("--ensembles={}", spec.display()),
    ]);
    println!("{stdout}\n{stderr}");
    assert!(!ok, "validation must fail");
    let spec_file = spec.display().to_string();
    let expect = |needles: &[&str]| {
        let found = stdout
            .lines()
            .any(|l| l.starts_with("error: ") && needles.iter().all(|n| l.contains(n)));
        assert!(found, "no error line with {needles:?} in:\n{stdout}");
    };
    // Unknown model: the spec file, the member's field, what the repository has.
    expect(&[
        &spec_file,
        "ensemble 'unknown_member' member[1].model",
        "no_such_model",
        "good_a",
    ]);
    // A pin to a version with no directory, and one the default policy does not load.
    expect(&[
        &spec_file,
        "ensemble 'missing_pin' member[0].version",
        "no version 7",
    ]);
    expect(&[
        &spec_file,
        "ensemble 'unloaded_pin' member[0].version",
        "version_policy",
        "good_b/config.toml",
    ]);
    // The broken file, named by path, with the field and a fix.
    expect(&["broken/1/model.onnx", "model.onnx", "re-export"]);
    // The meta-model of a fusion ensemble.
    expect(&[
        &spec_file,
        "ensemble 'fusion_without_meta'.meta_model",
        "no_such_meta",
    ]);
    // The coordinator's own check: a member output that does not exist.
    expect(&[&spec_file, "ensemble 'bad_output'", "no_such_output"]);
    // A Triton config is a warning, naming the file and where the settings go.
    let warnings = lines_with(&stdout, "warning: ");
    assert!(
        warnings.len() == 1
            && warnings[0].contains("triton_style/config.pbtxt")
            && warnings[0].contains("config.toml"),
        "{warnings:?}"
    );
    // One line per problem: the broken model is reported once, not again for its ensemble.
    assert_eq!(lines_with(&stdout, "broken/1").len(), 1, "{stdout}");
    assert!(lines_with(&stdout, "uses_broken").is_empty(), "{stdout}");
    // bad_output: one line per member without the output.
    assert_eq!(lines_with(&stdout, "no_such_output").len(), 2, "{stdout}");
    assert!(stdout.contains("7 errors, 1 warnings"), "{stdout}");
}

#[test]
fn warnings_alone_pass_and_spec_errors_are_reported_with_the_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    copy_model(&repo, "logreg", "solo", &[1]);
    fs::write(repo.join("solo/config.pbtxt"), "max_batch_size: 8\n").unwrap();
    let spec = tmp.path().join("ensembles.toml");
    fs::write(&spec, "version = 1\n").unwrap();
    let repo_flag = format!("--model-repository={}", repo.display());
    let spec_flag = format!("--ensembles={}", spec.display());
    let (ok, stdout, stderr) = chorus(&["validate", &repo_flag, &spec_flag]);
    assert!(ok, "a warning is not an error:\n{stdout}\n{stderr}");
    assert!(stdout.contains("0 errors, 1 warnings"), "{stdout}");

    // A spec the coordinator would refuse, next to a bad config.toml: both reported.
    fs::write(
        &spec,
        "version = 1\n[[ensemble]]\nname = \"x\"\ncolour = 1\n",
    )
    .unwrap();
    fs::write(
        repo.join("solo/config.toml"),
        "version_policy = { latest = 0 }\n",
    )
    .unwrap();
    let (ok, stdout, _) = chorus(&["validate", &repo_flag, &spec_flag]);
    assert!(!ok);
    assert!(
        lines_with(&stdout, "error: ")
            .iter()
            .any(|l| l.contains("solo/config.toml") && l.contains("latest")),
        "{stdout}"
    );
    assert!(
        lines_with(&stdout, "error: ")
            .iter()
            .any(|l| l.contains("ensembles.toml") && l.contains("colour")),
        "{stdout}"
    );
}

#[test]
fn up_refuses_a_bad_spec_before_spawning_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    bad_repository(&repo);
    let spec = tmp.path().join("ensembles.toml");
    fs::write(&spec, BAD_SPEC).unwrap();
    let cluster = tmp.path().join("cluster.toml");
    fs::write(
        &cluster,
        format!(
            "version = 1\nhttp_addr = \"127.0.0.1:0\"\nmodel_repository = \"{}\"\nensembles = \"{}\"\nworkers = 2\n",
            repo.display(),
            spec.display()
        ),
    )
    .unwrap();
    let (status, stderr) = run_to_exit(
        &[
            "up".into(),
            format!("--config={}", cluster.display()),
            "--grpc-addr=127.0.0.1:0".into(),
            "--admin-addr=127.0.0.1:0".into(),
        ],
        Duration::from_secs(60),
    );
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("not starting"), "{stderr}");
    assert!(
        stderr.contains("ensemble 'unknown_member' member[1].model"),
        "{stderr}"
    );
    // No worker or coordinator was started: no process anywhere names the temporary repository.
    let repo_text = repo.display().to_string();
    let leftovers: Vec<String> = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|cmd| cmd.contains(&repo_text) && !cmd.contains("cluster.toml"))
        .collect();
    assert!(leftovers.is_empty(), "processes left behind: {leftovers:?}");
    assert!(
        !stderr.contains("worker-1"),
        "a worker was spawned:\n{stderr}"
    );
}

/// Starts `chorus <args>` from the repository root with its stderr collected as it comes
/// (RUST_LOG=warn); stdout is dropped. Killed when the `Proc` drops.
fn spawn_collecting_stderr(args: &[String]) -> (support::Proc, Arc<Mutex<String>>) {
    let mut child = Command::new(support::chorus_bin())
        .args(args)
        .current_dir(repo_root())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stderr.read(&mut buf) {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let proc = support::Proc {
        name: args[0].clone(),
        child,
        ready_line: String::new(),
    };
    (proc, text)
}

#[test]
fn a_worker_warns_about_a_triton_config_it_does_not_read() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    copy_model(&repo, "logreg", "from_triton", &[1]);
    fs::write(
        repo.join("from_triton/config.pbtxt"),
        "max_batch_size: 8
",
    )
    .unwrap();
    let (_worker, stderr) = spawn_collecting_stderr(&[
        "worker".into(),
        "--listen=127.0.0.1:0".into(),
        format!("--model-repository={}", repo.display()),
    ]);
    support::wait_until(
        "the worker's config.pbtxt warning",
        Duration::from_secs(30),
        || {
            let text = stderr.lock().unwrap();
            text.lines()
                .find(|l| l.contains("config.pbtxt is not read"))
                .map(str::to_string)
        },
    );
    let text = stderr.lock().unwrap().clone();
    assert!(
        text.contains("from_triton/config.pbtxt") && text.contains("config.toml"),
        "{text}"
    );
}

#[test]
fn a_coordinator_warns_once_about_a_spec_its_workers_models_do_not_fit() {
    let worker = support::start_worker("w-validate", &["logreg", "mlp"]);
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("ensembles.toml");
    fs::write(
        &spec,
        "version = 1\n[[ensemble]]\nname = \"misfit\"\ncombiner = \"average\"\nmember_output = \"no_such_output\"\ndeadline_ms = 1000\nmin_members = 1\n[[ensemble.member]]\nmodel = \"logreg\"\n[[ensemble.member]]\nmodel = \"mlp\"\n",
    )
    .unwrap();
    let (_coordinator, text) = spawn_collecting_stderr(&[
        "coordinator".to_string(),
        "--http-addr=127.0.0.1:0".into(),
        "--grpc-addr=127.0.0.1:0".into(),
        "--admin-addr=127.0.0.1:0".into(),
        format!("--ensembles={}", spec.display()),
        format!("--worker={}", worker.field("rpc_addr")),
    ]);
    let warned = |text: &str| {
        text.lines()
            .filter(|l| l.contains("ensemble cannot be served") && l.contains("no_such_output"))
            .count()
    };
    support::wait_until(
        "the coordinator's warning about the misfit ensemble",
        Duration::from_secs(30),
        || (warned(&text.lock().unwrap()) >= 2).then_some(()),
    );
    // Several checks later (one a second), still one line per member: warned once, not per tick.
    std::thread::sleep(Duration::from_secs(3));
    let all = text.lock().unwrap().clone();
    assert_eq!(warned(&all), 2, "{all}");
    assert!(all.contains("misfit"), "{all}");
}
