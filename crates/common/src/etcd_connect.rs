//! How a worker or a coordinator connects to etcd: TLS (the CA that signed etcd's server
//! certificate, optionally a client certificate for etcd's `--client-cert-auth`) and etcd's
//! user/password authentication, from flags both processes share.
//!
//! Both sides read the same environment variables (`CHORUS_ETCD_CA`, `CHORUS_ETCD_CERT`,
//! `CHORUS_ETCD_KEY`, `CHORUS_ETCD_USER`, `CHORUS_ETCD_PASSWORD_FILE`, `CHORUS_ETCD_PASSWORD`):
//! the struct is flattened into both configurations, and a clap field has one `env` name. A worker
//! and a coordinator that need different users get them from their own environment (one process
//! per pod or unit), or from the flags.
//!
//! The password is never a flag value, which anyone on the host could read in `ps`: it comes from
//! `--etcd-password-file` (one trailing newline trimmed) or else from `CHORUS_ETCD_PASSWORD`.
//!
//! The files are read each time a client is built: at start-up, so that a bad file stops the
//! process before it listens, and again whenever the process opens a new etcd client. Rotating
//! them is done by restarting the process (docs/security.md).

use crate::tls::{self, TlsError};
use clap::Args;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;
use tracing::warn;

/// The environment variable holding the etcd password when `--etcd-password-file` is not given.
pub const PASSWORD_ENV: &str = "CHORUS_ETCD_PASSWORD";

/// TLS and authentication towards etcd. Everything off by default: plain `http://` and no user,
/// as etcd itself starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct EtcdConnectArgs {
    /// PEM CA certificate(s) that etcd's server certificate must chain to. Turns on TLS to etcd:
    /// every `--etcd` endpoint must then be `https://` (or have no scheme). Required for
    /// `https://` endpoints: Chorus trusts no built-in roots for etcd.
    #[arg(long, env = "CHORUS_ETCD_CA", value_name = "PEM")]
    pub etcd_ca: Option<PathBuf>,

    /// PEM client certificate presented to etcd (for etcd's `--client-cert-auth`), with
    /// `--etcd-key`; needs `--etcd-ca`.
    #[arg(long, env = "CHORUS_ETCD_CERT", value_name = "PEM")]
    pub etcd_cert: Option<PathBuf>,

    /// PEM private key of `--etcd-cert`.
    #[arg(long, env = "CHORUS_ETCD_KEY", value_name = "PEM")]
    pub etcd_key: Option<PathBuf>,

    /// etcd user to authenticate as (etcd's `auth enable`). Its password comes from
    /// `--etcd-password-file`, else from the `CHORUS_ETCD_PASSWORD` environment variable.
    #[arg(long, env = "CHORUS_ETCD_USER")]
    pub etcd_user: Option<String>,

    /// File holding the password of `--etcd-user` (a trailing newline is ignored). Preferred to
    /// `CHORUS_ETCD_PASSWORD`: a mounted secret file is not inherited by child processes.
    #[arg(long, env = "CHORUS_ETCD_PASSWORD_FILE", value_name = "FILE")]
    pub etcd_password_file: Option<PathBuf>,
}

/// Why the etcd connection flags cannot be used; each message names the flag to fix.
#[derive(Debug, thiserror::Error)]
pub enum EtcdConnectError {
    #[error(
        "--etcd-cert and --etcd-key go together (the client certificate presented to etcd): \
         {missing} is missing"
    )]
    HalfIdentity { missing: &'static str },

    #[error(
        "--etcd-cert needs --etcd-ca: a client certificate is only sent over TLS, and TLS to etcd \
         needs the CA that signed etcd's server certificate"
    )]
    IdentityWithoutCa,

    #[error(
        "--etcd-ca turns on TLS to etcd, but endpoint {endpoint} is plain http://: write it as \
         https://{rest}"
    )]
    PlainEndpoint { endpoint: String, rest: String },

    #[error(
        "etcd endpoint {endpoint} is https:// but --etcd-ca is not given: give the PEM CA that \
         signed etcd's server certificate (CHORUS_ETCD_CA); no built-in roots are trusted"
    )]
    NoCa { endpoint: String },

    #[error("--etcd-user is empty: give the etcd user name, or drop the flag")]
    EmptyUser,

    #[error(
        "--etcd-user {user} needs a password: put it in a file given with --etcd-password-file \
         (CHORUS_ETCD_PASSWORD_FILE) or in the CHORUS_ETCD_PASSWORD environment variable"
    )]
    NoPassword { user: String },

    #[error("--etcd-password-file is given without --etcd-user: name the etcd user too")]
    PasswordWithoutUser,

    #[error("cannot read --etcd-password-file {}: {source}", path.display())]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("the etcd password in {from} is empty")]
    EmptyPassword { from: String },

    #[error("etcd TLS (--etcd-ca, --etcd-cert, --etcd-key): {0}")]
    Tls(#[from] TlsError),

    #[error(
        "etcd at {endpoints:?} refused user '{user}': {message}. Check --etcd-user and its \
         password (--etcd-password-file or CHORUS_ETCD_PASSWORD), that the user exists in etcd \
         (etcdctl user get {user}) and that its role grants the keys it needs (docs/security.md)"
    )]
    Refused {
        endpoints: Vec<String>,
        user: String,
        message: String,
    },
}

