//! The loaded models: name → version → signature, input policy and instance pool.
//!
//! A registry is immutable once serving: a reload builds a new one (sharing the versions it
//! keeps, each behind an `Arc`) and swaps it in whole (`service::Shared::swap_registry`). A call
//! holds the `Arc` of the version it resolved, so a version taken out of the registry keeps
//! serving its calls in flight, and unloads when the last of them ends.

use crate::pool::InstancePool;
use chorus_common::validate::InputPolicy;
use chorus_common::{ModelInfo, WorkerError};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One servable model version.
#[derive(Debug)]
pub struct LoadedModel {
    pub info: ModelInfo,
    pub policy: InputPolicy,
    pub pool: InstancePool,
}

/// Every model version this worker serves.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    models: BTreeMap<String, BTreeMap<u64, Arc<LoadedModel>>>,
}

impl Registry {
    pub fn insert(&mut self, version: u64, model: LoadedModel) {
        self.insert_shared(version, Arc::new(model));
    }

    /// Inserts (or replaces) a version already shared with another registry.
    pub fn insert_shared(&mut self, version: u64, model: Arc<LoadedModel>) {
        self.models
            .entry(model.info.name.clone())
            .or_default()
            .insert(version, model);
    }

    /// Takes a version out (new calls no longer find it); the model itself lives on while
    /// anyone holds it.
    pub fn remove(&mut self, model: &str, version: u64) -> Option<Arc<LoadedModel>> {
        let versions = self.models.get_mut(model)?;
        let removed = versions.remove(&version);
        if versions.is_empty() {
            self.models.remove(model);
        }
        removed
    }

    /// One exact version, if loaded.
    pub fn get(&self, model: &str, version: u64) -> Option<&Arc<LoadedModel>> {
        self.models.get(model)?.get(&version)
    }

    /// Every (model, version) loaded, by name then version.
    pub fn versions(&self) -> impl Iterator<Item = (&str, u64)> {
        self.models
            .iter()
            .flat_map(|(name, versions)| versions.keys().map(move |v| (name.as_str(), *v)))
    }

    /// The model version a call names; `None` means the highest version.
    pub fn resolve(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<&Arc<LoadedModel>, WorkerError> {
        let not_found = || WorkerError::ModelNotFound {
            model: model.to_string(),
            version: version.map(str::to_string),
        };
        let versions = self.models.get(model).ok_or_else(not_found)?;
        let found = match version {
            None => versions.values().next_back(),
            Some(v) => crate::repository::parse_version(v).and_then(|n| versions.get(&n)),
        };
        found.ok_or_else(not_found)
    }

    /// Descriptions of every model version, by name then version.
    pub fn infos(&self) -> Vec<ModelInfo> {
        self.models
            .values()
            .flat_map(|versions| versions.values().map(|m| m.info.clone()))
            .collect()
    }

    /// Calls the worker runs at once: the sum of every version's instances.
    pub fn capacity(&self) -> u32 {
        self.models
            .values()
            .flat_map(|versions| versions.values())
            .map(|m| m.pool.instances())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{JobResult, Runner};
    use chorus_common::model::ONNX_PLATFORM;
    use chorus_common::{ExecutionProvider, Tensor};

    struct Nothing;

    impl Runner for Nothing {
        fn run(&mut self, _: &[Tensor], _: &[String]) -> JobResult {
            Ok(vec![])
        }
    }

    fn loaded(name: &str, version: u64, instances: usize) -> LoadedModel {
        let runners: Vec<Box<dyn Runner>> =
            (0..instances).map(|_| Box::new(Nothing) as _).collect();
        LoadedModel {
            info: ModelInfo {
                name: name.into(),
                version: version.to_string(),
                platform: ONNX_PLATFORM.into(),
                inputs: vec![],
                outputs: vec![],
                execution_provider: ExecutionProvider::Cpu,
                allow_non_finite: false,
                max_input_elements: 10,
                labels: Vec::new(),
            },
            policy: InputPolicy {
                allow_non_finite: false,
                max_elements: 10,
            },
            pool: InstancePool::start(format!("{name} v{version}"), name, runners, 4).unwrap(),
        }
    }

    fn registry() -> Registry {
        let mut r = Registry::default();
        r.insert(1, loaded("b", 1, 1));
        r.insert(10, loaded("b", 10, 2));
        r.insert(2, loaded("b", 2, 1));
        r.insert(1, loaded("a", 1, 1));
        r
    }

    #[test]
    fn no_version_means_the_highest() {
        let r = registry();
        assert_eq!(r.resolve("b", None).unwrap().info.version, "10");
        assert_eq!(r.resolve("b", Some("2")).unwrap().info.version, "2");
        assert_eq!(r.resolve("a", None).unwrap().info.version, "1");
    }

    #[test]
    fn unknown_models_and_versions_are_not_found() {
        let r = registry();
        for (model, version) in [
            ("c", None),
            ("b", Some("3")),
            ("b", Some("02")),
            ("b", Some("x")),
        ] {
            let e = r.resolve(model, version).unwrap_err();
            assert_eq!(
                e,
                WorkerError::ModelNotFound {
                    model: model.into(),
                    version: version.map(Into::into)
                }
            );
        }
    }

    #[test]
    fn infos_are_ordered_and_capacity_sums_instances() {
        let r = registry();
        let listed: Vec<_> = r
            .infos()
            .into_iter()
            .map(|i| format!("{}:{}", i.name, i.version))
            .collect();
        assert_eq!(listed, ["a:1", "b:1", "b:2", "b:10"]);
        assert_eq!(r.capacity(), 5);
        assert!(!r.is_empty());
    }

    #[test]
    fn removing_versions_keeps_the_model_for_its_holders() {
        let mut r = registry();
        let held = Arc::clone(r.resolve("b", None).unwrap());
        let before = r.clone();
        assert!(r.remove("b", 10).is_some());
        assert_eq!(r.resolve("b", None).unwrap().info.version, "2");
        assert!(r.get("b", 10).is_none());
        // The call that resolved it, and the registry it came from, still have it.
        assert_eq!(held.info.version, "10");
        assert!(before.get("b", 10).is_some());
        assert!(r.remove("a", 1).is_some());
        assert!(
            r.resolve("a", None).is_err(),
            "a model without versions is gone"
        );
        let listed: Vec<_> = r.versions().collect();
        assert_eq!(listed, [("b", 1), ("b", 2)]);
    }
}
