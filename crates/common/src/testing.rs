//! Test support shared by every crate's tests (feature `testing`): a real etcd server on
//! loopback, started from Debian's `etcd-server` binary, owned and stopped by the test.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A single-member etcd on 127.0.0.1 with its own data directory. Killed and reaped on drop.
pub struct Etcd {
    /// `http://127.0.0.1:PORT`, ready for a client.
    pub endpoint: String,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
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
        let mut etcd = Etcd {
            endpoint: String::new(),
            client_port: free_port(),
            peer_port: free_port(),
            dir: tempfile::tempdir().expect("etcd data dir"),
            child: None,
        };
        etcd.endpoint = format!("http://127.0.0.1:{}", etcd.client_port);
        etcd.resume();
        etcd
    }

    /// (Re)starts the server on the same ports and data; waits until it accepts connections.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(etcd_binary())
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
