//! Request ids for requests that come without one: unique across coordinators and restarts, so
//! that logs, traces and (later) the prediction log can join on them cluster-wide.

use std::sync::atomic::{AtomicU64, Ordering};

/// Issues `<prefix>-<n>`: a random 64-bit prefix drawn once per process (two coordinators share
/// one with probability 2^-64 per pair), then a counter. Cheaper than a random id per request:
/// one atomic add and one short format.
#[derive(Debug)]
pub struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        RequestIds::with_prefix(format!("{:016x}", rand::random::<u64>()))
    }

    pub fn with_prefix(prefix: String) -> Self {
        RequestIds {
            prefix,
            next: AtomicU64::new(1),
        }
    }

    /// The part every id of this process starts with (logged at start-up).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.prefix)
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_distinct_within_and_across_processes() {
        let a = RequestIds::new();
        let b = RequestIds::new();
        assert_ne!(
            a.prefix(),
            b.prefix(),
            "two coordinators draw different prefixes"
        );
        let ids: HashSet<String> = (0..1000).flat_map(|_| [a.next(), b.next()]).collect();
        assert_eq!(ids.len(), 2000);
        let fixed = RequestIds::with_prefix("p".into());
        assert_eq!(fixed.next(), "p-1");
        assert_eq!(fixed.next(), "p-2");
    }
}
