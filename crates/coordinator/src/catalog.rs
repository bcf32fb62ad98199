//! What the coordinator serves: ensembles from specs and models described by workers, with the
//! signature each is validated against and whether it can answer now.
//!
//! One namespace, as in Triton and KServe: a name is a model or an ensemble, never both. When a
//! spec names an ensemble after a model that workers serve, the model keeps its name and the
//! ensemble is not served while the clash lasts (warned once per clash, naming both): whoever can
//! write a spec must not be able to take over a model's traffic (docs/decisions.md).

pub mod ensemble_signature;
pub mod underivable;
pub mod versions;

pub use versions::Versions;

use crate::membership::SpecChange;
use crate::pool::{Pool, version_order};
use crate::spec::EnsembleSpec;
use chorus_common::validate::InputPolicy;
use chorus_common::{ModelInfo, TensorSpec};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Platform reported for ensembles in model metadata.
pub const ENSEMBLE_PLATFORM: &str = "ensemble";

/// Inputs, outputs, input policy and class names of something servable.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub policy: InputPolicy,
    /// Class names by index, for the classification extension (may be empty).
    pub labels: Vec<String>,
}

impl Signature {
    fn of_model(info: &ModelInfo) -> Self {
        Signature {
            inputs: info.inputs.clone(),
            outputs: info.outputs.clone(),
            policy: InputPolicy {
                allow_non_finite: info.allow_non_finite,
                max_elements: info.max_input_elements,
            },
            labels: info.labels.clone(),
        }
    }
}

/// The ensembles served: the spec file's, overlaid by the spec files kept in etcd. The unit is
/// the name with all its versions and its split: an etcd key that defines a name replaces every
/// version the file defines for it, and when two etcd keys define one name, the key that sorts
/// last wins (every coordinator picks the same one, whatever order it saw them in).
#[derive(Debug, Default)]
pub struct EnsembleSet {
    file: BTreeMap<String, Arc<Versions>>,
    /// Specs by the etcd key that defines them.
    etcd: BTreeMap<String, Vec<Arc<EnsembleSpec>>>,
    served: BTreeMap<String, Arc<Versions>>,
}

/// One source's specs grouped by name into their versions.
fn by_name(specs: &[Arc<EnsembleSpec>]) -> BTreeMap<String, Arc<Versions>> {
    let mut names: BTreeMap<String, Vec<Arc<EnsembleSpec>>> = BTreeMap::new();
    for spec in specs {
        names
            .entry(spec.name.clone())
            .or_default()
            .push(Arc::clone(spec));
    }
    names
        .into_iter()
        .map(|(name, specs)| (name, Arc::new(Versions::new(specs))))
        .collect()
}

impl EnsembleSet {
    pub fn new(file: Vec<EnsembleSpec>) -> Self {
        let file = by_name(&file.into_iter().map(Arc::new).collect::<Vec<_>>());
        EnsembleSet {
            served: file.clone(),
            file,
            etcd: BTreeMap::new(),
        }
    }

    /// Every served version of `name`.
    pub fn versions(&self, name: &str) -> Option<Arc<Versions>> {
        self.served.get(name).cloned()
    }

    /// The version of `name` that most unversioned traffic goes to (see [`Versions::main`]).
    pub fn get(&self, name: &str) -> Option<Arc<EnsembleSpec>> {
        self.served.get(name).map(|v| Arc::clone(v.main()))
    }

    /// Every version of every ensemble served, by name then version.
    pub fn all(&self) -> Vec<Arc<EnsembleSpec>> {
        self.served
            .values()
            .flat_map(|v| v.all().iter().cloned())
            .collect()
    }

    /// Replaces the spec file's ensembles (already validated), as a SIGHUP reload does.
    pub fn set_file(&mut self, specs: Vec<EnsembleSpec>) {
        self.file = by_name(&specs.into_iter().map(Arc::new).collect::<Vec<_>>());
        let served = self.overlay("");
        self.replace_served(served, "file");
    }

    /// Applies a change of one etcd spec file (already validated by its source).
    pub fn apply(&mut self, change: SpecChange) {
        let key = match change {
            SpecChange::Set { key, specs } => {
                self.etcd.insert(key.clone(), specs);
                key
            }
            SpecChange::Removed { key } => {
                self.etcd.remove(&key);
                key
            }
        };
        let served = self.overlay(&key);
        self.replace_served(served, &key);
    }

