//! Where online weights live beyond this process: etcd (`/chorus/v1/weights/<ensemble>`, a
//! JSON [`Record`]), a local file (`--weights-file`), or nowhere (memory only).
//!
//! One flush task per coordinator writes at most every [`FLUSH_EVERY`], so a burst of feedback
//! costs etcd one transaction per ensemble, not one per row. An etcd write reads the record,
//! applies the pending operations and puts it back only if its `mod_revision` is unchanged
//! (retrying on a race), so concurrent coordinators never lose each other's updates. Each
//! coordinator follows the prefix with the membership [`View`](crate::membership::View)
//! machinery (list, watch, re-list), so all of them serve the same weights.

use super::weights::{Record, Table, apply};
use crate::membership::etcd::{self, EtcdSettings};
use crate::membership::view::Kind;
use chorus_common::membership::ROOT_PREFIX;
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Where weights are kept under etcd.
pub const WEIGHTS_PREFIX: &str = "/chorus/v1/weights/";

/// Longest the flush task waits before writing pending updates.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Transactions tried per ensemble and flush before leaving the rest to the next flush.
const TXN_ATTEMPTS: usize = 5;

const _: () = assert!(WEIGHTS_PREFIX.len() > ROOT_PREFIX.len());

/// Where the weights are kept.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Lost on restart (no etcd, no `--weights-file`).
    Memory,
    File(PathBuf),
    Etcd {
        endpoints: Vec<String>,
        settings: EtcdSettings,
    },
}

/// Why a flush failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("connecting to etcd: {0}")]
    Connect(String),
    #[error("weights file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("the weights of '{0}' changed under every attempt; left for the next flush")]
    Contended(String),
}

/// Stored records under [`WEIGHTS_PREFIX`], by ensemble name.
#[derive(Debug)]
pub enum StoredWeights {}

impl Kind for StoredWeights {
    type Item = Record;
    type Change = (String, Option<Record>);
    const PREFIX: &'static str = WEIGHTS_PREFIX;
    const NOUN: &'static str = "ensemble weights";
    // Weights are state to keep, written by coordinators with no lease.
    const LEASED: bool = false;

    fn id_of(key: &[u8]) -> Option<&str> {
        std::str::from_utf8(key)
            .ok()?
            .strip_prefix(WEIGHTS_PREFIX)
            .filter(|id| !id.is_empty())
    }

    fn decode(_: &str, value: &[u8]) -> Result<Record, String> {
        decode(value)
    }

    fn differs(old: &Record, new: &Record) -> bool {
        old != new
    }

    fn set(id: &str, record: &Record) -> Self::Change {
        (id.to_string(), Some(record.clone()))
    }

    fn removed(id: &str, _: &Record) -> Self::Change {
        (id.to_string(), None)
    }
}

fn decode(value: &[u8]) -> Result<Record, String> {
    let record: Record = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    if record.weights.len() != record.members.len()
        || record.weights.iter().any(|w| !w.is_finite() || *w <= 0.0)
    {
        return Err("weights must be finite, positive, one per member".into());
    }
    Ok(record)
}

/// The running store: its follower (etcd) and flush task, stopped on drop.
pub struct Store {
    tasks: Vec<JoinHandle<()>>,
    _source: Option<etcd::EtcdSource>,
}

impl Drop for Store {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Store {
    /// Loads what `backend` holds into `table` and starts following and flushing it.
    pub fn start(backend: Backend, table: Arc<Table>) -> Store {
        match backend {
            Backend::Memory => Store {
                tasks: vec![tokio::spawn(flush_loop(table, Writer::Memory))],
                _source: None,
            },
            Backend::File(path) => {
                for (name, record) in read_file(&path) {
                    table.stored(&name, Some(record));
                }
                Store {
                    tasks: vec![tokio::spawn(flush_loop(table, Writer::File(path)))],
                    _source: None,
                }
            }
            Backend::Etcd {
                endpoints,
                settings,
            } => {
                let (changes, source) =
                    etcd::spawn::<StoredWeights>(endpoints.clone(), settings.clone());
                let follow = tokio::spawn(follow(changes, Arc::clone(&table)));
                let writer = Writer::Etcd {
                    endpoints,
                    settings,
                    client: None,
                };
                Store {
                    tasks: vec![follow, tokio::spawn(flush_loop(table, writer))],
                    _source: Some(source),
                }
            }
        }
    }
}

async fn follow(mut changes: mpsc::Receiver<(String, Option<Record>)>, table: Arc<Table>) {
    while let Some((name, record)) = changes.recv().await {
        debug!(ensemble = %name, "stored weights changed");
        table.stored(&name, record);
    }
}

// One per coordinator, made once: boxing the etcd variant would only add an indirection.
#[allow(clippy::large_enum_variant)]
enum Writer {
    Memory,
    File(PathBuf),
    Etcd {
        endpoints: Vec<String>,
        settings: EtcdSettings,
        client: Option<Client>,
    },
}

async fn flush_loop(table: Arc<Table>, mut writer: Writer) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = writer.flush(&table).await {
            warn!(error = %e, "online weights not saved; retrying");
        }
    }
}

