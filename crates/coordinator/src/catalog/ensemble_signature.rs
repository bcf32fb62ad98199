//! An ensemble's signature derived from its members' signatures: the checks that decide whether
//! a spec fits the models it names. Pure (models come through a lookup), so the coordinator's
//! catalog (models described by live workers) and `chorus validate` (models loaded offline from a
//! repository) run the same checks.
//!
//! Members are seen through their maps (spec/roles.rs): a member input is known by the ensemble
//! input that feeds it, and the output the combiner reads by its role. Every problem is reported,
//! not only the first, each naming the ensemble, the member, the spec field and the fix.

use super::{Signature, member_names};
use crate::spec::{CombinerKind, EnsembleSpec, Member};
use chorus_common::validate::InputPolicy;
use chorus_common::{DataType, ModelInfo, TensorSpec};
use std::fmt;

/// Finds a model version's description: `version` pinned, or the newest when `None`.
pub type ModelLookup<'a> = dyn Fn(&str, Option<&str>) -> Option<ModelInfo> + 'a;

/// Every problem found with one ensemble spec, in spec order; never empty. `Display` joins them
/// with "; " (one line, for a readiness reason); iterate for one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<String>);

impl Problems {
    pub fn iter(&self) -> std::slice::Iter<'_, String> {
        self.0.iter()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

impl std::error::Error for Problems {}

impl<'a> IntoIterator for &'a Problems {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// The signature `spec` serves, or every reason it cannot be derived (no member described,
/// map entries naming tensors the models lack, members that disagree on the ensemble's inputs, a
/// combiner that does not fit their outputs). Members no lookup describes are skipped: a live
/// cluster may serve only a quorum of them.
pub fn derive(spec: &EnsembleSpec, find: &ModelLookup<'_>) -> Result<Signature, Problems> {
    let described: Vec<(&Member, ModelInfo)> = spec
        .members
        .iter()
        .filter_map(|m| find(&m.model, m.version.as_deref()).map(|info| (m, info)))
        .collect();
    if described.is_empty() {
        return Err(Problems(vec![format!(
            "no live worker serves any member of ensemble '{}' ({})",
            spec.name,
            member_names(spec)
        )]));
    }
    let mut problems = Vec::new();
    let inputs = agreed_inputs(spec, &described, &mut problems);
    let read: Vec<(&Member, TensorSpec)> = described
        .iter()
        .filter_map(|(member, info)| {
            combined_output(spec, member, info, &mut problems).map(|output| (*member, output))
        })
        .collect();
    let classes = class_count(spec, &read, &mut problems);
    let meta_info = spec
        .meta_model
        .as_ref()
        .and_then(|(meta, version)| find(meta, version.as_deref()));
    let outputs = outputs(spec, &read, classes, meta_info.as_ref(), &mut problems);
    let (Some(inputs), Some(outputs), true) = (inputs, outputs, problems.is_empty()) else {
        if problems.is_empty() {
            // Each step that gives up says why; this only guards against one that does not.
            problems.push(format!("ensemble '{}' has no signature", spec.name));
        }
        return Err(Problems(problems));
    };
    let first = &described[0].1;
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
        inputs,
        outputs,
        policy,
        labels,
    })
}

fn at(spec: &EnsembleSpec, member: &Member) -> String {
    format!("ensemble '{}': member '{}'", spec.name, member.model)
}

fn names(specs: &[TensorSpec]) -> String {
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    format!("[{}]", names.join(", "))
}

/// A member's inputs under their ensemble names, after checking that its `input_map` names
/// only inputs the model has.
fn ensemble_inputs(
    spec: &EnsembleSpec,
    member: &Member,
    info: &ModelInfo,
    problems: &mut Vec<String>,
) -> Vec<TensorSpec> {
    for (ensemble_input, member_input) in &member.input_map {
        if !info.inputs.iter().any(|i| &i.name == member_input) {
            problems.push(format!(
                "{}: `input_map` maps '{ensemble_input}' to '{member_input}', but model '{}' has no input '{member_input}' (its inputs: {}); map to one of those",
                at(spec, member),
                member.model,
                names(&info.inputs)
            ));
        }
    }
    info.inputs
        .iter()
        .map(|i| TensorSpec {
            name: member.ensemble_input(&i.name).to_string(),
            ..i.clone()
        })
        .collect()
}

