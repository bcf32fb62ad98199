//! Scans a Triton-style model repository: `<repo>/<model>/<version>/model.onnx` plus an optional
//! `<repo>/<model>/config.toml` and an optional `<repo>/<model>/labels.txt` (class names, one per
//! line, as Triton's `label_filename`). Of a model's version directories, the ones its
//! `version_policy` selects are loaded (Triton's default: the newest only).
//!
//! A Triton `config.pbtxt` is not read (Chorus takes its settings from `config.toml`); a model
//! directory with one and no `config.toml` is warned about here, at every scan, so that a Triton
//! user's batching or instance settings are not silently dropped.

use crate::error::LoadError;
use crate::model_config::ModelSettings;
use std::path::{Path, PathBuf};
use tracing::warn;

/// File name of a model version's graph.
pub const MODEL_FILE: &str = "model.onnx";
/// File name of a model's settings.
pub const CONFIG_FILE: &str = "config.toml";
/// File name of a model's class names.
pub const LABELS_FILE: &str = "labels.txt";
/// File name of a Triton model configuration, which Chorus does not read.
pub const TRITON_CONFIG_FILE: &str = "config.pbtxt";
/// Largest labels file read: far more than any class list, far less than memory.
const MAX_LABELS_BYTES: u64 = 4 * 1024 * 1024;

/// One model found in the repository, with the versions to load in ascending order.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSource {
    pub name: String,
    /// The versions its `version_policy` selects, ascending.
    pub versions: Vec<VersionSource>,
    /// Every version directory on disk, ascending (a superset of `versions`).
    pub on_disk: Vec<u64>,
    pub settings: ModelSettings,
    /// Class names by index, from `labels.txt`; empty without one.
    pub labels: Vec<String>,
    /// A Triton `config.pbtxt` in a directory without `config.toml`: ignored (and warned about).
    pub ignored_triton_config: Option<PathBuf>,
}

/// One numbered version directory and its `model.onnx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSource {
    pub version: u64,
    pub path: PathBuf,
}

/// The models to load: all of `repo`, or the ones in `selected` (in the order given, repeats
/// ignored). Models not selected are not inspected, so a broken one does not stop the others.
pub fn scan(
    repo: &Path,
    selected: &[String],
    defaults: &ModelSettings,
) -> Result<Vec<ModelSource>, LoadError> {
    let available = model_names(repo)?;
    let mut names: Vec<String> = Vec::new();
    if selected.is_empty() {
        names = available.clone();
    } else {
        for name in selected.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            if !available.iter().any(|a| a == name) {
                return Err(LoadError::UnknownModel {
                    name: name.to_string(),
                    repo: repo.to_path_buf(),
                    available,
                });
            }
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
    }
    if names.is_empty() {
        return Err(LoadError::Repository {
            path: repo.to_path_buf(),
            message: "no models to serve: expected <repository>/<model>/<version>/model.onnx"
                .into(),
        });
    }
    names
        .into_iter()
        .map(|name| {
            let dir = repo.join(&name);
            let on_disk = versions(&name, &dir)?;
            let config = dir.join(CONFIG_FILE);
            let settings = ModelSettings::load(&config, defaults)?;
            let versions = select_versions(&config, &settings, &on_disk)?;
            if versions.len() < on_disk.len() {
                // Triton's default (latest 1) is new here: every version directory used to load,
                // so say which ones are now left on disk, and why.
                let left: Vec<u64> = on_disk
                    .iter()
                    .map(|v| v.version)
                    .filter(|v| !versions.iter().any(|chosen| chosen.version == *v))
                    .collect();
                tracing::info!(model = %name, not_loaded = ?left, policy = %settings.version_policy, "versions on disk not loaded by the model's version_policy");
            }
            let labels = labels(&name, &dir.join(LABELS_FILE))?;
            let ignored_triton_config = ignored_triton_config(&name, &dir);
            Ok(ModelSource {
                name,
                versions,
                on_disk: on_disk.iter().map(|v| v.version).collect(),
                settings,
                labels,
                ignored_triton_config,
            })
        })
        .collect()
}

