//! The decisions of a reload, as a pure function of what is loaded and what a rescan found.
//!
//! Rules:
//! 1. A version found and not loaded is loaded (beside the others).
//! 2. A loaded version found with a different stamp (its files, settings or labels changed) is
//!    reloaded: the new instance loads beside the old, which serves until the swap.
//! 3. A loaded version of a model that scanned fine, but is no longer among its versions (the
//!    directory is gone, or the version policy no longer selects it), is removed.
//! 4. A loaded model whose directory is gone (or no longer selected by `--models`) is removed,
//!    every version of it.
//! 5. A model whose scan failed (bad `config.toml`, a version directory without `model.onnx`)
//!    changes nothing: its loaded versions keep serving, and the failure is reported. The same
//!    for one version whose stamp could not be read.
//!
//! Loading can still fail later (ONNX Runtime refuses the file): the reload then keeps the old
//! version, as rule 5 does (see `reload.rs`).

use super::stamp::VersionStamp;
use std::collections::BTreeMap;

/// A model version, by name and number.
pub type VersionKey = (String, u64);

/// What a rescan found for one model: its versions' stamps (a version whose stamp could not be
/// read carries why), or why the model could not be scanned.
pub type Scanned = BTreeMap<String, Result<BTreeMap<u64, Result<VersionStamp, String>>, String>>;

/// Something the reload could not do, and so left as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub model: String,
    /// `None` when the whole model could not be scanned.
    pub version: Option<u64>,
    pub error: String,
}

/// What a reload does.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// New versions (rule 1), with their stamps.
    pub load: Vec<(VersionKey, VersionStamp)>,
    /// Changed versions (rule 2), with their new stamps.
    pub reload: Vec<(VersionKey, VersionStamp)>,
    /// Versions to take out (rules 3 and 4).
    pub remove: Vec<VersionKey>,
    /// Versions left as they are.
    pub unchanged: usize,
    /// Models and versions left as they were because they could not be scanned (rule 5).
    pub failed: Vec<Failure>,
}

