//! Mutual TLS on the worker RPC links, with real `chorus worker` and `chorus coordinator`
//! processes and certificates made here: a coordinator with a client certificate from the CA
//! gets answers; a worker refuses clients without one (or with one from another CA) and drops a
//! connection whose handshake never starts; a coordinator refuses a worker whose certificate
//! does not name the address it dials, or comes from another CA.

mod support;

use chorus_common::rpc_tls::{HANDSHAKE_TIMEOUT, RpcTlsFiles, server_name};
use chorus_common::testing::certs::{Identity, Pki};
use chorus_common::transport::{DEFAULT_MAX_FRAME_BYTES, connect_worker, connect_worker_tls};
use chorus_common::{WorkerServiceClient, tls};
use chorus_coordinator::pool::{Connector, SocketConnector};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::AsyncReadExt;
use tokio_rustls::TlsConnector;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The flags giving a process `identity`, trusting `ca`.
fn tls_flags(identity: &Identity, ca: &Pki) -> Vec<String> {
    vec![
        format!("--rpc-tls-cert={}", identity.cert.display()),
        format!("--rpc-tls-key={}", identity.key.display()),
        format!("--rpc-tls-ca={}", ca.ca().display()),
    ]
}

fn files(identity: &Identity, ca: &Pki) -> RpcTlsFiles {
    RpcTlsFiles {
        cert: identity.cert.clone(),
        key: identity.key.clone(),
        ca: ca.ca().to_path_buf(),
    }
}

fn rpc_addr(worker: &Proc) -> SocketAddr {
    worker.field("rpc_addr").parse().expect("rpc addr")
}

