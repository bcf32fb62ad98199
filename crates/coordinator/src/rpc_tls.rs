//! The coordinator's `--rpc-tls-*` flags: mutual TLS on its links to workers (see
//! `chorus_common::rpc_tls`). A worker is trusted only if its certificate chains to
//! `--rpc-tls-ca` and names the host the coordinator dials; otherwise the connect fails and the
//! pool treats the worker as unreachable, so it gets no traffic.

use anyhow::Context;
use chorus_common::rpc_tls::RpcTlsFiles;
use clap::Args;
use std::path::PathBuf;
use tokio_rustls::TlsConnector;

/// Mutual TLS to workers: all three files or none (plaintext, the default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct RpcTlsArgs {
    /// PEM client certificate chain (leaf first) the coordinator presents to workers; it must
    /// chain to the workers' `--rpc-tls-ca`.
    #[arg(long, env = "CHORUS_RPC_TLS_CERT", value_name = "PEM")]
    pub rpc_tls_cert: Option<PathBuf>,

    /// PEM private key of `--rpc-tls-cert`.
    #[arg(long, env = "CHORUS_RPC_TLS_KEY", value_name = "PEM")]
    pub rpc_tls_key: Option<PathBuf>,

    /// PEM CA certificate(s) that workers' certificates must chain to. A worker's certificate
    /// must also name the host part of its address (DNS name or IP address SAN).
    #[arg(long, env = "CHORUS_RPC_TLS_CA", value_name = "PEM")]
    pub rpc_tls_ca: Option<PathBuf>,
}

impl RpcTlsArgs {
    /// The handshake side of every worker link, `None` for plaintext; every file is read and
    /// checked now, so that a bad one stops the coordinator at start-up.
    pub fn connector(&self) -> anyhow::Result<Option<TlsConnector>> {
        let files = RpcTlsFiles::from_flags(
            self.rpc_tls_cert.as_deref(),
            self.rpc_tls_key.as_deref(),
            self.rpc_tls_ca.as_deref(),
        )
        .map_err(anyhow::Error::msg)?;
        let Some(files) = files else {
            return Ok(None);
        };
        let connector = files
            .connector()
            .context("coordinator RPC TLS (--rpc-tls-cert/--rpc-tls-key/--rpc-tls-ca)")?;
        Ok(Some(connector))
    }
}
