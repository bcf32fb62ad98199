//! Takes in feedback other coordinators relayed for this one's answers: lists
//! `/chorus/v1/feedback/<own prefix>/`, then watches it, and claims each item by deleting its
//! key; only the transaction whose delete removed a key applies that item, through the same
//! join as local feedback ([`Feedback::apply`](crate::feedback::Feedback::apply)), so it is
//! counted in `chorus_feedback_total` here, where the prediction is. The prefix is listed
//! again every `--etcd-relist-secs` in case the watch missed something. While etcd is
//! unreachable items wait there (until their lease ends); the task retries with backoff.

use super::{MAX_TXN_OPS, Relayed, id_of, inbox_prefix};
use crate::feedback::Item;
use crate::infer::Infer;
use crate::membership::etcd::EtcdSettings;
use etcd_client::{Client, EventType, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Listing rounds one drain makes at most (each claims up to [`MAX_TXN_OPS`] items) before it
/// leaves the rest to the watch and the next re-list.
const MAX_DRAIN_ROUNDS: usize = 1000;

/// How often an ongoing outage is logged again at warn level (as membership does).
const WARN_EVERY: Duration = Duration::from_secs(30);

/// The running inbox, stopped on drop.
pub struct Inbox {
    task: JoinHandle<()>,
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Inbox {
    /// Starts taking in items for `app`'s request-id prefix (needs a Tokio runtime).
    pub fn start(app: Arc<Infer>, endpoints: Vec<String>, settings: EtcdSettings) -> Inbox {
        assert!(!endpoints.is_empty(), "a relay needs an etcd endpoint");
        let prefix = inbox_prefix(app.request_ids().prefix());
        Inbox {
            task: tokio::spawn(run(app, endpoints, settings, prefix)),
        }
    }
}

async fn run(app: Arc<Infer>, endpoints: Vec<String>, settings: EtcdSettings, prefix: String) {
    let mut delay = settings.backoff_min;
    let mut endpoint = 0usize;
    let mut last_warning: Option<Instant> = None;
    info!(prefix, "taking in feedback relayed by other coordinators");
    loop {
        let started = Instant::now();
        let at = &endpoints[endpoint % endpoints.len()];
        let error = Session {
            app: &app,
            settings: &settings,
            prefix: &prefix,
        }
        .run(at)
        .await;
        // A session that ran a while was healthy: this is a new outage, worth a warning.
        if started.elapsed() >= settings.backoff_max {
            delay = settings.backoff_min;
            last_warning = None;
        }
        if last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            last_warning = Some(Instant::now());
            warn!(endpoint = %at, error, "relayed feedback inbox interrupted; retrying (items wait in etcd)");
        } else {
            debug!(endpoint = %at, error, "relayed feedback inbox still interrupted");
        }
        endpoint = endpoint.wrapping_add(1);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(settings.backoff_max);
    }
}

struct Session<'a> {
    app: &'a Infer,
    settings: &'a EtcdSettings,
    prefix: &'a str,
}

