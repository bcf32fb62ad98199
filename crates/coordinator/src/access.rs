//! API keys (`--api-keys FILE`): who may call the coordinator, and which models each caller may
//! use. The file holds only the SHA-256 of each secret, so reading it (a backup, a ConfigMap, a
//! `ps` of the process) never yields a usable key.
//!
//! ```toml
//! [[key]]
//! id = "reporting"                 # what logs and metrics name; never the secret
//! sha256 = "9f86d0…"               # hex SHA-256 of the secret: `printf %s "$SECRET" | sha256sum`
//! models = ["digits_soft"]         # optional: the models and ensembles it may call (all if absent)
//! rate_limit = 50.0                # optional: requests per second, a token bucket…
//! burst = 100                      # …holding this many (default: one second's worth)
//! ```
//!
//! Both front doors hand the core the same [`Credentials`] (REST: `Authorization: Bearer` or
//! `X-Api-Key`; gRPC: the same names in metadata), and the core turns them into a [`Caller`].

use crate::admission::RateLimit;
use crate::infer::InferError;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

/// The key id a request is counted under when no key file is configured.
pub const OPEN_ACCESS: &str = "-";

/// Longest key id accepted: ids label metrics and log lines.
const MAX_ID_BYTES: usize = 64;

/// What a request presented, as its front door found it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The `Authorization` header (or metadata) value, `Bearer <key>`.
    pub authorization: Option<&'a str>,
    /// The `X-Api-Key` header (or metadata) value.
    pub api_key: Option<&'a str>,
}

impl<'a> Credentials<'a> {
    /// The secret presented: `X-Api-Key`, else the token of `Authorization: Bearer` (the scheme
    /// case-insensitive, as RFC 7235 has it).
    fn secret(&self) -> Result<Option<&'a str>, InferError> {
        if let Some(key) = self.api_key {
            return Ok(Some(key.trim()));
        }
        let Some(value) = self.authorization else {
            return Ok(None);
        };
        let (scheme, token) = value.trim().split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(InferError::Unauthenticated(
                "the Authorization header must be `Bearer <api key>`".to_string(),
            ));
        }
        Ok(Some(token.trim()))
    }
}

/// [`Credentials`] as owned strings, for a gRPC stream whose requests outlive its metadata.
#[derive(Debug, Clone, Default)]
pub struct PresentedCredentials {
    pub authorization: Option<String>,
    pub api_key: Option<String>,
}

impl PresentedCredentials {
    pub fn borrowed(&self) -> Credentials<'_> {
        Credentials {
            authorization: self.authorization.as_deref(),
            api_key: self.api_key.as_deref(),
        }
    }
}

/// One key of the key file.
#[derive(Debug)]
pub struct ApiKey {
    pub id: String,
    /// The models and ensembles it may call; `None` allows every one.
    models: Option<HashSet<String>>,
    /// The key's own request rate, if the file sets one.
    pub rate_limit: Option<RateLimit>,
}

/// Who is asking: a key from the file, or anyone when no file is configured.
#[derive(Debug, Clone, Default)]
pub struct Caller(Option<Arc<ApiKey>>);

impl Caller {
    /// What metrics and the request span call this caller: the key id, or [`OPEN_ACCESS`].
    pub fn id(&self) -> &str {
        self.0.as_ref().map_or(OPEN_ACCESS, |key| &key.id)
    }

    pub fn key(&self) -> Option<&ApiKey> {
        self.0.as_deref()
    }

    /// Refuses a key that may not call `model` (403: the key is good, the model is not its).
    pub fn authorize(&self, model: &str) -> Result<(), InferError> {
        match self
            .0
            .as_ref()
            .and_then(|key| key.models.as_ref().map(|m| (key, m)))
        {
            Some((key, models)) if !models.contains(model) => {
                Err(InferError::PermissionDenied(format!(
                    "API key '{}' may not use model '{model}'; ask for a key that lists it",
                    key.id
                )))
            }
            _ => Ok(()),
        }
    }

