//! The one place where failures become gRPC statuses, plus the two gRPC-level inputs that can
//! be wrong before a message is even read: the `grpc-timeout` header and the message size.

use crate::infer::{ErrorKind, InferError};
use std::time::Duration;
use tonic::codegen::http;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// The gRPC code of each kind of failure (docs/protocol.md has the same table).
pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::MethodNotAllowed => Code::Unimplemented,
        ErrorKind::TooLarge | ErrorKind::Overloaded => Code::ResourceExhausted,
        ErrorKind::UnsupportedEncoding => Code::Unimplemented,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::DeadlineExceeded | ErrorKind::ClientTimeout => Code::DeadlineExceeded,
        ErrorKind::Cancelled => Code::Cancelled,
        ErrorKind::Internal => Code::Internal,
    }
}

impl From<InferError> for Status {
    fn from(e: InferError) -> Self {
        let mut status = Status::new(code(e.kind()), e.to_string());
        // The REST answer's Retry-After, in milliseconds: gRPC has no standard header for it,
        // and a client that backs off on RESOURCE_EXHAUSTED can read this one.
        if let Some(wait) = e.retry_after() {
            let millis = wait.as_millis().max(1).to_string();
            if let Ok(value) = millis.parse() {
                status.metadata_mut().insert("retry-after-ms", value);
            }
        }
        status
    }
}

/// The client's deadline from the `grpc-timeout` header (gRPC over HTTP/2: at most 8 digits and
/// a unit, `H M S m u n`). A malformed header is refused rather than ignored: the client asked
/// for a limit, and silently serving without one would answer later than it waits.
pub fn grpc_timeout(metadata: &MetadataMap) -> Result<Option<Duration>, InferError> {
    let Some(value) = metadata.get("grpc-timeout") else {
        return Ok(None);
    };
    let bad = || {
        InferError::bad_request(format!(
            "the grpc-timeout header {value:?} is not a gRPC timeout: give at most 8 digits and a unit (H, M, S, m, u or n)"
        ))
    };
    let text = value.to_str().map_err(|_| bad())?;
    if text.len() < 2 || !text.is_ascii() {
        return Err(bad());
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    if digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let timeout = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    };
    Ok(Some(timeout))
}

/// The time the core may spend on a request with a gRPC deadline: the deadline less a small
/// reserve, so that an ensemble's partial answer (or its DEADLINE_EXCEEDED) reaches the client
/// before the client gives up.
pub fn core_timeout(grpc_timeout: Duration) -> Duration {
    let reserve = (grpc_timeout / 10).min(Duration::from_millis(20));
    grpc_timeout - reserve
}

/// What tonic says when a received message exceeds `max_decoding_message_size`.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";

/// What tonic says when a compressed message does not decompress.
const TONIC_DECOMPRESS: &str = "Error decompressing";

/// Puts tonic's own words about a message it could not read into Chorus's: an oversize message
/// (tonic: OUT_OF_RANGE) or one that decompresses past the limit is RESOURCE_EXHAUSTED (gRPC's
/// code for "larger than the receiver accepts"), a message that does not decompress (tonic:
/// INTERNAL) is INVALID_ARGUMENT, each with a message that says what to change. Any other
/// status is returned as it is.
pub fn remap_decode_error(status: Status, limit: usize) -> Status {
    let message = status.message();
    let remapped = match status.code() {
        Code::OutOfRange if message.starts_with(TONIC_TOO_LARGE) => InferError::PayloadTooLarge {
            what: "request message",
            limit,
        },
        Code::ResourceExhausted if message.starts_with(TONIC_DECOMPRESS) => {
            InferError::PayloadTooLarge {
                what: "decompressed request message",
                limit,
            }
        }
        Code::Internal if message.starts_with(TONIC_DECOMPRESS) => InferError::bad_request(
            format!("the request message does not decompress: {message}"),
        ),
        _ => return status,
    };
    Status::from(remapped)
}

/// Rewrites a unary call's response whose request message could not be read (too large, or
/// not decompressing): tonic's codec answers those before any handler runs, as a trailers-only
/// response (streams see the error in the handler and remap it there). Applied as a response
/// mapping on the service.
pub fn remap_decode_error_response<B: Default>(
    response: http::Response<B>,
    limit: usize,
) -> http::Response<B> {
    match Status::from_header_map(response.headers()) {
        Some(status) if status.code() != Code::Ok => {
            let (code, message) = (status.code(), status.message().to_string());
            let remapped = remap_decode_error(status, limit);
            if remapped.code() == code && remapped.message() == message {
                response
            } else {
                remapped.into_http()
            }
        }
        _ => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn timeout(value: &str) -> Result<Option<Duration>, InferError> {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", MetadataValue::try_from(value).unwrap());
        grpc_timeout(&metadata)
    }

    #[test]
    fn grpc_timeouts_parse_and_absurd_ones_are_refused() {
        assert_eq!(grpc_timeout(&MetadataMap::new()).unwrap(), None);
        assert_eq!(timeout("250m").unwrap(), Some(Duration::from_millis(250)));
        assert_eq!(timeout("3S").unwrap(), Some(Duration::from_secs(3)));
        assert_eq!(
            timeout("99999999H").unwrap(),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        for bad in ["", "m", "123456789S", "10x", "-5m", "1.5S", "S5"] {
            let e = timeout(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}");
            assert!(e.to_string().contains("at most 8 digits"), "{e}");
        }
    }

    #[test]
    fn the_core_answers_a_little_before_the_client_gives_up() {
        assert_eq!(
            core_timeout(Duration::from_millis(100)),
            Duration::from_millis(90)
        );
        assert_eq!(
            core_timeout(Duration::from_secs(10)),
            Duration::from_millis(9980)
        );
        assert_eq!(core_timeout(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn oversize_and_undecompressable_messages_get_chorus_codes_and_words() {
        let tonic = Status::out_of_range(format!(
            "{TONIC_TOO_LARGE}: found 10 bytes, the limit is: 5 bytes"
        ));
        let status = remap_decode_error(tonic.clone(), 5);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "request message is larger than the limit of 5 bytes"
        );
        let response = remap_decode_error_response(tonic.into_http::<String>(), 5);
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        let bomb = Status::resource_exhausted(format!("{TONIC_DECOMPRESS}: size limit exceeded"));
        let status = remap_decode_error(bomb, 5);
        assert_eq!(
            status.message(),
            "decompressed request message is larger than the limit of 5 bytes"
        );
        let corrupt = Status::internal(format!("{TONIC_DECOMPRESS}: invalid gzip header"));
        assert_eq!(remap_decode_error(corrupt, 5).code(), Code::InvalidArgument);
        let other = Status::out_of_range("something else");
        assert_eq!(remap_decode_error(other, 5).code(), Code::OutOfRange);
        let ok = http::Response::new(String::new());
        assert!(Status::from_header_map(remap_decode_error_response(ok, 5).headers()).is_none());
    }

    #[test]
    fn every_kind_has_a_code() {
        assert_eq!(code(ErrorKind::InvalidArgument), Code::InvalidArgument);
        assert_eq!(code(ErrorKind::Overloaded), Code::ResourceExhausted);
        assert_eq!(code(ErrorKind::Unavailable), Code::Unavailable);
        assert_eq!(code(ErrorKind::DeadlineExceeded), Code::DeadlineExceeded);
    }
}