impl Writer {
    async fn flush(&mut self, table: &Table) -> Result<(), StoreError> {
        let pending = table.to_flush();
        if pending.is_empty() {
            return Ok(());
        }
        match self {
            // Nothing to write: the flushed operations become the base.
            Writer::Memory => {
                for flush in pending {
                    table.committed(&flush.ensemble, flush.ops.len(), flush.next());
                }
                Ok(())
            }
            Writer::File(path) => {
                let mut all = table.snapshot();
                for flush in &pending {
                    all.insert(flush.ensemble.clone(), flush.next());
                }
                write_file(path, &all)?;
                for flush in pending {
                    let record = flush.next();
                    table.committed(&flush.ensemble, flush.ops.len(), record);
                }
                Ok(())
            }
            Writer::Etcd {
                endpoints,
                settings,
                client,
            } => {
                let result = async {
                    if client.is_none() {
                        *client = Some(connect(endpoints, settings).await?);
                    }
                    let c = client.as_mut().expect("connected above");
                    for flush in pending {
                        let record = commit(c, &flush, settings.request_timeout).await?;
                        table.committed(&flush.ensemble, flush.ops.len(), record);
                    }
                    Ok(())
                }
                .await;
                if matches!(
                    result,
                    Err(StoreError::Etcd(_) | StoreError::Timeout(_) | StoreError::Connect(_))
                ) {
                    // Another endpoint, or the same one back, at the next flush.
                    *client = None;
                    endpoints.rotate_left(1);
                }
                result
            }
        }
    }
}

async fn connect(endpoints: &[String], settings: &EtcdSettings) -> Result<Client, StoreError> {
    let options = settings
        .connect
        .connect_options(&endpoints[..1])
        .map_err(|e| StoreError::Connect(e.to_string()))?
        .with_connect_timeout(settings.connect_timeout);
    bounded(
        settings.request_timeout,
        Client::connect(&endpoints[..1], Some(options)),
    )
    .await
}

async fn bounded<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Timeout(limit)),
    }
}

/// Read, apply, compare-and-put; again on a race.
async fn commit(
    client: &mut Client,
    flush: &super::weights::Flush,
    limit: Duration,
) -> Result<Record, StoreError> {
    let key = format!("{WEIGHTS_PREFIX}{}", flush.ensemble);
    for _ in 0..TXN_ATTEMPTS {
        let got = bounded(limit, client.get(key.as_str(), None)).await?;
        let (stored, revision) = match got.kvs().first() {
            Some(kv) => (decode(kv.value()).ok(), kv.mod_revision()),
            // An absent key's mod_revision compares as 0.
            None => (None, 0),
        };
        let base = stored
            .filter(|r| r.members == flush.fresh.members)
            .unwrap_or_else(|| flush.fresh.clone());
        let generation = base.generation + 1;
        let next = Record {
            generation,
            ..apply(base, &flush.ops)
        };
        let value = serde_json::to_vec(&next).expect("a record serialises");
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(key.as_str(), value, None)]);
        if bounded(limit, client.txn(txn)).await?.succeeded() {
            return Ok(next);
        }
        debug!(ensemble = %flush.ensemble, "weights changed under the transaction; again");
    }
    Err(StoreError::Contended(flush.ensemble.clone()))
}

fn read_file(path: &Path) -> HashMap<String, Record> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            info!(path = %path.display(), "no weights file yet; online weights start from the specs");
            return HashMap::new();
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read the weights file; online weights start from the specs");
            return HashMap::new();
        }
    };
    let all: BTreeMap<String, serde_json::Value> = match serde_json::from_slice(&text) {
        Ok(all) => all,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "the weights file is not valid JSON; online weights start from the specs");
            return HashMap::new();
        }
    };
    all.into_iter()
        .filter_map(|(name, value)| {
            let bytes = serde_json::to_vec(&value).ok()?;
            match decode(&bytes) {
                Ok(record) => Some((name, record)),
                Err(e) => {
                    warn!(path = %path.display(), ensemble = %name, error = %e, "weights ignored");
                    None
                }
            }
        })
        .collect()
}

/// Writes the whole file to a temporary sibling and renames it over the old one, so a crash
/// leaves either the old file or the new one, never half of one.
fn write_file(path: &Path, all: &HashMap<String, Record>) -> Result<(), StoreError> {
    let file_error = |source| StoreError::File {
        path: path.display().to_string(),
        source,
    };
    let sorted: BTreeMap<&String, &Record> = all.iter().collect();
    let text = serde_json::to_vec_pretty(&sorted).expect("records serialise");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(file_error)?;
    std::fs::rename(&tmp, path).map_err(file_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn record() -> Record {
        Record {
            members: vec!["a".into(), "b".into()],
            weights: vec![0.5, 1.5],
            frozen: true,
            rows: 3,
            generation: 2,
        }
    }

    #[test]
    fn bad_records_are_refused() {
        assert!(decode(b"{").is_err());
        assert!(decode(br#"{"members":["a"],"weights":[0.0]}"#).is_err());
        assert!(decode(br#"{"members":["a"],"weights":[1.0, 1.0]}"#).is_err());
        let good = serde_json::to_vec(&record()).unwrap();
        assert_eq!(decode(&good).unwrap(), record());
        assert_eq!(StoredWeights::id_of(b"/chorus/v1/weights/e"), Some("e"));
        assert_eq!(StoredWeights::id_of(b"/chorus/v1/weights/"), None);
    }

    #[test]
    fn the_weights_file_round_trips() {
        let dir = std::env::temp_dir().join(format!("chorus-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("weights.json");
        let all = HashMap::from([("e".to_string(), record())]);
        write_file(&path, &all).unwrap();
        assert_eq!(read_file(&path), all);
        assert!(!path.with_extension("tmp").exists());
        std::fs::write(&path, "not json").unwrap();
        assert!(read_file(&path).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
        let _ = Table::new(Arc::new(Metrics::new()));
    }
}