    /// Whether this caller may see `model` at all (listings leave out the rest).
    pub fn may_use(&self, model: &str) -> bool {
        self.authorize(model).is_ok()
    }
}

/// The coordinator's access policy: open (no key file) or the keys of the file.
#[derive(Debug, Default)]
pub struct Access {
    keys: Option<HashMap<[u8; 32], Arc<ApiKey>>>,
}

impl Access {
    /// Anyone may call (no `--api-keys`).
    pub fn open() -> Self {
        Access::default()
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_none()
    }

    /// How many keys the file holds (0 when open).
    pub fn len(&self) -> usize {
        self.keys.as_ref().map_or(0, HashMap::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The caller `credentials` identify: 401 when keys are required and none, or an unknown
    /// one, was presented.
    pub fn authenticate(&self, credentials: Credentials<'_>) -> Result<Caller, InferError> {
        let Some(keys) = &self.keys else {
            return Ok(Caller(None));
        };
        let Some(secret) = credentials.secret()? else {
            return Err(InferError::Unauthenticated(
                "this server requires an API key: send `Authorization: Bearer <key>` or `X-Api-Key: <key>` (gRPC: the same names in metadata)".to_string(),
            ));
        };
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        keys.get(&digest)
            .map(|key| Caller(Some(Arc::clone(key))))
            .ok_or_else(|| InferError::Unauthenticated("the API key is not valid".to_string()))
    }

    /// Reads and checks a key file.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses key-file text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, KeyFileError> {
        let invalid = |message: String| KeyFileError::Invalid {
            path: origin.to_string(),
            message,
        };
        let file: KeyFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if file.key.is_empty() {
            return Err(invalid(
                "no [[key]] table: a key file that admits nobody is a mistake; add a key, or drop --api-keys to run open".to_string(),
            ));
        }
        let mut keys = HashMap::with_capacity(file.key.len());
        let mut ids = HashSet::new();
        for raw in file.key {
            let id = raw.id.clone();
            if !ids.insert(id.clone()) {
                return Err(invalid(format!("key id '{id}' is used twice")));
            }
            let (digest, key) = raw.validate().map_err(invalid)?;
            if keys.insert(digest, Arc::new(key)).is_some() {
                return Err(invalid(format!(
                    "key '{id}' has the same sha256 as another key; give each key its own secret"
                )));
            }
        }
        Ok(Access { keys: Some(keys) })
    }
}

/// Why a key file was refused; each message names the file and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read API key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("API key file {path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    key: Vec<RawKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    id: String,
    sha256: String,
    models: Option<Vec<String>>,
    rate_limit: Option<f64>,
    burst: Option<u32>,
}

impl RawKey {
    fn validate(self) -> Result<([u8; 32], ApiKey), String> {
        let id = self.id;
        if id.is_empty()
            || id.len() > MAX_ID_BYTES
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err(format!(
                "key id '{id}' must be 1 to {MAX_ID_BYTES} letters, digits, '_', '-' or '.'"
            ));
        }
        let digest = hex::decode(self.sha256.trim())
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| {
                format!(
                    "key '{id}': `sha256` must be 64 hex digits, the SHA-256 of the secret (`printf %s \"$SECRET\" | sha256sum`), never the secret itself"
                )
            })?;
        let rate_limit = match (self.rate_limit, self.burst) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(format!("key '{id}': `burst` needs a `rate_limit`"));
            }
            (Some(rate), burst) => {
                Some(RateLimit::new(rate, burst).map_err(|e| format!("key '{id}': {e}"))?)
            }
        };
        Ok((
            digest,
            ApiKey {
                id,
                models: self.models.map(|m| m.into_iter().collect()),
                rate_limit,
            },
        ))
    }
}

