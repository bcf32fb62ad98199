//! Errors a worker returns as data over RPC, distinct from transport failures.

use serde::{Deserialize, Serialize};

/// A worker's answer when it cannot run a call. Transport failures (`tarpc::client::RpcError`)
/// are a different thing: they say nothing about the request, only about the link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum WorkerError {
    #[error("model '{model}'{} is not served by this worker", version.as_ref().map(|v| format!(" version {v}")).unwrap_or_default())]
    ModelNotFound {
        model: String,
        version: Option<String>,
    },
    /// The request itself is wrong; retrying it elsewhere would fail the same way.
    #[error("{0}")]
    InvalidInput(String),
    #[error("worker is overloaded: {0}")]
    Overloaded(String),
    #[error("the call's deadline passed before the model ran")]
    DeadlineExceeded,
    #[error("worker is draining and takes no new work")]
    Draining,
    #[error("inference failed: {0}")]
    Internal(String),
}

impl WorkerError {
    /// True when the caller's request is at fault, so the failure must not count against the
    /// worker's health nor be retried on another replica.
    pub fn is_client_fault(&self) -> bool {
        matches!(self, WorkerError::InvalidInput(_))
    }

    /// True when another replica may well succeed where this one failed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            WorkerError::ModelNotFound { .. }
                | WorkerError::Overloaded(_)
                | WorkerError::Draining
                | WorkerError::Internal(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_errors_round_trip_through_bincode() {
        let errors = [
            WorkerError::ModelNotFound {
                model: "m".into(),
                version: Some("2".into()),
            },
            WorkerError::InvalidInput("bad".into()),
            WorkerError::Overloaded("queue full".into()),
            WorkerError::DeadlineExceeded,
            WorkerError::Draining,
            WorkerError::Internal("boom".into()),
        ];
        for e in errors {
            let back: WorkerError =
                bincode1::deserialize(&bincode1::serialize(&e).unwrap()).unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn only_bad_input_is_the_clients_fault() {
        assert!(WorkerError::InvalidInput("x".into()).is_client_fault());
        assert!(!WorkerError::InvalidInput("x".into()).is_retryable());
        assert!(!WorkerError::Internal("x".into()).is_client_fault());
        assert!(WorkerError::Internal("x".into()).is_retryable());
        assert!(!WorkerError::DeadlineExceeded.is_retryable());
    }
}
