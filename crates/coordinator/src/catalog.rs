//! What the coordinator serves: ensembles from specs and models described by workers, with the
//! signature each is validated against and whether it can answer now.

use crate::pool::{Pool, version_order};
use crate::spec::{CombinerKind, EnsembleSpec, Member};
use chorus_common::validate::InputPolicy;
use chorus_common::{DataType, ModelInfo, TensorSpec};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The one version an ensemble spec has (specs are versioned by the file, not per ensemble).
pub const ENSEMBLE_VERSION: &str = "1";

/// Platform reported for ensembles in model metadata.
pub const ENSEMBLE_PLATFORM: &str = "ensemble";

/// Inputs, outputs and input policy of something servable.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub policy: InputPolicy,
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
        }
    }
}

/// Ensembles by name, plus the pool that knows the models.
pub struct Catalog {
    ensembles: BTreeMap<String, Arc<EnsembleSpec>>,
    pool: Arc<Pool>,
}

impl Catalog {
    pub fn new(ensembles: Vec<EnsembleSpec>, pool: Arc<Pool>) -> Self {
        Catalog {
            ensembles: ensembles
                .into_iter()
                .map(|spec| (spec.name.clone(), Arc::new(spec)))
                .collect(),
            pool,
        }
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    pub fn ensemble(&self, name: &str) -> Option<Arc<EnsembleSpec>> {
        self.ensembles.get(name).cloned()
    }

    pub fn ensembles(&self) -> impl Iterator<Item = &Arc<EnsembleSpec>> {
        self.ensembles.values()
    }

    /// Every version of a model that some worker has described, ascending.
    pub fn model_versions(&self, name: &str) -> Option<Vec<ModelInfo>> {
        self.pool.models().remove(name)
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

    /// The signature of an ensemble, derived from what workers say about its members. Errors say
    /// why it cannot be derived (no member described yet, members that disagree).
    pub fn ensemble_signature(&self, spec: &EnsembleSpec) -> Result<Signature, String> {
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
                let (meta, meta_version) = spec
                    .meta_model
                    .as_ref()
                    .ok_or("fusion without a meta-model")?;
                find(meta, meta_version.as_deref())
                    .ok_or_else(|| {
                        format!(
                            "no live worker serves meta-model '{meta}' of ensemble '{}'",
                            spec.name
                        )
                    })?
                    .outputs
            }
        };
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
