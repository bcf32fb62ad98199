//! What the coordinator serves: ensembles from specs and models described by workers, with the
//! signature each is validated against and whether it can answer now.
//!
//! One namespace, as in Triton and KServe: a name is a model or an ensemble, never both. When a
//! spec names an ensemble after a model that workers serve, the model keeps its name and the
//! ensemble is not served while the clash lasts (warned once per clash, naming both): whoever can
//! write a spec must not be able to take over a model's traffic (docs/decisions.md).

use crate::membership::SpecChange;
use crate::pool::{Pool, version_order};
use crate::spec::{CombinerKind, EnsembleSpec, Member};
use chorus_common::validate::InputPolicy;
use chorus_common::{DataType, ModelInfo, TensorSpec};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// The one version an ensemble spec has (specs are versioned by the file, not per ensemble).
pub const ENSEMBLE_VERSION: &str = "1";

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

/// The ensembles served: the spec file's, overlaid by the spec files kept in etcd. An etcd
/// definition replaces the file's for the same name; when two etcd keys define one name, the key
/// that sorts last wins (every coordinator picks the same one, whatever order it saw them in).
#[derive(Debug, Default)]
pub struct EnsembleSet {
    file: BTreeMap<String, Arc<EnsembleSpec>>,
    /// Specs by the etcd key that defines them.
    etcd: BTreeMap<String, Vec<Arc<EnsembleSpec>>>,
    served: BTreeMap<String, Arc<EnsembleSpec>>,
}

