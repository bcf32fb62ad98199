//! Warns about ensembles that workers' models cannot serve: once every model an ensemble names
//! is described by some worker and [`derive`] still refuses it, each problem is logged once (a
//! WARN with `ensemble`, `version` and `problem`), the same lines `chorus validate` prints.
//!
//! Why here and not on the request path: requests already get the problem as their error, and
//! a spec pushed through etcd that does not fit its models should show in the log when it
//! arrives, not at the first request. The check runs off a timer, and only derives when the
//! pool's generation or the served specs changed; an ensemble whose models are not all described
//! yet (workers still starting) is not judged. The same problems are not logged again until they
//! change, or the ensemble derived in between.

use super::EnsembleSet;
use super::ensemble_signature::derive;
use crate::pool::{ModelMap, Pool};
use crate::spec::EnsembleSpec;
use chorus_common::ModelInfo;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// What has been warned about, by ensemble name and version: the problems as last logged.
#[derive(Debug, Default)]
pub struct Underivable {
    warned: BTreeMap<(String, String), Vec<String>>,
}

/// One ensemble's problems to log now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ensemble: String,
    pub version: String,
    pub problems: Vec<String>,
}

/// The model version a member or meta-model resolves to, as the catalog resolves it.
fn find(models: &ModelMap, model: &str, version: Option<&str>) -> Option<ModelInfo> {
    let versions = models.get(model)?;
    match version {
        Some(v) => versions.iter().find(|m| m.version == v).cloned(),
        None => versions.last().cloned(),
    }
}

/// Whether every model `spec` names (members and meta-model, at their pinned versions) is
/// described by some worker.
fn fully_described(spec: &EnsembleSpec, models: &ModelMap) -> bool {
    let members = spec
        .members
        .iter()
        .all(|m| find(models, &m.model, m.version.as_deref()).is_some());
    let meta = spec
        .meta_model
        .as_ref()
        .is_none_or(|(meta, version)| find(models, meta, version.as_deref()).is_some());
    members && meta
}

impl Underivable {
    /// The ensembles of `specs` to warn about now: fully described, not derivable, and not
    /// already warned about with these problems. Forgets ensembles that derive again or are gone.
    pub fn check(&mut self, specs: &[Arc<EnsembleSpec>], models: &ModelMap) -> Vec<Verdict> {
        let mut verdicts = Vec::new();
        let mut seen = BTreeMap::new();
        for spec in specs {
            let key = (spec.name.clone(), spec.version.clone());
            if !fully_described(spec, models) {
                // Not judged yet: keep what was warned, so a flapping worker does not repeat it.
                if let Some(problems) = self.warned.remove(&key) {
                    seen.insert(key, problems);
                }
                continue;
            }
            match derive(spec, &|model: &str, version| find(models, model, version)) {
                Ok(_) => {
                    if self.warned.contains_key(&key) {
                        info!(ensemble = %spec.name, version = %spec.version, "ensemble fits its models again");
                    }
                }
                Err(problems) => {
                    let problems: Vec<String> = problems.iter().cloned().collect();
                    if self.warned.get(&key) != Some(&problems) {
                        verdicts.push(Verdict {
                            ensemble: spec.name.clone(),
                            version: spec.version.clone(),
                            problems: problems.clone(),
                        });
                    }
                    seen.insert(key, problems);
                }
            }
        }
        self.warned = seen;
        verdicts
    }
}

/// Checks the served specs against the pool every `every`, when either changed, and logs each
/// new problem once.
pub fn watch(
    ensembles: Arc<RwLock<EnsembleSet>>,
    pool: Arc<Pool>,
    every: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut state = Underivable::default();
        let mut last: Option<(u64, Vec<Arc<EnsembleSpec>>)> = None;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let generation = pool.generation();
            let specs = ensembles.read().expect("ensemble lock").all();
            let unchanged = last.as_ref().is_some_and(|(g, s)| {
                *g == generation
                    && s.len() == specs.len()
                    && s.iter().zip(&specs).all(|(a, b)| Arc::ptr_eq(a, b))
            });
            if unchanged {
                continue;
            }
            for verdict in state.check(&specs, &pool.models()) {
                for problem in &verdict.problems {
                    warn!(
                        ensemble = %verdict.ensemble,
                        version = %verdict.version,
                        problem = %problem,
                        "ensemble cannot be served: its models, as workers describe them, do not fit its spec; `chorus validate` checks a repository and spec offline"
                    );
                }
            }
            last = Some((generation, specs));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec;
    use chorus_common::{DataType, ExecutionProvider, TensorSpec};

    fn model(name: &str, outputs: &[&str]) -> ModelInfo {
        let tensor = |name: &str, shape: Vec<i64>| TensorSpec {
            name: name.into(),
            datatype: DataType::Fp32,
            shape,
        };
        ModelInfo {
            name: name.into(),
            version: "1".into(),
            platform: "onnxruntime_onnx".into(),
            inputs: vec![tensor("input", vec![-1, 4])],
            outputs: outputs.iter().map(|o| tensor(o, vec![-1, 3])).collect(),
            execution_provider: ExecutionProvider::Cpu,
            allow_non_finite: false,
            max_input_elements: 1 << 20,
            labels: Vec::new(),
        }
    }

    fn specs(member_output: &str) -> Vec<Arc<EnsembleSpec>> {
        let text = format!(
            "version = 1\n[[ensemble]]\nname = \"e\"\ncombiner = \"average\"\nmember_output = \"{member_output}\"\ndeadline_ms = 100\nmin_members = 1\n[[ensemble.member]]\nmodel = \"a\"\n[[ensemble.member]]\nmodel = \"b\"\n"
        );
        spec::parse(&text, "test")
            .unwrap()
            .into_iter()
            .map(Arc::new)
            .collect()
    }

    fn models(entries: &[ModelInfo]) -> ModelMap {
        entries
            .iter()
            .map(|m| (m.name.clone(), vec![m.clone()]))
            .collect()
    }

    #[test]
    fn an_ensemble_is_judged_once_every_model_it_names_is_described() {
        let mut state = Underivable::default();
        let bad = specs("scores");
        // Only `a` described: workers may still be starting.
        assert!(
            state
                .check(&bad, &models(&[model("a", &["probabilities"])]))
                .is_empty()
        );
        let both = models(&[
            model("a", &["probabilities"]),
            model("b", &["probabilities"]),
        ]);
        let verdicts = state.check(&bad, &both);
        assert_eq!(verdicts.len(), 1);
        assert_eq!(verdicts[0].ensemble, "e");
        assert!(
            verdicts[0].problems.iter().all(|p| p.contains("scores")),
            "{verdicts:?}"
        );
    }

    #[test]
    fn the_same_problems_are_warned_once_and_again_after_a_fix() {
        let mut state = Underivable::default();
        let bad = specs("scores");
        let both = models(&[
            model("a", &["probabilities"]),
            model("b", &["probabilities"]),
        ]);
        assert_eq!(state.check(&bad, &both).len(), 1);
        assert!(state.check(&bad, &both).is_empty(), "warned once");
        // A worker leaving and coming back does not repeat it.
        assert!(
            state
                .check(&bad, &models(&[model("a", &["probabilities"])]))
                .is_empty()
        );
        assert!(state.check(&bad, &both).is_empty());
        // Fixed, then broken again: warned again.
        assert!(state.check(&specs("probabilities"), &both).is_empty());
        assert_eq!(state.check(&bad, &both).len(), 1);
    }
}
