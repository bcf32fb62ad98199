//! The membership seam: sources of "which workers exist" emit [`MembershipChange`]s that the pool
//! applies, and sources of ensemble specs emit [`SpecChange`]s that the catalog applies. Handlers
//! never look at a source; swapping the static list for etcd touches only this module.
//!
//! Sources: [`static_list`] (the embedded default) and [`etcd`] (list, watch, re-list). The
//! decisions about etcd keys and revisions live in the plain [`view::View`], which tests drive
//! without etcd.

pub mod ensembles;
pub mod etcd;
pub mod view;

pub use ensembles::SpecChange;
pub use view::{MembershipView, View};

use chorus_common::WorkerState;
use tokio::sync::mpsc;

/// A worker appearing or disappearing from the cluster's membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// A worker exists at `addr` (host:port of its RPC server) in `state`. Re-sending it for a
    /// known id updates its state and has the pool re-read the worker's models (its etcd record
    /// changed: it may have reloaded them); with a new address it replaces the old one.
    Joined {
        worker_id: String,
        addr: String,
        state: WorkerState,
    },
    /// The worker is gone from membership (not merely unhealthy).
    Left { worker_id: String },
}

/// The embedded default: a fixed list of worker addresses from the coordinator's config, each
/// known by its address. The receiver yields every worker once and then ends; a source ending
/// changes nothing in the pool (it keeps its last view).
pub fn static_list(addrs: &[String]) -> mpsc::Receiver<MembershipChange> {
    let (tx, rx) = mpsc::channel(addrs.len().max(1));
    for addr in addrs {
        // The channel has room for every address, so this cannot fail.
        let _ = tx.try_send(MembershipChange::Joined {
            worker_id: addr.clone(),
            addr: addr.clone(),
            state: WorkerState::Serving,
        });
    }
    rx
}
