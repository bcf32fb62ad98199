//! The admin port's `/dashboard` in a real browser: two workers and a coordinator, some
//! requests, then headless Chromium loads the page and we read the DOM it rendered. It must show
//! both workers up, the ensembles and a nonzero request count, and, once a worker is killed,
//! that worker down. Screenshots are kept under target/test-artefacts/dashboard/.
//!
//! Needs Debian's `chromium` (scripts/install-deps.sh installs it).

mod support;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// How long one Chromium run may take before it is killed.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// Virtual time the page gets before its DOM is dumped: enough for a few one-second polls.
const VIRTUAL_TIME_MS: u32 = 3000;

fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser"] {
        let found = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .map(|dir| dir.join(name))
            .find(|p| p.is_file());
        if let Some(path) = found {
            return path;
        }
    }
    panic!(
        "chromium is not installed, and this test loads the dashboard in it: \
         run `bash scripts/install-deps.sh` (Debian package `chromium`)"
    );
}

/// Runs headless Chromium on `url` with `args` in its own process group and a private profile;
/// returns its stdout. The whole group is killed on timeout and after exit, so no renderer or
/// zygote outlives the test.
fn browse(url: &str, args: &[String]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new(chromium())
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--virtual-time-budget={VIRTUAL_TIME_MS}"),
        ])
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start chromium: {e}"));
    let group = child.id() as libc::pid_t;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let give_up = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break Some(status);
        }
        if Instant::now() > give_up {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: kill(2) on the process group this test created for Chromium; its leader is our
    // child, so the group id cannot belong to anything else while any member lives.
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
    let _ = child.wait();
    let out = reader.join().expect("stdout reader");
    match status {
        Some(status) => assert!(status.success(), "chromium failed ({status}) on {url}"),
        None => panic!("chromium did not finish within {BROWSER_TIMEOUT:?} on {url}"),
    }
    out
}

fn dump_dom(url: &str) -> String {
    browse(url, &["--dump-dom".to_string()])
}

fn screenshot(url: &str, name: &str) -> PathBuf {
    let dir = artefacts();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    browse(
        url,
        &[
            format!("--screenshot={}", path.display()),
            "--window-size=1280,1000".to_string(),
            "--hide-scrollbars".to_string(),
        ],
    );
    let png = std::fs::read(&path).unwrap_or_else(|e| panic!("no screenshot at {path:?}: {e}"));
    assert!(png.starts_with(b"\x89PNG"), "{path:?} is not a PNG");
    assert!(png.len() > 10_000, "{path:?} is suspiciously small");
    path
}

fn artefacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let dir = target.join("test-artefacts/dashboard");
    std::fs::create_dir_all(&dir).expect("artefact dir");
    dir
}

/// The state class of worker `id`'s row (`up`, `down`, `draining`, `gone`), if it has one.
fn worker_state(dom: &str, id: &str) -> Option<String> {
    let cell = format!("<td class=\"id\">{id}</td>");
    dom.split("<tr class=\"worker ")
        .skip(1)
        .find(|row| row.split("</tr>").next().is_some_and(|r| r.contains(&cell)))
        .and_then(|row| row.split('"').next())
        .map(str::to_string)
}

/// The number the page shows as requests since start.
fn total_requests(dom: &str) -> Option<u64> {
    let start = dom.find("id=\"total\"")?;
    let rest = &dom[start..];
    let text = &rest[rest.find('>')? + 1..];
    text[..text.find('<')?].trim().parse().ok()
}

/// Dumps the page until `check` accepts it (or panics after `timeout`, showing the last DOM).
fn dom_until(url: &str, what: &str, timeout: Duration, check: impl Fn(&str) -> bool) -> String {
    let give_up = Instant::now() + timeout;
    loop {
        let dom = dump_dom(url);
        if check(&dom) {
            return dom;
        }
        assert!(
            Instant::now() < give_up,
            "the dashboard did not show {what} within {timeout:?}; last DOM:\n{dom}"
        );
    }
}

/// `(agreeing, votes)` of digits_soft's members over the first `rows` golden rows: each member
/// votes its argmax, against the ensemble's golden label.
fn golden_soft_agreement(expected: &Expected, rows: usize) -> (u64, u64) {
    let answer = expected.labels("digits_soft");
    let (mut agreeing, mut votes) = (0, 0);
    for member in ["logreg", "random_forest", "mlp"] {
        for (row, probabilities) in expected.matrix(member, "probabilities")[..rows]
            .iter()
            .enumerate()
        {
            let mut best = 0;
            for (class, p) in probabilities.iter().enumerate() {
                if *p > probabilities[best] {
                    best = class;
                }
            }
            votes += 1;
            agreeing += u64::from(best as i64 == answer[row]);
        }
    }
    (agreeing, votes)
}