async fn ping(client: &WorkerServiceClient) -> Result<(), String> {
    let mut context = tarpc::context::current();
    context.deadline = Instant::now() + Duration::from_secs(5);
    client
        .ping(context)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A client of the worker at `addr` with `config`, or why the link could not be made or used:
/// with TLS 1.3 a refused client certificate shows on the first exchange, not in `connect`.
async fn ping_with(addr: SocketAddr, config: rustls::ClientConfig) -> Result<(), String> {
    let connector = TlsConnector::from(Arc::new(config));
    let name = server_name(&addr.to_string())?;
    let client = connect_worker_tls(
        addr,
        name,
        &connector,
        DEFAULT_MAX_FRAME_BYTES,
        CONNECT_TIMEOUT,
    )
    .await
    .map_err(|e| e.to_string())?;
    ping(&client).await
}

/// The CA, a worker certificate for 127.0.0.1/localhost and a coordinator client certificate.
struct Certs {
    ca: Pki,
    worker: Identity,
    coordinator: Identity,
    /// Another CA (kept: its directory holds the stranger's files), and a certificate it issued
    /// for the right names.
    _other_ca: Pki,
    stranger: Identity,
}

impl Certs {
    fn new() -> Certs {
        let ca = Pki::new("chorus test CA");
        let other_ca = Pki::new("another CA");
        Certs {
            worker: ca.issue("worker", &["127.0.0.1", "localhost"]),
            coordinator: ca.issue("coordinator", &["coordinator.local"]),
            stranger: other_ca.issue("stranger", &["127.0.0.1", "localhost"]),
            ca,
            _other_ca: other_ca,
        }
    }
}

#[test]
fn a_coordinator_with_the_right_certificate_gets_answers_over_mtls() {
    let certs = Certs::new();
    let worker = start_worker_with("w-mtls", &["logreg"], &tls_flags(&certs.worker, &certs.ca));
    let flags = tls_flags(&certs.coordinator, &certs.ca);
    let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (_coordinator, http) = start_coordinator(&[&worker], &extra, "/v2/models/logreg/ready");
    let rows = Expected::load().rows();
    let reply = http.post_json("/v2/models/logreg/infer", &json_request(&rows[..4]));
    reply.expect_status(200);
    let outputs = reply.json()["outputs"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    assert!(outputs > 0, "no outputs: {:?}", reply.json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_clients_without_a_certificate_from_its_ca() {
    let certs = Certs::new();
    let worker = start_worker_with(
        "w-refuse",
        &["logreg"],
        &tls_flags(&certs.worker, &certs.ca),
    );
    let addr = rpc_addr(&worker);

    let trusted = tls::client_config(
        certs.ca.ca(),
        Some((&certs.coordinator.cert, &certs.coordinator.key)),
    );
    ping_with(addr, trusted.unwrap())
        .await
        .expect("the CA's client certificate is accepted");

    let anonymous = tls::client_config(certs.ca.ca(), None).unwrap();
    assert!(
        ping_with(addr, anonymous).await.is_err(),
        "a client without a certificate was served"
    );

    // Trusts the worker, but presents a certificate from another CA.
    let foreign = tls::client_config(
        certs.ca.ca(),
        Some((&certs.stranger.cert, &certs.stranger.key)),
    );
    assert!(
        ping_with(addr, foreign.unwrap()).await.is_err(),
        "another CA's client was served"
    );

    // Plaintext is not TLS: no answer either.
    let plain = connect_worker(addr, DEFAULT_MAX_FRAME_BYTES, CONNECT_TIMEOUT)
        .await
        .unwrap();
    assert!(ping(&plain).await.is_err(), "a plaintext client was served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_refuses_a_worker_whose_certificate_does_not_match() {
    let certs = Certs::new();
    let wrong_name = certs
        .ca
        .issue("wrong-name", &["worker-9.example", "10.9.9.9"]);
    let impostor = start_worker_with("w-wrong-san", &["mlp"], &tls_flags(&wrong_name, &certs.ca));
    let foreign = start_worker_with(
        "w-other-ca",
        &["svc"],
        &tls_flags(&certs.stranger, &certs.ca),
    );
    let good = start_worker_with("w-good", &["logreg"], &tls_flags(&certs.worker, &certs.ca));

    // The pool's own connector: a refused handshake is a failed connect.
    let connector = SocketConnector {
        max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        connect_timeout: CONNECT_TIMEOUT,
        tls: Some(files(&certs.coordinator, &certs.ca).connector().unwrap()),
    };
    let refused = connector.connect(&impostor.field("rpc_addr")).await.err();
    let refused = refused.expect("a worker certificate for other names was accepted");
    assert!(refused.contains("not valid for name"), "{refused}");
    let refused = connector.connect(&foreign.field("rpc_addr")).await.err();
    let refused = refused.expect("a worker certificate from another CA was accepted");
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    let client = connector.connect(&good.field("rpc_addr")).await.unwrap();
    ping(&client).await.unwrap();

    // And a real coordinator routes nothing to them: it probes every worker once before it
    // serves, so once logreg is ready the impostors have been tried and refused.
    let coordinator_flags = tls_flags(&certs.coordinator, &certs.ca);
    tokio::task::spawn_blocking(move || {
        let extra: Vec<&str> = coordinator_flags.iter().map(String::as_str).collect();
        let (_coordinator, http) = start_coordinator(
            &[&impostor, &foreign, &good],
            &extra,
            "/v2/models/logreg/ready",
        );
        for model in ["mlp", "svc"] {
            let (status, _) = http.get(&format!("/v2/models/{model}/ready"));
            assert_ne!(
                status, 200,
                "{model} is served by a worker the coordinator must refuse"
            );
            let rows = Expected::load().rows();
            let reply = http.post_json(
                &format!("/v2/models/{model}/infer"),
                &json_request(&rows[..1]),
            );
            assert_ne!(
                reply.status, 200,
                "{model} answered through a refused worker"
            );
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_starts_is_dropped_and_blocks_nobody() {
    let certs = Certs::new();
    let worker = start_worker_with(
        "w-silent",
        &["logreg"],
        &tls_flags(&certs.worker, &certs.ca),
    );
    let addr = rpc_addr(&worker);

    let opened = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    // While it says nothing, another coordinator connects and is served at once: the handshake
    // waits on the connection's task, not in the accept loop.
    let client = files(&certs.coordinator, &certs.ca).connector().unwrap();
    let served = connect_worker_tls(
        addr,
        server_name(&addr.to_string()).unwrap(),
        &client,
        DEFAULT_MAX_FRAME_BYTES,
        CONNECT_TIMEOUT,
    )
    .await
    .unwrap();
    ping(&served).await.unwrap();
    assert!(opened.elapsed() < HANDSHAKE_TIMEOUT);

    // The worker closes the silent connection once the handshake timeout has passed.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        HANDSHAKE_TIMEOUT + Duration::from_secs(3),
        silent.read(&mut buf),
    )
    .await
    .expect("the worker kept a silent connection open past the handshake timeout");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the worker sent {read:?} before any ClientHello"
    );
    assert!(opened.elapsed() >= HANDSHAKE_TIMEOUT - Duration::from_millis(500));
    // The worker is still there and still serving.
    ping(&served).await.unwrap();
}