/// The ensemble's inputs: every member must take the same ensemble inputs, with one datatype
/// and compatible shapes (equal, or -1 on either side); known dimensions win.
fn agreed_inputs(
    spec: &EnsembleSpec,
    described: &[(&Member, ModelInfo)],
    problems: &mut Vec<String>,
) -> Option<Vec<TensorSpec>> {
    let before = problems.len();
    let (first_member, first_info) = &described[0];
    let mut agreed = ensemble_inputs(spec, first_member, first_info, problems);
    for (member, info) in &described[1..] {
        let mine = ensemble_inputs(spec, member, info, problems);
        for theirs in &agreed {
            match mine.iter().find(|m| m.name == theirs.name) {
                None => problems.push(format!(
                    "{}: takes no ensemble input '{}', which member '{}' takes; model '{}' has inputs {}: map the one that takes it with `input_map = {{ \"{}\" = \"<its input>\" }}`",
                    at(spec, member),
                    theirs.name,
                    first_member.model,
                    member.model,
                    names(&info.inputs),
                    theirs.name
                )),
                Some(m) if m.datatype != theirs.datatype => problems.push(format!(
                    "{}: ensemble input '{}' is {} for this member but {} for member '{}'; every member must take one datatype for it (re-export the model, or leave it out)",
                    at(spec, member),
                    theirs.name,
                    m.datatype,
                    theirs.datatype,
                    first_member.model
                )),
                Some(m) if !compatible(&m.shape, &theirs.shape) => problems.push(format!(
                    "{}: ensemble input '{}' has shape {:?} for this member but {:?} for member '{}'; members must agree on it (-1 is any size)",
                    at(spec, member),
                    theirs.name,
                    m.shape,
                    theirs.shape,
                    first_member.model
                )),
                Some(_) => {}
            }
        }
        for extra in mine
            .iter()
            .filter(|m| !agreed.iter().any(|a| a.name == m.name))
        {
            let fed_by = if member.input_map.is_empty() {
                ""
            } else {
                " (after `input_map`)"
            };
            problems.push(format!(
                "{}: takes input '{}'{fed_by}, which member '{}' does not take (its ensemble inputs: {}); rename it to one of those with `input_map = {{ \"<ensemble input>\" = \"{}\" }}`",
                at(spec, member),
                extra.name,
                first_member.model,
                names(&agreed),
                info.inputs
                    .iter()
                    .find(|i| member.ensemble_input(&i.name) == extra.name)
                    .map_or(extra.name.as_str(), |i| i.name.as_str())
            ));
        }
        for a in &mut agreed {
            if let Some(m) = mine.iter().find(|m| m.name == a.name)
                && compatible(&m.shape, &a.shape)
            {
                for (dim, other) in a.shape.iter_mut().zip(&m.shape) {
                    if *dim < 0 {
                        *dim = *other;
                    }
                }
            }
        }
    }
    (problems.len() == before).then_some(agreed)
}

fn compatible(a: &[i64], b: &[i64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y || *x < 0 || *y < 0)
}

/// The member output the combiner reads, renamed to its role, after checking that the
/// `output_map` names outputs the model has and that the output fits the combiner.
fn combined_output(
    spec: &EnsembleSpec,
    member: &Member,
    info: &ModelInfo,
    problems: &mut Vec<String>,
) -> Option<TensorSpec> {
    let role = spec.member_output.as_str();
    for output in member.output_map.keys() {
        if !info.outputs.iter().any(|o| &o.name == output) {
            problems.push(format!(
                "{}: `output_map` names output '{output}', but model '{}' has no such output (its outputs: {}); use one of those",
                at(spec, member),
                member.model,
                names(&info.outputs)
            ));
        }
    }
    let Some(name) = member.output_for(role) else {
        problems.push(format!(
            "{}: `output_map` maps no output to '{role}', the role the {} combiner reads; add `\"<output>\" = \"{role}\"` to it (model '{}' has outputs {})",
            at(spec, member),
            spec.combiner.as_str(),
            member.model,
            names(&info.outputs)
        ));
        return None;
    };
    let Some(output) = info.outputs.iter().find(|o| o.name == name) else {
        // A mapped name that does not exist was reported above.
        if member.output_map.is_empty() {
            problems.push(format!(
                "{}: model '{}' has no output '{role}', the one the {} combiner reads (its outputs: {}); name the output that plays it with `output_map = {{ \"<output>\" = \"{role}\" }}`",
                at(spec, member),
                member.model,
                spec.combiner.as_str(),
                names(&info.outputs)
            ));
        }
        return None;
    };
    let fits = spec.combiner.fits(output);
    if !fits {
        let needs = spec.combiner.reads();
        problems.push(format!(
            "{}: output '{}' (role '{role}') is {} {:?}, but the {} combiner reads {needs}; map an output that is (`output_map`), or use another combiner",
            at(spec, member),
            output.name,
            output.datatype,
            output.shape,
            spec.combiner.as_str()
        ));
        return None;
    }
    Some(TensorSpec {
        name: role.to_string(),
        ..output.clone()
    })
}

