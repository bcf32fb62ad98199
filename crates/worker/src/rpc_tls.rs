//! The worker's `--rpc-tls-*` flags: mutual TLS on its RPC listener (see
//! `chorus_common::rpc_tls`). Coordinators must present a certificate from `--rpc-tls-ca`.

use crate::error::LoadError;
use chorus_common::rpc_tls::RpcTlsFiles;
use clap::Args;
use std::path::PathBuf;
use tokio_rustls::TlsAcceptor;

/// Mutual TLS on the RPC listener: all three files or none (plaintext, the default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct RpcTlsArgs {
    /// PEM certificate chain (leaf first) the worker presents to coordinators. Its subject
    /// alternative names must include the host of the address coordinators dial (the
    /// advertised address): a DNS name or an IP address.
    #[arg(long, env = "CHORUS_WORKER_RPC_TLS_CERT", value_name = "PEM")]
    pub rpc_tls_cert: Option<PathBuf>,

    /// PEM private key of `--rpc-tls-cert`.
    #[arg(long, env = "CHORUS_WORKER_RPC_TLS_KEY", value_name = "PEM")]
    pub rpc_tls_key: Option<PathBuf>,

    /// PEM CA certificate(s) that coordinators' client certificates must chain to; a
    /// coordinator without one is refused at the handshake.
    #[arg(long, env = "CHORUS_WORKER_RPC_TLS_CA", value_name = "PEM")]
    pub rpc_tls_ca: Option<PathBuf>,
}

impl RpcTlsArgs {
    /// The three files, `None` when TLS is off, or which flag is missing.
    pub fn files(&self) -> Result<Option<RpcTlsFiles>, LoadError> {
        RpcTlsFiles::from_flags(
            self.rpc_tls_cert.as_deref(),
            self.rpc_tls_key.as_deref(),
            self.rpc_tls_ca.as_deref(),
        )
        .map_err(LoadError::Config)
    }

    /// The handshake side of the listener, with every file read and checked now, so that a bad
    /// file stops the worker at start-up rather than at its first connection.
    pub fn acceptor(&self) -> Result<Option<TlsAcceptor>, LoadError> {
        match self.files()? {
            Some(files) => Ok(Some(files.acceptor()?)),
            None => Ok(None),
        }
    }
}
