//! What a member's tensors mean to its ensemble: the per-member `input_map` and `output_map`
//! (Triton's ensemble `input_map`/`output_map`), and the binary `threshold`.
//!
//! A model keeps the names its exporter gave it (`float_input`, `input.1`, `dense_1`); the spec
//! says which ensemble input each member input is, and which member output plays the role the
//! combiner reads. A member without maps uses the ensemble's names, as before maps existed.
//! Whether the names exist on the models is checked where the models are known
//! (catalog/ensemble_signature.rs); here only the spec's own consistency.

use super::{CombinerKind, Member};
use std::collections::BTreeMap;

/// The roles an `output_map` may map a member output to.
pub const ROLES: [&str; 3] = [ROLE_LABEL, ROLE_PROBABILITIES, ROLE_SCORE];
/// A class label per row (INT64/INT32 `[N]`).
pub const ROLE_LABEL: &str = "label";
/// Class probabilities per row (`[N, C]`, or `[N]`/`[N, 1]` holding P(class 1) of a binary
/// classifier).
pub const ROLE_PROBABILITIES: &str = "probabilities";
/// A regression output, for `average` and `median`.
pub const ROLE_SCORE: &str = "score";

/// Most entries one map may hold: a model with more named tensors than this is not a member.
const MAX_MAP_ENTRIES: usize = 256;

impl Member {
    /// The member input fed from the ensemble input `ensemble_input`.
    pub fn member_input<'a>(&'a self, ensemble_input: &'a str) -> &'a str {
        self.input_map
            .get(ensemble_input)
            .map_or(ensemble_input, String::as_str)
    }

    /// The ensemble input that feeds the member input `member_input`: the map's key for it, or
    /// the same name when the map does not name it.
    pub fn ensemble_input<'a>(&'a self, member_input: &'a str) -> &'a str {
        self.input_map
            .iter()
            .find(|(_, m)| m.as_str() == member_input)
            .map_or(member_input, |(e, _)| e.as_str())
    }

    /// The member output that plays `role`: the `output_map` key mapped to it, or `role` itself
    /// for a member without an `output_map`. `None`: the member maps its outputs, and none to
    /// `role`.
    pub fn output_for<'a>(&'a self, role: &'a str) -> Option<&'a str> {
        if self.output_map.is_empty() {
            return Some(role);
        }
        self.output_map
            .iter()
            .find(|(_, r)| r.as_str() == role)
            .map(|(output, _)| output.as_str())
    }

    /// Whether the ensemble must rename this member's tensors.
    pub fn is_mapped(&self) -> bool {
        !self.input_map.is_empty() || !self.output_map.is_empty()
    }
}

/// Checks one member's maps on their own: names non-empty, bounded, no member input fed twice,
/// roles known and each played by one output.
pub(super) fn check_maps(
    ensemble: &str,
    model: &str,
    input_map: &BTreeMap<String, String>,
    output_map: &BTreeMap<String, String>,
) -> Result<(), String> {
    let at = |field: &str| format!("ensemble '{ensemble}': member '{model}': `{field}`");
    for (field, map) in [("input_map", input_map), ("output_map", output_map)] {
        if map.len() > MAX_MAP_ENTRIES {
            return Err(format!(
                "{} has {} entries; at most {MAX_MAP_ENTRIES} are allowed",
                at(field),
                map.len()
            ));
        }
        if let Some((k, v)) = map.iter().find(|(k, v)| k.is_empty() || v.is_empty()) {
            return Err(format!(
                "{} maps '{k}' to '{v}': tensor names must not be empty",
                at(field)
            ));
        }
    }
    let mut fed: BTreeMap<&str, &str> = BTreeMap::new();
    for (ensemble_input, member_input) in input_map {
        if let Some(other) = fed.insert(member_input, ensemble_input) {
            return Err(format!(
                "{} feeds member input '{member_input}' from both '{other}' and '{ensemble_input}'; \
                 map each member input from one ensemble input",
                at("input_map")
            ));
        }
    }
    let mut played: BTreeMap<&str, &str> = BTreeMap::new();
    for (output, role) in output_map {
        if !ROLES.contains(&role.as_str()) {
            return Err(format!(
                "{} maps output '{output}' to '{role}', which is not a role; use one of {}",
                at("output_map"),
                ROLES.join(", ")
            ));
        }
        if let Some(other) = played.insert(role, output) {
            return Err(format!(
                "{} maps both '{other}' and '{output}' to '{role}'; map one output to each role",
                at("output_map")
            ));
        }
    }
    Ok(())
}

