//! `chorus validate`: checks a model repository and an ensemble spec file offline, with the
//! worker's own scanner and loader and the coordinator's own ensemble check, and reports every
//! problem found (file, field, fix), not only the first. `chorus up` runs it before it starts
//! anything.
//!
//! Order, each step going on past the problems of the one before:
//! 1. the repository: every model directory scanned on its own (layout, `config.toml`,
//!    `version_policy`, `labels.txt`), then every version its policy loads described by ONNX
//!    Runtime as a worker would (one CPU session, warmed up, dropped);
//! 2. the spec file, parsed and validated as the coordinator does;
//! 3. every ensemble: each member and meta-model named must be in the repository, with the
//!    version pinned on disk and loaded by the model's policy; then the coordinator's
//!    [`ensemble_signature::derive`] over the versions that loaded, unless its verdict would
//!    only repeat a missing model already reported.

use crate::cluster_config::ClusterConfig;
use chorus_common::ModelInfo;
use chorus_coordinator::catalog::ensemble_signature;
use chorus_coordinator::spec::{self, EnsembleSpec};
use chorus_worker::model_config::ModelSettings;
use chorus_worker::repository::{self, ModelSource};
use chorus_worker::{LoadError, WorkerConfig, loader, ort_library};
use clap::Args;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Flags of `chorus validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Local cluster description whose `model_repository` and `ensembles` are checked, unless
    /// both are given below.
    #[arg(
        long,
        env = "CHORUS_CLUSTER_CONFIG",
        default_value = "config/cluster.toml"
    )]
    pub config: PathBuf,

    /// Model repository to check instead of the cluster file's `model_repository`.
    #[arg(long, value_name = "DIR")]
    pub model_repository: Option<PathBuf>,

    /// Ensemble spec file to check instead of the cluster file's `ensembles`.
    #[arg(long, value_name = "FILE")]
    pub ensembles: Option<PathBuf>,
}

/// How bad a finding is: errors fail validation (and `chorus up`), warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem: where it is, which field, and what is wrong with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub file: PathBuf,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        // One line per finding, whatever the message (toml's quote the offending line).
        let message = self
            .message
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        write!(
            f,
            "{severity}: {}: {}: {message}",
            self.file.display(),
            self.field,
        )
    }
}

/// What was checked and what was found.
#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// Model directories scanned.
    pub models: usize,
    /// Model versions described by ONNX Runtime.
    pub versions: usize,
    /// Ensembles (spec tables) checked.
    pub ensembles: usize,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    fn count(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity)
            .count()
    }

    fn error(&mut self, file: &Path, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, file, field, message);
    }

    fn push(
        &mut self,
        severity: Severity,
        file: &Path,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.findings.push(Finding {
            severity,
            file: file.to_path_buf(),
            field: field.into(),
            message: message.into(),
        });
    }

    /// The one-line summary printed after the findings.
    pub fn summary(&self) -> String {
        format!(
            "checked {} models, {} model versions, {} ensembles: {} errors, {} warnings",
            self.models,
            self.versions,
            self.ensembles,
            self.errors(),
            self.warnings()
        )
    }
}

/// `chorus validate`: prints every finding and a summary; fails when there is an error.
pub fn main(args: ValidateArgs) -> anyhow::Result<()> {
    let (repository, ensembles) = targets(&args)?;
    let report = check(&repository, &ensembles);
    for finding in &report.findings {
        println!("{finding}");
    }
    println!("{}", report.summary());
    anyhow::ensure!(
        report.errors() == 0,
        "{} problem(s) in {} and {}: fix each line above",
        report.errors(),
        repository.display(),
        ensembles.display()
    );
    Ok(())
}

/// The repository and spec file to check: the flags, else the cluster file's.
fn targets(args: &ValidateArgs) -> anyhow::Result<(PathBuf, PathBuf)> {
    if let (Some(repository), Some(ensembles)) = (&args.model_repository, &args.ensembles) {
        return Ok((repository.clone(), ensembles.clone()));
    }
    let cluster = ClusterConfig::load(&args.config)
        .map_err(|e| e.context("give --model-repository and --ensembles, or --config with both"))?;
    Ok((
        args.model_repository
            .clone()
            .unwrap_or(cluster.model_repository),
        args.ensembles.clone().unwrap_or(cluster.ensembles),
    ))
}

/// Checks `repository` and the spec file `ensembles`. Blocking (loads every model version).
pub fn check(repository: &Path, ensembles: &Path) -> Report {
    let mut report = Report::default();
    let repo = check_repository(repository, &mut report);
    match spec::load(ensembles) {
        Ok(specs) => {
            for spec in &specs {
                report.ensembles += 1;
                check_ensemble(spec, ensembles, &repo, &mut report);
            }
        }
        Err(e) => report.error(ensembles, "spec file", e.to_string()),
    }
    report
}

/// What the repository holds, as far as it could be read.
struct Repository {
    dir: PathBuf,
    /// Every model directory, loadable or not.
    names: Vec<String>,
    /// Models whose directory scanned cleanly.
    sources: BTreeMap<String, ModelSource>,
    /// Descriptions of the versions that loaded, by model, ascending by version.
    loaded: BTreeMap<String, Vec<ModelInfo>>,
}

impl Repository {
    /// The description a worker serving this repository would give for `model` at `version`
    /// (the newest loaded when `None`), as the coordinator looks it up.
    fn find(&self, model: &str, version: Option<&str>) -> Option<ModelInfo> {
        let versions = self.loaded.get(model)?;
        match version {
            Some(v) => versions.iter().find(|m| m.version == v).cloned(),
            None => versions.last().cloned(),
        }
    }
}

fn check_repository(dir: &Path, report: &mut Report) -> Repository {
    let mut repo = Repository {
        dir: dir.to_path_buf(),
        names: Vec::new(),
        sources: BTreeMap::new(),
        loaded: BTreeMap::new(),
    };
    match repository::model_names(dir) {
        Ok(names) if names.is_empty() => report.error(
            dir,
            "model_repository",
            "no model directories: expected <repository>/<model>/<version>/model.onnx",
        ),
        Ok(names) => repo.names = names,
        Err(e) => report.error(dir, "model_repository", e.to_string()),
    }
    report.models = repo.names.len();
    let defaults = ModelSettings::defaults(&WorkerConfig::default());
    for name in &repo.names {
        // One model at a time, so that one broken directory does not hide the others.
        match repository::scan(dir, std::slice::from_ref(name), &defaults) {
            Ok(mut found) => {
                let source = found.remove(0);
                if let Some(pbtxt) = &source.ignored_triton_config {
                    report.push(
                        Severity::Warning,
                        pbtxt,
                        "config.pbtxt",
                        format!(
                            "Chorus does not read Triton's config.pbtxt, so the worker defaults apply to '{name}'; write its instances, batching (max_batch_size, max_queue_delay_us, preferred_batch_sizes), execution_provider and version_policy in {} (docs/models.md)",
                            dir.join(name).join(repository::CONFIG_FILE).display()
                        ),
                    );
                }
                repo.sources.insert(name.clone(), source);
            }
            Err(e) => {
                let (file, field) = load_error_place(&e, dir, name);
                report.error(&file, field, e.to_string());
            }
        }
    }
    let env = match ort_library::environment() {
        Ok(env) => Some(env),
        Err(e) => {
            report.error(
                dir,
                "ONNX Runtime",
                format!(
                    "{e}; no model could be loaded, so no model or ensemble signature was checked"
                ),
            );
            None
        }
    };
    for source in repo.sources.values() {
        let Some(env) = &env else { break };
        for version in &source.versions {
            match loader::describe_version(env, source, version) {
                Ok(info) => {
                    report.versions += 1;
                    repo.loaded
                        .entry(source.name.clone())
                        .or_default()
                        .push(info);
                }
                Err(e) => report.error(
                    &version.path,
                    repository::MODEL_FILE,
                    format!(
                        "{e}; a worker would refuse to start with it: fix or re-export the model, or remove its version directory"
                    ),
                ),
            }
        }
    }
    repo
}

/// The file and field a scan error is about.
fn load_error_place(e: &LoadError, repo: &Path, model: &str) -> (PathBuf, &'static str) {
    match e {
        LoadError::ModelConfig { path, .. } => (path.clone(), repository::CONFIG_FILE),
        LoadError::ModelLayout { path, .. } => (path.clone(), "<version>/model.onnx"),
        LoadError::Repository { path, .. } => (path.clone(), "model_repository"),
        _ => (repo.join(model), "model directory"),
    }
}

fn check_ensemble(spec: &EnsembleSpec, file: &Path, repo: &Repository, report: &mut Report) {
    let ensemble = if spec.version == spec::versions::DEFAULT_VERSION {
        format!("ensemble '{}'", spec.name)
    } else {
        format!("ensemble '{}' version {}", spec.name, spec.version)
    };
    let mut resolved_members = 0;
    for (i, member) in spec.members.iter().enumerate() {
        let field = format!("{ensemble} member[{i}]");
        if check_reference(
            &member.model,
            member.version.as_deref(),
            (&field, "model", "version"),
            file,
            repo,
            report,
        ) {
            resolved_members += 1;
        }
    }
    let meta_resolved = match &spec.meta_model {
        Some((meta, version)) => check_reference(
            meta,
            version.as_deref(),
            (&ensemble, "meta_model", "meta_version"),
            file,
            repo,
            report,
        ),
        None => true,
    };
    // derive() would only say again that these models are missing.
    if resolved_members == 0 || !meta_resolved {
        return;
    }
    // The coordinator's own check, one line per problem it finds.
    if let Err(problems) =
        ensemble_signature::derive(spec, &|model: &str, version| repo.find(model, version))
    {
        // Its messages start with the ensemble's name, which the field already gives.
        let prefix = format!("ensemble '{}': ", spec.name);
        for problem in &problems {
            let problem = problem.strip_prefix(&prefix).unwrap_or(problem);
            report.error(file, ensemble.as_str(), problem);
        }
    }
}

/// Checks that `model` (pinned at `version`) is in the repository and loads; reports what is
/// not (fields named `{owner}.{model_key}` / `{owner}.{version_key}`). Whether a worker would
/// describe it: false when reported here or already reported with the repository.
fn check_reference(
    model: &str,
    version: Option<&str>,
    (owner, model_key, version_key): (&str, &str, &str),
    file: &Path,
    repo: &Repository,
    report: &mut Report,
) -> bool {
    if !repo.names.iter().any(|n| n == model) {
        report.error(
            file,
            format!("{owner}.{model_key}"),
            format!(
                "model '{model}' is not in the model repository {} (it has {:?}); correct the name or add {}/{model}/<version>/model.onnx",
                repo.dir.display(),
                repo.names,
                repo.dir.display()
            ),
        );
        return false;
    }
    // A directory that did not scan was reported with the repository.
    let Some(source) = repo.sources.get(model) else {
        return false;
    };
    if let Some(pin) = version {
        let field = format!("{owner}.{version_key}");
        let Some(number) = repository::parse_version(pin) else {
            report.error(
                file,
                field,
                format!(
                    "\"{pin}\" is not a version number; model '{model}' has versions {:?}",
                    source.on_disk
                ),
            );
            return false;
        };
        if !source.on_disk.contains(&number) {
            report.error(
                file,
                field,
                format!(
                    "model '{model}' has no version {number} (it has {:?}); pin one of those, or add {}/{model}/{number}/model.onnx",
                    source.on_disk,
                    repo.dir.display()
                ),
            );
            return false;
        }
        if !source.versions.iter().any(|v| v.version == number) {
            report.error(
                file,
                field,
                format!(
                    "version {number} of model '{model}' is on disk but its version_policy {} loads only {:?}; pin a loaded version, or set version_policy (\"all\", {{ latest = N }} or {{ specific = [...] }}) in {}",
                    source.settings.version_policy,
                    source.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
                    repo.dir.join(model).join(repository::CONFIG_FILE).display()
                ),
            );
            return false;
        }
    }
    // A version that failed to load was reported with the repository.
    repo.find(model, version).is_some()
}
