//! Decoding rules both front ends share, so that the same mistake gets the same words over REST
//! and gRPC.

use super::InferError;

/// Parameters that belong to extensions Chorus does not implement; refusing them beats silently
/// answering something else.
pub const UNSUPPORTED_PARAMETERS: [&str; 4] = [
    "shared_memory_region",
    "shared_memory_offset",
    "shared_memory_byte_size",
    "classification",
];

/// Refuses the first of `names` that belongs to an unsupported extension; `whose` says where it
/// was found (`the request`, `input 'x'`, `output 'y'`).
pub fn reject_unsupported_parameters<'a>(
    mut names: impl Iterator<Item = &'a str>,
    whose: &str,
) -> Result<(), InferError> {
    match names.find(|name| UNSUPPORTED_PARAMETERS.contains(name)) {
        Some(p) => Err(InferError::bad_request(format!(
            "{whose} uses parameter `{p}`, which Chorus does not support (no shared-memory or classification extension); send tensor data in the request instead"
        ))),
        None => Ok(()),
    }
}

/// The element count of an input's data does not match its shape.
pub fn element_count_mismatch(input: &str, given: usize, expected: usize) -> InferError {
    InferError::bad_request(format!(
        "input '{input}' has {given} data elements but its shape calls for {expected}"
    ))
}

/// A `timeout` parameter that is not a count of microseconds.
pub fn bad_timeout(got: impl std::fmt::Display) -> InferError {
    InferError::bad_request(format!(
        "parameter `timeout` must be a non-negative integer of microseconds, got {got}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_extensions_are_named() {
        assert!(
            reject_unsupported_parameters(["timeout", "priority"].into_iter(), "the request")
                .is_ok()
        );
        let e = reject_unsupported_parameters(["x", "classification"].into_iter(), "output 'y'")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("output 'y' uses parameter `classification`"),
            "{e}"
        );
    }
}