/// Names of the models in `repo`: its directories, sorted (hidden entries and plain files are
/// not models). Their versions are not inspected.
pub fn model_names(repo: &Path) -> Result<Vec<String>, LoadError> {
    let repo_error = |message: String| LoadError::Repository {
        path: repo.to_path_buf(),
        message,
    };
    let entries = std::fs::read_dir(repo).map_err(|e| {
        repo_error(format!(
            "cannot read it ({e}); set --model-repository (CHORUS_WORKER_MODEL_REPOSITORY) to a directory of <model>/<version>/model.onnx"
        ))
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| repo_error(format!("cannot list it: {e}")))?;
        if !entry.path().is_dir() {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            warn!(path = %entry.path().display(), "skipping a model directory whose name is not utf-8");
            continue;
        };
        if !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The versions of `on_disk` that the model's `version_policy` selects; a `specific` version
/// without a directory is an error in `config` (the model's `config.toml`).
fn select_versions(
    config: &Path,
    settings: &ModelSettings,
    on_disk: &[VersionSource],
) -> Result<Vec<VersionSource>, LoadError> {
    let numbers: Vec<u64> = on_disk.iter().map(|v| v.version).collect();
    let chosen = settings
        .version_policy
        .select(&numbers)
        .map_err(|message| LoadError::ModelConfig {
            path: config.to_path_buf(),
            message,
        })?;
    Ok(on_disk
        .iter()
        .filter(|v| chosen.contains(&v.version))
        .cloned()
        .collect())
}

/// `dir/config.pbtxt` when the model has no `config.toml` beside it: Triton's settings
/// (batching, instances, version policy) would be expected to apply and do not.
fn ignored_triton_config(model: &str, dir: &Path) -> Option<PathBuf> {
    let pbtxt = dir.join(TRITON_CONFIG_FILE);
    if !pbtxt.is_file() || dir.join(CONFIG_FILE).exists() {
        return None;
    }
    warn!(
        model,
        file = %pbtxt.display(),
        "config.pbtxt is not read: Chorus takes instances, batching (max_batch_size, \
         max_queue_delay_us, preferred_batch_sizes), execution_provider and version_policy from \
         config.toml in the same directory (docs/models.md); the worker defaults apply"
    );
    Some(pbtxt)
}

/// The class names in `path`, one per line (trailing blank lines dropped); none if the file
/// does not exist.
fn labels(model: &str, path: &Path) -> Result<Vec<String>, LoadError> {
    let layout = |message: String| LoadError::ModelLayout {
        model: model.to_string(),
        path: path.to_path_buf(),
        message,
    };
    let size = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(layout(format!("cannot read it: {e}"))),
    };
    if size > MAX_LABELS_BYTES {
        return Err(layout(format!(
            "it has {size} bytes, more than the {MAX_LABELS_BYTES} a labels file may have"
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| layout(format!("cannot read it as UTF-8 text: {e}")))?;
    let mut labels: Vec<String> = text.lines().map(|l| l.trim_end().to_string()).collect();
    while labels.last().is_some_and(String::is_empty) {
        labels.pop();
    }
    Ok(labels)
}

/// Numbered version directories of one model. Other directories are skipped with a warning (as
/// Triton does); a numbered directory without `model.onnx` is an error, since it was surely meant
/// to be served.
fn versions(model: &str, dir: &Path) -> Result<Vec<VersionSource>, LoadError> {
    let layout = |message: String| LoadError::ModelLayout {
        model: model.to_string(),
        path: dir.to_path_buf(),
        message,
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| layout(format!("cannot read the directory: {e}")))?;
    let mut versions = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| layout(format!("cannot list the directory: {e}")))?;
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let name = entry.file_name();
        let Some(version) = name.to_str().and_then(parse_version) else {
            warn!(model, path = %path.display(), "skipping a directory that is not a version number");
            continue;
        };
        let file = path.join(MODEL_FILE);
        if !file.is_file() {
            return Err(layout(format!(
                "version directory {} has no {MODEL_FILE}",
                path.display()
            )));
        }
        versions.push(VersionSource {
            version,
            path: file,
        });
    }
    if versions.is_empty() {
        return Err(layout(format!(
            "no version directories: expected {}/<number>/{MODEL_FILE}",
            dir.display()
        )));
    }
    versions.sort_by_key(|v| v.version);
    Ok(versions)
}

/// A version directory name: decimal digits in canonical form ("1", "12"; not "01", "v1", "+1").
pub fn parse_version(name: &str) -> Option<u64> {
    let version: u64 = name.parse().ok()?;
    (version.to_string() == name).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WorkerConfig;
    use std::fs;

    fn defaults() -> ModelSettings {
        ModelSettings::defaults(&WorkerConfig::default())
    }

    fn model(repo: &Path, name: &str, versions: &[&str]) {
        for v in versions {
            let dir = repo.join(name).join(v);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join(MODEL_FILE), b"onnx").unwrap();
        }
    }

    #[test]
    fn finds_models_and_versions_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path();
        model(repo, "b", &["10", "2"]);
        model(repo, "a", &["1"]);
        fs::write(repo.join("README.md"), "not a model").unwrap();
        fs::create_dir_all(repo.join(".cache")).unwrap();
        fs::write(repo.join("a/config.toml"), "instances = 3").unwrap();
        fs::create_dir_all(repo.join("b/notes")).unwrap();

        let found = scan(repo, &[], &defaults()).unwrap();
        let names: Vec<_> = found.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(found[0].settings.instances, 3);
        assert_eq!(found[1].settings, defaults());
        // Triton's default policy: every directory is seen, only the newest is loaded.
        assert_eq!(found[1].on_disk, [2, 10]);
        let versions: Vec<_> = found[1].versions.iter().map(|v| v.version).collect();
        assert_eq!(versions, [10]);
        assert_eq!(found[1].versions[0].path, repo.join("b/10/model.onnx"));
    }

    fn loaded(repo: &Path, name: &str) -> Result<Vec<u64>, LoadError> {
        let found = scan(repo, &[name.to_string()], &defaults())?;
        Ok(found[0].versions.iter().map(|v| v.version).collect())
    }

    #[test]
    fn version_policy_selects_the_versions_loaded() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path();
        model(repo, "m", &["1", "2", "3", "10"]);
        assert_eq!(loaded(repo, "m").unwrap(), [10], "default: latest 1");
        for (policy, expected) in [
            ("\"all\"", vec![1, 2, 3, 10]),
            ("{ latest = 2 }", vec![3, 10]),
            ("{ latest = 7 }", vec![1, 2, 3, 10]),
            ("{ specific = [3, 1] }", vec![1, 3]),
        ] {
            fs::write(
                repo.join("m/config.toml"),
                format!("version_policy = {policy}"),
            )
            .unwrap();
            assert_eq!(loaded(repo, "m").unwrap(), expected, "{policy}");
        }
    }

    #[test]
    fn a_specific_version_without_a_directory_names_the_file_and_key() {
        let tmp = tempfile::tempdir().unwrap();
        model(tmp.path(), "m", &["1", "2"]);
        fs::write(
            tmp.path().join("m/config.toml"),
            "version_policy = { specific = [2, 5] }",
        )
        .unwrap();
        let e = loaded(tmp.path(), "m").unwrap_err().to_string();
        assert!(
            e.contains("m/config.toml") && e.contains("specific") && e.contains("[5]"),
            "{e}"
        );
    }

    #[test]
    fn a_triton_config_without_config_toml_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        model(tmp.path(), "triton", &["1"]);
        model(tmp.path(), "both", &["1"]);
        model(tmp.path(), "plain", &["1"]);
        for dir in ["triton", "both"] {
            fs::write(
                tmp.path().join(dir).join("config.pbtxt"),
                "max_batch_size: 8",
            )
            .unwrap();
        }
        fs::write(tmp.path().join("both/config.toml"), "instances = 1").unwrap();
        let found = scan(tmp.path(), &[], &defaults()).unwrap();
        let ignored: Vec<_> = found
            .iter()
            .map(|m| m.ignored_triton_config.is_some())
            .collect();
        // both, plain, triton (sorted)
        assert_eq!(ignored, [false, false, true]);
        assert_eq!(
            found[2].ignored_triton_config.as_deref(),
            Some(tmp.path().join("triton/config.pbtxt").as_path())
        );
    }

    #[test]
    fn selection_keeps_order_and_skips_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        model(tmp.path(), "a", &["1"]);
        model(tmp.path(), "b", &["1"]);
        // Broken but not selected: must not matter.
        fs::create_dir_all(tmp.path().join("broken/1")).unwrap();
        let found = scan(
            tmp.path(),
            &["b".into(), "a".into(), "b".into()],
            &defaults(),
        )
        .unwrap();
        let names: Vec<_> = found.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
    }

    #[test]
    fn unknown_selected_model_lists_what_the_repository_has() {
        let tmp = tempfile::tempdir().unwrap();
        model(tmp.path(), "logreg", &["1"]);
        model(tmp.path(), "mlp", &["1"]);
        let e = scan(tmp.path(), &["svm".into()], &defaults()).unwrap_err();
        assert!(matches!(e, LoadError::UnknownModel { .. }));
        let text = e.to_string();
        assert!(
            text.contains("svm") && text.contains("logreg") && text.contains("mlp"),
            "{text}"
        );
    }

    #[test]
    fn missing_or_empty_repository_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let e = scan(&tmp.path().join("nope"), &[], &defaults()).unwrap_err();
        assert!(e.to_string().contains("--model-repository"), "{e}");
        let e = scan(tmp.path(), &[], &defaults()).unwrap_err();
        assert!(e.to_string().contains("no models"), "{e}");
    }

    #[test]
    fn bad_version_layouts_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("noversions/v1")).unwrap();
        let e = scan(tmp.path(), &[], &defaults()).unwrap_err().to_string();
        assert!(e.contains("no version directories"), "{e}");

        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("nofile/1")).unwrap();
        let e = scan(tmp.path(), &[], &defaults()).unwrap_err().to_string();
        assert!(e.contains("has no model.onnx"), "{e}");
    }

    #[test]
    fn bad_config_file_fails_the_scan() {
        let tmp = tempfile::tempdir().unwrap();
        model(tmp.path(), "m", &["1"]);
        fs::write(tmp.path().join("m/config.toml"), "instances = 0").unwrap();
        let e = scan(tmp.path(), &[], &defaults()).unwrap_err().to_string();
        assert!(e.contains("config.toml") && e.contains("instances"), "{e}");
    }

    #[test]
    fn labels_come_from_labels_txt_one_per_line() {
        let tmp = tempfile::tempdir().unwrap();
        model(tmp.path(), "m", &["1"]);
        model(tmp.path(), "plain", &["1"]);
        fs::write(tmp.path().join("m/labels.txt"), "zero\none \r\ntwo\n\n\n").unwrap();
        let found = scan(tmp.path(), &[], &defaults()).unwrap();
        assert_eq!(found[0].labels, ["zero", "one", "two"]);
        assert!(found[1].labels.is_empty(), "no labels.txt, no labels");
        fs::write(tmp.path().join("m/labels.txt"), [0xffu8, 0xfe]).unwrap();
        let e = scan(tmp.path(), &[], &defaults()).unwrap_err().to_string();
        assert!(e.contains("labels.txt") && e.contains("UTF-8"), "{e}");
    }

    #[test]
    fn version_names_must_be_canonical_numbers() {
        assert_eq!(parse_version("1"), Some(1));
        assert_eq!(parse_version("0"), Some(0));
        assert_eq!(parse_version("42"), Some(42));
        for bad in ["01", "v1", "+1", "-1", "1.0", "", " 1"] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
    }
}
