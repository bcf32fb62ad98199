//! The etcd source: lists a prefix, watches it from the listed revision + 1, and turns what it sees
//! into changes through a [`View`]. On a cancelled watch, a compaction or any stream error it lists
//! again (with backoff), and it re-lists periodically anyway because etcd 3.4's watch has known
//! bugs. While etcd is unreachable it keeps its last view — nothing leaves because etcd is down —
//! and reports itself [`SourceState::Stale`].
//!
//! This task only does I/O; every decision about keys and revisions is the [`View`]'s.

use super::MembershipChange;
use super::ensembles::{EnsembleSpecs, SpecChange};
use super::view::{Kind, View, Workers};
use chorus_common::etcd_connect::EtcdConnectArgs;
use etcd_client::{Client, EventType, GetOptions, WatchOptions, WatchResponse, WatchStream};
use std::future::Future;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tracing::{debug, info, warn};

/// How the source talks to etcd.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    /// Full re-list interval, even while the watch looks healthy.
    pub relist_interval: Duration,
    /// Limit on one list or watch creation (a dead etcd must not hang the source).
    pub request_timeout: Duration,
    /// Limit on opening a connection to an endpoint.
    pub connect_timeout: Duration,
    /// First delay before listing again after a failure; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// TLS and authentication (`--etcd-ca`, `--etcd-user`, ...); plain and anonymous by
    /// default. Read again at each connection, so a file that became unusable is reported there.
    pub connect: EtcdConnectArgs,
}

impl EtcdSettings {
    /// These settings, connecting with `connect`'s TLS and user.
    pub fn with_connect(self, connect: &EtcdConnectArgs) -> Self {
        EtcdSettings {
            connect: connect.clone(),
            ..self
        }
    }
}

impl Default for EtcdSettings {
    fn default() -> Self {
        EtcdSettings {
            relist_interval: Duration::from_secs(30),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            connect: EtcdConnectArgs::default(),
        }
    }
}

/// How current a source's view is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    /// No listing has succeeded yet: the view is empty because nothing is known.
    Starting,
    /// Listed and watching.
    Live,
    /// etcd has been unreachable since the last good listing: serving the last known view.
    Stale,
}

/// A running source: its state, and its task (stopped on drop).
pub struct EtcdSource {
    prefix: &'static str,
    state: watch::Receiver<SourceState>,
    task: JoinHandle<()>,
}

impl EtcdSource {
    /// The prefix this source follows.
    pub fn prefix(&self) -> &'static str {
        self.prefix
    }

    pub fn state(&self) -> SourceState {
        *self.state.borrow()
    }

    /// Whether the view may be behind etcd because etcd is unreachable.
    pub fn is_stale(&self) -> bool {
        self.state() == SourceState::Stale
    }

    /// A receiver for readiness or metrics to follow the state.
    pub fn subscribe(&self) -> watch::Receiver<SourceState> {
        self.state.clone()
    }

    /// Stops the source; its change stream ends.
    pub fn stop(self) {}
}

impl Drop for EtcdSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Follows worker registrations under `/chorus/v1/workers/` on `endpoints`.
pub fn watch(
    endpoints: Vec<String>,
    settings: EtcdSettings,
) -> (mpsc::Receiver<MembershipChange>, EtcdSource) {
    spawn::<Workers>(endpoints, settings)
}

/// Follows ensemble spec files under `/chorus/v1/ensembles/` on `endpoints`.
pub fn watch_ensembles(
    endpoints: Vec<String>,
    settings: EtcdSettings,
) -> (mpsc::Receiver<SpecChange>, EtcdSource) {
    spawn::<EnsembleSpecs>(endpoints, settings)
}

/// Spawns a source for `K` (needs a Tokio runtime). The change stream ends when the source is
/// dropped; dropping the receiver stops the source.
///
/// # Panics
///
/// When `endpoints` is empty (the configuration refuses that first).
pub fn spawn<K>(
    endpoints: Vec<String>,
    settings: EtcdSettings,
) -> (mpsc::Receiver<K::Change>, EtcdSource)
where
    K: Kind,
{
    assert!(!endpoints.is_empty(), "an etcd source needs an endpoint");
    let (changes, rx) = mpsc::channel(256);
    let (state_tx, state) = watch::channel(SourceState::Starting);
    let follower = Follower::<K> {
        endpoints,
        backoff: Backoff::new(settings.backoff_min, settings.backoff_max),
        settings,
        view: View::new(),
        changes,
        state: state_tx,
        unreachable_since: None,
        last_warning: None,
        endpoint: 0,
        failed_endpoints: 0,
    };
    let task = tokio::spawn(follower.run());
    let source = EtcdSource {
        prefix: K::PREFIX,
        state,
        task,
    };
    (rx, source)
}

