//! TLS material for every Chorus link: one `ring` crypto provider for the whole workspace, PEM
//! loaders whose errors name the file and what is wrong with it, and the rustls server and
//! client configurations built from them (mTLS when a client CA or a client identity is given).
//!
//! Files are read once, when a config is built: rotating a certificate means restarting the
//! process (docs/security.md).

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Why TLS material could not be loaded or assembled; every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{} is not valid PEM: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },

    #[error(
        "no certificate in PEM file {}: expected '-----BEGIN CERTIFICATE-----' blocks (is it the key?)",
        path.display()
    )]
    NoCertificate { path: PathBuf },

    #[error(
        "no private key in PEM file {}: expected a PKCS#8 'PRIVATE KEY', 'RSA PRIVATE KEY' or 'EC PRIVATE KEY' block",
        path.display()
    )]
    NoPrivateKey { path: PathBuf },

    #[error(
        "key {} does not match certificate {}: give the key the certificate was issued for",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },

    #[error("certificate {} with key {} is not usable: {reason}", cert.display(), key.display())]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        reason: rustls::Error,
    },

    #[error("CA file {} is not usable as a trust anchor: {reason}", path.display())]
    BadCa { path: PathBuf, reason: String },
}

/// The crypto provider every Chorus TLS config uses (`ring`), built once.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// Every certificate in the PEM file at `path`, in file order (leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.into() });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file at `path`.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey { path: path.into() },
        other => pem_error(path, other),
    })
}

/// The certificates in the PEM file at `path` as trust anchors.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            path: path.into(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// A server presenting `cert` (a PEM chain, leaf first) with `key`. With `client_ca`, clients
/// must present a certificate signed by that CA (mTLS); without, no client certificate is asked.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, TlsError> {
    let chain = load_certs(cert)?;
    let private_key = load_private_key(key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider())
                    .build()
                    .map_err(|e| TlsError::BadCa {
                        path: ca.into(),
                        reason: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(chain, private_key)
        .map_err(|e| identity_error(cert, key, e))
}

/// A client trusting the CA certificates in `ca`. With `identity` (certificate chain, key), it
/// presents that client certificate when the server asks (mTLS).
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(load_roots(ca)?);
    match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_private_key(key)?)
            .map_err(|e| identity_error(cert, key, e)),
        None => Ok(builder.with_no_client_auth()),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })
}

fn pem_error(path: &Path, error: pem::Error) -> TlsError {
    match error {
        pem::Error::Io(source) => TlsError::Read {
            path: path.into(),
            source,
        },
        other => TlsError::Pem {
            path: path.into(),
            reason: other.to_string(),
        },
    }
}

fn identity_error(cert: &Path, key: &Path, error: rustls::Error) -> TlsError {
    match error {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::KeyMismatch {
                cert: cert.into(),
                key: key.into(),
            }
        }
        reason => TlsError::Identity {
            cert: cert.into(),
            key: key.into(),
            reason,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    /// A self-signed certificate for `localhost` and its key, written as PEM files in `dir`.
    fn write_identity(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    fn message(error: TlsError) -> String {
        error.to_string()
    }

    #[test]
    fn good_files_load_and_make_both_configs() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_identity(dir.path(), "a");
        assert_eq!(load_certs(&cert).unwrap().len(), 1);
        load_private_key(&key).unwrap();
        assert_eq!(load_roots(&cert).unwrap().len(), 1);
        server_config(&cert, &key, None).unwrap();
        server_config(&cert, &key, Some(&cert)).unwrap();
        client_config(&cert, None).unwrap();
        client_config(&cert, Some((&cert, &key))).unwrap();
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = message(load_certs(&missing).unwrap_err());
        assert!(
            e.starts_with("cannot read") && e.contains("nope.pem"),
            "{e}"
        );
        let e = message(load_private_key(&missing).unwrap_err());
        assert!(
            e.starts_with("cannot read") && e.contains("nope.pem"),
            "{e}"
        );
    }

    #[test]
    fn an_empty_file_has_no_certificate_and_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = message(load_certs(&empty).unwrap_err());
        assert!(
            e.contains("no certificate in PEM file") && e.contains("empty.pem"),
            "{e}"
        );
        let e = message(load_private_key(&empty).unwrap_err());
        assert!(
            e.contains("no private key in PEM file") && e.contains("empty.pem"),
            "{e}"
        );
        assert!(load_roots(&empty).is_err());
    }

    #[test]
    fn swapped_or_broken_files_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_identity(dir.path(), "a");
        // The key where the certificate belongs, and the other way round.
        let e = message(load_certs(&key).unwrap_err());
        assert!(e.contains("no certificate in PEM file"), "{e}");
        let e = message(load_private_key(&cert).unwrap_err());
        assert!(e.contains("no private key in PEM file"), "{e}");

        let broken = dir.path().join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
        let e = message(load_certs(&broken).unwrap_err());
        assert!(
            e.contains("broken.pem") && e.contains("not valid PEM"),
            "{e}"
        );

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = message(server_config(&garbage, &key, None).unwrap_err());
        assert!(e.contains("garbage.pem") && e.contains("not usable"), "{e}");
    }

    #[test]
    fn a_key_from_another_certificate_is_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = write_identity(dir.path(), "a");
        let (_, other_key) = write_identity(dir.path(), "b");
        let e = message(server_config(&cert, &other_key, None).unwrap_err());
        assert!(e.contains("does not match certificate"), "{e}");
        assert!(e.contains("b.key") && e.contains("a.crt"), "{e}");
        let e = message(client_config(&cert, Some((&cert, &other_key))).unwrap_err());
        assert!(e.contains("does not match certificate"), "{e}");
    }
}
