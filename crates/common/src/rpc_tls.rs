//! Mutual TLS on the worker RPC links: one CA, one certificate per process. A worker accepts only
//! coordinators whose client certificate chains to its `--rpc-tls-ca`; a coordinator accepts only
//! a worker whose certificate chains to its own `--rpc-tls-ca` and names the host it dialled (a
//! DNS name or an IP address SAN), so a record in etcd pointing elsewhere gets no traffic.
//!
//! Off unless all three files are given: TLS costs a handshake per link and per reconnect, and
//! plaintext stays the default on a trusted network.

use crate::tls::{self, TlsError};
use rustls::pki_types::ServerName;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, server};

/// Longest a worker waits for a connection's TLS handshake to complete: a peer that connects and
/// sends nothing (or trickles) must not hold a connection task and its socket forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The three files of one process's RPC identity (PEM): its certificate chain, its key, and the
/// CA the other end's certificate must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl RpcTlsFiles {
    /// The files from the `--rpc-tls-cert`, `--rpc-tls-key` and `--rpc-tls-ca` flags: all three
    /// (mTLS) or none (plaintext); anything in between is an error naming what is missing.
    pub fn from_flags(
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
    ) -> Result<Option<RpcTlsFiles>, String> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(RpcTlsFiles {
                cert: cert.into(),
                key: key.into(),
                ca: ca.into(),
            })),
            _ => {
                let missing: Vec<&str> = [
                    (cert.is_none(), "--rpc-tls-cert"),
                    (key.is_none(), "--rpc-tls-key"),
                    (ca.is_none(), "--rpc-tls-ca"),
                ]
                .into_iter()
                .filter_map(|(absent, flag)| absent.then_some(flag))
                .collect();
                Err(format!(
                    "--rpc-tls-cert, --rpc-tls-key and --rpc-tls-ca go together (mutual TLS on \
                     the worker links): {} missing; give all three or none",
                    missing.join(" and ")
                ))
            }
        }
    }

    /// A worker's side: present `cert`, require a client certificate from `ca`.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let config = tls::server_config(&self.cert, &self.key, Some(&self.ca))?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// A coordinator's side: trust workers certified by `ca`, present `cert` as the client.
    pub fn connector(&self) -> Result<TlsConnector, TlsError> {
        let config = tls::client_config(&self.ca, Some((&self.cert, &self.key)))?;
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

/// The name a worker's certificate must hold: the host part of its `host:port` address, an IP
/// address (`10.0.0.7`, `[::1]`) or a DNS name.
pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => return Err(format!("{addr} is not host:port")),
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("{addr}: '{host}' cannot be checked against a certificate: {e}"))
}

/// The server half of a handshake on an accepted connection, bounded by [`HANDSHAKE_TIMEOUT`].
/// Run it on the connection's own task: a slow peer must not hold up the accept loop.
pub async fn accept(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
) -> io::Result<server::TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(handshake) => handshake,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no TLS handshake within {}s",
                HANDSHAKE_TIMEOUT.as_secs_f64()
            ),
        )),
    }
}

/// Whether a failed handshake was the peer's TLS being refused (a certificate from the wrong CA,
/// none at all, a name mismatch) rather than a connection that closed or went quiet.
pub fn is_refusal(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::InvalidData
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_host_part_of_the_address() {
        let name = |addr| server_name(addr).map(|n| n.to_str().into_owned());
        assert_eq!(name("127.0.0.1:9000").unwrap(), "127.0.0.1");
        assert_eq!(name("[::1]:9000").unwrap(), "::1");
        assert_eq!(name("worker-3.example:9000").unwrap(), "worker-3.example");
        assert!(name("worker-3.example").is_err());
        assert!(name("bad_host!:9000").is_err());
    }

    #[test]
    fn the_three_files_go_together() {
        let p = |s: &'static str| Some(Path::new(s));
        assert_eq!(RpcTlsFiles::from_flags(None, None, None), Ok(None));
        assert!(
            RpcTlsFiles::from_flags(p("c"), p("k"), p("a"))
                .unwrap()
                .is_some()
        );
        let e = RpcTlsFiles::from_flags(p("c"), p("k"), None).unwrap_err();
        assert!(e.contains("--rpc-tls-ca missing"), "{e}");
        let e = RpcTlsFiles::from_flags(None, None, p("a")).unwrap_err();
        assert!(
            e.contains("--rpc-tls-cert and --rpc-tls-key missing"),
            "{e}"
        );
    }
}
