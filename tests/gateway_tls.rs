//! TLS on the coordinator's public ports, over real processes: Triton's Python clients with
//! `ssl=True` on REST and gRPC (one-way TLS and mutual TLS, where a client without a certificate
//! is refused on both ports), and a certificate replaced on disk taking effect on SIGHUP without
//! a restart. Certificates are made by the test (rcgen), never committed.

mod support;

use chorus_common::testing::certs::{Identity, Pki};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use support::*;

struct Setup {
    _workers: Vec<Proc>,
    coordinator: Proc,
    http: SocketAddr,
    grpc: SocketAddr,
}

/// The test cluster with the coordinator's public ports on TLS (`extra` adds flags); ready once
/// its admin port (plain HTTP) says so.
fn setup(extra: &[String]) -> Setup {
    let workers: Vec<Proc> = PLACEMENT
        .iter()
        .map(|(id, models)| start_worker(id, models))
        .collect();
    let addrs: Vec<String> = workers.iter().map(|w| w.field("rpc_addr")).collect();
    let mut args = vec![
        "coordinator".to_string(),
        "--http-addr=127.0.0.1:0".to_string(),
        "--grpc-addr=127.0.0.1:0".to_string(),
        "--admin-addr=127.0.0.1:0".to_string(),
        "--ensembles=config/ensembles.toml".to_string(),
        format!("--worker={}", addrs.join(",")),
    ];
    args.extend_from_slice(extra);
    let coordinator = spawn("coordinator", &args, "chorus-coordinator listening");
    let admin = Http::new(admin_addr(&coordinator));
    wait_until(
        "the coordinator to be ready",
        Duration::from_secs(60),
        || (admin.get("/v2/health/ready").0 == 200).then_some(()),
    );
    Setup {
        http: coordinator.field("http_addr").parse().unwrap(),
        grpc: grpc_addr(&coordinator),
        _workers: workers,
        coordinator,
    }
}

fn tls_flags(server: &Identity, client_ca: Option<&std::path::Path>) -> Vec<String> {
    let mut flags = vec![
        format!("--tls-cert={}", server.cert.display()),
        format!("--tls-key={}", server.key.display()),
    ];
    flags.extend(client_ca.map(|ca| format!("--tls-client-ca={}", ca.display())));
    flags
}

/// Runs tests/clients/tls_check.py; it must pass.
fn tls_check(s: &Setup, ca: &std::path::Path, client: Option<&Identity>) {
    let (passed, report) = run_tls_check(s, ca, client);
    assert!(passed, "tls_check.py failed:\n{report}");
}

/// Runs tests/clients/tls_check.py: whether it passed, and what it printed.
fn run_tls_check(s: &Setup, ca: &std::path::Path, client: Option<&Identity>) -> (bool, String) {
    let python = repo_root().join(".venv/bin/python");
    let mut command = Command::new(&python);
    command
        .arg(repo_root().join("tests/clients/tls_check.py"))
        .arg(format!("localhost:{}", s.http.port()))
        .arg(format!("localhost:{}", s.grpc.port()))
        .arg(ca);
    if let Some(client) = client {
        command.arg(&client.cert).arg(&client.key);
    }
    let output = command.output().expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    (
        output.status.success() && stdout.contains("tls checks passed"),
        format!("{stdout}\n{stderr}"),
    )
}

#[test]
fn tritonclient_over_tls_and_a_certificate_reloaded_on_sighup() {
    let pki = Pki::new("chorus-test-ca");
    let server = pki.issue("gateway", &["localhost", "127.0.0.1"]);
    let s = setup(&tls_flags(&server, None));
    tls_check(&s, pki.ca(), None);
    let before = served_certificate(s.http, pki.ca());
    assert_eq!(before, pem_der(&server.cert));

    // Replace the files (a rotation) and tell the coordinator.
    let renewed = pki.issue("gateway-renewed", &["localhost", "127.0.0.1"]);
    std::fs::copy(&renewed.key, &server.key).unwrap();
    std::fs::copy(&renewed.cert, &server.cert).unwrap();
    let pid = s.coordinator.child.id() as libc::pid_t;
    // SAFETY: kill(2) on the coordinator this test spawned and still holds.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let after = wait_until(
        "the renewed certificate to be served",
        Duration::from_secs(10),
        || {
            let served = served_certificate(s.http, pki.ca());
            (served != before).then_some(served)
        },
    );
    assert_eq!(after, pem_der(&renewed.cert));
    // The gRPC port serves the renewed certificate too, and clients still work.
    assert_eq!(served_certificate(s.grpc, pki.ca()), after);
    tls_check(&s, pki.ca(), None);
}

#[test]
fn mutual_tls_refuses_clients_without_a_certificate_from_the_ca() {
    let pki = Pki::new("chorus-test-ca");
    let server = pki.issue("gateway", &["localhost", "127.0.0.1"]);
    let client = pki.issue("client", &["client.example"]);
    let s = setup(&tls_flags(&server, Some(pki.ca())));
    tls_check(&s, pki.ca(), Some(&client));
    // A certificate from another CA is refused too.
    let stranger_pki = Pki::new("another-ca");
    let stranger = stranger_pki.issue("stranger", &["client.example"]);
    let (passed, report) = run_tls_check(&s, pki.ca(), Some(&stranger));
    assert!(
        !passed,
        "a client certificate from another CA was accepted:\n{report}"
    );
    assert!(
        report.contains("Error") || report.contains("error"),
        "{report}"
    );
}

#[test]
fn a_bad_tls_configuration_is_refused_at_start_with_the_file_named() {
    let pki = Pki::new("chorus-test-ca");
    let server = pki.issue("gateway", &["localhost"]);
    let other = pki.issue("other", &["localhost"]);
    for (flags, expected) in [
        (
            vec![format!("--tls-cert={}", server.cert.display())],
            "--tls-key".to_string(),
        ),
        (
            vec![
                format!("--tls-cert={}", server.cert.display()),
                format!("--tls-key={}", other.key.display()),
            ],
            other.key.display().to_string(),
        ),
    ] {
        let output = Command::new(chorus_bin())
            .args(["coordinator", "--worker=127.0.0.1:1"])
            .args(&flags)
            .current_dir(repo_root())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flags:?} was accepted");
        assert!(stderr.contains(&expected), "{flags:?}: {stderr}");
    }
}

/// The DER of the first certificate in a PEM file.
fn pem_der(path: &std::path::Path) -> Vec<u8> {
    chorus_common::tls::load_certs(path).unwrap()[0].to_vec()
}

/// The leaf certificate the server at `addr` presents (verified against `ca`).
fn served_certificate(addr: SocketAddr, ca: &std::path::Path) -> Vec<u8> {
    let config = Arc::new(chorus_common::tls::client_config(ca, None).unwrap());
    let name = "localhost".try_into().unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    let der = conn.peer_certificates().unwrap()[0].to_vec();
    conn.send_close_notify();
    let _ = conn.complete_io(&mut sock);
    let _ = sock.flush();
    der
}
