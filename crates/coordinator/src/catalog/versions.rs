//! Every version of one ensemble name that is served, and how an unversioned request picks one:
//! by the name's traffic split (a weighted draw per request), else the highest version. The
//! shadow version, if any, gets a copy of the split traffic (shadow.rs).
//!
//! A `Versions` is built whole from one source's specs (the file, or one etcd key) and replaced
//! whole, so a split and the versions it names always change together: a request sees the old
//! set or the new one, never a split naming a version that is gone.

use crate::pool::version_order;
use crate::spec::EnsembleSpec;
use std::sync::Arc;

/// The served versions of one ensemble name.
#[derive(Debug, Clone, PartialEq)]
pub struct Versions {
    /// Ascending by version (numeric where both are numbers).
    specs: Vec<Arc<EnsembleSpec>>,
    /// `(cumulative weight, index into specs)` in version order; empty: no split.
    split: Vec<(u64, usize)>,
    /// Index of the shadow version.
    shadow: Option<usize>,
}

impl Versions {
    /// The versions `specs` (of one name, from one source that `spec::parse` checked, so the
    /// split and shadow name versions among them).
    pub fn new(mut specs: Vec<Arc<EnsembleSpec>>) -> Self {
        specs.sort_by(|a, b| version_order(&a.version, &b.version));
        let index = |version: &str| specs.iter().position(|s| s.version == version);
        let routing = specs.iter().find_map(|s| s.routing.clone());
        let mut split = Vec::new();
        let mut shadow = None;
        if let Some(routing) = routing {
            let mut total = 0u64;
            for (version, weight) in &routing.traffic {
                if let Some(i) = index(version)
                    && *weight > 0
                {
                    total += u64::from(*weight);
                    split.push((total, i));
                }
            }
            shadow = routing.shadow.as_deref().and_then(index);
        }
        Versions {
            specs,
            split,
            shadow,
        }
    }

    /// The version an unversioned request goes to, for a draw uniform over `u64`.
    pub fn pick_with(&self, draw: u64) -> &Arc<EnsembleSpec> {
        let Some(&(total, _)) = self.split.last() else {
            return self.highest();
        };
        let point = draw % total;
        let i = self
            .split
            .iter()
            .find(|(cumulative, _)| point < *cumulative)
            .map_or(self.specs.len() - 1, |(_, i)| *i);
        &self.specs[i]
    }

    /// The version an unversioned request goes to: drawn per request by the split (the thread's
    /// generator: no lock, no allocation), else the highest.
    pub fn pick(&self) -> &Arc<EnsembleSpec> {
        if self.split.is_empty() {
            return self.highest();
        }
        self.pick_with(rand::random::<u64>())
    }

    /// The version that most unversioned traffic goes to (the higher one on a tie), without a
    /// draw: what unversioned metadata, configuration and feedback describe.
    pub fn main(&self) -> &Arc<EnsembleSpec> {
        let mut best: Option<(u64, usize)> = None;
        let mut previous = 0;
        for &(cumulative, i) in &self.split {
            let weight = cumulative - previous;
            previous = cumulative;
            if best.is_none_or(|(w, _)| weight >= w) {
                best = Some((weight, i));
            }
        }
        best.map_or_else(|| self.highest(), |(_, i)| &self.specs[i])
    }

    /// The versions unversioned traffic reaches: those with weight in the split, else the
    /// highest.
    pub fn reached(&self) -> Vec<&Arc<EnsembleSpec>> {
        if self.split.is_empty() {
            return vec![self.highest()];
        }
        self.split.iter().map(|&(_, i)| &self.specs[i]).collect()
    }

    pub fn highest(&self) -> &Arc<EnsembleSpec> {
        self.specs.last().expect("a name has at least one version")
    }

    /// The version `version`, if served.
    pub fn get(&self, version: &str) -> Option<&Arc<EnsembleSpec>> {
        self.specs.iter().find(|s| s.version == version)
    }

    /// The shadow version, unless it is `primary` itself.
    pub fn shadow_of(&self, primary: &Arc<EnsembleSpec>) -> Option<&Arc<EnsembleSpec>> {
        self.shadow
            .map(|i| &self.specs[i])
            .filter(|s| !Arc::ptr_eq(s, primary))
    }

    /// Every version, ascending.
    pub fn all(&self) -> &[Arc<EnsembleSpec>] {
        &self.specs
    }

    /// The split as `(version, share of requests)`; empty without one.
    pub fn shares(&self) -> Vec<(&str, f64)> {
        let total = self.split.last().map_or(0, |(t, _)| *t) as f64;
        let mut previous = 0;
        self.split
            .iter()
            .map(|&(cumulative, i)| {
                let share = (cumulative - previous) as f64 / total;
                previous = cumulative;
                (self.specs[i].version.as_str(), share)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(extra: &str) -> Versions {
        let text = format!(
            "version = 1\n\
             [[ensemble]]\nname = \"e\"\nversion = 3\ncombiner = \"soft_vote\"\ndeadline_ms = 100\n{extra}\n\
             [[ensemble.member]]\nmodel = \"a\"\n\
             [[ensemble]]\nname = \"e\"\nversion = 10\ncombiner = \"soft_vote\"\ndeadline_ms = 100\n\
             [[ensemble.member]]\nmodel = \"b\"\n\
             [[ensemble]]\nname = \"e\"\nversion = 4\ncombiner = \"soft_vote\"\ndeadline_ms = 100\n\
             [[ensemble.member]]\nmodel = \"c\"\n"
        );
        let specs = crate::spec::parse(&text, "t").unwrap();
        Versions::new(specs.into_iter().map(Arc::new).collect())
    }

    #[test]
    fn without_a_split_the_highest_version_answers() {
        let v = versions("");
        assert_eq!(v.pick().version, "10", "numeric order, not text order");
        assert_eq!(v.main().version, "10");
        assert!(v.shares().is_empty());
        let all: Vec<_> = v.all().iter().map(|s| s.version.as_str()).collect();
        assert_eq!(all, ["3", "4", "10"]);
        assert_eq!(v.get("4").unwrap().members[0].model, "c");
        assert!(v.get("5").is_none());
    }

    #[test]
    fn draws_land_on_versions_by_weight() {
        let v = versions("traffic = { \"3\" = 90, \"4\" = 10, \"10\" = 0 }");
        // Draws 0..89 go to 3, 90..99 to 4, and 10 (weight 0) never answers.
        assert_eq!(v.pick_with(0).version, "3");
        assert_eq!(v.pick_with(89).version, "3");
        assert_eq!(v.pick_with(90).version, "4");
        assert_eq!(v.pick_with(99).version, "4");
        assert_eq!(v.pick_with(100).version, "3");
        assert_eq!(v.main().version, "3");
        assert_eq!(v.shares(), vec![("3", 0.9), ("4", 0.1)]);
        let n = 100_000;
        let fours = (0..n).filter(|_| v.pick().version == "4").count();
        // Binomial(100000, 0.1): sd ≈ 95; six of them either side.
        assert!((9_430..=10_570).contains(&fours), "{fours}");
    }

    #[test]
    fn the_shadow_is_never_its_own_primary() {
        let v = versions("traffic = { \"3\" = 1, \"4\" = 0 }\nshadow = 4");
        let primary = Arc::clone(v.pick());
        assert_eq!(primary.version, "3");
        assert_eq!(v.shadow_of(&primary).unwrap().version, "4");
        let four = Arc::clone(v.get("4").unwrap());
        assert!(v.shadow_of(&four).is_none());
        assert!(versions("").shadow_of(&primary).is_none());
    }
}
