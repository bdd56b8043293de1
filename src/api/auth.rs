//! Bearer tokens to tenants. The config holds SHA-256 hashes of tokens, never the tokens.

use std::collections::HashMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

use super::error::ApiError;
// Re-exported: the tenant is the application layer's notion; here is where a token names it.
pub use crate::domain::{Tenant, valid_tenant};

/// The tenant every caller gets in `none` mode (local use and the demo only).
pub const DEFAULT_NO_AUTH_TENANT: &str = "local";

/// How callers prove who they are.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Bearer tokens from `[[auth.tokens]]` (the default).
    #[default]
    Tokens,
    /// No authentication: every caller is tenant `no_auth_tenant`. Logged loudly at start.
    None,
}

/// One accepted token.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The tenant the token belongs to.
    pub tenant: String,
    /// Hex SHA-256 of the token (`printf %s "$TOKEN" | sha256sum`).
    pub sha256: String,
}

/// Section `[auth]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// See [`AuthMode`].
    pub mode: AuthMode,
    /// Accepted tokens.
    pub tokens: Vec<TokenEntry>,
    /// Tenant of every caller in `none` mode.
    pub no_auth_tenant: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Tokens,
            tokens: Vec::new(),
            no_auth_tenant: DEFAULT_NO_AUTH_TENANT.to_owned(),
        }
    }
}

/// Why an auth section was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthConfigError {
    /// Not 64 hex digits.
    #[error(
        "auth.tokens[{index}].sha256 must be 64 hex digits (the SHA-256 of the token), not the token itself"
    )]
    BadHash {
        /// Position in the list.
        index: usize,
    },
    /// A tenant name that cannot be an AMQP routing-key word.
    #[error(
        "auth.tokens[{index}].tenant {tenant:?} must be 1-64 characters of a-z, A-Z, 0-9, '-' or '_'"
    )]
    BadTenant {
        /// Position in the list.
        index: usize,
        /// The name.
        tenant: String,
    },
    /// The same hash twice.
    #[error("auth.tokens[{index}] repeats a token hash already listed")]
    Duplicate {
        /// Position in the list.
        index: usize,
    },
    /// Tokens mode with no tokens would refuse everyone.
    #[error(
        "auth.mode = \"tokens\" but auth.tokens is empty: add a token, or set auth.mode = \"none\" for local use"
    )]
    NoTokens,
}

/// Maps bearer tokens to tenants.
#[derive(Debug, Clone)]
pub struct Authenticator {
    mode: AuthMode,
    by_hash: HashMap<[u8; 32], String>,
    no_auth_tenant: String,
}

impl Authenticator {
    /// Checks and loads the auth section.
    pub fn new(config: &AuthConfig) -> Result<Self, AuthConfigError> {
        let mut by_hash = HashMap::new();
        for (index, entry) in config.tokens.iter().enumerate() {
            let bytes =
                hex::decode(entry.sha256.trim()).map_err(|_| AuthConfigError::BadHash { index })?;
            let hash: [u8; 32] = bytes
                .try_into()
                .map_err(|_| AuthConfigError::BadHash { index })?;
            if !valid_tenant(&entry.tenant) {
                return Err(AuthConfigError::BadTenant {
                    index,
                    tenant: entry.tenant.clone(),
                });
            }
            if by_hash.insert(hash, entry.tenant.clone()).is_some() {
                return Err(AuthConfigError::Duplicate { index });
            }
        }
        if config.mode == AuthMode::Tokens && by_hash.is_empty() {
            return Err(AuthConfigError::NoTokens);
        }
        if config.mode == AuthMode::None && !valid_tenant(&config.no_auth_tenant) {
            return Err(AuthConfigError::BadTenant {
                index: 0,
                tenant: config.no_auth_tenant.clone(),
            });
        }
        Ok(Self {
            mode: config.mode,
            by_hash,
            no_auth_tenant: config.no_auth_tenant.clone(),
        })
    }

