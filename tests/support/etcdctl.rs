//! Reading the cluster's etcd from tests through Debian's `etcdctl` (v3 API).

use serde_json::Value;
use std::process::Command;

/// A worker key as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    pub lease: i64,
    pub create_revision: i64,
}

/// The worker's registration key, if present.
pub fn worker_key(endpoint: &str, worker_id: &str) -> Option<KeyState> {
    let output = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints={endpoint}"),
            "--command-timeout=2s",
            "get",
            &format!("/chorus/v1/workers/{worker_id}"),
            "-w",
            "json",
        ])
        .output()
        .expect("etcdctl runs (install Debian's etcd-client)");
    assert!(
        output.status.success(),
        "etcdctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reply: Value = serde_json::from_slice(&output.stdout).expect("etcdctl json");
    let kv = reply["kvs"].as_array()?.first()?;
    Some(KeyState {
        lease: kv["lease"].as_i64().unwrap_or(0),
        create_revision: kv["create_revision"].as_i64().unwrap_or(0),
    })
}
