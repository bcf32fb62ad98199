//! Versions of one ensemble name in a spec file: each `[[ensemble]]` table carries a `version`
//! (default "1"), several tables may share a name with distinct versions, and the one table of a
//! name that says so carries how unversioned requests are split over them (`traffic`) and which
//! version gets a compared copy of that traffic (`shadow`).
//!
//! Rules, each checked here with an error that names the field:
//! 1. A version is a non-empty string of letters, digits, '_', '-' and '.' (TOML integers are
//!    read as their decimal text, so `version = 3` and `version = "3"` are one version).
//! 2. A (name, version) pair appears once per file.
//! 3. At most one table of a name carries `traffic` or `shadow` (two would be two answers to
//!    one question); any of its tables may.
//! 4. `traffic` names only versions the file defines for that name, each weight at most
//!    [`MAX_WEIGHT`], and the weights add up to more than 0.
//! 5. `shadow` names a version the file defines for that name, one that `traffic` gives no
//!    weight, and not the highest version when there is no split (a shadow's answers are never
//!    returned).
//! 6. A name with several versions has one admission state and no learnt state: its versions set
//!    the same `max_inflight`, `rate_limit` and `burst`, and none uses online weights or
//!    feedback (both are kept per name, and would reset whenever another version answered).

use super::EnsembleSpec;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

/// The version of a table that does not say.
pub const DEFAULT_VERSION: &str = "1";

/// Largest weight one version may have in a split (a typo beyond it, not a proportion).
pub const MAX_WEIGHT: u32 = 1_000_000;

/// `version = 3` or `version = "3"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawVersion {
    Number(u64),
    Text(String),
}

impl RawVersion {
    fn into_text(self) -> String {
        match self {
            RawVersion::Number(n) => n.to_string(),
            RawVersion::Text(text) => text,
        }
    }
}

/// How unversioned requests for a name pick a version, and which one is shadowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// Weights by version, in version order; empty: every request goes to the highest version.
    pub traffic: Vec<(String, u32)>,
    /// The version that gets a copy of the split traffic.
    pub shadow: Option<String>,
}

/// One table's version and routing fields, checked on their own (rule 1 and weights).
pub(super) fn of_table(
    name: &str,
    version: Option<RawVersion>,
    traffic: Option<BTreeMap<String, u32>>,
    shadow: Option<RawVersion>,
) -> Result<(String, Option<Routing>), String> {
    let version = version.map_or_else(|| DEFAULT_VERSION.to_string(), RawVersion::into_text);
    check_version(name, "version", &version)?;
    let shadow = shadow.map(RawVersion::into_text);
    if let Some(shadow) = &shadow {
        check_version(name, "shadow", shadow)?;
    }
    let routing = match (traffic, shadow) {
        (None, None) => None,
        (traffic, shadow) => {
            let mut traffic: Vec<(String, u32)> = traffic.unwrap_or_default().into_iter().collect();
            traffic.sort_by(|a, b| crate::pool::version_order(&a.0, &b.0));
            for (version, weight) in &traffic {
                check_version(name, "traffic", version)?;
                if *weight > MAX_WEIGHT {
                    return Err(format!(
                        "ensemble '{name}': `traffic` gives version '{version}' weight {weight}; weights are proportions between 0 and {MAX_WEIGHT}"
                    ));
                }
            }
            if !traffic.is_empty() && traffic.iter().all(|(_, w)| *w == 0) {
                return Err(format!(
                    "ensemble '{name}': every `traffic` weight is 0; give at least one version a weight above 0"
                ));
            }
            Some(Routing { traffic, shadow })
        }
    };
    Ok((version, routing))
}

fn check_version(name: &str, field: &str, version: &str) -> Result<(), String> {
    if version.is_empty()
        || version.len() > 64
        || !version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        return Err(format!(
            "ensemble '{name}': `{field}` names version '{version}'; a version is 1 to 64 letters, digits, '_', '-' or '.'"
        ));
    }
    // Numbers order as numbers (`pool::version_order`), so "01" would tie with "1" and which
    // one is the highest would depend on the file's order.
    if version.len() > 1 && version.starts_with('0') && version.bytes().all(|b| b.is_ascii_digit())
    {
        let canonical = match version.trim_start_matches('0') {
            "" => "0",
            digits => digits,
        };
        return Err(format!(
            "ensemble '{name}': `{field}` names version '{version}'; write a numeric version without leading zeros ('{canonical}')"
        ));
    }
    Ok(())
}

