//! The one place where failures become HTTP statuses: `{"error": "..."}` bodies, as OIP v2 asks.

use crate::infer::{ErrorKind, InferError};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Seconds a client is told to wait before retrying an unavailable or overloaded request, unless
/// the core knows better (a rate limit says when its next token is due).
const RETRY_AFTER_SECS: u64 = 1;

/// The HTTP status of each kind of failure (docs/protocol.md has the same table).
pub fn status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::UnsupportedEncoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
        // Never sent (the client is gone); nginx's code, should a proxy log it.
        ErrorKind::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status"),
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for InferError {
    fn into_response(self) -> Response {
        let status = status(self.kind());
        let body = serde_json::json!({ "error": self.to_string() });
        let retry_after = self.retry_after();
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            // Whole seconds (RFC 9110), rounded up so that a client retrying on time finds a
            // token.
            let secs = retry_after.map_or(RETRY_AFTER_SECS, |d| {
                d.as_secs() + u64::from(d.subsec_nanos() > 0)
            });
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"chorus\""),
            );
        }
        response
    }
}