/// Why a session with etcd ended.
enum Interrupt {
    /// etcd did not answer, or a stream broke: the view may be behind.
    Unreachable(String),
    /// etcd answered but ended the watch (cancel, compaction): list again.
    Resync(String),
    /// Nobody reads the changes any more.
    Closed,
}

/// How often an ongoing outage is logged again at warn level.
const WARN_EVERY: Duration = Duration::from_secs(30);

struct Follower<K: Kind> {
    endpoints: Vec<String>,
    settings: EtcdSettings,
    backoff: Backoff,
    view: View<K>,
    changes: mpsc::Sender<K::Change>,
    state: watch::Sender<SourceState>,
    unreachable_since: Option<Instant>,
    last_warning: Option<Instant>,
    /// The endpoint the next session uses (modulo their count).
    endpoint: usize,
    /// Endpoints that failed in a row since the last good listing.
    failed_endpoints: usize,
}

impl<K: Kind> Follower<K> {
    async fn run(mut self) {
        loop {
            let started = Instant::now();
            let endpoint = self.endpoints[self.endpoint % self.endpoints.len()].clone();
            match self.session(&endpoint).await {
                Interrupt::Closed => return,
                Interrupt::Unreachable(error) => {
                    // Fail over to the next endpoint at once; the view is stale only when a
                    // whole round of endpoints failed.
                    self.endpoint = self.endpoint.wrapping_add(1);
                    self.failed_endpoints += 1;
                    if self.failed_endpoints < self.endpoints.len() {
                        debug!(
                            prefix = K::PREFIX,
                            endpoint, error, "etcd endpoint failed; trying the next one"
                        );
                        continue;
                    }
                    self.failed_endpoints = 0;
                    self.unreachable(&error);
                }
                Interrupt::Resync(reason) => info!(prefix = K::PREFIX, reason, "listing again"),
            }
            // A session that ran a while was healthy: the next failure starts from a short delay.
            if started.elapsed() >= self.settings.backoff_max {
                self.backoff.reset();
            }
            let delay = self.backoff.next_delay();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.changes.closed() => return,
            }
        }
    }

    /// Connect to `endpoint`, list, then watch until something ends the watch. One endpoint per
    /// session: etcd-client's balanced channel hands a call to a dead endpoint and returns its
    /// error rather than trying another, so failing over is done here.
    async fn session(&mut self, endpoint: &str) -> Interrupt {
        let mut client = match self.connect(endpoint).await {
            Ok(client) => client,
            Err(interrupt) => return interrupt,
        };
        if let Err(interrupt) = self.list(&mut client).await {
            return interrupt;
        }
        loop {
            let mut stream = match self.start_watch(&mut client).await {
                Ok(stream) => stream,
                Err(interrupt) => return interrupt,
            };
            let period = self.settings.relist_interval;
            let mut relist = tokio::time::interval_at(Instant::now() + period, period);
            relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    message = stream.message() => {
                        let response = match message {
                            Ok(Some(response)) => response,
                            Ok(None) => return Interrupt::Unreachable("the watch stream ended".into()),
                            Err(e) => return Interrupt::Unreachable(format!("watch failed: {e}")),
                        };
                        if let Err(interrupt) = self.apply(response).await {
                            return interrupt;
                        }
                    }
                    _ = relist.tick() => match self.list(&mut client).await {
                        Err(interrupt) => return interrupt,
                        Ok(0) => {}
                        Ok(missed) => {
                            // Usually a race with events in flight; sometimes a stuck watch.
                            // Restarting the watch after the listing costs little either way.
                            info!(prefix = K::PREFIX, changes = missed, "periodic re-list found changes the watch had not delivered; restarting the watch");
                            break;
                        }
                    },
                    _ = self.changes.closed() => return Interrupt::Closed,
                }
            }
        }
    }

    async fn connect(&self, endpoint: &str) -> Result<Client, Interrupt> {
        // Checked at start-up (`chorus coordinator` refuses bad files and refused credentials),
        // so this fails only if a file changed since; the outage warning then says why.
        let options = self
            .settings
            .connect
            .connect_options(&[endpoint.to_string()])
            .map_err(|e| Interrupt::Unreachable(e.to_string()))?
            .with_connect_timeout(self.settings.connect_timeout)
            // Finds a dead connection under an open watch; etcd refuses pings more often than
            // every 5 s (--grpc-keepalive-min-time).
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        self.bounded("connecting", Client::connect([endpoint], Some(options)))
            .await
    }

    /// Lists the prefix and applies the difference; returns how many changes it made.
    async fn list(&mut self, client: &mut Client) -> Result<usize, Interrupt> {
        let options = GetOptions::new().with_prefix();
        let response = self
            .bounded("listing", client.get(K::PREFIX, Some(options)))
            .await?;
        let revision = response
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| Interrupt::Unreachable("listing came back without a header".into()))?;
        let rows = response
            .kvs()
            .iter()
            .map(|kv| (kv.key(), kv.value(), kv.mod_revision(), kv.lease()));
        let changes = self.view.relist(revision, rows);
        let count = changes.len();
        // Live before sending, so that whoever sees the changes sees the state they came with.
        self.live(revision);
        self.send(changes).await?;
        Ok(count)
    }

    async fn start_watch(&mut self, client: &mut Client) -> Result<WatchStream, Interrupt> {
        let from = self.view.applied_revision() + 1;
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        let stream = self
            .bounded("starting the watch", client.watch(K::PREFIX, Some(options)))
            .await?;
        debug!(prefix = K::PREFIX, from, "watching");
        Ok(stream)
    }

    /// Applies one watch response's events.
    async fn apply(&mut self, response: WatchResponse) -> Result<(), Interrupt> {
        if response.canceled() {
            let reason = if response.compact_revision() > 0 {
                format!(
                    "the watch start was compacted (compacted up to revision {})",
                    response.compact_revision()
                )
            } else {
                format!("etcd cancelled the watch: {}", response.cancel_reason())
            };
            return Err(Interrupt::Resync(reason));
        }
        let mut changes = Vec::new();
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let change = match event.event_type() {
                EventType::Put => {
                    self.view
                        .put(kv.key(), kv.value(), kv.mod_revision(), kv.lease())
                }
                EventType::Delete => self.view.delete(kv.key(), kv.mod_revision()),
            };
            changes.extend(change);
        }
        self.send(changes).await
    }

    async fn send(&self, changes: Vec<K::Change>) -> Result<(), Interrupt> {
        for change in changes {
            self.changes
                .send(change)
                .await
                .map_err(|_| Interrupt::Closed)?;
        }
        Ok(())
    }

    /// Runs an etcd call under the request timeout.
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, Interrupt> {
        match timeout(self.settings.request_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Interrupt::Unreachable(format!("{what} failed: {e}"))),
            Err(_) => Err(Interrupt::Unreachable(format!(
                "{what} took longer than {:?}",
                self.settings.request_timeout
            ))),
        }
    }

    /// A listing succeeded: the view is current.
    fn live(&mut self, revision: i64) {
        let previous = self.state.send_replace(SourceState::Live);
        match (previous, self.unreachable_since.take()) {
            (SourceState::Live, _) => {}
            (_, Some(since)) => info!(
                prefix = K::PREFIX,
                revision,
                items = self.view.len(),
                unreachable_for = ?since.elapsed(),
                "etcd reachable again; view is current"
            ),
            (_, None) => info!(
                prefix = K::PREFIX,
                revision,
                items = self.view.len(),
                "listed; watching"
            ),
        }
        self.last_warning = None;
        self.failed_endpoints = 0;
    }

    /// etcd did not answer: keep the view, say it is stale.
    fn unreachable(&mut self, error: &str) {
        let now = Instant::now();
        let since = *self.unreachable_since.get_or_insert(now);
        if self.state.borrow().eq(&SourceState::Live) {
            self.state.send_replace(SourceState::Stale);
        }
        let warned_lately = self
            .last_warning
            .is_some_and(|at| now.duration_since(at) < WARN_EVERY);
        if warned_lately {
            debug!(prefix = K::PREFIX, error, "etcd still unreachable");
            return;
        }
        self.last_warning = Some(now);
        match *self.state.borrow() {
            SourceState::Starting => warn!(
                prefix = K::PREFIX,
                endpoints = ?self.endpoints,
                error,
                unreachable_for = ?now.duration_since(since),
                "etcd unreachable; no view yet"
            ),
            _ => warn!(
                prefix = K::PREFIX,
                endpoints = ?self.endpoints,
                error,
                items = self.view.len(),
                unreachable_for = ?now.duration_since(since),
                "membership view is stale: etcd unreachable"
            ),
        }
    }
}

/// Exponential backoff with jitter (half to all of the nominal delay), so that coordinators
/// restarted together do not hammer a recovering etcd in step.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let nominal = self.next;
        self.next = (self.next * 2).min(self.max);
        nominal.mul_f64(rand::random_range(0.5..=1.0))
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(1000));
        let delays: Vec<_> = (0..6).map(|_| backoff.next_delay()).collect();
        for (delay, nominal) in delays.iter().zip([100, 200, 400, 800, 1000, 1000]) {
            assert!(
                *delay >= ms(nominal) / 2 && *delay <= ms(nominal),
                "{delay:?} vs {nominal}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= ms(100));
    }

    #[test]
    fn backoff_bounds_are_sane() {
        let mut backoff = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert!(backoff.next_delay() <= Duration::from_millis(1));
    }
}
