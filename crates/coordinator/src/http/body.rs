//! Reading a request body within the request limit, and undoing its `Content-Encoding` (gzip,
//! deflate, zstd) with the decompressed size counted against the same limit: a compression bomb
//! costs at most the limit in memory (twice, compressed and decompressed) and gets 413.

use crate::infer::InferError;
use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use std::io::Read;

/// Bodies this large or larger are decompressed on the blocking pool, off the async workers.
const INLINE_DECOMPRESS_BYTES: usize = 64 * 1024;

/// The codings Chorus reads, as a client would name them.
const SUPPORTED: &str = "gzip, deflate, zstd or identity";

/// A body's content coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Identity,
    Gzip,
    Deflate,
    Zstd,
}

impl Coding {
    fn of(headers: &HeaderMap) -> Result<Coding, InferError> {
        let Some(value) = headers.get(header::CONTENT_ENCODING) else {
            return Ok(Coding::Identity);
        };
        let unsupported = |what: &str| {
            InferError::UnsupportedEncoding(format!(
                "Content-Encoding {what} is not supported; send the body as {SUPPORTED}"
            ))
        };
        let text = value
            .to_str()
            .map_err(|_| unsupported(&format!("{value:?}")))?
            .trim()
            .to_ascii_lowercase();
        match text.as_str() {
            "" | "identity" => Ok(Coding::Identity),
            "gzip" | "x-gzip" => Ok(Coding::Gzip),
            "deflate" => Ok(Coding::Deflate),
            "zstd" => Ok(Coding::Zstd),
            other => Err(unsupported(&format!("'{other}'"))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Zstd => "zstd",
        }
    }
}

/// Reads a body up to `limit` bytes and decodes it; larger bodies (declared, streamed or
/// decompressed) are refused with 413.
/// What a body is expected to hold before it is read: its `Content-Length`, or, for a chunked
/// body, a guess that is topped up once its real size is known.
pub fn expected_size(headers: &HeaderMap) -> usize {
    const CHUNKED_GUESS: usize = 64 * 1024;
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(CHUNKED_GUESS)
}

pub async fn read(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, InferError> {
    let coding = Coding::of(headers)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large("request body", limit));
    }
    let raw = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if caused_by::<http_body_util::LengthLimitError>(&e) {
            too_large("request body", limit)
        } else if caused_by::<tower_http::timeout::TimeoutError>(&e) {
            InferError::ClientTooSlow(
                "the request body stopped arriving: send it without pausing longer than the \
                 server's client timeout (--client-timeout-ms)"
                    .into(),
            )
        } else {
            InferError::bad_request(format!("could not read the request body: {e}"))
        }
    })?;
    if coding == Coding::Identity {
        return Ok(raw);
    }
    if raw.len() < INLINE_DECOMPRESS_BYTES {
        return decompress(coding, &raw, limit);
    }
    tokio::task::spawn_blocking(move || decompress(coding, &raw, limit))
        .await
        .map_err(|e| InferError::Internal(format!("decompressing the body panicked: {e}")))?
}

/// Whether `error` or anything behind it is an `E`.
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<E>() {
            return true;
        }
        next = e.source();
    }
    false
}

fn too_large(what: &'static str, limit: usize) -> InferError {
    InferError::PayloadTooLarge { what, limit }
}

/// Decodes `compressed`, refusing more than `limit` bytes of output.
fn decompress(coding: Coding, compressed: &[u8], limit: usize) -> Result<Bytes, InferError> {
    let result = match coding {
        Coding::Identity => return Ok(Bytes::copy_from_slice(compressed)),
        Coding::Gzip => read_limited(flate2::read::MultiGzDecoder::new(compressed), limit),
        // HTTP's "deflate" is zlib-wrapped (RFC 9110); some clients send raw deflate instead.
        Coding::Deflate => read_limited(flate2::read::ZlibDecoder::new(compressed), limit)
            .or_else(|_| read_limited(flate2::read::DeflateDecoder::new(compressed), limit)),
        Coding::Zstd => zstd::stream::read::Decoder::new(compressed)
            .map_err(Decode::Corrupt)
            .and_then(|decoder| read_limited(decoder, limit)),
    };
    match result {
        Ok(body) => Ok(Bytes::from(body)),
        Err(Decode::TooLarge) => Err(too_large("decompressed request body", limit)),
        Err(Decode::Corrupt(e)) => Err(InferError::bad_request(format!(
            "the request body is not valid {} data (Content-Encoding: {}): {e}",
            coding.name(),
            coding.name()
        ))),
    }
}

enum Decode {
    TooLarge,
    Corrupt(std::io::Error),
}

/// Reads all of `reader`, or stops once it has given more than `limit` bytes.
fn read_limited(reader: impl Read, limit: usize) -> Result<Vec<u8>, Decode> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(Decode::Corrupt)?;
    if out.len() > limit {
        return Err(Decode::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn every_coding_round_trips() {
        let data = b"{\"inputs\": []}".repeat(50);
        assert_eq!(
            decompress(Coding::Gzip, &gzip(&data), 1 << 20).unwrap(),
            data
        );
        assert_eq!(
            decompress(Coding::Deflate, &zlib(&data), 1 << 20).unwrap(),
            data
        );
        let raw_deflate = {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        assert_eq!(
            decompress(Coding::Deflate, &raw_deflate, 1 << 20).unwrap(),
            data
        );
        let zst = zstd::encode_all(&data[..], 1).unwrap();
        assert_eq!(decompress(Coding::Zstd, &zst, 1 << 20).unwrap(), data);
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let bomb = gzip(&vec![0u8; 10 << 20]);
        assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
        let e = decompress(Coding::Gzip, &bomb, 1 << 20).unwrap_err();
        assert_eq!(
            e.to_string(),
            "decompressed request body is larger than the limit of 1048576 bytes"
        );
    }

    #[test]
    fn truncated_and_mislabelled_bodies_are_bad_requests() {
        let data = gzip(&b"hello".repeat(100));
        let e = decompress(Coding::Gzip, &data[..data.len() / 2], 1 << 20).unwrap_err();
        assert!(e.to_string().contains("not valid gzip data"), "{e}");
        let e = decompress(Coding::Zstd, b"not zstd at all", 1 << 20).unwrap_err();
        assert!(e.to_string().contains("not valid zstd data"), "{e}");
    }

    #[test]
    fn codings_are_read_from_the_header() {
        let mut h = HeaderMap::new();
        assert_eq!(Coding::of(&h).unwrap(), Coding::Identity);
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("GZIP"));
        assert_eq!(Coding::of(&h).unwrap(), Coding::Gzip);
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        let e = Coding::of(&h).unwrap_err();
        assert_eq!(e.kind(), crate::infer::ErrorKind::UnsupportedEncoding);
        assert!(e.to_string().contains("'br' is not supported"), "{e}");
    }
}
