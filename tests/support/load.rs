//! A closed-loop load generator for failover tests: a few client threads send one-row requests
//! to the sample ensembles until stopped, classifying every answer.

use super::Expected;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The ensembles the load rotates over (every sample model is a member of one of them).
const ENSEMBLES: [&str; 3] = ["digits_soft", "digits_hard", "digits_fusion"];

/// How long a client waits for an answer before counting the request as lost.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Outcome counts; `sent - (ok + degraded + failed + lost)` requests are still in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub sent: u64,
    /// 200 with every member answering, label equal to the Python expectation.
    pub ok: u64,
    /// 200 from fewer members (quorum held).
    pub degraded: u64,
    /// An error status or a refused connection.
    pub failed: u64,
    /// No answer within the client timeout.
    pub lost: u64,
    /// 200 with all members but a label that differs from the expectation.
    pub wrong: u64,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, b: Counts) -> Counts {
        Counts {
            sent: self.sent - b.sent,
            ok: self.ok - b.ok,
            degraded: self.degraded - b.degraded,
            failed: self.failed - b.failed,
            lost: self.lost - b.lost,
            wrong: self.wrong - b.wrong,
        }
    }
}

#[derive(Default)]
struct Shared {
    sent: AtomicU64,
    ok: AtomicU64,
    degraded: AtomicU64,
    failed: AtomicU64,
    lost: AtomicU64,
    wrong: AtomicU64,
    /// The first few failures, for the report.
    failures: Mutex<Vec<String>>,
}

/// Running load; stops (and joins its threads) when dropped.
pub struct Load {
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
}

impl Load {
    /// Starts `clients` threads against the coordinator at `addr`, each pausing `pause` between
    /// requests so the machine keeps room for the cluster itself.
    pub fn start(addr: SocketAddr, clients: usize, pause: Duration) -> Load {
        let expected = Arc::new(Expected::load());
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared::default());
        let threads = (0..clients)
            .map(|client| {
                let (stop, shared, expected) = (stop.clone(), shared.clone(), expected.clone());
                std::thread::spawn(move || {
                    run_client(addr, client, pause, &stop, &shared, &expected)
                })
            })
            .collect();
        Load {
            stop,
            shared,
            threads,
            started: Instant::now(),
        }
    }

    pub fn counts(&self) -> Counts {
        let s = &self.shared;
        Counts {
            sent: s.sent.load(Ordering::SeqCst),
            ok: s.ok.load(Ordering::SeqCst),
            degraded: s.degraded.load(Ordering::SeqCst),
            failed: s.failed.load(Ordering::SeqCst),
            lost: s.lost.load(Ordering::SeqCst),
            wrong: s.wrong.load(Ordering::SeqCst),
        }
    }

    /// Failure descriptions seen so far (at most a few dozen).
    pub fn failures(&self) -> Vec<String> {
        self.shared.failures.lock().unwrap().clone()
    }

    /// Waits until every request sent so far has an outcome, and returns counts in which `sent`
    /// is the number of requests with an outcome, so differences of settled counts add up.
    pub fn settle(&self) -> Counts {
        let give_up = Instant::now() + CLIENT_TIMEOUT + Duration::from_secs(1);
        let target = self.counts().sent;
        loop {
            let mut c = self.counts();
            let done = c.ok + c.degraded + c.failed + c.lost + c.wrong;
            if done >= target || Instant::now() > give_up {
                c.sent = done;
                return c;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn run_client(
    addr: SocketAddr,
    client: usize,
    pause: Duration,
    stop: &AtomicBool,
    shared: &Shared,
    expected: &Expected,
) {
    let http = reqwest::blocking::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .expect("client");
    let rows = expected.rows();
    let mut n = client;
    while !stop.load(Ordering::SeqCst) {
        let ensemble = ENSEMBLES[n % ENSEMBLES.len()];
        let row = (n * 7) % rows.len();
        n += 1;
        let body = super::json_request(&rows[row..row + 1]);
        shared.sent.fetch_add(1, Ordering::SeqCst);
        let outcome = http
            .post(format!("http://{addr}/v2/models/{ensemble}/infer"))
            .json(&body)
            .send()
            .and_then(|r| Ok((r.status().as_u16(), r.bytes()?)));
        let note = |shared: &Shared, what: String| {
            let mut failures = shared.failures.lock().unwrap();
            if failures.len() < 40 {
                failures.push(what);
            }
        };
        match outcome {
            Err(e) if e.is_timeout() => {
                shared.lost.fetch_add(1, Ordering::SeqCst);
                note(shared, format!("{ensemble}: lost: {e}"));
            }
            Err(e) => {
                shared.failed.fetch_add(1, Ordering::SeqCst);
                note(shared, format!("{ensemble}: connection: {e}"));
            }
            Ok((200, bytes)) => {
                let response: Value = serde_json::from_slice(&bytes).unwrap_or_default();
                let label = response["outputs"][0]["data"][0].as_i64();
                if response["parameters"]["degraded"] == true {
                    shared.degraded.fetch_add(1, Ordering::SeqCst);
                } else if label == Some(expected.labels(ensemble)[row]) {
                    shared.ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    shared.wrong.fetch_add(1, Ordering::SeqCst);
                    note(
                        shared,
                        format!("{ensemble}: row {row}: wrong answer {response}"),
                    );
                }
            }
            Ok((status, bytes)) => {
                shared.failed.fetch_add(1, Ordering::SeqCst);
                note(
                    shared,
                    format!("{ensemble}: {status}: {}", String::from_utf8_lossy(&bytes)),
                );
            }
        }
        std::thread::sleep(pause);
    }
}
