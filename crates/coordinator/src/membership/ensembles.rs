//! Ensemble specs kept in etcd: one key per spec file under `/chorus/v1/ensembles/`, holding the
//! file's TOML text (`version = 1`, one or more `[[ensemble]]`). A value that does not parse or
//! validate is rejected with a warning and the key keeps its last good specs.

use super::view::{Kind, View};
use crate::spec::{self, EnsembleSpec};
use chorus_common::membership::ENSEMBLES_PREFIX;
use std::sync::Arc;

/// A spec file in etcd appearing, changing or going; the catalog applies these on top of the
/// specs it was started with.
#[derive(Debug, Clone, PartialEq)]
pub enum SpecChange {
    /// The etcd key `key` now defines exactly `specs`, replacing what it defined before.
    Set {
        key: String,
        specs: Vec<Arc<EnsembleSpec>>,
    },
    /// The etcd key `key` is gone, and so are the ensembles only it defined.
    Removed { key: String },
}

/// Spec files under [`ENSEMBLES_PREFIX`], identified by the rest of their key.
#[derive(Debug)]
pub enum EnsembleSpecs {}

impl Kind for EnsembleSpecs {
    type Item = Vec<Arc<EnsembleSpec>>;
    type Change = SpecChange;
    const PREFIX: &'static str = ENSEMBLES_PREFIX;
    const NOUN: &'static str = "ensemble spec";
    // Specs are configuration, written by operators to stay.
    const LEASED: bool = false;

    fn id_of(key: &[u8]) -> Option<&str> {
        std::str::from_utf8(key)
            .ok()?
            .strip_prefix(ENSEMBLES_PREFIX)
            .filter(|id| !id.is_empty())
    }

    fn decode(id: &str, value: &[u8]) -> Result<Self::Item, String> {
        let text = std::str::from_utf8(value).map_err(|e| format!("not UTF-8 text: {e}"))?;
        let specs = spec::parse(text, &key_of(id)).map_err(|e| e.to_string())?;
        Ok(specs.into_iter().map(Arc::new).collect())
    }

    fn differs(old: &Self::Item, new: &Self::Item) -> bool {
        old != new
    }

    fn set(id: &str, specs: &Self::Item) -> SpecChange {
        SpecChange::Set {
            key: key_of(id),
            specs: specs.clone(),
        }
    }

    fn removed(id: &str, _: &Self::Item) -> SpecChange {
        SpecChange::Removed { key: key_of(id) }
    }
}

fn key_of(id: &str) -> String {
    format!("{ENSEMBLES_PREFIX}{id}")
}

/// Which spec files etcd holds.
pub type EnsembleView = View<EnsembleSpecs>;

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "/chorus/v1/ensembles/fraud";

    fn text(name: &str, deadline_ms: u64) -> String {
        format!(
            "version = 1\n[[ensemble]]\nname = \"{name}\"\ncombiner = \"soft_vote\"\ndeadline_ms = {deadline_ms}\n[[ensemble.member]]\nmodel = \"a\"\n"
        )
    }

    fn names(change: &SpecChange) -> Vec<String> {
        match change {
            SpecChange::Set { specs, .. } => specs.iter().map(|s| s.name.clone()).collect(),
            SpecChange::Removed { .. } => vec![],
        }
    }

    #[test]
    fn a_valid_spec_is_set_and_a_delete_removes_it() {
        let mut view = EnsembleView::new();
        let change = view
            .put(KEY.as_bytes(), text("e1", 100).as_bytes(), 5, 0)
            .unwrap();
        assert!(matches!(&change, SpecChange::Set { key, .. } if key == KEY));
        assert_eq!(names(&change), vec!["e1"]);
        assert_eq!(
            view.delete(KEY.as_bytes(), 6),
            Some(SpecChange::Removed { key: KEY.into() })
        );
    }

    #[test]
    fn an_invalid_change_keeps_the_previous_specs() {
        let mut view = EnsembleView::new();
        view.put(KEY.as_bytes(), text("e1", 100).as_bytes(), 5, 0)
            .unwrap();
        assert_eq!(view.put(KEY.as_bytes(), b"version = [", 6, 0), None);
        assert_eq!(
            view.put(KEY.as_bytes(), text("e1", 0).as_bytes(), 7, 0),
            None,
            "fails validation"
        );
        assert_eq!(
            view.put(KEY.as_bytes(), &[0xff, 0xfe], 8, 0),
            None,
            "not UTF-8"
        );
        assert_eq!(view.get("fraud").unwrap()[0].deadline.as_millis(), 100);
        // A valid change after that applies.
        let change = view
            .put(KEY.as_bytes(), text("e1", 200).as_bytes(), 9, 0)
            .unwrap();
        assert!(
            matches!(change, SpecChange::Set { specs, .. } if specs[0].deadline.as_millis() == 200)
        );
    }

    #[test]
    fn an_unchanged_spec_is_silent() {
        let mut view = EnsembleView::new();
        view.put(KEY.as_bytes(), text("e1", 100).as_bytes(), 5, 0)
            .unwrap();
        assert_eq!(
            view.put(KEY.as_bytes(), text("e1", 100).as_bytes(), 6, 0),
            None
        );
    }

    #[test]
    fn the_prefix_itself_names_no_spec() {
        let mut view = EnsembleView::new();
        assert_eq!(
            view.put(ENSEMBLES_PREFIX.as_bytes(), text("e1", 1).as_bytes(), 5, 0),
            None
        );
        assert_eq!(
            EnsembleSpecs::id_of(b"/chorus/v1/ensembles/a/b"),
            Some("a/b")
        );
    }
}
