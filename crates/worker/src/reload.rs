//! Live model changes: a reload rescans the model repository (on SIGHUP, `POST /admin/reload`
//! or `chorus reload`) and brings the registry in line with it while the worker keeps serving.
//!
//! How (the decisions are `diff.rs`'s; what counts as changed is `stamp.rs`'s):
//! 1. Reloads run one at a time; a second one waits for the first and then rescans.
//! 2. Scanning and loading run on the blocking pool, never on the async runtime. New and changed
//!    versions load beside the ones serving, which keep answering meanwhile.
//! 3. A version that fails to load changes nothing: the old one (if any) keeps serving, and the
//!    failure is in the report and the log. So does a model that cannot be scanned.
//! 4. The new registry replaces the old in one swap. Calls already routed keep the version they
//!    resolved; a version taken out (removed, or replaced by its reload) unloads once its calls
//!    in flight have ended, waiting at most the unload timeout (the drain timeout), logged.
//! 5. When the model list changed, the worker publishes it in its etcd record; coordinators also
//!    re-read every worker's self-description on their own (see the coordinator's `pool`).
//! 6. A repository that cannot be read, or holds no model at all, is refused whole (nothing
//!    changes): an unmounted volume must not unload everything.

pub mod diff;
pub mod stamp;

use crate::config::WorkerConfig;
use crate::error::LoadError;
use crate::loader;
use crate::metrics::Metrics;
use crate::model_config::ModelSettings;
use crate::registration::ModelsPublisher;
use crate::registry::LoadedModel;
use crate::repository::{self, ModelSource};
use crate::service::Shared;
use diff::{Failure, Scanned, VersionKey};
use serde::Serialize;
use stamp::VersionStamp;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How often the unload of a retired version checks whether its calls have ended.
const UNLOAD_POLL: Duration = Duration::from_millis(20);

/// What a reload needs from the worker's configuration.
#[derive(Debug, Clone)]
pub struct ReloadSettings {
    pub repository: PathBuf,
    /// `--models`: only these (empty: every model in the repository).
    pub selected: Vec<String>,
    pub defaults: ModelSettings,
    pub queue_capacity: usize,
    /// Longest a retired version waits for its calls in flight before it is let go.
    pub unload_timeout: Duration,
}

impl ReloadSettings {
    pub fn from_config(config: &WorkerConfig) -> Self {
        ReloadSettings {
            repository: config.model_repository.clone(),
            selected: config.models.clone(),
            defaults: ModelSettings::defaults(config),
            queue_capacity: config.queue_capacity,
            unload_timeout: config.drain_timeout(),
        }
    }
}

/// Why a reload changed nothing at all.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("reload refused, nothing changed: {0}")]
    Repository(LoadError),
    #[error(
        "reload refused, nothing changed: the model repository {} holds none of the models to serve; put <model>/<version>/model.onnx back (or fix --models) and reload again",
        path.display()
    )]
    Empty { path: PathBuf },
    #[error("the reload stopped unexpectedly (a panic while loading); nothing changed")]
    Panicked,
}

/// One model version, as the report names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionRef {
    pub model: String,
    pub version: String,
}

impl VersionRef {
    fn of((model, version): &VersionKey) -> Self {
        VersionRef {
            model: model.clone(),
            version: version.to_string(),
        }
    }
}

/// Something a reload left as it was, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadFailure {
    pub model: String,
    /// Absent when the whole model could not be scanned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub error: String,
}

/// Where the reload left the worker's etcd record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordUpdate {
    /// The model list did not change: nothing to publish.
    Unchanged,
    /// The record lists the new models.
    Updated,
    /// Not registered in etcd (a static `--worker` list): coordinators re-read the worker's
    /// models themselves.
    Static,
    /// etcd refused or did not answer; coordinators still re-read the models themselves.
    Failed(String),
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// New versions now serving.
    pub loaded: Vec<VersionRef>,
    /// Changed versions whose new files now serve.
    pub reloaded: Vec<VersionRef>,
    /// Versions taken out; each unloads once its calls in flight end.
    pub removed: Vec<VersionRef>,
    pub unchanged: usize,
    /// What could not be loaded or scanned; the versions it concerns serve as before.
    pub failed: Vec<ReloadFailure>,
    /// Every version served after the reload.
    pub models: Vec<VersionRef>,
    pub record: RecordUpdate,
    pub elapsed_ms: u64,
}