/// Rules 2 to 5 across one file's (or one etcd key's) tables.
pub(super) fn check(specs: &[EnsembleSpec]) -> Result<(), String> {
    let mut versions: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for spec in specs {
        if !versions
            .entry(&spec.name)
            .or_default()
            .insert(&spec.version)
        {
            return Err(format!(
                "ensemble '{}' version '{}' is defined twice; `name` must be unique, or each table of one name must set its own `version`",
                spec.name, spec.version
            ));
        }
    }
    per_name_state(specs, &versions)?;
    let mut routed: BTreeMap<&str, &str> = BTreeMap::new();
    for spec in specs {
        let Some(routing) = &spec.routing else {
            continue;
        };
        let name = spec.name.as_str();
        if let Some(earlier) = routed.insert(name, &spec.version) {
            return Err(format!(
                "ensemble '{name}': the tables of versions '{earlier}' and '{}' both set `traffic` or `shadow`; set them on one table of the name only",
                spec.version
            ));
        }
        let defined = &versions[name];
        let listed = || defined.iter().copied().collect::<Vec<_>>().join(", ");
        for (version, _) in &routing.traffic {
            if !defined.contains(version.as_str()) {
                return Err(format!(
                    "ensemble '{name}': `traffic` names version '{version}', which no [[ensemble]] table of this name defines (versions: {}); add that version or remove it from `traffic`",
                    listed()
                ));
            }
        }
        if let Some(shadow) = &routing.shadow {
            if !defined.contains(shadow.as_str()) {
                return Err(format!(
                    "ensemble '{name}': `shadow` names version '{shadow}', which no [[ensemble]] table of this name defines (versions: {}); add that version or remove `shadow`",
                    listed()
                ));
            }
            if routing
                .traffic
                .iter()
                .any(|(version, weight)| version == shadow && *weight > 0)
            {
                return Err(format!(
                    "ensemble '{name}': version '{shadow}' is the `shadow` and has `traffic` weight above 0; a shadow's answers are never returned, so give it weight 0 or pick another shadow"
                ));
            }
            let highest = defined
                .iter()
                .copied()
                .max_by(|a, b| crate::pool::version_order(a, b));
            if routing.traffic.is_empty() && highest == Some(shadow.as_str()) {
                return Err(format!(
                    "ensemble '{name}': version '{shadow}' is the `shadow`, but without `traffic` the highest version answers, and that is '{shadow}'; add a `traffic` split that gives it weight 0"
                ));
            }
        }
    }
    Ok(())
}

