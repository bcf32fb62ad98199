//! Feedback for answers another coordinator gave, relayed through etcd (docs/data.md#feedback
//! across-coordinators; docs/decisions.md says why etcd and not a peer call).
//!
//! Generated request ids are `<16 hex digits>-<n>`, the prefix drawn once per coordinator
//! process ([`RequestIds`](crate::infer::RequestIds)), so an id names the coordinator that
//! answered it. Feedback for an id this coordinator does not hold, whose prefix is another's,
//! is written to `/chorus/v1/feedback/<prefix>/<id>` ([`outbox`]), under a lease as long as
//! `--feedback-ttl-secs` (past it the owner could not join it anyway), so that items for a
//! coordinator that is gone vanish on their own. Each coordinator watches its own
//! `/chorus/v1/feedback/<own prefix>/` ([`inbox`]), claims what arrives by deleting it (only
//! the delete that removed a key applies it, so an item is applied once however often it is
//! listed or delivered) and joins it like local feedback.
//!
//! This module holds the pure parts: which ids relay, the key layout, the value and how a
//! request's items are cut into transactions etcd accepts.

pub mod inbox;
pub mod outbox;

use chorus_common::membership::ROOT_PREFIX;
use serde::{Deserialize, Serialize};

/// Where relayed feedback waits for its coordinator.
pub const RELAY_PREFIX: &str = "/chorus/v1/feedback/";

const _: () = assert!(RELAY_PREFIX.len() > ROOT_PREFIX.len());

/// Operations etcd takes in one transaction (its `--max-txn-ops` default).
pub const MAX_TXN_OPS: usize = 128;

/// Bytes of keys and values per transaction: below etcd's `--max-request-bytes` default
/// (1.5 MiB) with room for the request's own framing.
pub const MAX_TXN_BYTES: usize = 1 << 20;

/// Hex digits of a coordinator's id prefix.
const PREFIX_DIGITS: usize = 16;

/// The prefix of the coordinator that issued `id`, when `id` is one a coordinator generated
/// (`<16 lowercase hex>-<decimal>`); `None` for ids clients chose, which relay nowhere.
pub fn owner(id: &str) -> Option<&str> {
    let (prefix, counter) = id.split_once('-')?;
    let hex = prefix.len() == PREFIX_DIGITS
        && prefix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let decimal =
        !counter.is_empty() && counter.len() <= 20 && counter.bytes().all(|b| b.is_ascii_digit());
    (hex && decimal).then_some(prefix)
}

/// The prefix the coordinator whose ids start with `prefix` watches.
pub fn inbox_prefix(prefix: &str) -> String {
    format!("{RELAY_PREFIX}{prefix}/")
}

/// The key feedback for `id` (an id [`owner`] accepts) is relayed under.
pub fn key(id: &str) -> Option<String> {
    owner(id).map(|prefix| format!("{}{id}", inbox_prefix(prefix)))
}

/// The request id a key under `inbox` (see [`inbox_prefix`]) carries feedback for.
pub fn id_of<'k>(key: &'k [u8], inbox: &str) -> Option<&'k str> {
    let id = std::str::from_utf8(key).ok()?.strip_prefix(inbox)?;
    owner(id)
        .is_some_and(|prefix| inbox.ends_with(&format!("/{prefix}/")))
        .then_some(id)
}

/// What a relayed key holds (JSON): the ensemble the feedback was sent to and the labels; the
/// id is the key's last segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relayed {
    pub ensemble: String,
    pub labels: Vec<i64>,
}

impl Relayed {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a relayed item serialises")
    }

    pub fn decode(value: &[u8]) -> Result<Relayed, String> {
        serde_json::from_slice(value).map_err(|e| e.to_string())
    }
}

/// A key and value to put.
pub type Entry = (String, Vec<u8>);

