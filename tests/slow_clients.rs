//! Slow and silent clients over real processes: a coordinator with a 1 s client timeout and 16
//! connection slots closes connections whose headers never finish and keep-alive connections
//! left idle, answers 408 to a body that stalls, keeps further clients in the listen backlog
//! while its slots are full, and answers ordinary requests throughout.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::*;

const CLIENT_TIMEOUT: Duration = Duration::from_millis(1000);
const SLOTS: usize = 16;

/// Waits until the server closes `stream` (EOF or reset), at most `limit`; returns how long
/// that took, or `None` if it stayed open. Whatever the server sent first is discarded.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut sink = [0u8; 4096];
    while start.elapsed() < limit {
        stream
            .set_read_timeout(Some(
                limit
                    .saturating_sub(start.elapsed())
                    .max(Duration::from_millis(10)),
            ))
            .unwrap();
        match stream.read(&mut sink) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// Sends one whole request on `stream` and reads the status line and headers of the answer,
/// then the body named by its Content-Length.
fn request(stream: &mut TcpStream, head: &str, body: &[u8]) -> (u16, String) {
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "answer cut short");
        answer.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&answer).to_string();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    (status, String::from_utf8_lossy(&body).to_string())
}

fn live(addr: SocketAddr) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    request(
        &mut stream,
        "GET /v2/health/live HTTP/1.1\r\nHost: chorus\r\n\r\n",
        b"",
    )
}

#[test]
fn slow_and_silent_clients_cannot_hold_the_coordinator() {
    let worker = start_worker("w-slow", &["logreg", "random_forest", "mlp"]);
    let timeout = format!("--client-timeout-ms={}", CLIENT_TIMEOUT.as_millis());
    let slots = format!("--max-connections={SLOTS}");
    let (_coordinator, http) = start_coordinator(
        &[&worker],
        &[&timeout, &slots],
        "/v2/models/digits_soft/ready",
    );
    let addr = http.addr;

    // 1. Headers that never finish, on four times as many connections as there are slots: every
    //    one is closed (the later ones once earlier ones free their slots), and an ordinary
    //    request sent meanwhile is answered.
    let mut slow: Vec<TcpStream> = (0..4 * SLOTS)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"POST /v2/models/digits_soft/infer HTTP/1.1\r\nHost: chorus\r\n")
                .unwrap();
            s
        })
        .collect();
    let sent = Instant::now();
    assert_eq!(
        live(addr).0,
        200,
        "an ordinary request behind the slow ones"
    );
    for (i, s) in slow.iter_mut().enumerate() {
        let left = Duration::from_secs(20).saturating_sub(sent.elapsed());
        assert!(
            closed_within(s, left).is_some(),
            "slow connection {i} still open {:?} after it went quiet",
            sent.elapsed()
        );
    }
    drop(slow);

    // 2. A keep-alive connection left idle after an answer is closed after the client timeout.
    let mut idle = TcpStream::connect(addr).unwrap();
    let (status, _) = request(
        &mut idle,
        "GET /v2/health/live HTTP/1.1\r\nHost: chorus\r\n\r\n",
        b"",
    );
    assert_eq!(status, 200);
    let closed = closed_within(&mut idle, Duration::from_secs(10))
        .expect("an idle keep-alive connection is closed");
    assert!(
        closed >= CLIENT_TIMEOUT / 2,
        "closed after {closed:?}, before the client timeout"
    );

    // 3. A body that stops part-way gets 408 with a message that names the setting.
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled
        .write_all(
            b"POST /v2/models/digits_soft/infer HTTP/1.1\r\nHost: chorus\r\n\
              Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inputs\":",
        )
        .unwrap();
    let (status, body) = request(&mut stalled, "", b"");
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("--client-timeout-ms"), "{body}");

    // 4. With every slot held by a connection that sends nothing, the next client waits in the
    //    backlog until the silent ones are closed, and is then answered.
    let holders: Vec<TcpStream> = (0..SLOTS)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let queued = Instant::now();
    assert_eq!(live(addr).0, 200);
    let waited = queued.elapsed();
    assert!(
        waited >= CLIENT_TIMEOUT / 2,
        "answered after {waited:?}: the slots were not limiting"
    );
    drop(holders);

    // The coordinator is unharmed.
    assert_eq!(http.get("/v2/models/digits_soft/ready").0, 200);
}