impl Session<'_> {
    /// Connects, drains, then watches until something fails; returns why.
    async fn run(&self, endpoint: &str) -> String {
        let mut client = match self.connect(endpoint).await {
            Ok(client) => client,
            Err(e) => return e,
        };
        let revision = match self.drain(&mut client).await {
            Ok(revision) => revision,
            Err(e) => return e,
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = match self
            .bounded(
                "starting the watch",
                client.watch(self.prefix, Some(options)),
            )
            .await
        {
            Ok(stream) => stream,
            Err(e) => return e,
        };
        let period = self.settings.relist_interval;
        let mut relist = tokio::time::interval_at(Instant::now() + period, period);
        relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = stream.message() => {
                    let response = match message {
                        Ok(Some(response)) => response,
                        Ok(None) => return "the watch stream ended".into(),
                        Err(e) => return format!("watch failed: {e}"),
                    };
                    if response.canceled() {
                        return format!("etcd cancelled the watch: {}", response.cancel_reason());
                    }
                    let arrived: Vec<(Vec<u8>, Vec<u8>)> = response
                        .events()
                        .iter()
                        .filter(|e| e.event_type() == EventType::Put)
                        .filter_map(|e| e.kv())
                        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
                        .collect();
                    if let Err(e) = self.take(&mut client, arrived).await {
                        return e;
                    }
                }
                _ = relist.tick() => {
                    if let Err(e) = self.drain(&mut client).await {
                        return e;
                    }
                }
            }
        }
    }

    async fn connect(&self, endpoint: &str) -> Result<Client, String> {
        let options = self
            .settings
            .connect
            .connect_options(&[endpoint.to_string()])
            .map_err(|e| e.to_string())?
            .with_connect_timeout(self.settings.connect_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        self.bounded("connecting", Client::connect([endpoint], Some(options)))
            .await
    }

    /// Takes every item waiting now; returns the revision the last listing saw.
    async fn drain(&self, client: &mut Client) -> Result<i64, String> {
        let mut revision = 0;
        for _ in 0..MAX_DRAIN_ROUNDS {
            let options = GetOptions::new()
                .with_prefix()
                .with_limit(MAX_TXN_OPS as i64);
            let response = self
                .bounded("listing", client.get(self.prefix, Some(options)))
                .await?;
            revision = response.header().map_or(revision, |h| h.revision());
            let waiting: Vec<(Vec<u8>, Vec<u8>)> = response
                .kvs()
                .iter()
                .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
                .collect();
            if waiting.is_empty() {
                break;
            }
            let more = response.more();
            self.take(client, waiting).await?;
            if !more {
                break;
            }
        }
        Ok(revision)
    }

    /// Claims `items` (keys and values) by deleting them and applies those this call removed.
    async fn take(
        &self,
        client: &mut Client,
        items: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), String> {
        let mut claimed: BTreeMap<String, Vec<Item>> = BTreeMap::new();
        for chunk in items.chunks(MAX_TXN_OPS) {
            let deletes: Vec<TxnOp> = chunk
                .iter()
                .map(|(key, _)| TxnOp::delete(key.clone(), None))
                .collect();
            let response = self
                .bounded(
                    "claiming relayed feedback",
                    client.txn(Txn::new().and_then(deletes)),
                )
                .await?;
            for ((key, value), op) in chunk.iter().zip(response.op_responses()) {
                let TxnOpResponse::Delete(deleted) = op else {
                    continue;
                };
                if deleted.deleted() == 0 {
                    // Claimed before (a re-list or a repeated event): applied then.
                    continue;
                }
                let Some(id) = id_of(key, self.prefix) else {
                    warn!(key = %String::from_utf8_lossy(key), "not a relayed feedback key; removed");
                    continue;
                };
                match Relayed::decode(value) {
                    Ok(item) => claimed.entry(item.ensemble).or_default().push(Item {
                        id: id.to_string(),
                        labels: item.labels,
                    }),
                    Err(e) => warn!(id, error = %e, "relayed feedback is not valid; removed"),
                }
            }
        }
        for (ensemble, items) in claimed {
            self.apply(&ensemble, &items);
        }
        Ok(())
    }

    fn apply(&self, ensemble: &str, items: &[Item]) {
        let Some(spec) = self.app.catalog().ensemble(ensemble) else {
            warn!(
                ensemble,
                items = items.len(),
                "relayed feedback for an ensemble this coordinator does not serve; dropped"
            );
            return;
        };
        match self.app.feedback().apply(&spec, items) {
            Ok(counts) => debug!(
                ensemble,
                accepted = counts.accepted,
                unknown = counts.unknown,
                duplicate = counts.duplicate,
                invalid = counts.invalid,
                "relayed feedback applied"
            ),
            Err(e) => warn!(ensemble, error = %e, "relayed feedback refused"),
        }
    }

    async fn bounded<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, String> {
        let limit = self.settings.request_timeout;
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(format!("{what} failed: {e}")),
            Err(_) => Err(format!("{what} took longer than {limit:?}")),
        }
    }
}
