//! The view of one etcd prefix: which keys hold a usable item, at which revision, and what changed.
//! Pure bookkeeping with no I/O (the etcd task only feeds it), so every rule has a unit test.
//!
//! Rules:
//! - **Never go back in time.** A put or delete is skipped when its revision is below the highest
//!   revision applied so far, or not above the revision its key was last changed at (duplicates
//!   and replays after a re-watch change nothing).
//! - **A listing is authoritative as of its revision.** Known keys missing from it are gone,
//!   listed keys newer than the view are applied. A listing older than the view is ignored.
//! - **Malformed values are ignored with a warning, never a panic.** A key that held a good item
//!   keeps it when a malformed value replaces it: the key still exists (for a worker, its lease is
//!   alive), so dropping it would turn a bad write into an outage; health is the data plane's
//!   call. Deleting the key still removes the item.
//! - **A worker record must be bound to a lease.** etcd deletes a leased key when its lease
//!   expires, so a leased record is a live worker's; a record written without a lease (lease 0)
//!   would never expire and could be written by anything with access to etcd, so it is ignored
//!   with a warning naming the key, and it replaces (removes) the item its key held.

use super::MembershipChange;
use chorus_common::WorkerInfo;
use chorus_common::local_link::{host_identity, unix_addr};
use chorus_common::membership::{
    WORKERS_PREFIX, decode_record, is_valid_worker_id, worker_id_of_key,
};
use std::collections::{BTreeMap, HashSet};
use tracing::{debug, warn};

/// What lives under one etcd prefix: how keys name items, how values decode, and which changes a
/// view emits for them.
pub trait Kind: 'static {
    /// What a good value decodes to.
    type Item: Send + Sync + 'static;
    /// What the view emits when an item appears, changes or goes.
    type Change: Send + 'static;
    /// The prefix that is listed and watched.
    const PREFIX: &'static str;
    /// What an item is called in logs.
    const NOUN: &'static str;
    /// Whether an item counts only while its key is bound to a lease (lease id not 0).
    const LEASED: bool;
    /// The id a key under [`Kind::PREFIX`] names, or `None` for a key that names no item.
    fn id_of(key: &[u8]) -> Option<&str>;
    /// Decodes the value of the item `id`; the error says what is wrong with it.
    fn decode(id: &str, value: &[u8]) -> Result<Self::Item, String>;
    /// Whether replacing `old` by `new` is worth telling the consumer about.
    fn differs(old: &Self::Item, new: &Self::Item) -> bool;
    fn set(id: &str, item: &Self::Item) -> Self::Change;
    fn removed(id: &str, item: &Self::Item) -> Self::Change;
}

/// One key of the view.
#[derive(Debug)]
struct Entry<T> {
    /// The revision of the last put applied to the key (malformed ones included).
    mod_revision: i64,
    /// The last good item; `None` while only malformed values have been seen under the key.
    item: Option<T>,
}

/// The items under one prefix as of [`View::applied_revision`].
#[derive(Debug)]
pub struct View<K: Kind> {
    applied: i64,
    entries: BTreeMap<String, Entry<K::Item>>,
}

impl<K: Kind> Default for View<K> {
    fn default() -> Self {
        View {
            applied: 0,
            entries: BTreeMap::new(),
        }
    }
}