/// Rule 6: what is kept per name (admission state, learnt weights, feedback) must mean the same
/// whichever version answers.
fn per_name_state(
    specs: &[EnsembleSpec],
    versions: &BTreeMap<&str, BTreeSet<&str>>,
) -> Result<(), String> {
    for spec in specs {
        if versions[spec.name.as_str()].len() < 2 {
            continue;
        }
        let name = &spec.name;
        if spec.online.is_some() || spec.feedback.is_some() {
            return Err(format!(
                "ensemble '{name}' version '{}': `weights = \"online\"` and feedback are kept per ensemble name, and '{name}' has several versions; serve the learning ensemble under a name of its own",
                spec.version
            ));
        }
        if let Some(other) = specs
            .iter()
            .find(|o| o.name == spec.name && o.limits != spec.limits)
        {
            return Err(format!(
                "ensemble '{name}': versions '{}' and '{}' set different `max_inflight`, `rate_limit` or `burst`; admission is per ensemble name, so give every version the same limits",
                spec.version, other.version
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::spec::parse;

    /// Two versions of `e` (a soft vote over a, b; and over a, b, c), `extra` added to the
    /// first table.
    fn two_versions(extra: &str) -> String {
        format!(
            "version = 1\n\
             [[ensemble]]\nname = \"e\"\nversion = 3\ncombiner = \"soft_vote\"\ndeadline_ms = 100\n{extra}\n\
             [[ensemble.member]]\nmodel = \"a\"\n[[ensemble.member]]\nmodel = \"b\"\n\
             [[ensemble]]\nname = \"e\"\nversion = \"4\"\ncombiner = \"soft_vote\"\ndeadline_ms = 100\n\
             [[ensemble.member]]\nmodel = \"a\"\n[[ensemble.member]]\nmodel = \"b\"\n[[ensemble.member]]\nmodel = \"c\"\n"
        )
    }

    fn error_of(text: &str) -> String {
        parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn versions_default_to_one_and_numbers_read_as_text() {
        let specs = parse(&two_versions(""), "t").unwrap();
        assert_eq!(specs[0].version, "3");
        assert_eq!(specs[1].version, "4");
        assert!(specs.iter().all(|s| s.routing.is_none()));
        let one = "version = 1\n[[ensemble]]\nname = \"x\"\ncombiner = \"soft_vote\"\ndeadline_ms = 1\n[[ensemble.member]]\nmodel = \"a\"\n";
        assert_eq!(parse(one, "t").unwrap()[0].version, "1");
    }

    #[test]
    fn numeric_versions_with_leading_zeros_are_refused() {
        let text = two_versions("").replace("version = \"4\"", "version = \"03\"");
        let error = error_of(&text);
        assert!(
            error.contains("'03'") && error.contains("without leading zeros ('3')"),
            "{error}"
        );
        let zero = "version = 1\n[[ensemble]]\nname = \"x\"\nversion = \"0\"\ncombiner = \"soft_vote\"\ndeadline_ms = 1\n[[ensemble.member]]\nmodel = \"a\"\n";
        assert_eq!(parse(zero, "t").unwrap()[0].version, "0");
        let zeros = zero.replace("\"0\"", "\"00\"");
        assert!(error_of(&zeros).contains("('0')"), "{}", error_of(&zeros));
    }

    #[test]
    fn a_split_and_a_shadow_are_read_in_version_order() {
        let text = two_versions("traffic = { \"4\" = 10, \"3\" = 90 }");
        let specs = parse(&text, "t").unwrap();
        let routing = specs[0].routing.as_ref().unwrap();
        assert_eq!(
            routing.traffic,
            vec![("3".to_string(), 90), ("4".to_string(), 10)]
        );
        assert_eq!(routing.shadow, None);
        let shadowed = two_versions("traffic = { \"3\" = 100, \"4\" = 0 }\nshadow = 4");
        let specs = parse(&shadowed, "t").unwrap();
        assert_eq!(
            specs[0].routing.as_ref().unwrap().shadow.as_deref(),
            Some("4")
        );
    }

    #[test]
    fn bad_versions_and_splits_name_the_field() {
        let e = error_of(&two_versions("traffic = { \"3\" = 50, \"5\" = 50 }"));
        assert!(
            e.contains("`traffic`") && e.contains("'5'") && e.contains("3, 4"),
            "{e}"
        );
        let e = error_of(&two_versions("shadow = \"9\""));
        assert!(e.contains("`shadow`") && e.contains("'9'"), "{e}");
        let e = error_of(&two_versions(
            "traffic = { \"3\" = 50, \"4\" = 50 }\nshadow = 4",
        ));
        assert!(e.contains("`shadow`") && e.contains("weight 0"), "{e}");
        let e = error_of(&two_versions("shadow = 4"));
        assert!(
            e.contains("without `traffic` the highest version answers"),
            "{e}"
        );
        let e = error_of(&two_versions("traffic = { \"3\" = 0, \"4\" = 0 }"));
        assert!(e.contains("every `traffic` weight is 0"), "{e}");
        let e = error_of(&two_versions("traffic = { \"3\" = 2000000 }"));
        assert!(e.contains("`traffic`") && e.contains("2000000"), "{e}");
        let e = error_of(&two_versions("traffic = { \"3\" = -1 }"));
        assert!(e.contains("traffic"), "{e}");
        let e = error_of(&two_versions("").replace("version = \"4\"", "version = 3"));
        assert!(e.contains("version '3' is defined twice"), "{e}");
        let e = error_of(&two_versions("").replace("version = \"4\"", "version = \"a b\""));
        assert!(e.contains("`version`") && e.contains("'a b'"), "{e}");
        let e = error_of(&two_versions("max_inflight = 5"));
        assert!(e.contains("same limits"), "{e}");
        let e = error_of(&two_versions("feedback = true"));
        assert!(e.contains("name of its own"), "{e}");
        let both = two_versions("shadow = \"3\"").replace(
            "version = \"4\"",
            "version = \"4\"\ntraffic = { \"3\" = 1 }",
        );
        let e = error_of(&both);
        assert!(e.contains("both set `traffic` or `shadow`"), "{e}");
    }
}
