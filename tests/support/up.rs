//! `chorus up` as a user runs it, for tests that watch the whole local cluster: started on port
//! 0, its stdout (status lines) and stderr (logs and the final error) collected as they come,
//! SIGKILLed if the test fails (its children follow through PR_SET_PDEATHSIG).

use super::{Proc, chorus_bin, repo_root, wait_until};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running `chorus up`.
pub struct Up {
    pub proc: Proc,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

/// One `worker-<n>  pid …  rpc …  [local unix:…]  metrics …  models …` line.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerLine {
    pub id: String,
    pub pid: u32,
    pub rpc: String,
    /// `unix:/path` of its local socket, which the coordinator dials instead of `rpc`.
    pub local: Option<String>,
    pub metrics: Option<String>,
}

impl WorkerLine {
    /// The address the coordinator knows the worker by (`/chorus/workers`' `addr`).
    pub fn dialled(&self) -> &str {
        self.local.as_deref().unwrap_or(&self.rpc)
    }
}

impl Up {
    /// Starts `chorus up` on free ports with `extra` flags, and waits for "Chorus is up".
    pub fn start(extra: &[&str]) -> Up {
        let mut child = Command::new(chorus_bin())
            .args([
                "up",
                "--http-addr=127.0.0.1:0",
                "--grpc-addr=127.0.0.1:0",
                "--admin-addr=127.0.0.1:0",
            ])
            .args(extra)
            .current_dir(repo_root())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chorus up starts");
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let up = Up {
            proc: Proc {
                name: "chorus up".into(),
                child,
                ready_line: String::new(),
            },
            stdout: Arc::default(),
            stderr: Arc::default(),
        };
        let lines = up.stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("[chorus up] {line}");
                lines.lock().unwrap().push(line);
            }
        });
        let text = up.stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut err = err;
            while let Ok(n @ 1..) = err.read(&mut buf) {
                let chunk = String::from_utf8_lossy(&buf[..n]);
                eprint!("{chunk}");
                text.lock().unwrap().push_str(&chunk);
            }
        });
        up.wait_for_line("Chorus is up", Duration::from_secs(120), |l| {
            l.starts_with("Chorus is up")
        });
        up
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Everything written on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for a stdout line matching `matches`; fails early if `chorus up` exits.
    pub fn wait_for_line(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        wait_until(what, timeout, || {
            let lines = self.lines();
            if let Some(line) = lines.iter().find(|l| matches(l)) {
                return Some(line.clone());
            }
            let exited = std::fs::read_to_string(format!("/proc/{}/stat", self.proc.pid()))
                .map_or(true, |stat| is_zombie(&stat));
            assert!(
                !exited,
                "chorus up exited while waiting for {what}: {lines:#?}"
            );
            None
        })
    }

    /// The worker lines printed so far, in order (a restarted worker appears again).
    pub fn workers(&self) -> Vec<WorkerLine> {
        self.lines().iter().filter_map(|l| worker_line(l)).collect()
    }

    /// The coordinator's admin address, from its `coordinator  pid …  admin …` line.
    pub fn admin_addr(&self) -> SocketAddr {
        self.coordinator_field("admin")
    }

    /// The coordinator's REST address.
    pub fn http_addr(&self) -> SocketAddr {
        self.coordinator_field("http")
    }

    /// Every pid printed so far (workers, restarted workers, the coordinator).
    pub fn pids(&self) -> Vec<u32> {
        self.lines()
            .iter()
            .filter_map(|l| after(l, "pid")?.parse().ok())
            .collect()
    }

    fn coordinator_field(&self, key: &str) -> SocketAddr {
        let line = self.wait_for_line("the coordinator line", Duration::from_secs(1), |l| {
            l.starts_with("coordinator  pid")
        });
        after(&line, key)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
    }
}

/// The word after `key` in a `name  key value  key value` line.
fn after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().skip_while(|w| *w != key).nth(1)
}

fn worker_line(line: &str) -> Option<WorkerLine> {
    let id = line.split_whitespace().next()?;
    if !id.starts_with("worker-") || after(line, "pid").is_none() {
        return None;
    }
    Some(WorkerLine {
        id: id.to_string(),
        pid: after(line, "pid")?.parse().ok()?,
        rpc: after(line, "rpc")?.to_string(),
        local: after(line, "local").map(str::to_string),
        metrics: after(line, "metrics").map(str::to_string),
    })
}

fn is_zombie(stat: &str) -> bool {
    stat.rsplit(')')
        .next()
        .unwrap_or("")
        .trim_start()
        .starts_with('Z')
}

/// Whether `pid` runs; a process that exited but is not yet reaped is gone for our purposes.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !is_zombie(&stat))
}

/// SIGKILLs `pid` (a child of `chorus up`, whose pid it printed).
pub fn kill_9(pid: u32) {
    // SAFETY: kill(2) on a process of this test's own cluster.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}