impl<K: Kind> View<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest revision applied (0 before the first listing); a watch resumes after it.
    pub fn applied_revision(&self) -> i64 {
        self.applied
    }

    /// The item `id` names, if its key holds (or last held) a good value.
    pub fn get(&self, id: &str) -> Option<&K::Item> {
        self.entries.get(id)?.item.as_ref()
    }

    /// Every good item, by id.
    pub fn items(&self) -> impl Iterator<Item = (&str, &K::Item)> {
        self.entries
            .iter()
            .filter_map(|(id, e)| e.item.as_ref().map(|item| (id.as_str(), item)))
    }

    pub fn len(&self) -> usize {
        self.items().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an event at `revision` for `id` is newer than what was applied; if so, it
    /// advances the applied revision, else logs the skip.
    fn accept(&mut self, id: &str, revision: i64, event: &'static str) -> bool {
        if self.is_stale(id, revision) {
            debug!(
                prefix = K::PREFIX,
                id,
                revision,
                applied = self.applied,
                event,
                "skipping a stale event"
            );
            return false;
        }
        self.applied = self.applied.max(revision);
        true
    }

    /// Applies a put event (`revision` is the key's mod_revision, `lease` its lease id, 0 for
    /// none).
    pub fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        revision: i64,
        lease: i64,
    ) -> Option<K::Change> {
        let id = id_of::<K>(key)?;
        if !self.accept(id, revision, "put") {
            return None;
        }
        self.store(id, value, revision, lease)
    }

    /// Applies a delete event (`revision` is the revision of the deletion).
    pub fn delete(&mut self, key: &[u8], revision: i64) -> Option<K::Change> {
        let id = id_of::<K>(key)?;
        if !self.accept(id, revision, "delete") {
            return None;
        }
        let entry = self.entries.remove(id)?;
        entry.item.map(|item| K::removed(id, &item))
    }

    /// Replaces the view by a full listing taken at `revision`, returning the difference:
    /// removals for items no longer listed, sets for new or changed ones. Rows are (key, value,
    /// mod_revision, lease).
    pub fn relist<'a>(
        &mut self,
        revision: i64,
        kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8], i64, i64)>,
    ) -> Vec<K::Change> {
        if revision < self.applied {
            warn!(
                prefix = K::PREFIX,
                revision,
                applied = self.applied,
                "ignoring a listing older than the view"
            );
            return Vec::new();
        }
        let mut changes = Vec::new();
        let mut listed = HashSet::new();
        for (key, value, mod_revision, lease) in kvs {
            let Some(id) = id_of::<K>(key) else { continue };
            listed.insert(id.to_string());
            if self
                .entries
                .get(id)
                .is_some_and(|e| mod_revision <= e.mod_revision)
            {
                continue;
            }
            changes.extend(self.store(id, value, mod_revision, lease));
        }
        let gone: Vec<String> = self
            .entries
            .keys()
            .filter(|id| !listed.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(item) = self.entries.remove(&id).and_then(|e| e.item) {
                changes.push(K::removed(&id, &item));
            }
        }
        self.applied = revision;
        changes
    }

    /// Whether an event at `revision` for `id` is older than what the view holds.
    fn is_stale(&self, id: &str, revision: i64) -> bool {
        revision < self.applied
            || self
                .entries
                .get(id)
                .is_some_and(|e| revision <= e.mod_revision)
    }

    /// Records the value of `id` at `revision`; a malformed value keeps the last good item, a
    /// value not bound to a lease (where one is needed) removes it.
    fn store(&mut self, id: &str, value: &[u8], revision: i64, lease: i64) -> Option<K::Change> {
        let decoded = K::decode(id, value);
        let entry = self.entries.entry(id.to_string()).or_insert(Entry {
            mod_revision: revision,
            item: None,
        });
        entry.mod_revision = revision;
        if K::LEASED && lease == 0 {
            warn!(
                key = %format_args!("{}{id}", K::PREFIX),
                revision,
                "ignoring a {} written without a lease: it would never expire, so no live \
                 process vouches for it",
                K::NOUN
            );
            return entry.item.take().map(|item| K::removed(id, &item));
        }
        match decoded {
            Err(error) => {
                warn!(
                    key = %format_args!("{}{id}", K::PREFIX),
                    revision,
                    error = %error,
                    kept_previous = entry.item.is_some(),
                    "ignoring a malformed {}",
                    K::NOUN
                );
                None
            }
            Ok(item) => {
                let change = match &entry.item {
                    Some(old) if !K::differs(old, &item) => None,
                    _ => Some(K::set(id, &item)),
                };
                entry.item = Some(item);
                change
            }
        }
    }
}

/// The id of `key`, with a warning for keys under the prefix that name nothing.
fn id_of<K: Kind>(key: &[u8]) -> Option<&str> {
    let id = K::id_of(key);
    if id.is_none() {
        warn!(prefix = K::PREFIX, key = %String::from_utf8_lossy(key), "ignoring a key that names no {}", K::NOUN);
    }
    id
}

/// Worker registrations under [`WORKERS_PREFIX`]: JSON [`WorkerInfo`] records.
#[derive(Debug)]
pub enum Workers {}

impl Kind for Workers {
    type Item = WorkerInfo;
    type Change = MembershipChange;
    const PREFIX: &'static str = WORKERS_PREFIX;
    const NOUN: &'static str = "worker record";
    const LEASED: bool = true;

