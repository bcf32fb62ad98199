//! What the core tells about the server and its models, for both front ends: health, metadata,
//! readiness, the repository index, model configurations and statistics.

use super::model_config::{self, ModelConfig};
use super::{Infer, InferError, Target};
use crate::catalog::ENSEMBLE_PLATFORM;
use crate::stats::ModelStatistics;
use chorus_common::TensorSpec;
use std::sync::Arc;

/// The server name in server metadata.
pub const SERVER_NAME: &str = "chorus";

/// Extensions of OIP v2 / Triton that Chorus implements. Only the read-only repository index of
/// Triton's model_repository extension is served, so that extension is not claimed.
pub const SERVER_EXTENSIONS: [&str; 4] = [
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "statistics",
];

/// A model's or ensemble's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// For models: the execution provider the version runs on.
    pub execution_provider: Option<String>,
    /// For ensembles: what the spec says.
    pub ensemble: Option<EnsembleFacts>,
}

/// The spec facts an ensemble's metadata shows.
#[derive(Debug, Clone, PartialEq)]
pub struct EnsembleFacts {
    pub description: String,
    pub combiner: &'static str,
    pub members: Vec<String>,
    pub min_members: usize,
    pub deadline_ms: u64,
}

/// One row of the repository index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    /// Why it cannot answer now; `None` when it is ready.
    pub unready_reason: Option<String>,
}

impl IndexEntry {
    /// Triton's state name.
    pub fn state(&self) -> &'static str {
        if self.unready_reason.is_none() {
            "READY"
        } else {
            "UNAVAILABLE"
        }
    }
}

impl Infer {
    /// Server readiness (docs/decisions.md, "Readiness per ensemble"). Strict
    /// (`--strict-readiness`, the default): every version the traffic of each ensemble reaches
    /// can reach quorum
    /// (or, with no ensembles, some model can be served). Not strict: something can be served,
    /// an ensemble version or a model, so one broken ensemble leaves the others in service;
    /// before any worker is known nothing can, and the coordinator is not ready.
    pub fn server_ready(&self) -> bool {
        let catalog = &self.catalog;
        let ensembles = catalog.ensembles();
        let some_model = || {
            catalog
                .pool()
                .models()
                .keys()
                .any(|name| catalog.model_ready(name, None))
        };
        let ready =
            |spec: &Arc<crate::spec::EnsembleSpec>| catalog.ensemble_unready_reason(spec).is_none();
        if !self.strict_readiness {
            return ensembles.iter().any(ready) || some_model();
        }
        if ensembles.is_empty() {
            return some_model();
        }
        // Per name, the versions its traffic reaches: a broken shadow or a version at weight 0
        // must not take the coordinator out of service (and so fail the primary's traffic).
        let mut names: Vec<&str> = ensembles.iter().map(|spec| spec.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .all(|name| self.model_ready(name, None).unwrap_or(false))
    }

    /// Whether a model or ensemble (at `version`) can answer now; unknown names are errors. An
    /// unpinned ensemble is ready when every version its traffic split reaches is.
    pub fn model_ready(&self, name: &str, version: Option<&str>) -> Result<bool, InferError> {
        let catalog = &self.catalog;
        if let Some(versions) = catalog.ensemble_versions(name) {
            let ready = |spec: &Arc<crate::spec::EnsembleSpec>| {
                catalog.ensemble_unready_reason(spec).is_none()
            };
            return match version {
                Some(v) => versions
                    .get(v)
                    .map(ready)
                    .ok_or_else(|| InferError::model_not_found(name, version)),
                None => Ok(versions.reached().into_iter().all(ready)),
            };
        }
        if catalog.model(name, version).is_none() {
            return Err(InferError::model_not_found(name, version));
        }
        Ok(catalog.model_ready(name, version))
    }

    pub fn model_metadata(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<ModelMetadata, InferError> {
        match self.resolve_described(name, version)? {
            Target::Ensemble {
                spec, signature, ..
            } => Ok(ModelMetadata {
                name: spec.name.clone(),
                versions: match version {
                    Some(v) => vec![v.to_string()],
                    None => self
                        .catalog
                        .ensemble_versions(name)
                        .map(|v| v.all().iter().map(|s| s.version.clone()).collect())
                        .unwrap_or_default(),
                },
                platform: ENSEMBLE_PLATFORM.to_string(),
                inputs: signature.inputs.clone(),
                outputs: signature.outputs.clone(),
                execution_provider: None,
                ensemble: Some(EnsembleFacts {
                    description: spec.description.clone(),
                    combiner: spec.combiner.as_str(),
                    members: spec.members.iter().map(|m| m.model.clone()).collect(),
                    min_members: spec.min_members,
                    deadline_ms: spec.deadline.as_millis() as u64,
                }),
            }),
            Target::Model { info, .. } => {
                let versions = self
                    .catalog
                    .model_versions(name)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|v| v.version)
                    .collect();
                Ok(ModelMetadata {
                    name: info.name.clone(),
                    versions,
                    platform: info.platform.clone(),
                    inputs: info.inputs.clone(),
                    outputs: info.outputs.clone(),
                    execution_provider: Some(info.execution_provider.to_string()),
                    ensemble: None,
                })
            }
        }
    }

    /// Every ensemble and model version with its state; only the ready ones if `ready_only`.
    pub fn repository_index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let catalog = &self.catalog;
        let mut entries = Vec::new();
        for spec in catalog.ensembles() {
            entries.push(IndexEntry {
                name: spec.name.clone(),
                version: spec.version.clone(),
                unready_reason: catalog.ensemble_unready_reason(&spec),
            });
        }
        for (name, versions) in catalog.pool().models().iter() {
            if catalog.ensemble(name).is_some() {
                continue;
            }
            for info in versions {
                entries.push(IndexEntry {
                    name: name.clone(),
                    version: info.version.clone(),
                    unready_reason: (!catalog.model_ready(name, Some(&info.version)))
                        .then(|| "no live worker serves this version".to_string()),
                });
            }
        }
        entries.retain(|e| !ready_only || e.unready_reason.is_none());
        entries
    }

    /// The Triton-shaped configuration of a model or ensemble.
    pub fn model_config(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<ModelConfig, InferError> {
        Ok(model_config::of_target(
            &self.resolve_described(name, version)?,
        ))
    }

    /// Statistics of one model or ensemble (one version if given, else every version), or of
    /// everything served when `name` is `None`.
    pub fn statistics(
        &self,
        name: Option<&str>,
        version: Option<&str>,
    ) -> Result<Vec<ModelStatistics>, InferError> {
        let Some(name) = name else {
            return Ok(self
                .repository_index(false)
                .into_iter()
                .map(|e| self.stats.snapshot(&e.name, &e.version))
                .collect());
        };
        if let Some(versions) = self.catalog.ensemble_versions(name) {
            let wanted: Vec<_> = versions
                .all()
                .iter()
                .filter(|s| version.is_none_or(|wanted| s.version == wanted))
                .map(|s| self.stats.snapshot(name, &s.version))
                .collect();
            if wanted.is_empty() {
                return Err(InferError::model_not_found(name, version));
            }
            return Ok(wanted);
        }
        let versions = self
            .catalog
            .model_versions(name)
            .ok_or_else(|| InferError::model_not_found(name, version))?;
        let wanted: Vec<_> = versions
            .iter()
            .filter(|v| version.is_none_or(|wanted| v.version == wanted))
            .map(|v| self.stats.snapshot(name, &v.version))
            .collect();
        if wanted.is_empty() {
            return Err(InferError::model_not_found(name, version));
        }
        Ok(wanted)
    }
}