/// The sum of the series in Prometheus text whose name and labels start with `prefix` (`None`
/// when there is none).
fn sample(metrics: &str, prefix: &str) -> Option<u64> {
    let values: Vec<u64> = metrics
        .lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The text of the agreement cell in `ensemble`'s row.
fn agreement_cell(dom: &str, ensemble: &str) -> Option<String> {
    let row = dom
        .split(&format!("<td class=\"id\">{ensemble}</td>"))
        .nth(1)?;
    let row = row.split("</tr>").next()?;
    let cell = row.split("<td class=\"num agreement\">").nth(1)?;
    Some(cell.split("</td>").next()?.to_string())
}

fn saved(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn dashboard_shows_the_live_cluster_and_a_worker_going_down() {
    chromium();
    let w_a = start_worker("w-a", &["logreg", "svc", "random_forest", "logreg_int8"]);
    let w_b = start_worker("w-b", &["mlp", "gboost", "stacker", "mlp_int8"]);
    let (coordinator, http) = start_coordinator(&[&w_a, &w_b], &[], "/v2/health/ready");
    let admin = Http::new(admin_addr(&coordinator));

    // The dashboard is an operator page: not on the public port.
    assert_eq!(http.get("/dashboard").0, 404);
    assert_eq!(http.get("/chorus/traffic").0, 404);
    let (status, page) = admin.get("/dashboard");
    assert_eq!(status, 200);
    assert!(page.contains("/dashboard/dashboard.js"), "{page}");

    // The ids the coordinator knows the workers by (static membership: their addresses).
    let workers: serde_json::Value = serde_json::from_str(&admin.get("/chorus/workers").1).unwrap();
    let id_of = |worker: &Proc| {
        let addr = worker.field("rpc_addr");
        workers["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["addr"] == addr.as_str())
            .unwrap_or_else(|| panic!("no worker at {addr} in {workers}"))["worker_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (id_a, id_b) = (id_of(&w_a), id_of(&w_b));

    let expected = Expected::load();
    let rows = expected.rows();
    for ensemble in ["digits_soft", "digits_hard", "digits_fusion"] {
        for _ in 0..5 {
            http.post_json(
                &format!("/v2/models/{ensemble}/infer"),
                &json_request(&rows[..2]),
            )
            .expect_status(200);
        }
    }

    let url = format!("http://{}/dashboard", admin.addr);
    let dom = dom_until(
        &url,
        "both workers up and traffic",
        Duration::from_secs(60),
        |dom| {
            worker_state(dom, &id_a).as_deref() == Some("up")
                && worker_state(dom, &id_b).as_deref() == Some("up")
                && total_requests(dom).is_some_and(|n| n >= 15)
        },
    );
    for expected in [
        "<td class=\"id\">digits_soft</td>",
        "<td class=\"id\">digits_hard</td>",
        "<td class=\"id\">digits_fusion</td>",
        "soft_vote",
        "3/3 live, 2 needed",
        "logreg@1, ",
        "random_forest@1, svc@1",
        "<span id=\"ready\" class=\"pill ready\">ready</span>",
    ] {
        assert!(dom.contains(expected), "{expected} missing from:\n{dom}");
    }
    assert!(
        !dom.contains("id=\"problem\" class=\"banner\">"),
        "the page reports a problem:\n{dom}"
    );
    // Agreement: the members' votes for digits_soft's answer, counted exactly as Python's golden
    // outputs say (5 requests of rows 0 and 1, three members, each voting its argmax), and the
    // page shows that share.
    let (agreeing, votes) = golden_soft_agreement(&expected, 2);
    let metrics = admin.get("/metrics").1;
    assert_eq!(
        sample(
            &metrics,
            "chorus_ensemble_member_votes_total{model=\"digits_soft\","
        ),
        Some(5 * votes),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "chorus_ensemble_agreeing_votes_total{model=\"digits_soft\","
        ),
        Some(5 * agreeing),
        "{metrics}"
    );
    let shown = format!("{}%", (100.0 * agreeing as f64 / votes as f64).round());
    assert!(
        agreement_cell(&dom, "digits_soft").as_deref() == Some(shown.as_str()),
        "digits_soft's agreement should read {shown}: {:?}",
        agreement_cell(&dom, "digits_soft")
    );
    let up = screenshot(&url, "cluster-up.png");

    let mut w_b = w_b;
    w_b.signal(libc::SIGKILL);
    w_b.wait_exit(Duration::from_secs(10));
    let dom = dom_until(&url, "w-b down", Duration::from_secs(60), |dom| {
        matches!(worker_state(dom, &id_b).as_deref(), Some("down" | "gone"))
    });
    assert_eq!(
        worker_state(&dom, &id_a).as_deref(),
        Some("up"),
        "the other worker stays up:\n{dom}"
    );
    assert!(
        dom.contains("out of rotation"),
        "the page says what down means:\n{dom}"
    );
    let down = screenshot(&url, "worker-down.png");
    eprintln!("screenshots: {} {}", saved(&up), saved(&down));
}