    fn id_of(key: &[u8]) -> Option<&str> {
        worker_id_of_key(key).filter(|id| is_valid_worker_id(id))
    }

    fn decode(id: &str, value: &[u8]) -> Result<WorkerInfo, String> {
        let info = decode_record(id, value).map_err(|e| e.to_string())?;
        if info.rpc_addr.is_empty() {
            return Err("`rpc_addr` is empty".into());
        }
        Ok(info)
    }

    /// What the pool is told (address and state), and the model list and capacity: a worker
    /// that reloaded its models re-publishes them, and the re-sent `Joined` has the pool fetch
    /// its self-description again (the signatures themselves reach it over RPC).
    fn differs(old: &WorkerInfo, new: &WorkerInfo) -> bool {
        dial_addr(old, host_identity()) != dial_addr(new, host_identity())
            || old.state != new.state
            || old.capacity != new.capacity
            || old.models != new.models
    }

    fn set(id: &str, info: &WorkerInfo) -> MembershipChange {
        MembershipChange::Joined {
            worker_id: id.to_string(),
            addr: dial_addr(info, host_identity()),
            state: info.state,
        }
    }

    fn removed(id: &str, _: &WorkerInfo) -> MembershipChange {
        MembershipChange::Left {
            worker_id: id.to_string(),
        }
    }
}

/// Which workers exist, from etcd.
pub type MembershipView = View<Workers>;