/// The classes a probability output scores: `C` of `[N, C]`; 2 for a binary member's single
/// column (`[N]` or `[N, 1]`), which the combiners expand to `[1 − p, p]`; `None` when the
/// model declares the width as dynamic or the output holds labels.
fn classes_of(output: &TensorSpec) -> Option<i64> {
    if !matches!(output.datatype, DataType::Fp32 | DataType::Fp64) {
        return None;
    }
    match output.shape[..] {
        [_] | [_, 1] => Some(2),
        [_, c] if c > 0 => Some(c),
        _ => None,
    }
}

/// The class count the probability members agree on (soft_vote and fusion average or stack
/// class by class), checked against a `threshold`, which needs exactly two.
fn class_count(
    spec: &EnsembleSpec,
    read: &[(&Member, TensorSpec)],
    problems: &mut Vec<String>,
) -> Option<i64> {
    let known: Vec<(&Member, i64)> = read
        .iter()
        .filter_map(|(m, o)| classes_of(o).map(|c| (*m, c)))
        .collect();
    let first = known.first().copied();
    if spec.combiner == CombinerKind::SoftVote
        && let Some((first_member, first_classes)) = first
    {
        for (member, classes) in &known[1..] {
            if *classes != first_classes {
                problems.push(format!(
                    "{}: scores {classes} classes but member '{}' scores {first_classes}; soft voting averages class by class, so every member must score the same classes",
                    at(spec, member),
                    first_member.model
                ));
            }
        }
    }
    if let Some(threshold) = spec.threshold {
        for (member, classes) in known.iter().filter(|(_, c)| *c != 2) {
            problems.push(format!(
                "ensemble '{}': `threshold = {threshold}` decides between two classes, but member '{}' scores {classes}; remove `threshold` or use binary members",
                spec.name, member.model
            ));
        }
    }
    first.map(|(_, c)| c)
}

/// The ensemble's outputs, by combiner.
fn outputs(
    spec: &EnsembleSpec,
    read: &[(&Member, TensorSpec)],
    classes: Option<i64>,
    meta_info: Option<&ModelInfo>,
    problems: &mut Vec<String>,
) -> Option<Vec<TensorSpec>> {
    let first = &read.first()?.1;
    let meta_outputs = match spec.combiner {
        CombinerKind::Fusion => {
            let Some((meta, _)) = spec.meta_model.as_ref() else {
                problems.push(format!(
                    "ensemble '{}': fusion without a meta-model; set `meta_model`",
                    spec.name
                ));
                return None;
            };
            let Some(meta_info) = meta_info else {
                problems.push(format!(
                    "no live worker serves meta-model '{meta}' of ensemble '{}'",
                    spec.name
                ));
                return None;
            };
            check_meta_width(spec, read, meta_info, problems);
            Some(&meta_info.outputs[..])
        }
        CombinerKind::SoftVote
        | CombinerKind::HardVote
        | CombinerKind::Average
        | CombinerKind::Median => None,
    };
    spec.combiner.output_signature(first, classes, meta_outputs)
}

/// The meta-model reads every member's block side by side: its input width must be the sum of
/// the members' widths (two for a binary member's single column), when all are known.
fn check_meta_width(
    spec: &EnsembleSpec,
    read: &[(&Member, TensorSpec)],
    meta: &ModelInfo,
    problems: &mut Vec<String>,
) {
    // Members a live cluster does not describe now still take their columns.
    if read.len() != spec.members.len() {
        return;
    }
    // As `combine::fusion_input` stacks them: class probabilities with binary members as two
    // columns, other roles as they are.
    let probabilities = spec.member_output == crate::combine::PROBABILITIES;
    let widths: Option<i64> = read
        .iter()
        .map(|(_, o)| match (probabilities, &o.shape[..]) {
            (true, _) => classes_of(o),
            (false, [_]) => Some(1),
            (false, [_, c]) if *c > 0 => Some(*c),
            (false, _) => None,
        })
        .sum();
    let declared = match meta.inputs.first().map(|i| &i.shape[..]) {
        Some([_, w]) if *w > 0 => *w,
        _ => return,
    };
    if let Some(widths) = widths
        && widths != declared
    {
        problems.push(format!(
            "ensemble '{}': meta-model '{}' takes {declared} columns but the members give {widths} (their blocks side by side, two per binary member with one column); fix `meta_model` or the member list",
            spec.name, meta.name
        ));
    }
}

#[cfg(test)]
mod tests;
