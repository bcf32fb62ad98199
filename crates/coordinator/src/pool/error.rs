//! Why a call to a model did not produce an answer.

use chorus_common::WorkerError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("worker {worker}: {error}")]
    Worker { worker: String, error: WorkerError },
    #[error("worker {worker} unreachable: {message}")]
    Transport { worker: String, message: String },
    #[error("no answer from worker {worker} before the deadline")]
    DeadlineExceeded { worker: String },
    #[error("no live worker serves model '{model}'{}", version.as_ref().map(|v| format!(" version {v}")).unwrap_or_default())]
    NoReplica {
        model: String,
        version: Option<String>,
    },
}

impl CallError {
    /// Whether another replica might answer where this one did not.
    pub fn worth_retrying(&self) -> bool {
        match self {
            CallError::Worker { error, .. } => error.is_retryable(),
            CallError::Transport { .. } => true,
            CallError::DeadlineExceeded { .. } | CallError::NoReplica { .. } => false,
        }
    }

    /// Whether the call ran out of time (at the coordinator or at the worker) rather than failed.
    pub fn is_late(&self) -> bool {
        matches!(
            self,
            CallError::DeadlineExceeded { .. }
                | CallError::Worker {
                    error: WorkerError::DeadlineExceeded,
                    ..
                }
        )
    }

    /// The worker that answered or failed, if the call reached one.
    pub fn worker(&self) -> Option<&str> {
        match self {
            CallError::Worker { worker, .. }
            | CallError::Transport { worker, .. }
            | CallError::DeadlineExceeded { worker } => Some(worker),
            CallError::NoReplica { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transport_and_retryable_worker_errors_are_retried() {
        let w = || "w".to_string();
        assert!(
            CallError::Transport {
                worker: w(),
                message: "x".into()
            }
            .worth_retrying()
        );
        assert!(
            CallError::Worker {
                worker: w(),
                error: WorkerError::Overloaded("q".into())
            }
            .worth_retrying()
        );
        assert!(
            !CallError::Worker {
                worker: w(),
                error: WorkerError::InvalidInput("bad".into())
            }
            .worth_retrying()
        );
        assert!(!CallError::DeadlineExceeded { worker: w() }.worth_retrying());
    }

    #[test]
    fn late_is_a_deadline_at_either_end() {
        assert!(CallError::DeadlineExceeded { worker: "w".into() }.is_late());
        assert!(
            CallError::Worker {
                worker: "w".into(),
                error: WorkerError::DeadlineExceeded
            }
            .is_late()
        );
        assert!(
            !CallError::Transport {
                worker: "w".into(),
                message: "reset".into()
            }
            .is_late()
        );
    }
}