impl EnsembleSet {
    pub fn new(file: Vec<EnsembleSpec>) -> Self {
        let file: BTreeMap<_, _> = file
            .into_iter()
            .map(|spec| (spec.name.clone(), Arc::new(spec)))
            .collect();
        EnsembleSet {
            served: file.clone(),
            file,
            etcd: BTreeMap::new(),
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<EnsembleSpec>> {
        self.served.get(name).cloned()
    }

    /// Every ensemble served, by name.
    pub fn all(&self) -> Vec<Arc<EnsembleSpec>> {
        self.served.values().cloned().collect()
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
        let names: BTreeSet<&String> = self.served.keys().chain(served.keys()).collect();
        for name in names {
            match (self.served.get(name), served.get(name)) {
                (None, Some(_)) => info!(ensemble = %name, key = %key, "ensemble added"),
                (Some(old), Some(new)) if old != new => {
                    info!(ensemble = %name, key = %key, "ensemble updated")
                }
                (Some(_), None) => info!(ensemble = %name, key = %key, "ensemble removed"),
                _ => {}
            }
        }
        self.served = served;
    }

    /// The file's specs with every etcd key's on top; warns about names that `changed_key`
    /// shares with another etcd key.
    fn overlay(&self, changed_key: &str) -> BTreeMap<String, Arc<EnsembleSpec>> {
        let mut served = self.file.clone();
        let mut defined_by: BTreeMap<&str, &str> = BTreeMap::new();
        for (key, specs) in &self.etcd {
            for spec in specs {
                if let Some(earlier) = defined_by.insert(&spec.name, key)
                    && (key == changed_key || earlier == changed_key)
                {
                    warn!(ensemble = %spec.name, used = %key, ignored = %earlier, "ensemble defined under two etcd keys; the key that sorts last wins");
                }
                served.insert(spec.name.clone(), Arc::clone(spec));
            }
        }
        served
    }
}

/// Ensembles by name, plus the pool that knows the models.
pub struct Catalog {
    /// Shared with the task that follows spec changes; handlers only read it.
    ensembles: Arc<RwLock<EnsembleSet>>,
    pool: Arc<Pool>,
    /// Ensemble signatures by name, valid while the pool's generation and the spec are the ones
    /// they were derived from (every request needs one; deriving it copies model metadata).
    signatures: Mutex<HashMap<String, CachedSignature>>,
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

    /// The ensemble `name` names, unless a served model has that name (see the module header).
    pub fn ensemble(&self, name: &str) -> Option<Arc<EnsembleSpec>> {
        let spec = self.ensembles.read().expect("ensemble lock").get(name)?;
        let models = self.pool.models();
        self.unshadowed(spec, &models)
    }

    /// A snapshot of every ensemble served, by name (not those a model's name shadows).
    pub fn ensembles(&self) -> Vec<Arc<EnsembleSpec>> {
        let specs = self.ensembles.read().expect("ensemble lock").all();
        let models = self.pool.models();
        specs
            .into_iter()
            .filter_map(|spec| self.unshadowed(spec, &models))
            .collect()
    }

    /// `spec`, or `None` when a model served by some worker has its name; warns when such a
    /// clash starts and says when it ends.
    fn unshadowed(
        &self,
        spec: Arc<EnsembleSpec>,
        models: &crate::pool::ModelMap,
    ) -> Option<Arc<EnsembleSpec>> {
        let clash = models.contains_key(&spec.name);
        let mut shadowed = self.shadowed.lock().expect("shadowed lock");
        match (clash, shadowed.contains(&spec.name)) {
            (true, false) => {
                warn!(
                    ensemble = %spec.name,
                    "ensemble spec not served: a model served by the workers has the same name, \
                     and the model keeps it; rename the ensemble"
                );
                shadowed.insert(spec.name.clone());
            }
            (false, true) => {
                info!(ensemble = %spec.name, "no model has the ensemble's name any more; serving it");
                shadowed.remove(&spec.name);
            }
            _ => {}
        }
        (!clash).then_some(spec)
    }

    /// Applies one spec change; requests already running keep the spec they started with.
    pub fn apply_spec_change(&self, change: SpecChange) {
        self.ensembles.write().expect("ensemble lock").apply(change);
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
        if let Some(cached) = cache.get(&spec.name)
            && cached.generation == generation
            && Arc::ptr_eq(&cached.spec, spec)
        {
            return Ok(Arc::clone(&cached.signature));
        }
        let signature = Arc::new(self.derive_ensemble_signature(spec)?);
        cache.insert(
            spec.name.clone(),
            CachedSignature {
                generation,
                spec: Arc::clone(spec),
                signature: Arc::clone(&signature),
            },
        );
        Ok(signature)
    }

    fn derive_ensemble_signature(&self, spec: &EnsembleSpec) -> Result<Signature, String> {
        let models = self.pool.models();
        let find = |model: &str, version: Option<&str>| -> Option<ModelInfo> {
            let versions = models.get(model)?;
            match version {
                Some(v) => versions.iter().find(|m| m.version == v).cloned(),
                None => versions.last().cloned(),
            }
        };
        let described: Vec<(&Member, ModelInfo)> = spec
            .members
            .iter()
            .filter_map(|m| find(&m.model, m.version.as_deref()).map(|info| (m, info)))
            .collect();
        let Some((first_member, first)) = described.first() else {
            return Err(format!(
                "no live worker serves any member of ensemble '{}' ({})",
                spec.name,
                member_names(spec)
            ));
        };
        for (member, info) in &described[1..] {
            if info.inputs != first.inputs {
                return Err(format!(
                    "members '{}' and '{}' of ensemble '{}' declare different inputs; every member must take the same inputs",
                    first_member.model, member.model, spec.name
                ));
            }
        }
        let member_output = first
            .outputs
            .iter()
            .find(|o| o.name == spec.member_output)
            .ok_or_else(|| {
                format!(
                    "member '{}' of ensemble '{}' has no output '{}' (it has {:?})",
                    first_member.model,
                    spec.name,
                    spec.member_output,
                    first.outputs.iter().map(|o| &o.name).collect::<Vec<_>>()
                )
            })?;
        let batch = member_output.shape.first().copied().unwrap_or(-1);
        let spec_of = |name: &str, datatype, shape| TensorSpec {
            name: name.to_string(),
            datatype,
            shape,
        };
        let meta_info = spec
            .meta_model
            .as_ref()
            .and_then(|(meta, version)| find(meta, version.as_deref()));
        let outputs = match spec.combiner {
            CombinerKind::SoftVote => vec![
                spec_of("label", DataType::Int64, vec![batch]),
                spec_of("probabilities", DataType::Fp32, member_output.shape.clone()),
            ],
            CombinerKind::HardVote => vec![
                spec_of("label", DataType::Int64, vec![batch]),
                spec_of("agreement", DataType::Fp32, vec![batch]),
            ],
            CombinerKind::Average | CombinerKind::Median => vec![member_output.clone()],
            CombinerKind::Fusion => {
                let (meta, _) = spec
                    .meta_model
                    .as_ref()
                    .ok_or("fusion without a meta-model")?;
                meta_info
                    .as_ref()
                    .ok_or_else(|| {
                        format!(
                            "no live worker serves meta-model '{meta}' of ensemble '{}'",
                            spec.name
                        )
                    })?
                    .outputs
                    .clone()
            }
        };
        // The spec's own class names, else the meta-model's (fusion), else the first member's.
        let labels = spec
            .labels
            .clone()
            .or_else(|| meta_info.map(|m| m.labels))
            .unwrap_or_else(|| first.labels.clone());
        let policy = InputPolicy {
            allow_non_finite: described.iter().all(|(_, m)| m.allow_non_finite),
            max_elements: described
                .iter()
                .map(|(_, m)| m.max_input_elements)
                .min()
                .unwrap_or(u64::MAX),
        };
        Ok(Signature {
            inputs: first.inputs.clone(),
            outputs,
            policy,
            labels,
        })
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
    /// have a replica in rotation.
    pub fn ensemble_unready_reason(&self, spec: &EnsembleSpec) -> Option<String> {
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
        None
    }

    /// Whether a model version has a replica in rotation.
    pub fn model_ready(&self, name: &str, version: Option<&str>) -> bool {
        self.pool.has_replica(name, version)
    }
}

fn member_names(spec: &EnsembleSpec) -> String {
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