/// The plan that turns `loaded` into what `scanned` describes.
pub fn plan(loaded: &BTreeMap<VersionKey, VersionStamp>, scanned: &Scanned) -> Plan {
    let mut plan = Plan::default();
    for (model, found) in scanned {
        let versions = match found {
            Ok(versions) => versions,
            Err(error) => {
                plan.failed.push(Failure {
                    model: model.clone(),
                    version: None,
                    error: error.clone(),
                });
                continue;
            }
        };
        for (&version, stamp) in versions {
            let key = (model.clone(), version);
            match (stamp, loaded.get(&key)) {
                (Err(error), _) => plan.failed.push(Failure {
                    model: model.clone(),
                    version: Some(version),
                    error: error.clone(),
                }),
                (Ok(stamp), None) => plan.load.push((key, stamp.clone())),
                (Ok(stamp), Some(old)) if old != stamp => plan.reload.push((key, stamp.clone())),
                (Ok(_), Some(_)) => plan.unchanged += 1,
            }
        }
    }
    for (model, version) in loaded.keys() {
        let gone = match scanned.get(model) {
            // Rule 4.
            None => true,
            // Rule 3.
            Some(Ok(versions)) => !versions.contains_key(version),
            // Rule 5.
            Some(Err(_)) => false,
        };
        if gone {
            plan.remove.push((model.clone(), *version));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WorkerConfig;
    use crate::model_config::ModelSettings;
    use crate::repository;
    use std::fs;
    use std::path::Path;

    /// A real stamp of a one-version model directory `dir` holding `content`.
    fn stamp(dir: &Path, content: &str, instances: u32) -> VersionStamp {
        fs::create_dir_all(dir.join("1")).unwrap();
        fs::write(dir.join("1/model.onnx"), content).unwrap();
        let repo = dir.parent().unwrap();
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        let mut defaults = ModelSettings::defaults(&WorkerConfig::default());
        defaults.instances = instances;
        let model = repository::scan(repo, &[name], &defaults)
            .unwrap()
            .remove(0);
        VersionStamp::read(&model, &model.versions[0]).unwrap()
    }

    fn key(model: &str, version: u64) -> VersionKey {
        (model.to_string(), version)
    }

    fn keys(entries: &[(VersionKey, VersionStamp)]) -> Vec<VersionKey> {
        entries.iter().map(|(k, _)| k.clone()).collect()
    }

    #[test]
    fn new_changed_gone_and_kept_versions() {
        let tmp = tempfile::tempdir().unwrap();
        let a = stamp(&tmp.path().join("a"), "a", 1);
        let b = stamp(&tmp.path().join("b"), "bb", 1);
        let loaded = BTreeMap::from([
            (key("m", 1), a.clone()),
            (key("m", 2), a.clone()),
            (key("m", 3), a.clone()),
            (key("gone", 1), a.clone()),
        ]);
        let scanned: Scanned = BTreeMap::from([
            (
                "m".to_string(),
                Ok(BTreeMap::from([
                    (1, Ok(a.clone())),
                    (2, Ok(b.clone())),
                    (4, Ok(b.clone())),
                ])),
            ),
            ("new".to_string(), Ok(BTreeMap::from([(1, Ok(b.clone()))]))),
        ]);
        let plan = plan(&loaded, &scanned);
        assert_eq!(keys(&plan.load), [key("m", 4), key("new", 1)]);
        assert_eq!(keys(&plan.reload), [key("m", 2)]);
        assert_eq!(plan.remove, [key("gone", 1), key("m", 3)]);
        assert_eq!(plan.unchanged, 1);
        assert!(plan.failed.is_empty());
    }

    #[test]
    fn changed_settings_reload_the_version() {
        let tmp = tempfile::tempdir().unwrap();
        let one = stamp(&tmp.path().join("v"), "x", 1);
        let two = stamp(&tmp.path().join("v"), "x", 2);
        let loaded = BTreeMap::from([(key("m", 1), one)]);
        let scanned: Scanned =
            BTreeMap::from([("m".to_string(), Ok(BTreeMap::from([(1, Ok(two))])))]);
        assert_eq!(keys(&plan(&loaded, &scanned).reload), [key("m", 1)]);
    }

    #[test]
    fn a_model_or_version_that_cannot_be_scanned_keeps_serving() {
        let tmp = tempfile::tempdir().unwrap();
        let a = stamp(&tmp.path().join("a"), "a", 1);
        let loaded = BTreeMap::from([
            (key("broken", 1), a.clone()),
            (key("m", 1), a.clone()),
            (key("m", 2), a.clone()),
        ]);
        let scanned: Scanned = BTreeMap::from([
            ("broken".to_string(), Err("config.toml: bad".to_string())),
            (
                "m".to_string(),
                Ok(BTreeMap::from([
                    (1, Ok(a.clone())),
                    (2, Err("cannot read m/2".to_string())),
                ])),
            ),
        ]);
        let plan = plan(&loaded, &scanned);
        assert!(plan.remove.is_empty(), "{:?}", plan.remove);
        assert!(plan.load.is_empty() && plan.reload.is_empty());
        assert_eq!(plan.unchanged, 1);
        assert_eq!(
            plan.failed,
            [
                Failure {
                    model: "broken".into(),
                    version: None,
                    error: "config.toml: bad".into()
                },
                Failure {
                    model: "m".into(),
                    version: Some(2),
                    error: "cannot read m/2".into()
                },
            ]
        );
    }

    #[test]
    fn nothing_changes_when_nothing_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let a = stamp(&tmp.path().join("a"), "a", 1);
        let loaded = BTreeMap::from([(key("m", 1), a.clone())]);
        let scanned: Scanned =
            BTreeMap::from([("m".to_string(), Ok(BTreeMap::from([(1, Ok(a))])))]);
        let plan = plan(&loaded, &scanned);
        assert_eq!(
            plan,
            Plan {
                unchanged: 1,
                ..Plan::default()
            }
        );
    }
}
