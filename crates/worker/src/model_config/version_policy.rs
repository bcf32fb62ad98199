//! Which of a model's version directories are loaded: Triton's `version_policy`, written in the
//! model's `config.toml` as `version_policy = { latest = N }`, `"all"` or
//! `{ specific = [1, 3] }`.
//!
//! Rules (each refusal names the key and says what to write):
//! 1. Without the key a model loads its newest version only (`{ latest = 1 }`), as Triton does:
//!    dropping a new version directory in replaces the old one rather than adding to it.
//! 2. `latest = N` loads the N highest-numbered versions (fewer if the model has fewer); N is at
//!    least 1.
//! 3. `specific` lists at least one version; repeats are ignored; every version listed must have
//!    a directory (a pin to a version that is not there is a mistake, not a wish).

use serde::Deserialize;

/// Most versions `latest` may ask for: far more than any repository keeps, small enough that a
/// typo like `latest = 10000000000` is caught.
pub const MAX_LATEST: u32 = 1 << 16;

/// How many, and which, version directories of a model are loaded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VersionPolicy {
    /// The N highest-numbered versions.
    Latest(u32),
    /// Every version directory.
    All,
    /// Exactly these versions.
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    /// Triton's default.
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// Checks the numbers; the message names `version_policy` and says what to write.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            VersionPolicy::Latest(n) if *n == 0 || *n > MAX_LATEST => Err(format!(
                "`version_policy = {{ latest = {n} }}`: `latest` must be between 1 and {MAX_LATEST}; write `version_policy = \"all\"` to load every version"
            )),
            VersionPolicy::Specific(versions) if versions.is_empty() => Err(
                "`version_policy = { specific = [] }` loads nothing: list at least one version directory, e.g. `{ specific = [1] }`"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    /// The versions of `available` (ascending, distinct) this policy loads, ascending; or why
    /// it cannot (a `specific` version with no directory).
    pub fn select(&self, available: &[u64]) -> Result<Vec<u64>, String> {
        match self {
            VersionPolicy::All => Ok(available.to_vec()),
            VersionPolicy::Latest(n) => {
                let skip = available.len().saturating_sub(*n as usize);
                Ok(available[skip..].to_vec())
            }
            VersionPolicy::Specific(wanted) => {
                let missing: Vec<u64> = wanted
                    .iter()
                    .copied()
                    .filter(|v| !available.contains(v))
                    .collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "`version_policy = {{ specific = {wanted:?} }}` names version(s) {missing:?}, which have no directory (the model has {available:?}); add the directories or remove them from `specific`"
                    ));
                }
                Ok(available
                    .iter()
                    .copied()
                    .filter(|v| wanted.contains(v))
                    .collect())
            }
        }
    }
}

impl std::fmt::Display for VersionPolicy {
    /// As written in `config.toml`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionPolicy::Latest(n) => write!(f, "{{ latest = {n} }}"),
            VersionPolicy::All => write!(f, "\"all\""),
            VersionPolicy::Specific(v) => write!(f, "{{ specific = {v:?} }}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct File {
        version_policy: VersionPolicy,
    }

    fn parse(text: &str) -> Result<VersionPolicy, String> {
        toml::from_str::<File>(text)
            .map(|f| f.version_policy)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_three_forms_parse_as_triton_writes_them() {
        assert_eq!(
            parse("version_policy = { latest = 2 }"),
            Ok(VersionPolicy::Latest(2))
        );
        assert_eq!(parse("version_policy = \"all\""), Ok(VersionPolicy::All));
        assert_eq!(
            parse("version_policy = { specific = [1, 3] }"),
            Ok(VersionPolicy::Specific(vec![1, 3]))
        );
        for bad in [
            "version_policy = \"newest\"",
            "version_policy = { latest = -1 }",
            "version_policy = { latest = 1, specific = [1] }",
            "version_policy = { oldest = 1 }",
            "version_policy = 3",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_is_the_newest_version_only() {
        assert_eq!(VersionPolicy::default(), VersionPolicy::Latest(1));
        assert_eq!(VersionPolicy::default().select(&[1, 2, 10]), Ok(vec![10]));
    }

    #[test]
    fn latest_takes_the_highest_numbers_or_all_there_are() {
        let available = [1, 2, 5, 10];
        assert_eq!(VersionPolicy::Latest(2).select(&available), Ok(vec![5, 10]));
        assert_eq!(
            VersionPolicy::Latest(9).select(&available),
            Ok(available.to_vec())
        );
        assert_eq!(
            VersionPolicy::All.select(&available),
            Ok(available.to_vec())
        );
    }

    #[test]
    fn specific_loads_the_listed_versions_and_refuses_missing_ones() {
        let available = [1, 2, 3];
        assert_eq!(
            VersionPolicy::Specific(vec![3, 1, 3]).select(&available),
            Ok(vec![1, 3])
        );
        let e = VersionPolicy::Specific(vec![1, 7])
            .select(&available)
            .unwrap_err();
        assert!(e.contains("[7]") && e.contains("specific"), "{e}");
    }

    #[test]
    fn numbers_that_load_nothing_are_refused_by_key() {
        for bad in [
            VersionPolicy::Latest(0),
            VersionPolicy::Latest(MAX_LATEST + 1),
            VersionPolicy::Specific(vec![]),
        ] {
            let e = bad.validate().unwrap_err();
            assert!(e.contains("version_policy"), "{bad:?}: {e}");
        }
        VersionPolicy::Latest(3).validate().unwrap();
        VersionPolicy::All.validate().unwrap();
    }
}
