//! TLS on the public front doors (`--tls-cert`, `--tls-key`, optional `--tls-client-ca` for
//! mutual TLS with clients), reloaded without a restart: on SIGHUP, and when the files change
//! (checked every few seconds). A reload that fails (a half-written file, a key that does not
//! match) keeps the certificate in use and logs why; connections already open keep theirs.

use chorus_common::tls::{TlsError, server_config};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

/// How often the files' modification times are compared with those loaded.
const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// What each front door offers in ALPN: REST speaks HTTP/1.1 only, gRPC HTTP/2 only (gRPC
/// clients refuse a TLS connection that did not negotiate `h2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    Http1,
    H2,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::H2 => vec![b"h2".to_vec()],
        }
    }
}

/// The gateway TLS flags, shared by `chorus coordinator` and `chorus up` (which passes them on).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GatewayTlsArgs {
    /// PEM certificate chain for TLS on the public ports (REST and gRPC), with `--tls-key`.
    /// Reloaded on SIGHUP and when the file changes.
    #[arg(long, env = "CHORUS_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "CHORUS_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: clients must then present a certificate from one of them (mutual
    /// TLS).
    #[arg(long, env = "CHORUS_TLS_CLIENT_CA", value_name = "PEM")]
    pub tls_client_ca: Option<PathBuf>,
}

impl GatewayTlsArgs {
    /// The files, if TLS is on; a half-given set is an error.
    pub fn files(&self) -> anyhow::Result<Option<TlsFiles>> {
        TlsFiles::from_flags(
            self.tls_cert.clone(),
            self.tls_key.clone(),
            self.tls_client_ca.clone(),
        )
    }

    /// `off`, `tls` or `mtls`, for the start-up line.
    pub fn mode(&self) -> &'static str {
        match (&self.tls_cert, &self.tls_client_ca) {
            (None, _) => "off",
            (Some(_), None) => "tls",
            (Some(_), Some(_)) => "mtls",
        }
    }

    /// The same flags for a child process.
    pub fn to_flags(&self) -> Vec<String> {
        [
            ("tls-cert", &self.tls_cert),
            ("tls-key", &self.tls_key),
            ("tls-client-ca", &self.tls_client_ca),
        ]
        .into_iter()
        .filter_map(|(name, path)| path.as_ref().map(|p| format!("--{name}={}", p.display())))
        .collect()
    }
}

/// The certificate files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate from this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The files from the flags: none (plain TCP), or certificate and key (and optionally the
    /// client CA); anything else is a mistake worth refusing at start-up.
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> anyhow::Result<Option<Self>> {
        match (cert, key) {
            (None, None) if client_ca.is_none() => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert,
                key,
                client_ca,
            })),
            _ => anyhow::bail!(
                "TLS on the gateway needs both --tls-cert and --tls-key (and --tls-client-ca only with them)"
            ),
        }
    }

    fn modified(&self) -> Vec<Option<SystemTime>> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
            .collect()
    }

    fn acceptors(&self) -> Result<Acceptors, TlsError> {
        let base = server_config(&self.cert, &self.key, self.client_ca.as_deref())?;
        let with = |alpn: Alpn| {
            let mut config = base.clone();
            config.alpn_protocols = alpn.protocols();
            TlsAcceptor::from(Arc::new(config))
        };
        Ok(Acceptors {
            http1: with(Alpn::Http1),
            h2: with(Alpn::H2),
        })
    }
}

#[derive(Clone)]
struct Acceptors {
    http1: TlsAcceptor,
    h2: TlsAcceptor,
}

/// The gateway's TLS configuration now, shared by both front doors and swapped on reload.
pub struct GatewayTls {
    files: TlsFiles,
    current: RwLock<(Acceptors, Vec<Option<SystemTime>>)>,
}

impl GatewayTls {
    /// Loads the files, refusing bad ones (the coordinator then does not start).
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let stamp = files.modified();
        let acceptors = files.acceptors()?;
        Ok(Arc::new(GatewayTls {
            files,
            current: RwLock::new((acceptors, stamp)),
        }))
    }

    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The acceptor for a new connection on the `alpn` front door.
    pub fn acceptor(&self, alpn: Alpn) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        match alpn {
            Alpn::Http1 => current.0.http1.clone(),
            Alpn::H2 => current.0.h2.clone(),
        }
    }

    /// Reads the files again; on failure the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamp = self.files.modified();
        let acceptors = self.files.acceptors()?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (acceptors, stamp);
        Ok(())
    }

    fn changed_on_disk(&self) -> bool {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current.1 != self.files.modified()
    }

    /// Reloads on SIGHUP and when the files' modification times change, until the returned
    /// task is aborted.
    pub fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let tls = Arc::clone(self);
        tokio::spawn(async move {
            let mut hangups =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(WATCH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let reason = tokio::select! {
                    Some(()) = async { match hangups.as_mut() { Some(h) => h.recv().await, None => None } } => "SIGHUP",
                    _ = tick.tick() => {
                        if !tls.changed_on_disk() {
                            continue;
                        }
                        "files changed"
                    }
                };
                match tls.reload() {
                    Ok(()) => {
                        info!(reason, cert = %tls.files.cert.display(), "gateway TLS certificate reloaded")
                    }
                    Err(e) => {
                        warn!(reason, error = %e, "gateway TLS reload failed; keeping the certificate in use")
                    }
                }
            }
        })
    }
}
