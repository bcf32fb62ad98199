//! Unix-socket links between a coordinator and the workers on its own host.
//!
//! Over loopback TCP every RPC frame goes through the whole TCP/IP stack twice (the sender's
//! syscall runs the receiver's side too); a Unix socket hands the bytes across directly, which
//! costs about half the kernel time per message. A worker started with `--local-socket` serves
//! the same RPCs there (plaintext: the socket's directory permissions are its access control)
//! and registers the path with its [`host_identity`]; a coordinator whose identity is the same
//! dials the path instead of the TCP address. A static worker list names such a worker as
//! `unix:/path`.

use std::sync::OnceLock;

/// Prefix of a worker address that is a Unix socket path (`unix:/run/chorus/worker-0.sock`).
const UNIX_PREFIX: &str = "unix:";

/// The worker address of the Unix socket at `path` (`unix:/path`).
pub fn unix_addr(path: &str) -> String {
    format!("{UNIX_PREFIX}{path}")
}

/// The socket path of a `unix:` worker address, if it is one.
pub fn unix_path(addr: &str) -> Option<&str> {
    addr.strip_prefix(UNIX_PREFIX)
}

/// Which kernel and mount namespace this process runs in: two processes with the same identity
/// resolve a socket path to the same socket. The kernel's boot id tells hosts (and reboots)
/// apart; the mount namespace tells containers on one host apart, whose paths differ even where
/// they are spelled the same. `None` where either cannot be read (not Linux, no procfs): such a
/// process never uses local links.
pub fn host_identity() -> Option<&'static str> {
    static IDENTITY: OnceLock<Option<String>> = OnceLock::new();
    IDENTITY
        .get_or_init(|| {
            let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
            let mounts = std::fs::read_link("/proc/self/ns/mnt").ok()?;
            Some(format!("{}/{}", boot.trim(), mounts.display()))
        })
        .as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_addresses_are_told_from_tcp_ones() {
        assert_eq!(unix_path("unix:/tmp/w.sock"), Some("/tmp/w.sock"));
        assert_eq!(unix_path("127.0.0.1:9000"), None);
        assert_eq!(unix_path("worker-0:9000"), None);
        assert_eq!(unix_path(&unix_addr("/tmp/w.sock")), Some("/tmp/w.sock"));
    }

    #[test]
    fn the_host_identity_names_the_boot_and_the_mount_namespace() {
        let identity = host_identity().expect("procfs is readable on Linux");
        let (boot, mounts) = identity.split_once('/').unwrap();
        assert_eq!(boot.len(), 36, "a UUID: {identity}");
        assert!(mounts.starts_with("mnt:["), "{identity}");
        assert_eq!(host_identity(), Some(identity), "stable within a process");
    }
}
