//! Input an attacker would send, over real processes, costing bounded memory: a 30 MB JSON body of
//! zeros for a 64-element input (once, and four at a time), and RPC frames to a worker that claim
//! gigabytes or hold garbage. Memory is read from `/proc/<pid>/status` (VmHWM, the peak).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::*;

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib * 1024
}

/// `{"inputs":[{... "shape":[1,64], "data":[0,0,0,…]}]}` of about `bytes` bytes.
fn zero_body(bytes: usize) -> Vec<u8> {
    let head = br#"{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[0"#;
    let mut body = Vec::with_capacity(bytes + 64);
    body.extend_from_slice(head);
    while body.len() < bytes {
        body.extend_from_slice(b",0");
    }
    body.extend_from_slice(b"]}]}");
    body
}

const BODY: usize = 30 * 1000 * 1000;

#[test]
fn a_30_mb_body_of_zeros_is_refused_at_a_small_multiple_of_its_size() {
    let cluster = Cluster::start();
    let pid = cluster.coordinator.child.id();
    let body = zero_body(BODY);
    // Warm up (allocator arenas, connection pools) so the baseline is the serving state.
    cluster
        .http
        .post_json(
            "/v2/models/digits_soft/infer",
            &json_request(&Expected::load().rows()[..1]),
        )
        .expect_status(200);
    let before = peak_rss(pid);

    let started = Instant::now();
    let reply = cluster.http.post(
        "/v2/models/digits_soft/infer",
        &[("content-type", "application/json".into())],
        body.clone(),
    );
    assert_eq!(
        reply.status,
        400,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(
        String::from_utf8_lossy(&reply.body).contains("more than 64 data elements"),
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let one = peak_rss(pid).saturating_sub(before);
    println!(
        "one 30 MB body: refused in {:?}, coordinator peak grew {} MiB",
        started.elapsed(),
        one >> 20
    );
    assert!(
        one < 4 * BODY as u64,
        "peak grew {one} bytes for a {BODY}-byte body"
    );

    // Four at once: each refused (400, or 429 if the in-flight byte budget is full); the peak
    // stays far below what a JSON tree of them took (1.17 GB before).
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (addr, body) = (cluster.http.addr, body.clone());
            std::thread::spawn(move || {
                Http::new(addr)
                    .post("/v2/models/digits_soft/infer", &[], body)
                    .status
            })
        })
        .collect();
    for sender in senders {
        let status = sender.join().unwrap();
        assert!(status == 400 || status == 429, "status {status}");
    }
    let four = peak_rss(pid).saturating_sub(before);
    println!(
        "four 30 MB bodies at once: coordinator peak grew {} MiB",
        four >> 20
    );
    assert!(four < 4 * 4 * BODY as u64, "peak grew {four} bytes");
    // And the coordinator still answers. Not necessarily at once: on a 2-core machine busy with
    // other tests, parsing 120 MB can starve the coordinator's pings long enough for it to eject
    // its (healthy) workers as silent, and they then serve again after their probation pings.
    let row = json_request(&Expected::load().rows()[1..2]);
    wait_until(
        "the coordinator to answer again",
        Duration::from_secs(30),
        || {
            (cluster
                .http
                .post_json("/v2/models/digits_soft/infer", &row)
                .status
                == 200)
                .then_some(())
        },
    );
}

/// Sends `bytes` on a fresh connection to a worker and says whether the worker closed it
/// (within 5 s) rather than waiting for more.
fn closes_after(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        // A timeout means the worker is still waiting for the rest: not a refusal.
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        Ok(_) => false,
    }
}

#[test]
fn rpc_frames_that_claim_gigabytes_or_hold_garbage_are_dropped_without_growth() {
    let worker = start_worker("w-frames", &["logreg"]);
    let pid = worker.child.id();
    let addr: SocketAddr = worker.field("rpc_addr").parse().unwrap();
    let before = peak_rss(pid);
    // A length prefix of 2 GiB (the frame limit is 64 MiB): refused from the header alone.
    assert!(
        closes_after(addr, &0x7fff_ffffu32.to_be_bytes()),
        "2 GiB frame"
    );
    // A small frame of garbage: bincode refuses it.
    let mut garbage = 32u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 32]);
    assert!(closes_after(addr, &garbage), "garbage frame");
    let grown = peak_rss(pid).saturating_sub(before);
    assert!(grown < 16 << 20, "the worker's peak grew {grown} bytes");
    // It still serves a coordinator.
    let (_coordinator, http) = start_coordinator(&[&worker], &[], "/v2/models/logreg/ready");
    http.post_json(
        "/v2/models/logreg/infer",
        &json_request(&Expected::load().rows()[..1]),
    )
    .expect_status(200);
}