/// `entries` cut, in order, into transactions of at most [`MAX_TXN_OPS`] puts and
/// [`MAX_TXN_BYTES`] of keys and values each; an entry larger than a whole transaction comes
/// back apart (it cannot be relayed).
pub fn batches(
    entries: Vec<Entry>,
    max_ops: usize,
    max_bytes: usize,
) -> (Vec<Vec<Entry>>, Vec<Entry>) {
    let mut batches: Vec<Vec<Entry>> = Vec::new();
    let mut too_large = Vec::new();
    let mut bytes = 0;
    for entry in entries {
        let size = entry.0.len() + entry.1.len();
        if size > max_bytes {
            too_large.push(entry);
            continue;
        }
        let fits = batches
            .last()
            .is_some_and(|last| last.len() < max_ops && bytes + size <= max_bytes);
        if !fits {
            batches.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        batches.last_mut().expect("pushed above").push(entry);
    }
    (batches, too_large)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_generated_ids_name_an_owner() {
        assert_eq!(owner("0123456789abcdef-42"), Some("0123456789abcdef"));
        for id in [
            "never-answered",
            "0123456789abcdef-",
            "0123456789ABCDEF-1",
            "0123456789abcde-1",
            "0123456789abcdef-1-2",
            "0123456789abcdef-x",
            "0123456789abcdef0-1",
            "../../weights/x-1",
        ] {
            assert_eq!(owner(id), None, "{id}");
        }
    }

    #[test]
    fn keys_sit_under_the_owner_prefix() {
        let id = "00000000000000ff-7";
        let key = key(id).unwrap();
        assert_eq!(
            key,
            "/chorus/v1/feedback/00000000000000ff/00000000000000ff-7"
        );
        let inbox = inbox_prefix("00000000000000ff");
        assert!(key.starts_with(&inbox));
        assert_eq!(id_of(key.as_bytes(), &inbox), Some(id));
        // Another coordinator's item, or junk, under our prefix is not ours to apply.
        assert_eq!(
            id_of(
                b"/chorus/v1/feedback/00000000000000ff/0000000000000001-7",
                &inbox
            ),
            None
        );
        assert_eq!(
            id_of(b"/chorus/v1/feedback/00000000000000ff/junk", &inbox),
            None
        );
        assert_eq!(super::key("client-chosen"), None);
    }

    #[test]
    fn values_round_trip_and_refuse_junk() {
        let item = Relayed {
            ensemble: "e".into(),
            labels: vec![3, 1],
        };
        assert_eq!(Relayed::decode(&item.encode()).unwrap(), item);
        assert!(Relayed::decode(b"{\"ensemble\":\"e\"}").is_err());
        assert!(Relayed::decode(b"{\"ensemble\":\"e\",\"labels\":[1],\"x\":1}").is_err());
    }

    fn entry(n: usize, size: usize) -> Entry {
        (format!("k{n}"), vec![b'x'; size - format!("k{n}").len()])
    }

    #[test]
    fn batches_respect_the_op_and_byte_limits_in_order() {
        let entries: Vec<Entry> = (0..300).map(|n| entry(n, 10)).collect();
        let (batches, too_large) = batches(entries, MAX_TXN_OPS, MAX_TXN_BYTES);
        assert!(too_large.is_empty());
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![128, 128, 44]
        );
        assert_eq!(batches[1][0].0, "k128");

        // By bytes: 40-byte entries, 100 bytes a transaction: two per transaction.
        let entries: Vec<Entry> = (0..5).map(|n| entry(n, 40)).collect();
        let (batches, _) = super::batches(entries, 128, 100);
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );

        // An entry larger than a transaction is set apart; the rest still go.
        let entries = vec![entry(0, 40), entry(1, 500), entry(2, 40)];
        let (batches, too_large) = super::batches(entries, 128, 100);
        assert_eq!(too_large.len(), 1);
        assert_eq!(too_large[0].0, "k1");
        assert_eq!(batches, vec![vec![entry(0, 40), entry(2, 40)]]);
        assert_eq!(super::batches(Vec::new(), 128, 100).0.len(), 0);
    }
}
