//! Shared helpers for the cross-process tests: start real `chorus` worker and coordinator
//! processes on port 0, wait for them by polling (never by sleeping), stop them by PID.

#![allow(dead_code)] // each test binary uses a different subset

pub mod etcdctl;
pub mod grpc;
pub mod load;
pub mod proxy;
pub mod up;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The repository root (tests run from the package directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

pub fn chorus_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chorus"))
}

/// Polls `check` until it returns `Some`, or panics after `timeout` with `what`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let give_up = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < give_up,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process that is SIGKILLed and reaped when dropped, so a failing test leaks nothing.
pub struct Proc {
    pub name: String,
    pub child: Child,
    /// The `key=value` status line the process printed when ready.
    pub ready_line: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, signal);
        }
    }

    pub fn field(&self, key: &str) -> String {
        self.ready_line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{} printed no {key}: {:?}", self.name, self.ready_line))
            .to_string()
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let name = self.name.clone();
        wait_until(&format!("{name} to exit"), timeout, || {
            self.child.try_wait().ok().flatten()
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Spawns `chorus <args>` and waits for a stdout line starting with `ready_prefix`. Stdout is
/// drained afterwards in a thread so the child never blocks on a full pipe.
pub fn spawn(name: &str, args: &[String], ready_prefix: &str) -> Proc {
    let mut child = Command::new(chorus_bin())
        .args(args)
        .current_dir(repo_root())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let prefix = ready_prefix.to_string();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent && line.starts_with(&prefix) {
                let _ = tx.send(line);
                sent = true;
            }
        }
    });
    let mut proc = Proc {
        name: name.to_string(),
        child,
        ready_line: String::new(),
    };
    let give_up = Instant::now() + Duration::from_secs(120);
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                proc.ready_line = line;
                return proc;
            }
            Err(_) => {
                if let Ok(Some(status)) = proc.child.try_wait() {
                    panic!("{name} exited before it was ready: {status}");
                }
                assert!(Instant::now() < give_up, "{name} was not ready within 120s");
            }
        }
    }
}

/// Starts a worker serving `models` on an ephemeral port.
pub fn start_worker(id: &str, models: &[&str]) -> Proc {
    start_worker_with(id, models, &[])
}

/// Starts a worker serving `models` on an ephemeral port, with `extra` flags.
pub fn start_worker_with(id: &str, models: &[&str], extra: &[String]) -> Proc {
    let mut args = vec![
        "worker".to_string(),
        "--listen=127.0.0.1:0".to_string(),
        format!("--worker-id={id}"),
        "--model-repository=models".to_string(),
        format!("--models={}", models.join(",")),
    ];
    args.extend_from_slice(extra);
    spawn(id, &args, "chorus-worker ready")
}

/// Spawns a coordinator with its REST, gRPC and admin listeners on ephemeral loopback ports,
/// and `args` after them; returns once it announced its addresses.
pub fn spawn_coordinator(args: &[String]) -> Proc {
    let mut all = vec![
        "coordinator".to_string(),
        "--http-addr=127.0.0.1:0".to_string(),
        "--grpc-addr=127.0.0.1:0".to_string(),
        "--admin-addr=127.0.0.1:0".to_string(),
    ];
    all.extend_from_slice(args);
    spawn("coordinator", &all, "chorus-coordinator listening")
}

