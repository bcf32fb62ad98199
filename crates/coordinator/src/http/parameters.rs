//! OIP v2 `parameters` objects of a REST request, kept as raw JSON slices of the body: only the
//! parameters Chorus reads are parsed, each straight into its type, so a client cannot make the
//! coordinator build a tree of whatever it puts there.

use crate::infer::{InferError, decode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use std::collections::HashMap;

/// Longest excerpt of a bad value quoted back in an error.
const QUOTE_LIMIT: usize = 64;

/// One `parameters` object: names and their raw JSON values (borrowed from the body).
#[derive(Debug, Default, Deserialize)]
#[serde(transparent)]
pub struct Parameters<'a>(#[serde(borrow)] HashMap<String, &'a RawValue>);

impl<'a> Parameters<'a> {
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The raw JSON of `name`, if given.
    pub fn raw(&self, name: &str) -> Option<&'a str> {
        self.0.get(name).map(|raw| raw.get())
    }

    /// `name` as a `T`, if given; `wrong` builds the error from the value's text.
    pub fn get<T: DeserializeOwned>(
        &self,
        name: &str,
        wrong: impl FnOnce(&str) -> InferError,
    ) -> Result<Option<T>, InferError> {
        match self.raw(name) {
            None => Ok(None),
            Some(text) => serde_json::from_str(text)
                .map(Some)
                .map_err(|_| wrong(&quote(text))),
        }
    }

    /// A boolean parameter.
    pub fn flag(&self, name: &str) -> Result<Option<bool>, InferError> {
        self.get(name, |got| {
            InferError::bad_request(format!(
                "parameter `{name}` must be true or false, got {got}"
            ))
        })
    }

    /// Refuses parameters of extensions Chorus does not implement; `whose` says where.
    pub fn reject_unsupported(&self, whose: &str) -> Result<(), InferError> {
        decode::reject_unsupported_parameters(self.names(), whose)
    }
}

/// `text`, shortened for an error message.
pub fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_parameters_are_typed_and_others_left_raw() {
        let p: Parameters = serde_json::from_str(
            r#"{"timeout": 1500, "binary_data_output": true, "junk": [[1,2,3],{"a":null}]}"#,
        )
        .unwrap();
        assert_eq!(
            p.get::<u64>("timeout", |g| decode::bad_timeout(g)).unwrap(),
            Some(1500)
        );
        assert_eq!(p.flag("binary_data_output").unwrap(), Some(true));
        assert_eq!(p.flag("absent").unwrap(), None);
        assert!(p.raw("junk").is_some());
        let e = p.flag("timeout").unwrap_err().to_string();
        assert!(
            e.contains("`timeout` must be true or false, got 1500"),
            "{e}"
        );
        let long = format!("\"{}\"", "x".repeat(1000));
        assert!(quote(&long).chars().count() <= QUOTE_LIMIT + 1);
    }
}