impl EtcdConnectArgs {
    /// Checks the flags against `endpoints` and builds the options of an etcd client: TLS when
    /// `--etcd-ca` is given, the user and password when `--etcd-user` is. Reads every file (and
    /// `CHORUS_ETCD_PASSWORD`) now.
    ///
    /// Never log the result: etcd-client's `Debug` of the options shows the password.
    pub fn connect_options(
        &self,
        endpoints: &[String],
    ) -> Result<ConnectOptions, EtcdConnectError> {
        self.connect_options_with(endpoints, std::env::var(PASSWORD_ENV).ok())
    }

    /// [`Self::connect_options`] with the environment's password passed in (tests).
    fn connect_options_with(
        &self,
        endpoints: &[String],
        env_password: Option<String>,
    ) -> Result<ConnectOptions, EtcdConnectError> {
        check_schemes(endpoints, self.etcd_ca.is_some())?;
        let mut options = ConnectOptions::new();
        if let Some(tls) = self.tls_options()? {
            options = options.with_tls(tls);
        }
        if let Some((user, password)) = self.credentials(env_password)? {
            // etcd's tokens expire (5 minutes unused with the default simple tokens); a worker
            // that only renews its lease would otherwise fail its first write hours later.
            options = options
                .with_user(user, password)
                .with_auto_token_refresh(true);
        }
        Ok(options)
    }

    /// The same settings as flags for a child process (`chorus up`). The password stays in its
    /// file or in the inherited environment: it is never put on a command line.
    pub fn to_flags(&self) -> Vec<String> {
        let path = |name: &str, value: &Option<PathBuf>| {
            value.as_ref().map(|p| format!("--{name}={}", p.display()))
        };
        [
            path("etcd-ca", &self.etcd_ca),
            path("etcd-cert", &self.etcd_cert),
            path("etcd-key", &self.etcd_key),
            self.etcd_user.as_ref().map(|u| format!("--etcd-user={u}")),
            path("etcd-password-file", &self.etcd_password_file),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// TLS options with the PEM files checked by the workspace's loaders, so that a missing,
    /// swapped or mismatched file is named before tonic sees it.
    fn tls_options(&self) -> Result<Option<TlsOptions>, EtcdConnectError> {
        let identity = match (&self.etcd_cert, &self.etcd_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (Some(_), None) => {
                return Err(EtcdConnectError::HalfIdentity {
                    missing: "--etcd-key",
                });
            }
            (None, Some(_)) => {
                return Err(EtcdConnectError::HalfIdentity {
                    missing: "--etcd-cert",
                });
            }
        };
        let Some(ca) = &self.etcd_ca else {
            return match identity {
                Some(_) => Err(EtcdConnectError::IdentityWithoutCa),
                None => Ok(None),
            };
        };
        // Builds (and drops) a rustls config: it parses every file and checks that the key
        // belongs to the certificate, with errors naming the file.
        tls::client_config(ca, identity)?;
        let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let Some((cert, key)) = identity {
            options = options.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(Some(options))
    }

    /// The user and password, or `None` without `--etcd-user`.
    fn credentials(
        &self,
        env_password: Option<String>,
    ) -> Result<Option<(String, String)>, EtcdConnectError> {
        let Some(user) = &self.etcd_user else {
            return match self.etcd_password_file {
                Some(_) => Err(EtcdConnectError::PasswordWithoutUser),
                None => Ok(None),
            };
        };
        let user = user.trim();
        if user.is_empty() {
            return Err(EtcdConnectError::EmptyUser);
        }
        let (password, from) = match &self.etcd_password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| {
                    EtcdConnectError::PasswordFile {
                        path: path.clone(),
                        source,
                    }
                })?;
                (strip_newline(&text).to_string(), path.display().to_string())
            }
            None => match env_password.filter(|p| !p.is_empty()) {
                Some(password) => (password, PASSWORD_ENV.to_string()),
                None => {
                    return Err(EtcdConnectError::NoPassword {
                        user: user.to_string(),
                    });
                }
            },
        };
        if password.is_empty() {
            return Err(EtcdConnectError::EmptyPassword { from });
        }
        Ok(Some((user.to_string(), password)))
    }
}