/// Starts a coordinator in front of `workers` on an ephemeral port and waits until `ready_path`
/// answers 200 (the server's readiness, or one model's when not every ensemble can be served).
pub fn start_coordinator(workers: &[&Proc], extra: &[&str], ready_path: &str) -> (Proc, Http) {
    let addrs: Vec<String> = workers.iter().map(|w| w.field("rpc_addr")).collect();
    let mut args = vec![
        "--ensembles=config/ensembles.toml".to_string(),
        format!("--worker={}", addrs.join(",")),
        "--ping-interval-ms=200".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let proc = spawn_coordinator(&args);
    let http = Http::new(proc.field("http_addr").parse().expect("http addr"));
    wait_until(
        &format!("{ready_path} to answer 200"),
        Duration::from_secs(60),
        || (http.get(ready_path).0 == 200).then_some(()),
    );
    (proc, http)
}

/// Every ensemble and member model the sample repository serves (the meta-model `stacker`
/// takes other inputs and is left out).
pub const SERVED: [&str; 8] = [
    "digits_soft",
    "digits_hard",
    "digits_fusion",
    "logreg",
    "random_forest",
    "mlp",
    "svc",
    "gboost",
];

/// The admin address (`/metrics`, `/chorus/workers`) a coordinator announced.
pub fn admin_addr(coordinator: &Proc) -> SocketAddr {
    coordinator.field("admin_addr").parse().expect("admin addr")
}

/// The gRPC address a coordinator announced.
pub fn grpc_addr(coordinator: &Proc) -> SocketAddr {
    coordinator.field("grpc_addr").parse().expect("grpc addr")
}

/// The standard test cluster: every member of the sample ensembles on its own worker, so
/// killing one worker removes exactly one member of digits_soft.
pub struct Cluster {
    pub workers: Vec<Proc>,
    pub coordinator: Proc,
    pub http: Http,
    /// The coordinator's gRPC address.
    pub grpc: SocketAddr,
}

pub const PLACEMENT: [(&str, &[&str]); 3] = [
    ("w-logreg", &["logreg", "svc", "logreg_int8"]),
    ("w-forest", &["random_forest", "gboost"]),
    ("w-mlp", &["mlp", "stacker", "mlp_int8"]),
];

impl Cluster {
    pub fn start() -> Cluster {
        let workers: Vec<Proc> = PLACEMENT
            .iter()
            .map(|(id, models)| start_worker(id, models))
            .collect();
        let refs: Vec<&Proc> = workers.iter().collect();
        let (coordinator, http) = start_coordinator(&refs, &[], "/v2/health/ready");
        Cluster {
            workers,
            grpc: grpc_addr(&coordinator),
            coordinator,
            http,
        }
    }

    pub fn worker(&mut self, id: &str) -> &mut Proc {
        self.workers
            .iter_mut()
            .find(|w| w.name == id)
            .expect("worker id")
    }
}

/// A blocking HTTP client for tests.
pub struct Http {
    pub addr: SocketAddr,
    client: reqwest::blocking::Client,
}

/// Status, headers and body of a response.
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts the status, showing the body when it differs.
    pub fn expect_status(&self, status: u16) -> &Reply {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        self
    }

    pub fn error_message(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {}", self.json()))
            .to_string()
    }
}

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        Http {
            addr,
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET, returning status and body text; a connection error reads as status 0.
    pub fn get(&self, path: &str) -> (u16, String) {
        match self.client.get(self.url(path)).send() {
            Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    pub fn post(&self, path: &str, headers: &[(&str, String)], body: Vec<u8>) -> Reply {
        let mut request = self.client.post(self.url(path)).body(body);
        for (k, v) in headers {
            request = request.header(*k, v);
        }
        let response = request.send().expect("request sent");
        Reply {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.bytes().expect("body").to_vec(),
        }
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.post(
            path,
            &[("content-type", "application/json".into())],
            body.to_string().into_bytes(),
        )
    }
}

/// The digits test set and the Python-computed expectations (fixtures/digits/expected.json).
pub struct Expected(pub Value);

impl Expected {
    pub fn load() -> Expected {
        Expected::of_set("digits")
    }

    /// The expectations of another fixture data set (`fixtures/<set>/expected.json`, same
    /// layout: `x`, `y`, per-model and per-ensemble answers).
    pub fn of_set(set: &str) -> Expected {
        let path = repo_root().join(format!("fixtures/{set}/expected.json"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Expected(serde_json::from_str(&text).expect("expected.json"))
    }

    pub fn rows(&self) -> Vec<Vec<f32>> {
        self.0["x"]
            .as_array()
            .expect("x")
            .iter()
            .map(|row| {
                row.as_array()
                    .expect("row")
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect()
    }

    /// The true class of every golden row (`y`).
    pub fn truth(&self) -> Vec<i64> {
        self.0["y"]
            .as_array()
            .expect("y")
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    }

    /// `models.<name>` or `ensembles.<name>`.
    pub fn of(&self, name: &str) -> &Value {
        let models = &self.0["models"][name];
        if models.is_null() {
            &self.0["ensembles"][name]
        } else {
            models
        }
    }

    pub fn labels(&self, name: &str) -> Vec<i64> {
        self.of(name)["label"]
            .as_array()
            .expect("label")
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    }

    pub fn matrix(&self, name: &str, output: &str) -> Vec<Vec<f64>> {
        self.of(name)[output]
            .as_array()
            .unwrap_or_else(|| panic!("{name}.{output}"))
            .iter()
            .map(|row| {
                row.as_array()
                    .expect("row")
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect()
            })
            .collect()
    }

    pub fn vector(&self, name: &str, output: &str) -> Vec<f64> {
        self.of(name)[output]
            .as_array()
            .expect("vector")
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    }
}

/// Little-endian FP32 values.
pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Little-endian INT64 values.
pub fn i64s(bytes: &[u8]) -> Vec<i64> {
    bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// An OIP v2 JSON request for `rows` of 64 features.
pub fn json_request(rows: &[Vec<f32>]) -> Value {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    serde_json::json!({
        "inputs": [{"name": "input", "shape": [rows.len(), 64], "datatype": "FP32", "data": data}]
    })
}

/// The same rows as a binary-extension request; every output comes back binary.
pub fn binary_request(rows: &[Vec<f32>]) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let raw: Vec<u8> = rows
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let header = serde_json::json!({
        "parameters": {"binary_data_output": true},
        "inputs": [{"name": "input", "shape": [rows.len(), 64], "datatype": "FP32",
                    "parameters": {"binary_data_size": raw.len()}}]
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&raw);
    (
        vec![("inference-header-content-length", header.len().to_string())],
        body,
    )
}

/// Splits a binary-extension response into its JSON header and each output's raw bytes by name.
pub fn split_binary(reply: &Reply) -> (Value, Vec<(String, Vec<u8>)>) {
    let header_len: usize = reply
        .headers
        .get("inference-header-content-length")
        .expect("binary response header")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let json: Value = serde_json::from_slice(&reply.body[..header_len]).expect("header json");
    let mut offset = header_len;
    let mut parts = Vec::new();
    for output in json["outputs"].as_array().expect("outputs") {
        let size = output["parameters"]["binary_data_size"]
            .as_u64()
            .expect("binary size") as usize;
        parts.push((
            output["name"].as_str().unwrap().to_string(),
            reply.body[offset..offset + size].to_vec(),
        ));
        offset += size;
    }
    assert_eq!(
        offset,
        reply.body.len(),
        "binary sections must fill the body exactly"
    );
    (json, parts)
}

/// Runs `chorus <args>` until it exits on its own (killed, and the test failed, after `timeout`);
/// returns its exit status and what it wrote on stderr. For processes expected to refuse to start.
pub fn run_to_exit(args: &[String], timeout: Duration) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(chorus_bin())
        .args(args)
        .current_dir(repo_root())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start chorus");
    let mut stderr = child.stderr.take().expect("piped stderr");
    // Read on a thread so that a chatty child never blocks on a full pipe.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let give_up = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chorus") {
            break status;
        }
        if Instant::now() >= give_up {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chorus {args:?} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, reader.join().unwrap_or_default())
}

/// Runs the `chorus` CLI from the repository root to its end: (succeeded, stdout, stderr).
pub fn chorus(args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(chorus_bin())
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("chorus runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