    /// Swaps in `served`, logging each name added, updated or removed by `source`.
    fn replace_served(&mut self, served: BTreeMap<String, Arc<Versions>>, source: &str) {
        let names: BTreeSet<&String> = self.served.keys().chain(served.keys()).collect();
        for name in names {
            match (self.served.get(name), served.get(name)) {
                (None, Some(new)) => {
                    info!(ensemble = %name, source, versions = %version_list(new), "ensemble added")
                }
                (Some(old), Some(new)) if old != new => {
                    info!(ensemble = %name, source, versions = %version_list(new), split = ?new.shares(), "ensemble updated")
                }
                (Some(_), None) => info!(ensemble = %name, source, "ensemble removed"),
                _ => {}
            }
        }
        self.served = served;
    }

    /// The file's names with every etcd key's on top; warns about names that `changed_key`
    /// shares with another etcd key.
    fn overlay(&self, changed_key: &str) -> BTreeMap<String, Arc<Versions>> {
        let mut served = self.file.clone();
        let mut defined_by: BTreeMap<String, &str> = BTreeMap::new();
        for (key, specs) in &self.etcd {
            for (name, versions) in by_name(specs) {
                if let Some(earlier) = defined_by.insert(name.clone(), key)
                    && (key == changed_key || earlier == changed_key)
                {
                    warn!(ensemble = %name, used = %key, ignored = %earlier, "ensemble defined under two etcd keys; the key that sorts last wins");
                }
                served.insert(name, versions);
            }
        }
        served
    }
}

