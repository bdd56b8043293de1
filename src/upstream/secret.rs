//! The upstream API key as a type that cannot leak by accident.

use secrecy::{ExposeSecret, SecretString};

/// What `Debug` and `Display` print instead of the key.
pub const REDACTED: &str = "[REDACTED]";

/// The bearer key of the upstream API. `Debug` and `Display` print [`REDACTED`]; the only way
/// to the text is [`ApiKey::expose`], which the client calls once per request to build the
/// `Authorization` header. It has no `Serialize`, so it cannot end up in a response either.
#[derive(Clone)]
pub struct ApiKey(SecretString);

/// Why a key was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiKeyError {
    /// An empty key would send `Authorization: Bearer ` and fail with a confusing 401.
    #[error("the upstream API key is empty: set TURING_API_KEY (or upstream.api_key) to the key")]
    Empty,
    /// Whitespace or control characters cannot be carried in an HTTP header value.
    #[error(
        "the upstream API key contains whitespace or control characters, which an HTTP header cannot carry; check for a trailing newline"
    )]
    InvalidCharacters,
}

impl ApiKey {
    /// Takes a key, refusing an empty one or one with characters a header cannot carry.
    pub fn new(key: impl Into<String>) -> Result<Self, ApiKeyError> {
        let key: String = key.into();
        if key.is_empty() {
            return Err(ApiKeyError::Empty);
        }
        if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ApiKeyError::InvalidCharacters);
        }
        Ok(Self(SecretString::from(key)))
    }

    /// The key's text, for the `Authorization` header only.
    pub(crate) fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Replaces every occurrence of the key in `text` with [`REDACTED`], so that an upstream
    /// that echoes the header back in an error body cannot carry it into our logs or errors.
    pub fn scrub(&self, text: &str) -> String {
        let key = self.expose();
        if key.is_empty() || !text.contains(key) {
            return text.to_owned();
        }
        text.replace(key, REDACTED)
    }

    /// [`ApiKey::scrub`] of every string (and object key) in an upstream JSON answer, wherever
    /// it sits: a failed task's message, a status spelling, a field nobody reads yet. Parsed
    /// strings are unescaped, so a key written as `\/`-escaped JSON is found too.
    pub fn scrub_json(&self, value: &mut serde_json::Value) {
        use serde_json::Value;
        match value {
            Value::String(text) => {
                if text.contains(self.expose()) {
                    *text = self.scrub(text);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.scrub_json(v)),
            Value::Object(map) => {
                if map.keys().any(|k| k.contains(self.expose())) {
                    let old = std::mem::take(map);
                    for (k, v) in old {
                        map.insert(self.scrub(&k), v);
                    }
                }
                map.values_mut().for_each(|v| self.scrub_json(v));
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({REDACTED})")
    }
}

impl std::fmt::Display for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_debug_and_display_are_redacted() {
        let key = ApiKey::new("sk-very-secret-123").unwrap();
        assert_eq!(format!("{key:?}"), "ApiKey([REDACTED])");
        assert_eq!(format!("{key}"), "[REDACTED]");
        assert!(!format!("{key:#?}").contains("very-secret"));
    }

    #[test]
    fn api_key_rejects_empty_and_header_breaking_values() {
        assert_eq!(ApiKey::new("").unwrap_err(), ApiKeyError::Empty);
        assert_eq!(
            ApiKey::new("abc\n").unwrap_err(),
            ApiKeyError::InvalidCharacters
        );
        assert_eq!(
            ApiKey::new("a b").unwrap_err(),
            ApiKeyError::InvalidCharacters
        );
    }

    #[test]
    fn scrub_json_reaches_every_string_also_escaped_ones() {
        let key = ApiKey::new("sk/abc").unwrap();
        let mut v: serde_json::Value = serde_json::from_str(
            r#"{"status":"failed","error":{"message":"header was Authorization: Bearer sk\/abc"},
                "echo":["sk/abc", {"sk/abc": 1}], "n": 3}"#,
        )
        .unwrap();
        key.scrub_json(&mut v);
        let text = v.to_string();
        assert!(
            !text.contains("sk/abc") && !text.contains("sk\\/abc"),
            "{text}"
        );
        assert_eq!(
            v["error"]["message"],
            "header was Authorization: Bearer [REDACTED]"
        );
        assert_eq!(v["echo"][1]["[REDACTED]"], 1);
        assert_eq!(v["n"], 3);
    }

    #[test]
    fn scrub_removes_every_occurrence_of_the_key() {
        let key = ApiKey::new("sk-abc").unwrap();
        assert_eq!(
            key.scrub("bad key sk-abc (Bearer sk-abc)"),
            "bad key [REDACTED] (Bearer [REDACTED])"
        );
        assert_eq!(key.scrub("nothing here"), "nothing here");
    }
}
