//! Start-up errors: why a worker could not load its models. Request-time errors are
//! `chorus_common::WorkerError`, which travels over the wire.

use crate::ort_library::OrtLibraryError;
use std::path::PathBuf;

/// Why [`crate::LoadedWorker::load`] failed; every variant says what to change.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A worker flag has a value that cannot work.
    #[error("invalid worker configuration: {0}")]
    Config(String),

    #[error(transparent)]
    OrtLibrary(#[from] OrtLibraryError),

    /// A `--rpc-tls-*` file cannot be read or does not fit (the error names the file).
    #[error("worker RPC TLS (--rpc-tls-cert/--rpc-tls-key/--rpc-tls-ca): {0}")]
    RpcTls(#[from] chorus_common::tls::TlsError),

    /// The repository directory itself is missing, unreadable or empty.
    #[error("model repository {}: {message}", path.display())]
    Repository { path: PathBuf, message: String },

    /// `--models` names a model the repository does not have.
    #[error("--models names '{name}', which is not in the model repository {}; it has {available:?}", repo.display())]
    UnknownModel {
        name: String,
        repo: PathBuf,
        available: Vec<String>,
    },

    /// A model's directory layout is wrong (no versions, a version without model.onnx).
    #[error("model '{model}' in {}: {message}", path.display())]
    ModelLayout {
        model: String,
        path: PathBuf,
        message: String,
    },

    /// A model's `config.toml` cannot be read, parsed or has a bad value.
    #[error("{}: {message}", path.display())]
    ModelConfig { path: PathBuf, message: String },

    /// ONNX Runtime refused the model, or the model uses tensor types Chorus cannot serve.
    #[error("model '{model}' version {version}: {message}")]
    Model {
        model: String,
        version: u64,
        message: String,
    },

    /// The model's config asks for a provider that could not be registered, and requires it.
    #[error(
        "model '{model}' version {version}: execution provider {provider} is required (require_provider = true) but could not be used: {reason}"
    )]
    ProviderUnavailable {
        model: String,
        version: u64,
        provider: String,
        reason: String,
    },

    /// The OS refused to start an instance thread.
    #[error("model '{model}' version {version}: cannot start an instance thread: {source}")]
    Thread {
        model: String,
        version: u64,
        source: std::io::Error,
    },
}
