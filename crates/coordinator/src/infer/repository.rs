//! What the core tells about the server and its models, for both front ends: health, metadata,
//! readiness, the repository index, model configurations and statistics.

use super::model_config::{self, ModelConfig};
use super::{Infer, InferError, Target};
use crate::catalog::{ENSEMBLE_PLATFORM, ENSEMBLE_VERSION};
use crate::stats::ModelStatistics;
use chorus_common::TensorSpec;

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
    /// Ready when every ensemble can reach quorum (or, with no ensembles, when some model can
    /// be served).
    pub fn server_ready(&self) -> bool {
        let catalog = &self.catalog;
        let ensembles = catalog.ensembles();
        if ensembles.is_empty() {
            return catalog
                .pool()
                .models()
                .keys()
                .any(|name| catalog.model_ready(name, None));
        }
        ensembles
            .iter()
            .all(|spec| catalog.ensemble_unready_reason(spec).is_none())
    }

    /// Whether a model or ensemble (at `version`) can answer now; unknown names are errors.
    pub fn model_ready(&self, name: &str, version: Option<&str>) -> Result<bool, InferError> {
        let catalog = &self.catalog;
        if let Some(spec) = catalog.ensemble(name) {
            if version.is_some_and(|v| v != ENSEMBLE_VERSION) {
                return Err(InferError::model_not_found(name, version));
            }
            return Ok(catalog.ensemble_unready_reason(&spec).is_none());
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
        match self.resolve(name, version)? {
            Target::Ensemble { spec, signature } => Ok(ModelMetadata {
                name: spec.name.clone(),
                versions: vec![ENSEMBLE_VERSION.to_string()],
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
                version: ENSEMBLE_VERSION.to_string(),
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
        Ok(model_config::of_target(&self.resolve(name, version)?))
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
        if self.catalog.ensemble(name).is_some() {
            if version.is_some_and(|v| v != ENSEMBLE_VERSION) {
                return Err(InferError::model_not_found(name, version));
            }
            return Ok(vec![self.stats.snapshot(name, ENSEMBLE_VERSION)]);
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