/// The address to dial a worker at: its Unix socket when it registered one on this coordinator's
/// host (`host`: [`host_identity`]), else its TCP address.
fn dial_addr(info: &WorkerInfo, host: Option<&str>) -> String {
    match &info.local_link {
        Some(link) if host == Some(link.host.as_str()) => unix_addr(&link.socket),
        _ => info.rpc_addr.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_common::WorkerState;
    use chorus_common::membership::{encode_record, worker_key};

    fn record(id: &str, addr: &str, state: WorkerState) -> Vec<u8> {
        encode_record(&WorkerInfo {
            worker_id: id.into(),
            rpc_addr: addr.into(),
            state,
            capacity: 1,
            models: vec![],
            local_link: None,
        })
    }

    fn serving(id: &str, addr: &str) -> Vec<u8> {
        record(id, addr, WorkerState::Serving)
    }

    fn joined(id: &str, addr: &str, state: WorkerState) -> MembershipChange {
        MembershipChange::Joined {
            worker_id: id.into(),
            addr: addr.into(),
            state,
        }
    }

    fn left(id: &str) -> MembershipChange {
        MembershipChange::Left {
            worker_id: id.into(),
        }
    }

    /// The lease every test record is bound to, unless a test says otherwise.
    const LEASE: i64 = 7;

    /// Owned (key, value, mod_revision) rows, as a listing returns them.
    struct Listing(Vec<(Vec<u8>, Vec<u8>, i64)>);

    impl Listing {
        fn of(rows: &[(&str, Vec<u8>, i64)]) -> Self {
            Listing(
                rows.iter()
                    .map(|(id, value, rev)| (worker_key(id).into_bytes(), value.clone(), *rev))
                    .collect(),
            )
        }

        fn rows(&self) -> impl Iterator<Item = (&[u8], &[u8], i64, i64)> {
            self.0
                .iter()
                .map(|(k, v, r)| (k.as_slice(), v.as_slice(), *r, LEASE))
        }
    }

    fn put(
        view: &mut MembershipView,
        id: &str,
        value: &[u8],
        rev: i64,
    ) -> Option<MembershipChange> {
        view.put(worker_key(id).as_bytes(), value, rev, LEASE)
    }

    fn delete(view: &mut MembershipView, id: &str, rev: i64) -> Option<MembershipChange> {
        view.delete(worker_key(id).as_bytes(), rev)
    }

    /// A view listed at revision 10 with w1 (rev 3) and w2 (rev 5).
    fn listed() -> MembershipView {
        let mut view = MembershipView::new();
        let listing = Listing::of(&[
            ("w1", serving("w1", "a:1"), 3),
            ("w2", serving("w2", "b:2"), 5),
        ]);
        view.relist(10, listing.rows());
        view
    }

    #[test]
    fn a_first_listing_joins_every_worker() {
        let mut view = MembershipView::new();
        let listing = Listing::of(&[
            ("w1", serving("w1", "a:1"), 3),
            ("w2", serving("w2", "b:2"), 5),
        ]);
        let changes = view.relist(10, listing.rows());
        assert_eq!(
            changes,
            vec![
                joined("w1", "a:1", WorkerState::Serving),
                joined("w2", "b:2", WorkerState::Serving)
            ]
        );
        assert_eq!(view.applied_revision(), 10);
        assert_eq!(view.len(), 2);
        assert_eq!(view.get("w1").unwrap().rpc_addr, "a:1");
    }

    #[test]
    fn a_worker_with_a_local_socket_on_this_host_is_dialled_there_and_elsewhere_over_tcp() {
        let here = host_identity().expect("procfs is readable on Linux");
        let linked = |host: &str| {
            let mut info: WorkerInfo =
                serde_json::from_slice(&serving("w1", "a:1")).expect("a record");
            info.local_link = Some(chorus_common::LocalLink {
                socket: "/run/chorus/w1.sock".into(),
                host: host.into(),
            });
            encode_record(&info)
        };
        let mut view = MembershipView::new();
        assert_eq!(
            put(&mut view, "w1", &linked(here), 11),
            Some(joined(
                "w1",
                "unix:/run/chorus/w1.sock",
                WorkerState::Serving
            ))
        );
        // Another host (or container) spells the same path for another socket.
        assert_eq!(
            put(&mut view, "w1", &linked("other-boot/mnt:[1]"), 12),
            Some(joined("w1", "a:1", WorkerState::Serving))
        );
        assert_eq!(
            put(&mut view, "w1", &serving("w1", "a:1"), 13),
            None,
            "losing an unusable link changes nothing the pool sees"
        );
    }

    #[test]
    fn an_empty_listing_sets_the_revision() {
        let mut view = MembershipView::new();
        assert!(view.relist(7, Listing(vec![]).rows()).is_empty());
        assert_eq!(view.applied_revision(), 7);
        assert!(view.is_empty());
    }

    #[test]
    fn a_changed_model_list_is_told_again() {
        let mut view = listed();
        let mut info = decode_record("w1", &serving("w1", "a:1")).unwrap();
        // The same record again: nothing to tell.
        assert_eq!(put(&mut view, "w1", &encode_record(&info), 11), None);
        info.capacity = 4;
        assert_eq!(
            put(&mut view, "w1", &encode_record(&info), 12),
            Some(joined("w1", "a:1", WorkerState::Serving)),
            "a reload re-publishes the record; the pool re-reads the worker's models"
        );
    }

    #[test]
    fn a_newer_put_joins_or_updates() {
        let mut view = listed();
        assert_eq!(
            put(&mut view, "w3", &serving("w3", "c:3"), 11),
            Some(joined("w3", "c:3", WorkerState::Serving))
        );
        assert_eq!(
            put(
                &mut view,
                "w1",
                &record("w1", "a:1", WorkerState::Draining),
                12
            ),
            Some(joined("w1", "a:1", WorkerState::Draining))
        );
        assert_eq!(
            put(&mut view, "w2", &serving("w2", "b:9"), 13),
            Some(joined("w2", "b:9", WorkerState::Serving))
        );
        assert_eq!(view.applied_revision(), 13);
        assert_eq!(view.get("w2").unwrap().rpc_addr, "b:9");
    }

    #[test]
    fn a_put_that_changes_nothing_the_pool_sees_is_silent() {
        let mut view = listed();
        // Rewritten as it was (a renewal's re-put, a drain asked twice).
        assert_eq!(put(&mut view, "w1", &serving("w1", "a:1"), 11), None);
        assert_eq!(view.get("w1").unwrap().rpc_addr, "a:1");
        assert_eq!(view.applied_revision(), 11);
    }

    #[test]
    fn older_and_duplicate_events_are_ignored() {
        let mut view = listed();
        // Older than the listing.
        assert_eq!(put(&mut view, "w1", &serving("w1", "old:1"), 9), None);
        assert_eq!(put(&mut view, "w9", &serving("w9", "old:9"), 4), None);
        assert_eq!(delete(&mut view, "w2", 8), None);
        assert_eq!(view.get("w1").unwrap().rpc_addr, "a:1");
        assert!(view.get("w9").is_none());
        assert!(view.get("w2").is_some());
        // Duplicate of an applied put (same revision).
        let v = serving("w1", "new:1");
        assert!(put(&mut view, "w1", &v, 11).is_some());
        assert_eq!(put(&mut view, "w1", &v, 11), None);
        assert_eq!(put(&mut view, "w1", &serving("w1", "other:1"), 11), None);
        assert_eq!(view.get("w1").unwrap().rpc_addr, "new:1");
        // A replayed put after its key was deleted does not resurrect it.
        assert_eq!(delete(&mut view, "w1", 12), Some(left("w1")));
        assert_eq!(put(&mut view, "w1", &v, 11), None);
        assert!(view.get("w1").is_none());
        assert_eq!(view.applied_revision(), 12);
    }

    #[test]
    fn several_keys_changed_at_one_revision_all_apply() {
        // A transaction changes several keys at one revision; its events share that revision.
        let mut view = listed();
        assert!(put(&mut view, "w3", &serving("w3", "c:3"), 11).is_some());
        assert!(put(&mut view, "w4", &serving("w4", "d:4"), 11).is_some());
        assert_eq!(delete(&mut view, "w1", 11), Some(left("w1")));
        assert_eq!(view.len(), 3);
    }

    #[test]
    fn a_delete_leaves_once() {
        let mut view = listed();
        assert_eq!(delete(&mut view, "w1", 11), Some(left("w1")));
        assert_eq!(delete(&mut view, "w1", 12), None, "unknown key");
        assert_eq!(delete(&mut view, "nobody", 13), None);
        assert_eq!(view.applied_revision(), 13);
        assert_eq!(view.len(), 1);
    }

    #[test]
    fn a_relist_diffs_against_the_view() {
        let mut view = listed();
        put(&mut view, "w3", &serving("w3", "c:3"), 11);
        // At revision 20: w1 unchanged, w2 moved, w3 gone, w4 new.
        let listing = Listing::of(&[
            ("w1", serving("w1", "a:1"), 3),
            ("w2", serving("w2", "b:7"), 15),
            ("w4", serving("w4", "d:4"), 18),
        ]);
        let mut changes = view.relist(20, listing.rows());
        changes.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(
            changes,
            vec![
                joined("w2", "b:7", WorkerState::Serving),
                joined("w4", "d:4", WorkerState::Serving),
                left("w3"),
            ]
        );
        assert_eq!(view.applied_revision(), 20);
        // The same listing again changes nothing.
        assert!(view.relist(21, listing.rows()).is_empty());
    }

    #[test]
    fn a_relist_with_a_newer_value_that_equals_the_old_is_silent() {
        let mut view = listed();
        let listing = Listing::of(&[
            ("w1", serving("w1", "a:1"), 14),
            ("w2", serving("w2", "b:2"), 5),
        ]);
        assert!(view.relist(20, listing.rows()).is_empty());
    }

    #[test]
    fn a_listing_older_than_the_view_is_ignored() {
        let mut view = listed();
        delete(&mut view, "w1", 12);
        let stale = Listing::of(&[("w1", serving("w1", "a:1"), 3)]);
        assert!(view.relist(11, stale.rows()).is_empty());
        assert!(view.get("w1").is_none());
        assert!(view.get("w2").is_some(), "nothing removed either");
        assert_eq!(view.applied_revision(), 12);
    }

    #[test]
    fn events_the_relist_already_covered_are_skipped() {
        // The watch delivers, after a periodic re-list at 20, events the listing included.
        let mut view = listed();
        let listing = Listing::of(&[("w1", serving("w1", "a:5"), 20)]);
        assert_eq!(
            view.relist(20, listing.rows()),
            vec![joined("w1", "a:5", WorkerState::Serving), left("w2")]
        );
        assert_eq!(put(&mut view, "w1", &serving("w1", "a:4"), 19), None);
        assert_eq!(put(&mut view, "w1", &serving("w1", "a:5"), 20), None);
        assert_eq!(
            delete(&mut view, "w2", 20),
            None,
            "the listing already removed it"
        );
        assert_eq!(put(&mut view, "w2", &serving("w2", "b:2"), 17), None);
        assert!(view.get("w2").is_none());
    }

    #[test]
    fn a_malformed_value_is_ignored() {
        let mut view = listed();
        assert_eq!(put(&mut view, "w3", b"{not json", 11), None);
        assert_eq!(
            put(&mut view, "w4", &serving("someone-else", "x:1"), 12),
            None,
            "id mismatch"
        );
        assert_eq!(
            put(&mut view, "w5", &serving("w5", ""), 13),
            None,
            "no address"
        );
        assert_eq!(view.len(), 2);
        assert_eq!(view.applied_revision(), 13);
        // A good value later joins; deleting a key that was only ever malformed changes nothing.
        assert_eq!(
            put(&mut view, "w3", &serving("w3", "c:3"), 14),
            Some(joined("w3", "c:3", WorkerState::Serving))
        );
        assert_eq!(delete(&mut view, "w4", 15), None);
    }

    #[test]
    fn a_good_record_turned_malformed_keeps_the_last_good_one() {
        let mut view = listed();
        assert_eq!(put(&mut view, "w1", b"garbage", 11), None);
        assert_eq!(view.get("w1").unwrap().rpc_addr, "a:1");
        // The malformed write still counts as the key's revision: an older good put is stale.
        assert_eq!(put(&mut view, "w1", &serving("w1", "old:1"), 11), None);
        // A relist that still shows the malformed value keeps the last good record too.
        let listing = Listing::of(&[
            ("w1", b"garbage".to_vec(), 11),
            ("w2", serving("w2", "b:2"), 5),
        ]);
        assert!(view.relist(12, listing.rows()).is_empty());
        assert_eq!(view.get("w1").unwrap().rpc_addr, "a:1");
        // Deleting the key removes the worker.
        assert_eq!(delete(&mut view, "w1", 13), Some(left("w1")));
    }

    #[test]
    fn a_listing_with_a_malformed_value_joins_the_rest() {
        let mut view = MembershipView::new();
        let listing = Listing::of(&[
            ("bad", b"[]".to_vec(), 2),
            ("good", serving("good", "g:1"), 3),
        ]);
        assert_eq!(
            view.relist(5, listing.rows()),
            vec![joined("good", "g:1", WorkerState::Serving)]
        );
        assert_eq!(view.len(), 1);
        // Not warned again (and no change) while the malformed value stays the same revision.
        assert!(view.relist(6, listing.rows()).is_empty());
    }

    #[test]
    fn keys_that_name_no_worker_are_ignored() {
        let mut view = listed();
        assert_eq!(
            view.put(b"/chorus/v1/workers/a/b", &serving("a/b", "x:1"), 11, LEASE),
            None
        );
        assert_eq!(
            view.put(b"/chorus/v1/workers/", &serving("", "x:1"), 12, LEASE),
            None
        );
        assert_eq!(
            view.put(b"/chorus/v1/workers/a b", &serving("a b", "x:1"), 13, LEASE),
            None
        );
        assert_eq!(view.delete(b"/chorus/v1/workers/a/b", 14), None);
        assert_eq!(view.len(), 2);
    }

    #[test]
    fn worker_records_without_a_lease_are_ignored() {
        let mut view = listed();
        let key = worker_key("w9");
        assert_eq!(view.put(key.as_bytes(), &serving("w9", "x:9"), 11, 0), None);
        assert_eq!(view.get("w9"), None);
        // Overwriting a leased record without a lease unbinds it: the worker is no longer
        // vouched for, so it leaves.
        let key = worker_key("w1");
        assert_eq!(
            view.put(key.as_bytes(), &serving("w1", "evil:1"), 12, 0),
            Some(left("w1"))
        );
        assert_eq!(view.get("w1"), None);
        // Bound to a lease again, it is back.
        assert_eq!(
            view.put(key.as_bytes(), &serving("w1", "a:1"), 13, LEASE),
            Some(joined("w1", "a:1", WorkerState::Serving))
        );
        // A listing skips lease-less rows the same way.
        let mut fresh = MembershipView::new();
        let rows = [
            (
                worker_key("w1").into_bytes(),
                serving("w1", "a:1"),
                3,
                LEASE,
            ),
            (worker_key("w2").into_bytes(), serving("w2", "b:1"), 4, 0),
        ];
        let changes = fresh.relist(
            10,
            rows.iter()
                .map(|(k, v, r, l)| (k.as_slice(), v.as_slice(), *r, *l)),
        );
        assert_eq!(changes, vec![joined("w1", "a:1", WorkerState::Serving)]);
    }
}