fn version_list(versions: &Versions) -> String {
    versions
        .all()
        .iter()
        .map(|s| s.version.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Ensembles by name, plus the pool that knows the models.
pub struct Catalog {
    /// Shared with the task that follows spec changes; handlers only read it.
    ensembles: Arc<RwLock<EnsembleSet>>,
    pool: Arc<Pool>,
    /// Ensemble signatures by name (one per version), valid while the pool's generation and the spec are the ones
    /// they were derived from (every request needs one; deriving it copies model metadata).
    signatures: Mutex<HashMap<String, Vec<CachedSignature>>>,
    /// Ensembles not served because a model has their name, each warned about once.
    shadowed: Mutex<BTreeSet<String>>,
}

struct CachedSignature {
    generation: u64,
    spec: Arc<EnsembleSpec>,
    signature: Arc<Signature>,
}

impl Catalog {
    pub fn new(ensembles: Vec<EnsembleSpec>, pool: Arc<Pool>) -> Self {
        Catalog {
            ensembles: Arc::new(RwLock::new(EnsembleSet::new(ensembles))),
            pool,
            signatures: Mutex::new(HashMap::new()),
            shadowed: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The ensemble `name` names (the version most unversioned traffic goes to, see
    /// [`Versions::main`]), unless a served model has that name (see the module header).
    pub fn ensemble(&self, name: &str) -> Option<Arc<EnsembleSpec>> {
        self.ensemble_versions(name).map(|v| Arc::clone(v.main()))
    }

    /// Every served version of the ensemble `name`, with its split and shadow, unless a served
    /// model has that name. Requests hold the `Arc` they got: a reload swaps in a new one and
    /// never changes this one.
    pub fn ensemble_versions(&self, name: &str) -> Option<Arc<Versions>> {
        let versions = self
            .ensembles
            .read()
            .expect("ensemble lock")
            .versions(name)?;
        let models = self.pool.models();
        self.unshadowed(name, &models).then_some(versions)
    }

    /// A snapshot of every version of every ensemble served, by name then version (not those a
    /// model's name shadows).
    pub fn ensembles(&self) -> Vec<Arc<EnsembleSpec>> {
        let specs = self.ensembles.read().expect("ensemble lock").all();
        let models = self.pool.models();
        specs
            .into_iter()
            .filter(|spec| self.unshadowed(&spec.name, &models))
            .collect()
    }

    /// Whether the ensemble `name` may be served: not when a model served by some worker has its
    /// name; warns when such a clash starts and says when it ends.
    fn unshadowed(&self, name: &str, models: &crate::pool::ModelMap) -> bool {
        let clash = models.contains_key(name);
        let mut shadowed = self.shadowed.lock().expect("shadowed lock");
        match (clash, shadowed.contains(name)) {
            (true, false) => {
                warn!(
                    ensemble = %name,
                    "ensemble spec not served: a model served by the workers has the same name, \
                     and the model keeps it; rename the ensemble"
                );
                shadowed.insert(name.to_string());
            }
            (false, true) => {
                info!(ensemble = %name, "no model has the ensemble's name any more; serving it");
                shadowed.remove(name);
            }
            _ => {}
        }
        !clash
    }

    /// Applies one spec change; requests already running keep the spec they started with.
    pub fn apply_spec_change(&self, change: SpecChange) {
        self.ensembles.write().expect("ensemble lock").apply(change);
    }

    /// Replaces the spec file's ensembles until `reloads` ends (each already validated: a bad
    /// file never gets here, so the specs in use stay); requests already running keep theirs.
    pub fn follow_file_specs(
        &self,
        mut reloads: mpsc::Receiver<Vec<EnsembleSpec>>,
    ) -> JoinHandle<()> {
        let ensembles = Arc::clone(&self.ensembles);
        tokio::spawn(async move {
            while let Some(specs) = reloads.recv().await {
                ensembles.write().expect("ensemble lock").set_file(specs);
            }
        })
    }

    /// Logs, once per problem, each ensemble that cannot be derived although workers describe
    /// every model it names; checks every `every`, and derives only after a change
    /// (`catalog/underivable.rs`).
    pub fn warn_underivable(&self, every: std::time::Duration) -> JoinHandle<()> {
        underivable::watch(Arc::clone(&self.ensembles), Arc::clone(&self.pool), every)
    }

    /// Applies spec changes until the source ends (the catalog keeps its last ensembles then).
    pub fn follow_specs(&self, mut changes: mpsc::Receiver<SpecChange>) -> JoinHandle<()> {
        let ensembles = Arc::clone(&self.ensembles);
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                ensembles.write().expect("ensemble lock").apply(change);
            }
        })
    }

    /// Whether `name` is an ensemble or a model some worker has described.
    pub fn knows(&self, name: &str) -> bool {
        self.ensemble(name).is_some() || self.pool.describes(name)
    }

    /// Every version of a model that some worker has described, ascending.
    pub fn model_versions(&self, name: &str) -> Option<Vec<ModelInfo>> {
        self.pool.models().get(name).cloned()
    }

    /// The model version a call resolves to: the pinned one, or the newest.
    pub fn model(&self, name: &str, version: Option<&str>) -> Option<ModelInfo> {
        let versions = self.model_versions(name)?;
        match version {
            Some(v) => versions.into_iter().find(|m| m.version == v),
            None => versions
                .into_iter()
                .max_by(|a, b| version_order(&a.version, &b.version)),
        }
    }

    pub fn model_signature(info: &ModelInfo) -> Signature {
        Signature::of_model(info)
    }

    /// The signature of an ensemble, derived from what workers say about its members (cached
    /// until membership, worker metadata or the spec change). Errors say why it cannot be
    /// derived (no member described yet, members that disagree).
    pub fn ensemble_signature(&self, spec: &Arc<EnsembleSpec>) -> Result<Arc<Signature>, String> {
        let generation = self.pool.generation();
        let mut cache = self.signatures.lock().expect("signature cache lock");
        if let Some(cached) = cache.get(&spec.name).and_then(|versions| {
            versions
                .iter()
                .find(|c| c.generation == generation && Arc::ptr_eq(&c.spec, spec))
        }) {
            return Ok(Arc::clone(&cached.signature));
        }
        let signature = Arc::new(self.derive_ensemble_signature(spec)?);
        // Misses are rare (a spec or membership change): drop names no longer served, so the
        // cache does not grow with ensembles that came and went through etcd.
        {
            let served = self.ensembles.read().expect("ensemble lock");
            cache.retain(|name, _| served.versions(name).is_some());
        }
        let versions = cache.entry(spec.name.clone()).or_default();
        // One entry per version: a stale one (older generation or spec) is replaced.
        versions.retain(|c| c.spec.version != spec.version);
        versions.push(CachedSignature {
            generation,
            spec: Arc::clone(spec),
            signature: Arc::clone(&signature),
        });
        Ok(signature)
    }

    fn derive_ensemble_signature(&self, spec: &EnsembleSpec) -> Result<Signature, String> {
        let models = self.pool.models();
        ensemble_signature::derive(spec, &|model: &str, version: Option<&str>| {
            let versions = models.get(model)?;
            match version {
                Some(v) => versions.iter().find(|m| m.version == v).cloned(),
                None => versions.last().cloned(),
            }
        })
        .map_err(|problems| problems.to_string())
    }

    /// Members with no replica in rotation right now.
    pub fn missing_members(&self, spec: &EnsembleSpec) -> Vec<String> {
        spec.members
            .iter()
            .filter(|m| !self.pool.has_replica(&m.model, m.version.as_deref()))
            .map(|m| m.model.clone())
            .collect()
    }

    /// Why an ensemble cannot answer now, or `None` when enough members (and the meta-model)
    /// have a replica in rotation and the spec fits what they serve (maps, roles, shapes: an
    /// ensemble every request of which would be refused is not ready).
    pub fn ensemble_unready_reason(&self, spec: &Arc<EnsembleSpec>) -> Option<String> {
        let missing = self.missing_members(spec);
        let available = spec.members.len() - missing.len();
        if available < spec.min_members {
            return Some(format!(
                "ensemble '{}' needs {} of its {} members but only {available} have a live worker; missing: {}",
                spec.name,
                spec.min_members,
                spec.members.len(),
                missing.join(", ")
            ));
        }
        if let Some((meta, version)) = &spec.meta_model
            && !self.pool.has_replica(meta, version.as_deref())
        {
            return Some(format!(
                "ensemble '{}': no live worker serves its meta-model '{meta}'",
                spec.name
            ));
        }
        self.ensemble_signature(spec).err()
    }

    /// Whether a model version has a replica in rotation.
    pub fn model_ready(&self, name: &str, version: Option<&str>) -> bool {
        self.pool.has_replica(name, version)
    }
}

pub(crate) fn member_names(spec: &EnsembleSpec) -> String {
    spec.members
        .iter()
        .map(|m| m.model.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, deadline_ms: u64) -> EnsembleSpec {
        let text = format!(
            "version = 1\n[[ensemble]]\nname = \"{name}\"\ncombiner = \"soft_vote\"\ndeadline_ms = {deadline_ms}\n[[ensemble.member]]\nmodel = \"a\"\n"
        );
        crate::spec::parse(&text, "test").unwrap().remove(0)
    }

    fn set(key: &str, specs: &[EnsembleSpec]) -> SpecChange {
        SpecChange::Set {
            key: key.into(),
            specs: specs.iter().cloned().map(Arc::new).collect(),
        }
    }

    fn deadline(set: &EnsembleSet, name: &str) -> Option<u128> {
        set.get(name).map(|s| s.deadline.as_millis())
    }

    #[test]
    fn etcd_specs_overlay_the_file_and_deleting_restores_it() {
        let mut ensembles = EnsembleSet::new(vec![spec("filed", 100), spec("shared", 100)]);
        ensembles.apply(set("/k/a", &[spec("shared", 200), spec("extra", 300)]));
        assert_eq!(deadline(&ensembles, "filed"), Some(100));
        assert_eq!(deadline(&ensembles, "shared"), Some(200));
        assert_eq!(deadline(&ensembles, "extra"), Some(300));
        ensembles.apply(set("/k/a", &[spec("shared", 250)]));
        assert_eq!(deadline(&ensembles, "shared"), Some(250));
        assert_eq!(
            deadline(&ensembles, "extra"),
            None,
            "a key defines exactly what it lists"
        );
        ensembles.apply(SpecChange::Removed { key: "/k/a".into() });
        assert_eq!(
            deadline(&ensembles, "shared"),
            Some(100),
            "back to the file's"
        );
        let names: Vec<_> = ensembles.all().iter().map(|s| s.name.clone()).collect();
        assert_eq!(names, vec!["filed", "shared"]);
    }

    #[test]
    fn of_two_etcd_keys_defining_one_name_the_last_key_wins() {
        let mut ensembles = EnsembleSet::new(vec![]);
        ensembles.apply(set("/k/b", &[spec("e", 2)]));
        ensembles.apply(set("/k/a", &[spec("e", 1)]));
        assert_eq!(deadline(&ensembles, "e"), Some(2));
        ensembles.apply(SpecChange::Removed { key: "/k/b".into() });
        assert_eq!(deadline(&ensembles, "e"), Some(1));
        ensembles.apply(SpecChange::Removed {
            key: "/k/missing".into(),
        });
        assert_eq!(deadline(&ensembles, "e"), Some(1));
    }

    /// Versions of `e` from one source: `(version, deadline_ms)`, the first table with
    /// `routing`.
    fn versions_of_e(versions: &[(&str, u64)], routing: &str) -> Vec<EnsembleSpec> {
        let mut text = String::from("version = 1\n");
        for (i, (version, deadline_ms)) in versions.iter().enumerate() {
            let extra = if i == 0 { routing } else { "" };
            text.push_str(&format!(
                "[[ensemble]]\nname = \"e\"\nversion = \"{version}\"\ncombiner = \"soft_vote\"\n\
                 deadline_ms = {deadline_ms}\n{extra}\n[[ensemble.member]]\nmodel = \"a\"\n"
            ));
        }
        crate::spec::parse(&text, "test").unwrap()
    }

    fn served_versions(set: &EnsembleSet) -> Vec<(String, String)> {
        set.all()
            .iter()
            .map(|s| (s.name.clone(), s.version.clone()))
            .collect()
    }

    #[test]
    fn a_name_is_replaced_with_all_its_versions_and_its_split() {
        let mut ensembles = EnsembleSet::new(versions_of_e(
            &[("1", 10), ("2", 20)],
            "traffic = { \"1\" = 100, \"2\" = 0 }",
        ));
        assert_eq!(ensembles.versions("e").unwrap().pick().version, "1");
        assert_eq!(deadline(&ensembles, "e"), Some(10), "the main version");
        // An etcd key defining version 3 only replaces both of the file's versions.
        let etcd: Vec<_> = versions_of_e(&[("3", 30)], "");
        ensembles.apply(set("/k/e", &etcd));
        assert_eq!(served_versions(&ensembles), vec![("e".into(), "3".into())]);
        ensembles.apply(SpecChange::Removed { key: "/k/e".into() });
        assert_eq!(served_versions(&ensembles).len(), 2);
        // A file reload swaps the split in one step; an `Arc` held by a request is unchanged.
        let held = ensembles.versions("e").unwrap();
        ensembles.set_file(versions_of_e(
            &[("1", 10), ("2", 20)],
            "traffic = { \"1\" = 0, \"2\" = 100 }",
        ));
        assert_eq!(ensembles.versions("e").unwrap().pick().version, "2");
        assert_eq!(held.pick().version, "1");
        ensembles.set_file(Vec::new());
        assert!(ensembles.versions("e").is_none());
    }

    /// `name`: a soft vote of models b and c.
    fn ensemble_of_b_and_c(name: &str) -> String {
        format!(
            "version = 1\n[[ensemble]]\nname = \"{name}\"\ncombiner = \"soft_vote\"\n\
             deadline_ms = 100\nmin_members = 1\n\
             [[ensemble.member]]\nmodel = \"b\"\n[[ensemble.member]]\nmodel = \"c\"\n"
        )
    }

    #[tokio::test(start_paused = true)]
    async fn an_ensemble_named_like_a_served_model_is_not_served() {
        use crate::testing::{Behaviour, FakeWorker, Harness};
        let row = [0.6, 0.3, 0.1];
        let workers: Vec<FakeWorker> = ["a", "b", "c"]
            .iter()
            .map(|m| FakeWorker::new(&format!("w-{m}"), &[(m, Behaviour::answer(&row))]))
            .collect();
        // The spec tries to take model a's name: the model keeps it.
        let h = Harness::start(&ensemble_of_b_and_c("a"), &workers).await;
        let answer = h.infer("a").await.expect("model a answers");
        assert!(answer.members.is_none(), "the name reached the ensemble");
        let catalog = h.infer.catalog();
        assert!(catalog.ensemble("a").is_none());
        assert!(catalog.ensembles().is_empty());

        // Under a name of its own the same ensemble is served.
        let h = Harness::start(&ensemble_of_b_and_c("bc"), &workers).await;
        let answer = h.infer("bc").await.expect("the ensemble answers");
        assert!(answer.members.is_some());
    }
}
