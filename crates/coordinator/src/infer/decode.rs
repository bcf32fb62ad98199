//! Decoding rules both front ends share, so that the same mistake gets the same words over REST
//! and gRPC.

use super::InferError;

/// Parameters that belong to extensions Chorus does not implement; refusing them beats silently
/// answering something else.
pub const UNSUPPORTED_PARAMETERS: [&str; 3] = [
    "shared_memory_region",
    "shared_memory_offset",
    "shared_memory_byte_size",
];

/// The output parameter that asks for Triton's classification extension.
pub const CLASSIFICATION: &str = "classification";

/// Refuses the first of `names` that belongs to an unsupported extension; `whose` says where it
/// was found (`the request`, `input 'x'`, `output 'y'`).
pub fn reject_unsupported_parameters<'a>(
    mut names: impl Iterator<Item = &'a str>,
    whose: &str,
) -> Result<(), InferError> {
    match names.find(|name| UNSUPPORTED_PARAMETERS.contains(name)) {
        Some(p) => Err(InferError::bad_request(format!(
            "{whose} uses parameter `{p}`, which Chorus does not support (no shared-memory extension); send tensor data in the request instead"
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

/// An output's `classification` parameter, given as `count` if it is a whole number: it must
/// be at least 1.
pub fn classification_count(
    output: &str,
    count: Option<i128>,
    got: impl std::fmt::Display,
) -> Result<usize, InferError> {
    match count {
        Some(k) if k >= 1 => Ok(usize::try_from(k).unwrap_or(usize::MAX)),
        _ => Err(InferError::bad_request(format!(
            "output '{output}': parameter `classification` must be a positive integer (how many top classes to return), got {got}"
        ))),
    }
}

/// A `timeout` parameter that is not a count of microseconds.
pub fn bad_timeout(got: impl std::fmt::Display) -> InferError {
    InferError::bad_request(format!(
        "parameter `timeout` must be a non-negative integer of microseconds, got {got}"
    ))
}

/// A `priority` parameter that is not a priority level.
pub fn bad_priority(got: impl std::fmt::Display) -> InferError {
    InferError::bad_request(format!(
        "parameter `priority` must be an integer from 0 (the default level) to {} (1 is the most urgent), got {got}",
        u32::MAX
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
        let e =
            reject_unsupported_parameters(["x", "shared_memory_region"].into_iter(), "output 'y'")
                .unwrap_err()
                .to_string();
        assert!(
            e.starts_with("output 'y' uses parameter `shared_memory_region`"),
            "{e}"
        );
        assert_eq!(classification_count("p", Some(3), 3).unwrap(), 3);
        let e = classification_count("p", Some(0), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be a positive integer"), "{e}");
        assert!(classification_count("p", None, "\"three\"").is_err());
    }
}
