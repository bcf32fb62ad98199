//! etcd over TLS with authentication, with real processes: a `chorus worker` registers in an etcd
//! that demands TLS, a client certificate from its CA and a password, and a coordinator that
//! follows the same etcd as another user routes a request to it. A wrong password, and TLS with
//! an `http://` endpoint, stop both processes at start-up with a message saying what to fix.

mod support;

use chorus_common::testing::certs::{Identity, Pki};
use chorus_common::testing::{Etcd, EtcdUser};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

const WORKER_USER: &str = "chorus-worker";
const COORDINATOR_USER: &str = "chorus-coordinator";

/// An etcd with TLS, `--client-cert-auth` and authentication on: a worker user that may write
/// worker records and a coordinator user that may only read Chorus's keys, as docs/security.md
/// sets them up.
struct SecureEtcd {
    pki: Pki,
    etcd: Etcd,
    worker: Identity,
    coordinator: Identity,
}

impl SecureEtcd {
    fn start() -> SecureEtcd {
        let pki = Pki::new("etcd test CA");
        let mut etcd = Etcd::start_tls(&pki, true);
        etcd.enable_auth(
            "root-secret",
            &[
                EtcdUser {
                    name: WORKER_USER,
                    password: "worker-secret",
                    prefix: "/chorus/v1/workers/",
                    write: true,
                },
                EtcdUser {
                    name: COORDINATOR_USER,
                    password: "coordinator-secret",
                    prefix: "/chorus/v1/",
                    write: false,
                },
            ],
        );
        SecureEtcd {
            worker: pki.issue(WORKER_USER, &["worker.local"]),
            coordinator: pki.issue(COORDINATOR_USER, &["coordinator.local"]),
            pki,
            etcd,
        }
    }

    /// A password file (with the trailing newline `echo` writes) in the PKI's directory.
    fn password_file(&self, name: &str, password: &str) -> PathBuf {
        let path = self.pki.dir().join(format!("{name}.password"));
        std::fs::write(&path, format!("{password}\n")).expect("write the password file");
        path
    }

    /// `--etcd` and the TLS/auth flags for a process presenting `identity` as `user`.
    fn flags(&self, identity: &Identity, user: &str, password_file: &Path) -> Vec<String> {
        vec![
            format!("--etcd={}", self.etcd.endpoint),
            format!("--etcd-ca={}", self.pki.ca().display()),
            format!("--etcd-cert={}", identity.cert.display()),
            format!("--etcd-key={}", identity.key.display()),
            format!("--etcd-user={user}"),
            format!("--etcd-password-file={}", password_file.display()),
        ]
    }
}

fn coordinator_args(extra: Vec<String>) -> Vec<String> {
    let mut args: Vec<String> = [
        "coordinator",
        "--http-addr=127.0.0.1:0",
        "--grpc-addr=127.0.0.1:0",
        "--admin-addr=127.0.0.1:0",
        "--ensembles=config/ensembles.toml",
        "--ping-interval-ms=200",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra);
    args
}

fn worker_args(id: &str, extra: Vec<String>) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "worker".into(),
        "--listen=127.0.0.1:0".into(),
        format!("--worker-id={id}"),
        "--model-repository=models".into(),
        "--models=logreg".into(),
        "--lease-ttl-secs=2".into(),
    ];
    args.extend(extra);
    args
}

#[test]
fn a_worker_registers_over_tls_with_a_password_and_a_coordinator_routes_to_it() {
    let secure = SecureEtcd::start();
    let worker_password = secure.password_file("worker", "worker-secret");
    let worker = start_worker_with(
        "w-etcd-tls",
        &["logreg"],
        &[
            secure.flags(&secure.worker, WORKER_USER, &worker_password),
            vec!["--lease-ttl-secs=2".into()],
        ]
        .concat(),
    );
    // The ready line comes only once the record is in etcd; read it back as root.
    let record =
        secure
            .etcd
            .etcdctl(&["get", "/chorus/v1/workers/w-etcd-tls", "--print-value-only"]);
    assert!(
        record.contains(&worker.field("rpc_addr")),
        "worker record: {record:?}"
    );

    let coordinator_password = secure.password_file("coordinator", "coordinator-secret");
    let coordinator = spawn(
        "coordinator",
        &coordinator_args(secure.flags(
            &secure.coordinator,
            COORDINATOR_USER,
            &coordinator_password,
        )),
        "chorus-coordinator listening",
    );
    let http = Http::new(coordinator.field("http_addr").parse().expect("http addr"));
    wait_until(
        "the coordinator to route logreg to the worker it found in etcd",
        Duration::from_secs(60),
        || (http.get("/v2/models/logreg/ready").0 == 200).then_some(()),
    );
    let rows = Expected::load().rows();
    let reply = http.post_json("/v2/models/logreg/infer", &json_request(&rows[..2]));
    reply.expect_status(200);
    assert!(
        reply.json()["outputs"]
            .as_array()
            .is_some_and(|o| !o.is_empty()),
        "{:?}",
        reply.json()
    );
}

#[test]
fn a_wrong_password_stops_worker_and_coordinator_at_start_up() {
    let secure = SecureEtcd::start();
    let wrong = secure.password_file("wrong", "not-the-password");
    for (name, args, user) in [
        (
            "worker",
            worker_args(
                "w-wrong-password",
                secure.flags(&secure.worker, WORKER_USER, &wrong),
            ),
            WORKER_USER,
        ),
        (
            "coordinator",
            coordinator_args(secure.flags(&secure.coordinator, COORDINATOR_USER, &wrong)),
            COORDINATOR_USER,
        ),
    ] {
        let (status, stderr) = run_to_exit(&args, Duration::from_secs(60));
        assert!(
            !status.success(),
            "the {name} started with a wrong password"
        );
        assert!(
            stderr.contains(&format!("refused user '{user}'"))
                && stderr.contains("authentication failed")
                && stderr.contains("--etcd-password-file"),
            "the {name} did not say the password was refused: {stderr}"
        );
    }
    // Nothing was registered.
    let keys = secure
        .etcd
        .etcdctl(&["get", "--prefix", "/chorus/v1/workers/", "--keys-only"]);
    assert!(keys.trim().is_empty(), "{keys:?}");
}

#[test]
fn tls_with_an_http_endpoint_is_refused_with_a_hint_to_use_https() {
    let pki = Pki::new("etcd test CA");
    let flags = vec![
        "--etcd=http://127.0.0.1:1".to_string(),
        format!("--etcd-ca={}", pki.ca().display()),
    ];
    for (name, args) in [
        ("worker", worker_args("w-http", flags.clone())),
        ("coordinator", coordinator_args(flags.clone())),
    ] {
        let (status, stderr) = run_to_exit(&args, Duration::from_secs(60));
        assert!(!status.success(), "the {name} accepted TLS with http://");
        assert!(
            stderr.contains("--etcd-ca turns on TLS")
                && stderr.contains("write it as https://127.0.0.1:1"),
            "the {name} did not ask for https://: {stderr}"
        );
    }
}
