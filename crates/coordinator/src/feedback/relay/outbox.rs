//! Writes feedback for other coordinators' answers to etcd, on the request path: one lease
//! (as long as `--feedback-ttl-secs`, reused for a tenth of that) and one transaction per
//! [`batches`](super::batches) batch. The whole relay of a request is bounded by the etcd
//! request timeout; what did not reach etcd by then is answered `relay_failed`, never waited
//! for. A relay_failed item may still have landed (a commit whose answer was lost): sending it
//! again is safe, since the owner applies an id once.

use super::{Entry, MAX_TXN_BYTES, MAX_TXN_OPS, Relayed, batches, key};
use crate::feedback::Item;
use crate::membership::etcd::EtcdSettings;
use etcd_client::{Client, PutOptions, Txn, TxnOp};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, warn};

/// Longest a granted lease is used for new items, whatever the TTL: keys then live between
/// TTL − this and TTL.
const MAX_LEASE_REUSE: Duration = Duration::from_secs(60);

/// Most items one request may relay. etcd holds the whole cluster's membership and specs: a
/// client that may send feedback must not be able to fill its space quota with relayed items
/// (each lives a whole feedback TTL), so what is beyond this is refused as `relay_failed`.
pub const MAX_RELAYED_PER_REQUEST: usize = 1_000;

/// What became of the items a request relayed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Written to etcd for their coordinator.
    pub relayed: u64,
    /// Not written: etcd unreachable or too slow, or an item too large for a transaction.
    pub failed: u64,
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("connecting to etcd: {0}")]
    Connect(String),
}

/// The etcd connection and the lease new items go under.
struct Conn {
    endpoints: Vec<String>,
    client: Option<Client>,
    lease: Option<(i64, Instant)>,
}

/// The relay's writing side, one per coordinator with `--etcd`.
pub struct Outbox {
    settings: EtcdSettings,
    ttl: Duration,
    conn: Mutex<Conn>,
}

impl Outbox {
    pub fn new(endpoints: Vec<String>, settings: EtcdSettings, ttl: Duration) -> Self {
        assert!(!endpoints.is_empty(), "a relay needs an etcd endpoint");
        Outbox {
            settings,
            ttl: ttl.max(Duration::from_secs(1)),
            conn: Mutex::new(Conn {
                endpoints,
                client: None,
                lease: None,
            }),
        }
    }

    /// Relays `items` (ids [`key`] accepts; others count as failed) sent to `ensemble`.
    pub async fn send(&self, ensemble: &str, items: &[Item]) -> Sent {
        let mut sent = Sent::default();
        let mut seen = std::collections::HashSet::new();
        let entries: Vec<Entry> = items
            .iter()
            .take(MAX_RELAYED_PER_REQUEST)
            // One put per key: etcd refuses a transaction that names a key twice, which would
            // fail every other item of its batch. The owner applies an id once anyway.
            .filter(|item| seen.insert(item.id.as_str()))
            .filter_map(|item| {
                let value = Relayed {
                    ensemble: ensemble.to_string(),
                    labels: item.labels.clone(),
                };
                key(&item.id).map(|key| (key, value.encode()))
            })
            .collect();
        let repeats = items.len().min(MAX_RELAYED_PER_REQUEST) - seen.len();
        if items.len() > MAX_RELAYED_PER_REQUEST {
            warn!(
                ensemble,
                items = items.len(),
                limit = MAX_RELAYED_PER_REQUEST,
                "too many feedback items for other coordinators in one request; the rest counted relay_failed"
            );
        }
        // A repeated id is not written twice; the one write stands for both (the owner would
        // have answered the copy as a duplicate).
        sent.relayed += repeats as u64;
        sent.failed += (items.len() - entries.len() - repeats) as u64;
        let (batches, too_large) = batches(entries, MAX_TXN_OPS, MAX_TXN_BYTES);
        if !too_large.is_empty() {
            warn!(
                ensemble,
                items = too_large.len(),
                limit_bytes = MAX_TXN_BYTES,
                "feedback items too large to relay through etcd; send them to the coordinator that answered"
            );
            sent.failed += too_large.len() as u64;
        }
        let total: u64 = batches.iter().map(|b| b.len() as u64).sum();
        let limit = self.settings.request_timeout;
        let written = tokio::time::timeout(limit, self.write(&batches, &mut sent.relayed)).await;
        let error = match written {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("etcd did not answer within {limit:?}")),
        };
        sent.failed += total - sent.relayed;
        if let Some(error) = error {
            warn!(
                ensemble,
                relayed = sent.relayed,
                failed = total - sent.relayed,
                error,
                "feedback for other coordinators' answers not relayed; counted relay_failed"
            );
        } else {
            debug!(
                ensemble,
                relayed = sent.relayed,
                "feedback relayed through etcd"
            );
        }
        sent
    }

    /// Writes each batch in one transaction, counting the items written in `relayed`; a
    /// failed batch is tried once more on a fresh connection and lease. The connection's lock is
    /// held only to take a client and a lease, never across a transaction, so relays of
    /// concurrent requests do not queue behind each other.
    async fn write(&self, batches: &[Vec<Entry>], relayed: &mut u64) -> Result<(), RelayError> {
        for batch in batches {
            let mut last = None;
            for _ in 0..2 {
                let attempt = match self.session().await {
                    Ok((client, lease)) => put(client, lease, batch).await,
                    Err(e) => Err(e),
                };
                match attempt {
                    Ok(()) => {
                        *relayed += batch.len() as u64;
                        last = None;
                        break;
                    }
                    Err(e) => {
                        // Another endpoint, a new lease (etcd may have lost ours), next time.
                        let mut conn = self.conn.lock().await;
                        conn.client = None;
                        conn.lease = None;
                        conn.endpoints.rotate_left(1);
                        last = Some(e);
                    }
                }
            }
            if let Some(e) = last {
                return Err(e);
            }
        }
        Ok(())
    }

    /// A client (a cheap clone sharing the connection) and the lease new items go under.
    async fn session(&self) -> Result<(Client, i64), RelayError> {
        let mut conn = self.conn.lock().await;
        if conn.client.is_none() {
            conn.client = Some(self.connect(&conn.endpoints).await?);
        }
        let mut client = conn.client.clone().expect("connected above");
        let reuse = (self.ttl / 10).min(MAX_LEASE_REUSE);
        let lease = match conn.lease {
            Some((id, granted)) if granted.elapsed() < reuse => id,
            _ => {
                let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
                let id = client.lease_grant(ttl, None).await?.id();
                conn.lease = Some((id, Instant::now()));
                id
            }
        };
        Ok((client, lease))
    }

    async fn connect(&self, endpoints: &[String]) -> Result<Client, RelayError> {
        let options = self
            .settings
            .connect
            .connect_options(&endpoints[..1])
            .map_err(|e| RelayError::Connect(e.to_string()))?
            .with_connect_timeout(self.settings.connect_timeout);
        Ok(Client::connect(&endpoints[..1], Some(options)).await?)
    }
}

/// Puts one batch under `lease`, in one transaction.
async fn put(mut client: Client, lease: i64, batch: &[Entry]) -> Result<(), RelayError> {
    let ops: Vec<TxnOp> = batch
        .iter()
        .map(|(key, value)| {
            TxnOp::put(
                key.as_str(),
                value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )
        })
        .collect();
    client.txn(Txn::new().and_then(ops)).await?;
    Ok(())
}