/// TLS needs `https://` endpoints (etcd-client refuses TLS options with `http://` with a message
/// that does not name our flag), and `https://` needs a CA (no built-in roots are compiled in).
/// An endpoint without a scheme follows `--etcd-ca`.
fn check_schemes(endpoints: &[String], tls: bool) -> Result<(), EtcdConnectError> {
    for endpoint in endpoints {
        if tls && let Some(rest) = endpoint.strip_prefix("http://") {
            return Err(EtcdConnectError::PlainEndpoint {
                endpoint: endpoint.clone(),
                rest: rest.to_string(),
            });
        }
        if !tls && endpoint.starts_with("https://") {
            return Err(EtcdConnectError::NoCa {
                endpoint: endpoint.clone(),
            });
        }
    }
    Ok(())
}

/// A password file's content without the one line ending editors and `echo` add.
fn strip_newline(text: &str) -> &str {
    let text = text.strip_suffix('\n').unwrap_or(text);
    text.strip_suffix('\r').unwrap_or(text)
}

fn read(path: &Path) -> Result<Vec<u8>, EtcdConnectError> {
    std::fs::read(path).map_err(|source| {
        EtcdConnectError::Tls(TlsError::Read {
            path: path.into(),
            source,
        })
    })
}

/// Whether etcd turned down the user or password (wrong password, unknown user, authentication
/// not enabled on the server), as opposed to not answering: retrying will not help, so callers
/// stop with this error instead of waiting for etcd.
pub fn is_refused_credentials(error: &etcd_client::Error) -> bool {
    // etcd answers Authenticate with InvalidArgument ("authentication failed, invalid user ID or
    // password"), FailedPrecondition ("authentication is not enabled") or PermissionDenied; an
    // unreachable server shows as Unavailable or a transport error instead.
    matches!(
        error,
        etcd_client::Error::GRpcStatus(status) if matches!(
            status.code(),
            Code::InvalidArgument | Code::FailedPrecondition | Code::Unauthenticated | Code::PermissionDenied
        )
    )
}

impl EtcdConnectArgs {
    /// A start-up check: the flags and files, and with `--etcd-user` one authentication
    /// (bounded by `timeout`). Refused credentials are an error; an etcd that does not answer
    /// is only a warning, since a process may start before etcd and keeps trying. Without a
    /// user nothing is asked of etcd (etcd-client connects lazily).
    pub async fn check(
        &self,
        endpoints: &[String],
        timeout: Duration,
    ) -> Result<(), EtcdConnectError> {
        let options = self
            .connect_options(endpoints)?
            .with_connect_timeout(timeout);
        let Some(user) = &self.etcd_user else {
            return Ok(());
        };
        match tokio::time::timeout(timeout, Client::connect(endpoints, Some(options))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if is_refused_credentials(&e) => Err(EtcdConnectError::Refused {
                endpoints: endpoints.to_vec(),
                user: user.trim().to_string(),
                message: refusal_message(&e),
            }),
            Ok(Err(e)) => {
                warn!(endpoints = ?endpoints, error = %e, "cannot check the etcd credentials now: etcd did not answer; going on and retrying");
                Ok(())
            }
            Err(_) => {
                warn!(endpoints = ?endpoints, timeout_ms = timeout.as_millis() as u64, "cannot check the etcd credentials now: etcd did not answer in time; going on and retrying");
                Ok(())
            }
        }
    }
}

/// etcd's own words for a refusal ("etcdserver: authentication failed, invalid user ID or
/// password"), without etcd-client's "grpc request error: status: ..." wrapping.
pub fn refusal_message(error: &etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) => status.message().to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
