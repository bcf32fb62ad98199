//! The one place where failures become HTTP statuses: `{"error": "..."}` bodies, as OIP v2 asks.

use crate::ensemble::EnsembleError;
use crate::pool::CallError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chorus_common::WorkerError;
use chorus_common::validate::InputError;

/// Seconds a client is told to wait before retrying an unavailable or overloaded request.
const RETRY_AFTER_SECS: &str = "1";

/// Every way an HTTP request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown model '{model}'{}", version.as_ref().map(|v| format!(" version {v}")).unwrap_or_default())]
    ModelNotFound {
        model: String,
        version: Option<String>,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error(
        "the inputs hold {bytes} bytes, more than the {limit} bytes one worker call may carry (raise --max-frame-bytes on coordinator and workers, or split the batch)"
    )]
    CallTooLarge { bytes: usize, limit: usize },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound { .. } | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } | ApiError::CallTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::json!({ "error": self.to_string() });
        let mut response = (status, axum::Json(body)).into_response();
        if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        match &e {
            CallError::Worker { error, .. } => match error {
                WorkerError::InvalidInput(message) => ApiError::BadRequest(message.clone()),
                WorkerError::Overloaded(_) => ApiError::Overloaded(e.to_string()),
                WorkerError::DeadlineExceeded => ApiError::DeadlineExceeded(e.to_string()),
                WorkerError::ModelNotFound { .. } | WorkerError::Draining => {
                    ApiError::Unavailable(e.to_string())
                }
                WorkerError::Internal(_) => ApiError::Internal(e.to_string()),
            },
            CallError::Transport { .. } | CallError::NoReplica { .. } => {
                ApiError::Unavailable(e.to_string())
            }
            CallError::DeadlineExceeded { .. } => ApiError::DeadlineExceeded(e.to_string()),
        }
    }
}

impl From<EnsembleError> for ApiError {
    fn from(e: EnsembleError) -> Self {
        match e {
            EnsembleError::BadInput(message) => ApiError::BadRequest(message),
            EnsembleError::NoQuorum { .. } => ApiError::Unavailable(e.to_string()),
            EnsembleError::MetaModelLate { .. } | EnsembleError::QuorumLate { .. } => {
                ApiError::DeadlineExceeded(e.to_string())
            }
            EnsembleError::MetaModel { error, .. } => ApiError::from(error),
            EnsembleError::Combine { .. } => ApiError::Internal(e.to_string()),
        }
    }
}