impl ReloadReport {
    /// Whether everything the repository holds now serves.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }

    /// One line naming every failure, for logs and error bodies.
    pub fn failure_summary(&self) -> String {
        self.failed
            .iter()
            .map(|f| match &f.version {
                Some(v) => format!("model '{}' version {v}: {}", f.model, f.error),
                None => format!("model '{}': {}", f.model, f.error),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Reloads the repository into a worker's [`Shared`] state (module header).
#[derive(Debug)]
pub struct Reloader {
    settings: ReloadSettings,
    metrics: Arc<Metrics>,
    /// The stamp of every version loaded; the lock also runs reloads one at a time (rule 1).
    stamps: tokio::sync::Mutex<BTreeMap<VersionKey, VersionStamp>>,
    /// Set once registered in etcd.
    publisher: OnceLock<ModelsPublisher>,
}

/// A version loaded by a reload, ready to swap in.
struct Fresh {
    key: VersionKey,
    stamp: VersionStamp,
    model: LoadedModel,
    /// Replaces a version that is serving (rule 2 of `diff`), rather than adding one.
    replaces: bool,
}

/// What the blocking half of a reload hands back.
struct Prepared {
    fresh: Vec<Fresh>,
    remove: Vec<VersionKey>,
    unchanged: usize,
    failed: Vec<Failure>,
}

impl Reloader {
    /// `stamps`: what the initial load loaded (see `loader::load_catalog`).
    pub fn new(
        settings: ReloadSettings,
        metrics: Arc<Metrics>,
        stamps: BTreeMap<VersionKey, VersionStamp>,
    ) -> Self {
        Reloader {
            settings,
            metrics,
            stamps: tokio::sync::Mutex::new(stamps),
            publisher: OnceLock::new(),
        }
    }

    /// Lets reloads publish the model list in the etcd record (called once, after registering).
    pub fn set_publisher(&self, publisher: ModelsPublisher) {
        let _ = self.publisher.set(publisher);
    }

    /// Rescans the repository and applies what changed to `shared` (module header).
    pub async fn reload(&self, shared: &Shared) -> Result<ReloadReport, ReloadError> {
        let mut stamps = self.stamps.lock().await;
        let started = Instant::now();
        info!(repository = %self.settings.repository.display(), "model repository reload started");
        let settings = self.settings.clone();
        let metrics = Arc::clone(&self.metrics);
        let loaded = stamps.clone();
        let prepared = tokio::task::spawn_blocking(move || prepare(&settings, &metrics, &loaded))
            .await
            .map_err(|_| ReloadError::Panicked)??;

        // Only reloads change the registry, and they run one at a time: this is still the
        // registry the plan was made against.
        let current = shared.registry();
        let mut next = (*current).clone();
        let mut retired: Vec<Arc<LoadedModel>> = Vec::new();
        for key in &prepared.remove {
            retired.extend(next.remove(&key.0, key.1));
            stamps.remove(key);
        }
        let (mut loaded, mut reloaded) = (Vec::new(), Vec::new());
        for fresh in prepared.fresh {
            retired.extend(next.get(&fresh.key.0, fresh.key.1).cloned());
            next.insert(fresh.key.1, fresh.model);
            if fresh.replaces {
                reloaded.push(VersionRef::of(&fresh.key));
            } else {
                loaded.push(VersionRef::of(&fresh.key));
            }
            stamps.insert(fresh.key, fresh.stamp);
        }
        let changed = next.infos() != current.infos() || next.capacity() != current.capacity();
        let models = next
            .versions()
            .map(|(m, v)| VersionRef::of(&(m.to_string(), v)))
            .collect();
        let (infos, capacity) = (next.infos(), next.capacity());
        shared.swap_registry(Arc::new(next));
        drop(current);
        if !retired.is_empty() {
            tokio::spawn(unload(retired, self.settings.unload_timeout));
        }
        let record = match (changed, self.publisher.get()) {
            (false, _) => RecordUpdate::Unchanged,
            (true, None) => RecordUpdate::Static,
            (true, Some(publisher)) => match publisher.publish(infos, capacity).await {
                Ok(()) => RecordUpdate::Updated,
                Err(e) => {
                    warn!(error = %e, "cannot publish the reloaded models in etcd; coordinators still re-read them from the worker");
                    RecordUpdate::Failed(e.to_string())
                }
            },
        };
        let report = ReloadReport {
            loaded,
            reloaded,
            removed: prepared.remove.iter().map(VersionRef::of).collect(),
            unchanged: prepared.unchanged,
            failed: prepared
                .failed
                .into_iter()
                .map(|f| ReloadFailure {
                    model: f.model,
                    version: f.version.map(|v| v.to_string()),
                    error: f.error,
                })
                .collect(),
            models,
            record,
            elapsed_ms: started.elapsed().as_millis() as u64,
        };
        log_report(&report);
        Ok(report)
    }
}

fn log_report(report: &ReloadReport) {
    let names = |list: &[VersionRef]| {
        list.iter()
            .map(|v| format!("{}@{}", v.model, v.version))
            .collect::<Vec<_>>()
    };
    if report.is_complete() {
        info!(
            loaded = ?names(&report.loaded),
            reloaded = ?names(&report.reloaded),
            removed = ?names(&report.removed),
            unchanged = report.unchanged,
            elapsed_ms = report.elapsed_ms,
            "model repository reloaded"
        );
    } else {
        warn!(
            loaded = ?names(&report.loaded),
            reloaded = ?names(&report.reloaded),
            removed = ?names(&report.removed),
            unchanged = report.unchanged,
            failed = %report.failure_summary(),
            elapsed_ms = report.elapsed_ms,
            "model repository reloaded in part; what failed serves as before"
        );
    }
}

/// The blocking half: rescan, plan, load what is new or changed.
fn prepare(
    settings: &ReloadSettings,
    metrics: &Metrics,
    loaded: &BTreeMap<VersionKey, VersionStamp>,
) -> Result<Prepared, ReloadError> {
    let (sources, scanned) = rescan(settings)?;
    let plan = diff::plan(loaded, &scanned);
    let mut prepared = Prepared {
        fresh: Vec::new(),
        remove: plan.remove,
        unchanged: plan.unchanged,
        failed: plan.failed,
    };
    let wanted = plan
        .load
        .into_iter()
        .map(|entry| (entry, false))
        .chain(plan.reload.into_iter().map(|entry| (entry, true)));
    for ((key, stamp), replaces) in wanted {
        let source = &sources[&key.0];
        let Some(version) = source.versions.iter().find(|v| v.version == key.1) else {
            continue;
        };
        let loaded = crate::ort_library::environment()
            .map_err(LoadError::from)
            .and_then(|env| {
                loader::load_version(&env, source, version, settings.queue_capacity, metrics)
            });
        match loaded {
            Ok(model) => prepared.fresh.push(Fresh {
                key,
                stamp,
                model,
                replaces,
            }),
            Err(e) => {
                warn!(model = %key.0, version = key.1, error = %e, "model version failed to load; what served before still serves");
                prepared.failed.push(Failure {
                    model: key.0,
                    version: Some(key.1),
                    error: e.to_string(),
                });
            }
        }
    }
    keep_what_failures_would_replace(&mut prepared, &sources);
    Ok(prepared)
}

/// A version that failed to load must not take down the one it was meant to replace: under
/// `latest = 1` a new `m/2` (half copied, a bad export) would otherwise remove `m@1` while `m/2`
/// never served. So a model with any failure keeps every version that is still on disk.
fn keep_what_failures_would_replace(
    prepared: &mut Prepared,
    sources: &BTreeMap<String, ModelSource>,
) {
    let failed: std::collections::BTreeSet<&str> = prepared
        .failed
        .iter()
        .map(|failure| failure.model.as_str())
        .collect();
    prepared.remove.retain(|(model, version)| {
        let on_disk = sources
            .get(model)
            .is_some_and(|source| source.on_disk.contains(version));
        let keep = failed.contains(model.as_str()) && on_disk;
        if keep {
            warn!(model = %model, version, "version kept: the version meant to replace it failed to load");
        }
        !keep
    });
}

/// Scans every model to serve, one at a time, so that one broken model does not hide the
/// others: returns the models that scanned, and what each scan found.
fn rescan(
    settings: &ReloadSettings,
) -> Result<(BTreeMap<String, ModelSource>, Scanned), ReloadError> {
    let available =
        repository::model_names(&settings.repository).map_err(ReloadError::Repository)?;
    let names: Vec<String> = if settings.selected.is_empty() {
        available
    } else {
        // A selected model whose directory is gone is removed (diff rule 4).
        available
            .into_iter()
            .filter(|name| settings.selected.iter().any(|s| s.trim() == name))
            .collect()
    };
    if names.is_empty() {
        return Err(ReloadError::Empty {
            path: settings.repository.clone(),
        });
    }
    let mut sources = BTreeMap::new();
    let mut scanned: Scanned = BTreeMap::new();
    for name in names {
        let found = repository::scan(
            &settings.repository,
            std::slice::from_ref(&name),
            &settings.defaults,
        );
        match found.map(|mut all| all.pop()) {
            Ok(Some(source)) => {
                let versions = source
                    .versions
                    .iter()
                    .map(|v| (v.version, VersionStamp::read(&source, v)))
                    .collect();
                scanned.insert(name.clone(), Ok(versions));
                sources.insert(name, source);
            }
            Ok(None) => {}
            Err(e) => {
                scanned.insert(name, Err(e.to_string()));
            }
        }
    }
    Ok((sources, scanned))
}

/// Lets retired versions go once no call holds them, waiting at most `timeout` in all (rule 4).
/// The last holder unloads the version: its queue closes and its instance threads end.
async fn unload(retired: Vec<Arc<LoadedModel>>, timeout: Duration) {
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    for model in retired {
        let (name, version) = (model.info.name.clone(), model.info.version.clone());
        while Arc::strong_count(&model) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(UNLOAD_POLL).await;
        }
        let holders = Arc::strong_count(&model) - 1;
        drop(model);
        if holders == 0 {
            info!(model = %name, version = %version, waited_ms = started.elapsed().as_millis() as u64, "model version unloaded");
        } else {
            warn!(
                model = %name,
                version = %version,
                calls_in_flight = holders,
                timeout_s = timeout.as_secs_f64(),
                "model version still has calls in flight after the unload timeout; it unloads when they end"
            );
        }
    }
}

/// Reloads one serving worker: what SIGHUP, `POST /admin/reload` and tests call.
#[derive(Debug, Clone)]
pub struct ReloadHandle {
    reloader: Arc<Reloader>,
    shared: Arc<Shared>,
}

impl ReloadHandle {
    pub fn new(reloader: Arc<Reloader>, shared: Arc<Shared>) -> Self {
        ReloadHandle { reloader, shared }
    }

    /// See [`Reloader::reload`]. Runs on a task of its own, so that a caller that goes away
    /// (an HTTP client that timed out) cannot cancel it halfway — between the load and the swap,
    /// or between the swap and the etcd record — and a reload always runs to its end.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let (reloader, shared) = (Arc::clone(&self.reloader), Arc::clone(&self.shared));
        tokio::spawn(async move { reloader.reload(&shared).await })
            .await
            .map_err(|_| ReloadError::Panicked)?
    }
}
