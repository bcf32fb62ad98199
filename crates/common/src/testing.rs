//! Test support shared by every crate's tests (feature `testing`): a real etcd server on
//! loopback, started from Debian's `etcd-server` binary, owned and stopped by the test (plain, or
//! with TLS and users: [`Etcd::start_tls`], [`Etcd::enable_auth`]), and throw-away certificates
//! ([`certs`]).

pub mod certs;

use certs::{Identity, Pki};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A single-member etcd on 127.0.0.1 with its own data directory. Killed and reaped on drop.
pub struct Etcd {
    /// `http://127.0.0.1:PORT` (or `https://` with TLS), ready for a client.
    pub endpoint: String,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    tls: Option<ServerTls>,
    /// The root password once [`Etcd::enable_auth`] has run (etcdctl then logs in as root).
    root_password: Option<String>,
}

/// The TLS files of an etcd started with [`Etcd::start_tls`].
struct ServerTls {
    ca: PathBuf,
    server: Identity,
    /// The client certificate etcdctl presents (CN `root`).
    etcdctl: Identity,
    client_cert_auth: bool,
}

/// A user made by [`Etcd::enable_auth`], with a role of the same name allowed `prefix`.
#[derive(Debug, Clone, Copy)]
pub struct EtcdUser<'a> {
    pub name: &'a str,
    pub password: &'a str,
    /// Keys under this prefix are allowed (etcd's `--prefix=true` permission).
    pub prefix: &'a str,
    /// `readwrite` when true, `read` otherwise.
    pub write: bool,
}

/// A port that was free a moment ago (etcd cannot bind port 0 and report it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The etcd binary: `CHORUS_ETCD_BIN`, else `etcd` on PATH.
fn etcd_binary() -> PathBuf {
    std::env::var_os("CHORUS_ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

impl Etcd {
    /// Starts etcd and waits until it answers on its client port.
    pub fn start() -> Etcd {
        Etcd::launch(None)
    }

    /// Starts etcd serving clients over TLS only (`https://127.0.0.1:PORT`), with a server
    /// certificate for 127.0.0.1 from `pki`. With `client_cert_auth`, clients must also present
    /// a certificate from `pki` (etcd's `--client-cert-auth`).
    pub fn start_tls(pki: &Pki, client_cert_auth: bool) -> Etcd {
        Etcd::launch(Some(ServerTls {
            ca: pki.ca().to_path_buf(),
            server: pki.issue("etcd-server", &["127.0.0.1", "localhost"]),
            etcdctl: pki.issue("root", &["etcdctl.local"]),
            client_cert_auth,
        }))
    }

    fn launch(tls: Option<ServerTls>) -> Etcd {
        let client_port = free_port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut etcd = Etcd {
            endpoint: format!("{scheme}://127.0.0.1:{client_port}"),
            client_port,
            peer_port: free_port(),
            dir: tempfile::tempdir().expect("etcd data dir"),
            child: None,
            tls,
            root_password: None,
        };
        etcd.resume();
        etcd
    }

    /// Turns on etcd's authentication: a `root` user with `root_password`, then each of `users`
    /// with a role of its own name granted its prefix, through Debian's `etcdctl` (v3 API).
    pub fn enable_auth(&mut self, root_password: &str, users: &[EtcdUser<'_>]) {
        assert!(self.root_password.is_none(), "auth is already enabled");
        self.etcdctl(&[
            "user",
            "add",
            "root",
            &format!("--new-user-password={root_password}"),
        ]);
        for user in users {
            let permission = if user.write { "readwrite" } else { "read" };
            self.etcdctl(&["role", "add", user.name]);
            self.etcdctl(&[
                "role",
                "grant-permission",
                "--prefix=true",
                user.name,
                permission,
                user.prefix,
            ]);
            self.etcdctl(&[
                "user",
                "add",
                user.name,
                &format!("--new-user-password={}", user.password),
            ]);
            self.etcdctl(&["user", "grant-role", user.name, user.name]);
        }
        self.etcdctl(&["auth", "enable"]);
        self.root_password = Some(root_password.to_string());
    }

    /// Runs `etcdctl <args>` against this etcd (with its TLS files, and as root once auth is
    /// on); panics with etcdctl's stderr when it fails. Returns its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .arg("--command-timeout=5s");
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cacert={}", tls.ca.display()))
                .arg(format!("--cert={}", tls.etcdctl.cert.display()))
                .arg(format!("--key={}", tls.etcdctl.key.display()));
        }
        if let Some(password) = &self.root_password {
            command
                .arg("--user=root")
                .arg(format!("--password={password}"));
        }
        let output = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("etcdctl runs (install Debian's etcd-client)");
        assert!(
            output.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// (Re)starts the server on the same ports and data; waits until it accepts connections.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(etcd_binary());
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cert-file={}", tls.server.cert.display()))
                .arg(format!("--key-file={}", tls.server.key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()));
            if tls.client_cert_auth {
                command.arg("--client-cert-auth");
            }
        }
        let child = command
            .arg("--name=chorus-test")
            .arg(format!("--data-dir={}", self.dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={}", self.endpoint))
            .arg(format!("--advertise-client-urls={}", self.endpoint))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=chorus-test={peer}"))
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start etcd ({e}); install Debian's etcd-server (scripts/install-deps.sh) or set CHORUS_ETCD_BIN")
            });
        self.child = Some(child);
        let give_up = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_err() {
            assert!(Instant::now() < give_up, "etcd did not listen within 30s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server with SIGKILL (data stays; [`Etcd::resume`] brings it back).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