/// The hex SHA-256 of `secret`, as the key file stores it (tests and tooling).
pub fn digest_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::ErrorKind;

    fn file() -> String {
        format!(
            r#"
            [[key]]
            id = "ops"
            sha256 = "{}"

            [[key]]
            id = "reporting"
            sha256 = "{}"
            models = ["digits_soft"]
            rate_limit = 2.0
            burst = 3
            "#,
            digest_hex("s3cret-ops"),
            digest_hex("s3cret-reporting")
        )
    }

    fn bearer(value: &str) -> Credentials<'_> {
        Credentials {
            authorization: Some(value),
            api_key: None,
        }
    }

    #[test]
    fn keys_are_found_by_their_secret_and_limited_to_their_models() {
        let access = Access::parse(&file(), "keys.toml").unwrap();
        assert_eq!(access.len(), 2);
        let ops = access.authenticate(bearer("Bearer s3cret-ops")).unwrap();
        assert_eq!(ops.id(), "ops");
        assert!(ops.authorize("mlp").is_ok());
        let reporting = access
            .authenticate(Credentials {
                authorization: None,
                api_key: Some("s3cret-reporting"),
            })
            .unwrap();
        assert_eq!(reporting.id(), "reporting");
        assert!(reporting.authorize("digits_soft").is_ok());
        let denied = reporting.authorize("mlp").unwrap_err();
        assert_eq!(denied.kind(), ErrorKind::PermissionDenied);
        assert!(denied.to_string().contains("'reporting'"), "{denied}");
        assert!(reporting.key().unwrap().rate_limit.is_some());
        // The scheme is case-insensitive; the secret is not.
        assert!(access.authenticate(bearer("bearer s3cret-ops")).is_ok());
        for wrong in [
            "Bearer S3CRET-OPS",
            "Basic czNjcmV0",
            "Bearer",
            "s3cret-ops",
        ] {
            let e = access.authenticate(bearer(wrong)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{wrong}");
        }
        let missing = access.authenticate(Credentials::default()).unwrap_err();
        assert!(missing.to_string().contains("X-Api-Key"), "{missing}");
    }

    #[test]
    fn open_access_lets_everyone_in() {
        let access = Access::open();
        let caller = access.authenticate(Credentials::default()).unwrap();
        assert_eq!(caller.id(), OPEN_ACCESS);
        assert!(caller.authorize("anything").is_ok());
    }

    #[test]
    fn bad_files_say_what_to_fix() {
        let e = |text: &str| Access::parse(text, "k.toml").unwrap_err().to_string();
        assert!(e("").contains("no [[key]]"));
        assert!(e("[[key]]\nid = \"a\"\nsha256 = \"secret\"\n").contains("64 hex digits"));
        let h = digest_hex("x");
        assert!(
            e(&format!("[[key]]\nid = \"a b\"\nsha256 = \"{h}\"\n")).contains("letters, digits")
        );
        assert!(
            e(&format!(
                "[[key]]\nid = \"a\"\nsha256 = \"{h}\"\n[[key]]\nid = \"a\"\nsha256 = \"{}\"\n",
                digest_hex("y")
            ))
            .contains("used twice")
        );
        assert!(
            e(&format!(
                "[[key]]\nid = \"a\"\nsha256 = \"{h}\"\n[[key]]\nid = \"b\"\nsha256 = \"{h}\"\n"
            ))
            .contains("same sha256")
        );
        assert!(
            e(&format!(
                "[[key]]\nid = \"a\"\nsha256 = \"{h}\"\nburst = 3\n"
            ))
            .contains("needs a `rate_limit`")
        );
        assert!(
            e(&format!(
                "[[key]]\nid = \"a\"\nsha256 = \"{h}\"\nrate_limit = -1.0\n"
            ))
            .contains("rate_limit")
        );
        assert!(
            e(&format!(
                "[[key]]\nid = \"a\"\nsha256 = \"{h}\"\nsecret = \"x\"\n"
            ))
            .contains("secret")
        );
    }
}
