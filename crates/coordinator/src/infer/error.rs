//! The inference core's one error type: what went wrong, never how a protocol says it. The
//! front ends each map [`ErrorKind`] in exactly one table: `http/error.rs` to HTTP statuses,
//! `grpc/status.rs` to gRPC codes (both tables are in docs/protocol.md).

use crate::ensemble::EnsembleError;
use crate::pool::CallError;
use chorus_common::WorkerError;
use chorus_common::validate::InputError;

/// Every way a request can fail, from decoding to the members' answers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InferError {
    /// The request itself is wrong: malformed, mistyped, misshapen, unsupported parameters.
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown model '{model}'{}", version.as_ref().map(|v| format!(" version {v}")).unwrap_or_default())]
    ModelNotFound {
        model: String,
        version: Option<String>,
    },
    /// Something other than a model was not found (an HTTP path, say).
    #[error("{0}")]
    NotFound(String),
    /// The resource exists but not for this method (HTTP only).
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error(
        "the inputs hold {bytes} bytes, more than the {limit} bytes one worker call may carry (raise --max-frame-bytes on coordinator and workers, or split the batch)"
    )]
    CallTooLarge { bytes: usize, limit: usize },
    #[error("{what} is larger than the limit of {limit} bytes")]
    PayloadTooLarge { what: &'static str, limit: usize },
    /// The request is encoded in a way Chorus does not read (a `Content-Encoding`, say).
    #[error("{0}")]
    UnsupportedEncoding(String),
    /// Nothing can answer now (no quorum, no replica); retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// Workers are shedding load; retrying later may work.
    #[error("{0}")]
    Overloaded(String),
    /// Admission turned the request away (a rate or concurrency limit); retry after the time
    /// given.
    #[error("{message}")]
    Throttled {
        message: String,
        retry_after: std::time::Duration,
    },
    /// No API key, or one the server does not know.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid API key that may not use this model.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The client stopped sending its request part-way (REST: a body that stalls).
    #[error("{0}")]
    ClientTooSlow(String),
    #[error("{0}")]
    Internal(String),
}

/// What kind of failure an [`InferError`] is: the only thing the front ends' tables read, and
/// the `outcome` label of `chorus_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    MethodNotAllowed,
    TooLarge,
    UnsupportedEncoding,
    Unavailable,
    Overloaded,
    Unauthenticated,
    PermissionDenied,
    DeadlineExceeded,
    /// The client took too long to send its request.
    ClientTimeout,
    /// The client went away before the answer (never returned, only counted).
    Cancelled,
    Internal,
}

impl ErrorKind {
    /// The metrics label of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::UnsupportedEncoding => "unsupported_encoding",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::ClientTimeout => "client_timeout",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
        }
    }
}

impl InferError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            InferError::BadRequest(_) => ErrorKind::InvalidArgument,
            InferError::ModelNotFound { .. } | InferError::NotFound(_) => ErrorKind::NotFound,
            InferError::MethodNotAllowed(_) => ErrorKind::MethodNotAllowed,
            InferError::CallTooLarge { .. } | InferError::PayloadTooLarge { .. } => {
                ErrorKind::TooLarge
            }
            InferError::UnsupportedEncoding(_) => ErrorKind::UnsupportedEncoding,
            InferError::Unavailable(_) => ErrorKind::Unavailable,
            InferError::Overloaded(_) | InferError::Throttled { .. } => ErrorKind::Overloaded,
            InferError::Unauthenticated(_) => ErrorKind::Unauthenticated,
            InferError::PermissionDenied(_) => ErrorKind::PermissionDenied,
            InferError::DeadlineExceeded(_) => ErrorKind::DeadlineExceeded,
            InferError::ClientTooSlow(_) => ErrorKind::ClientTimeout,
            InferError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// How long the client should wait before retrying, where the core knows better than a
    /// front end's default.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            InferError::Throttled { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        InferError::BadRequest(message.into())
    }

    pub fn model_not_found(model: &str, version: Option<&str>) -> Self {
        InferError::ModelNotFound {
            model: model.to_string(),
            version: version.map(str::to_string),
        }
    }
}

impl From<InputError> for InferError {
    fn from(e: InputError) -> Self {
        InferError::BadRequest(e.to_string())
    }
}

impl From<CallError> for InferError {
    fn from(e: CallError) -> Self {
        match &e {
            CallError::Worker { error, .. } => match error {
                WorkerError::InvalidInput(message) => InferError::BadRequest(message.clone()),
                WorkerError::Overloaded(_) => InferError::Overloaded(e.to_string()),
                WorkerError::DeadlineExceeded => InferError::DeadlineExceeded(e.to_string()),
                WorkerError::ModelNotFound { .. } | WorkerError::Draining => {
                    InferError::Unavailable(e.to_string())
                }
                WorkerError::Internal(_) => InferError::Internal(e.to_string()),
            },
            CallError::Transport { .. } | CallError::NoReplica { .. } => {
                InferError::Unavailable(e.to_string())
            }
            CallError::DeadlineExceeded { .. } => InferError::DeadlineExceeded(e.to_string()),
        }
    }
}

impl From<EnsembleError> for InferError {
    fn from(e: EnsembleError) -> Self {
        match e {
            EnsembleError::BadInput(message) => InferError::BadRequest(message),
            EnsembleError::NoQuorum { .. } => InferError::Unavailable(e.to_string()),
            EnsembleError::MetaModelLate { .. } | EnsembleError::QuorumLate { .. } => {
                InferError::DeadlineExceeded(e.to_string())
            }
            EnsembleError::MetaModel { error, .. } => InferError::from(error),
            EnsembleError::Combine { .. } => InferError::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_failures_keep_their_meaning() {
        let worker = |error| CallError::Worker {
            worker: "w".into(),
            error,
        };
        let kind = |e: CallError| InferError::from(e).kind();
        assert_eq!(
            kind(worker(WorkerError::InvalidInput("x".into()))),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(worker(WorkerError::Overloaded("q".into()))),
            ErrorKind::Overloaded
        );
        assert_eq!(
            kind(worker(WorkerError::DeadlineExceeded)),
            ErrorKind::DeadlineExceeded
        );
        assert_eq!(kind(worker(WorkerError::Draining)), ErrorKind::Unavailable);
        assert_eq!(
            kind(worker(WorkerError::Internal("boom".into()))),
            ErrorKind::Internal
        );
        assert_eq!(
            kind(CallError::NoReplica {
                model: "m".into(),
                version: None
            }),
            ErrorKind::Unavailable
        );
        assert_eq!(
            kind(CallError::DeadlineExceeded { worker: "w".into() }),
            ErrorKind::DeadlineExceeded
        );
    }

    #[test]
    fn messages_say_what_to_fix() {
        let e = InferError::CallTooLarge {
            bytes: 10,
            limit: 5,
        };
        assert_eq!(e.kind(), ErrorKind::TooLarge);
        assert!(e.to_string().contains("--max-frame-bytes"), "{e}");
        let e = InferError::model_not_found("m", Some("3"));
        assert_eq!(e.to_string(), "unknown model 'm' version 3");
        let e = InferError::PayloadTooLarge {
            what: "request body",
            limit: 64,
        };
        assert_eq!(
            e.to_string(),
            "request body is larger than the limit of 64 bytes"
        );
    }
}