/// The `threshold` field: P(class 1) above which a binary ensemble answers class 1.
pub(super) fn threshold(
    ensemble: &str,
    combiner: CombinerKind,
    threshold: Option<f64>,
) -> Result<Option<f64>, String> {
    let Some(t) = threshold else {
        return Ok(None);
    };
    if !matches!(combiner, CombinerKind::SoftVote | CombinerKind::HardVote) {
        return Err(format!(
            "ensemble '{ensemble}': `threshold` applies to the soft_vote and hard_vote combiners, not {}; \
             a fusion ensemble's label is its meta-model's",
            combiner.as_str()
        ));
    }
    // Written so that NaN fails too.
    if !(t > 0.0 && t < 1.0) {
        return Err(format!(
            "ensemble '{ensemble}': `threshold = {t}` must be between 0 and 1 (exclusive): \
             the P(class 1) above which a binary ensemble answers class 1"
        ));
    }
    Ok(Some(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn member(input_map: &[(&str, &str)], output_map: &[(&str, &str)]) -> Member {
        Member {
            model: "m".into(),
            version: None,
            weight: 1.0,
            input_map: map(input_map),
            output_map: map(output_map),
        }
    }

    #[test]
    fn unmapped_members_use_the_ensemble_names() {
        let m = member(&[], &[]);
        assert!(!m.is_mapped());
        assert_eq!(m.member_input("input"), "input");
        assert_eq!(m.ensemble_input("input"), "input");
        assert_eq!(m.output_for("probabilities"), Some("probabilities"));
    }

    #[test]
    fn mapped_members_rename_both_ways() {
        let m = member(&[("input", "input.1")], &[("dense_1", "probabilities")]);
        assert!(m.is_mapped());
        assert_eq!(m.member_input("input"), "input.1");
        assert_eq!(m.ensemble_input("input.1"), "input");
        // An input the map does not name keeps its name.
        assert_eq!(m.member_input("mask"), "mask");
        assert_eq!(m.output_for("probabilities"), Some("dense_1"));
        assert_eq!(m.output_for("label"), None);
    }

    #[test]
    fn map_mistakes_name_the_member_and_field() {
        let e = check_maps("e", "m", &map(&[]), &map(&[("y", "proba")])).unwrap_err();
        assert!(
            e.contains("member 'm'") && e.contains("`output_map`") && e.contains("label"),
            "{e}"
        );
        let e =
            check_maps("e", "m", &map(&[]), &map(&[("a", "label"), ("b", "label")])).unwrap_err();
        assert!(e.contains("both 'a' and 'b'"), "{e}");
        let e = check_maps("e", "m", &map(&[("x", "in"), ("y", "in")]), &map(&[])).unwrap_err();
        assert!(e.contains("`input_map`") && e.contains("'in'"), "{e}");
        let e = check_maps("e", "m", &map(&[("", "in")]), &map(&[])).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        assert!(check_maps("e", "m", &map(&[("input", "X")]), &map(&[("p", "score")])).is_ok());
    }

    #[test]
    fn threshold_is_for_binary_votes_only() {
        assert_eq!(threshold("e", CombinerKind::SoftVote, None), Ok(None));
        assert_eq!(
            threshold("e", CombinerKind::HardVote, Some(0.3)),
            Ok(Some(0.3))
        );
        for bad in [0.0, 1.0, -0.5, f64::NAN] {
            let e = threshold("e", CombinerKind::SoftVote, Some(bad)).unwrap_err();
            assert!(e.contains("`threshold"), "{e}");
        }
        let e = threshold("e", CombinerKind::Fusion, Some(0.5)).unwrap_err();
        assert!(e.contains("fusion"), "{e}");
    }
}