    /// The mode in force.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// The tenant of a gRPC call.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Tenant, ApiError> {
        if self.mode == AuthMode::None {
            return Ok(Tenant(self.no_auth_tenant.clone()));
        }
        // Two values are refused, not resolved by taking the first: which one a proxy or a
        // client library meant is a guess.
        let count = metadata.get_all("authorization").iter().count();
        if count > 1 {
            return Err(ApiError::AmbiguousCredentials(count));
        }
        let value = metadata
            .get("authorization")
            .ok_or(ApiError::MissingCredentials)?;
        let text = value.to_str().map_err(|_| ApiError::InvalidCredentials)?;
        // The scheme is case-insensitive (RFC 7235 section 2.1): `Bearer`, `bearer`, `BEARER`.
        let token = text
            .trim_start()
            .split_once([' ', '\t'])
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::MissingCredentials)?;
        self.tenant_of(token).ok_or(ApiError::InvalidCredentials)
    }

    /// The tenant of a token, if any.
    pub fn tenant_of(&self, token: &str) -> Option<Tenant> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&hash).map(|t| Tenant(t.clone()))
    }
}

/// Hex SHA-256 of a token, as `[[auth.tokens]] sha256` wants it.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(&AuthConfig {
            mode: AuthMode::Tokens,
            tokens: vec![TokenEntry {
                tenant: "acme".into(),
                sha256: token_hash("tok-acme"),
            }],
            no_auth_tenant: "local".into(),
        })
        .unwrap()
    }

    fn md(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().unwrap());
        m
    }

    #[test]
    fn known_token_maps_to_its_tenant_and_others_are_refused() {
        let a = auth();
        assert_eq!(
            a.authenticate(&md("Bearer tok-acme")).unwrap(),
            Tenant("acme".into())
        );
        assert!(matches!(
            a.authenticate(&md("Bearer nope")),
            Err(ApiError::InvalidCredentials)
        ));
        assert!(matches!(
            a.authenticate(&md("Basic abc")),
            Err(ApiError::MissingCredentials)
        ));
        assert!(matches!(
            a.authenticate(&MetadataMap::new()),
            Err(ApiError::MissingCredentials)
        ));
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_two_values_are_refused() {
        let a = auth();
        for spelling in [
            "Bearer tok-acme",
            "bearer tok-acme",
            "BEARER tok-acme",
            "bEaReR  tok-acme",
        ] {
            assert_eq!(
                a.authenticate(&md(spelling)).unwrap(),
                Tenant("acme".into()),
                "{spelling}"
            );
        }
        assert!(matches!(
            a.authenticate(&md("Bearertok-acme")),
            Err(ApiError::MissingCredentials)
        ));
        let mut two = md("Bearer tok-acme");
        two.append("authorization", "Bearer tok-acme".parse().unwrap());
        let error = a.authenticate(&two).unwrap_err();
        assert!(
            matches!(error, ApiError::AmbiguousCredentials(2)),
            "{error:?}"
        );
        assert!(error.to_string().contains("exactly one"), "{error}");
    }

    #[test]
    fn config_refuses_plain_tokens_bad_tenants_duplicates_and_empty_lists() {
        let bad = |tokens: Vec<TokenEntry>| {
            Authenticator::new(&AuthConfig {
                tokens,
                ..AuthConfig::default()
            })
            .unwrap_err()
        };
        assert_eq!(
            bad(vec![TokenEntry {
                tenant: "a".into(),
                sha256: "tok-acme".into()
            }]),
            AuthConfigError::BadHash { index: 0 }
        );
        assert!(matches!(
            bad(vec![TokenEntry {
                tenant: "a.b".into(),
                sha256: token_hash("x")
            }]),
            AuthConfigError::BadTenant { .. }
        ));
        let e = TokenEntry {
            tenant: "a".into(),
            sha256: token_hash("x"),
        };
        assert_eq!(
            bad(vec![e.clone(), e]),
            AuthConfigError::Duplicate { index: 1 }
        );
        assert_eq!(bad(vec![]), AuthConfigError::NoTokens);
    }

    #[test]
    fn none_mode_gives_everyone_the_local_tenant() {
        let a = Authenticator::new(&AuthConfig {
            mode: AuthMode::None,
            ..AuthConfig::default()
        })
        .unwrap();
        assert_eq!(
            a.authenticate(&MetadataMap::new()).unwrap(),
            Tenant("local".into())
        );
    }
}
