//! TLS on the gRPC port: `[server.tls]` (PEM certificate chain and key, an optional client CA
//! that turns on mutual TLS), loaded once at start, re-read while serving so a rotated
//! certificate is used by new connections without a restart.
//!
//! | module | owns |
//! |---|---|
//! | [`load`] | PEM files to a rustls `ServerConfig` (errors naming the key, the file and the cause); the PEM readers the CLI shares |
//! | [`serve`] | the accept loop (concurrent handshakes with a timeout, `TCP_NODELAY`) feeding tonic, and the reload task |
//!
//! tonic's own `ServerTlsConfig` is fixed once the server starts, so vidgate terminates TLS
//! itself with tokio-rustls and hands tonic finished TLS streams (tonic's `Connected` impl for
//! them keeps the peer's certificates in each request's extensions).

pub mod load;
pub mod serve;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

pub use load::{LoadError, TlsMaterial};
pub use serve::{TlsHandle, TlsServer};

/// How often the certificate, key and client CA files are re-read. Rotation tools
/// (cert-manager, certbot, Vault agents) renew days before expiry, so seconds do not matter;
/// 5 s keeps a rotation visible quickly while reading three small files costs nothing.
pub const DEFAULT_RELOAD_INTERVAL_MS: u64 = 5_000;
/// Shortest accepted re-read interval other than 0 (off): below it the reads are only noise.
pub const MIN_RELOAD_INTERVAL_MS: u64 = 100;
/// How long a client may take to finish its TLS handshake before the connection is closed. A
/// real client needs a few round trips (milliseconds); 10 s leaves room for slow networks while
/// a client that never finishes holds its slot only that long.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Handshakes in progress at once; further connections wait in the kernel's accept backlog until
/// one ends. Bounds the memory a flood of half-open TLS connections can take (with the timeout,
/// such a flood holds at most this many slots for at most that long).
pub const MAX_PENDING_HANDSHAKES: usize = 1_024;

/// The environment variable that sets `server.tls.cert_path` (with [`KEY_ENV`], turns TLS on).
pub const CERT_ENV: &str = "VIDGATE_TLS_CERT";
/// The environment variable that sets `server.tls.key_path`.
pub const KEY_ENV: &str = "VIDGATE_TLS_KEY";
/// The environment variable that sets `server.tls.client_ca_path` (mutual TLS).
pub const CLIENT_CA_ENV: &str = "VIDGATE_TLS_CLIENT_CA";

/// Section `[server.tls]`: present = the gRPC port speaks only TLS.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's certificate first, then intermediates.
    pub cert_path: PathBuf,
    /// PEM private key of the certificate (PKCS#8, PKCS#1 or SEC1). Never logged.
    pub key_path: PathBuf,
    /// PEM certificates of the CA(s) that sign client certificates. Set = mutual TLS: every
    /// client must present a certificate chaining to one of them, or the handshake fails.
    #[serde(default)]
    pub client_ca_path: Option<PathBuf>,
    /// See [`DEFAULT_RELOAD_INTERVAL_MS`]; 0 = never re-read (a restart applies new files).
    #[serde(default = "default_reload_interval_ms")]
    pub reload_interval_ms: u64,
    /// See [`DEFAULT_HANDSHAKE_TIMEOUT_MS`].
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
}

fn default_reload_interval_ms() -> u64 {
    DEFAULT_RELOAD_INTERVAL_MS
}

fn default_handshake_timeout_ms() -> u64 {
    DEFAULT_HANDSHAKE_TIMEOUT_MS
}

impl TlsConfig {
    /// TLS with these files and the default reload and handshake settings.
    pub fn new(cert_path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Self {
        Self {
            cert_path: cert_path.into(),
            key_path: key_path.into(),
            client_ca_path: None,
            reload_interval_ms: DEFAULT_RELOAD_INTERVAL_MS,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
        }
    }

    /// `None` when the files are never re-read.
    pub fn reload_interval(&self) -> Option<Duration> {
        (self.reload_interval_ms > 0).then(|| Duration::from_millis(self.reload_interval_ms))
    }

    /// See [`DEFAULT_HANDSHAKE_TIMEOUT_MS`].
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// Applies [`CERT_ENV`], [`KEY_ENV`] and [`CLIENT_CA_ENV`] over `[server.tls]`: the first
    /// two together turn TLS on when the file has no such section; either alone then is an
    /// error, as is a client CA without TLS.
    pub fn apply_env(
        tls: &mut Option<Self>,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let get = |name| get(name).filter(|v| !v.is_empty());
        let (cert, key, client_ca) = (get(CERT_ENV), get(KEY_ENV), get(CLIENT_CA_ENV));
        match (tls.as_mut(), cert, key) {
            (Some(tls), cert, key) => {
                if let Some(cert) = cert {
                    tls.cert_path = cert.into();
                }
                if let Some(key) = key {
                    tls.key_path = key.into();
                }
            }
            (None, Some(cert), Some(key)) => *tls = Some(Self::new(cert, key)),
            (None, Some(_), None) | (None, None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: CERT_ENV,
                    message: format!(
                        "{CERT_ENV} and {KEY_ENV} turn TLS on together; only one of them is set and the config file has no [server.tls]"
                    ),
                });
            }
            (None, None, None) => {}
        }
        if let Some(ca) = client_ca {
            match tls.as_mut() {
                Some(tls) => tls.client_ca_path = Some(ca.into()),
                None => {
                    return Err(ConfigError::Invalid {
                        key: CLIENT_CA_ENV,
                        message: format!(
                            "client certificates need TLS: set {CERT_ENV} and {KEY_ENV} (or [server.tls]) too"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks values that parse but cannot work (the files are checked when loaded).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        if self.reload_interval_ms != 0 && self.reload_interval_ms < MIN_RELOAD_INTERVAL_MS {
            return invalid(
                "server.tls.reload_interval_ms",
                format!(
                    "must be 0 (never re-read the files) or at least {MIN_RELOAD_INTERVAL_MS} (got {})",
                    self.reload_interval_ms
                ),
            );
        }
        if self.handshake_timeout_ms == 0 {
            return invalid(
                "server.tls.handshake_timeout_ms",
                "must be at least 1 (milliseconds)".into(),
            );
        }
        for (key, path) in [
            ("server.tls.cert_path", Some(&self.cert_path)),
            ("server.tls.key_path", Some(&self.key_path)),
            ("server.tls.client_ca_path", self.client_ca_path.as_ref()),
        ] {
            if path.is_some_and(|p| p.as_os_str().is_empty()) {
                return invalid(key, "must name a file".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn cert_and_key_variables_turn_tls_on_together_with_defaults() {
        let mut tls = None;
        TlsConfig::apply_env(&mut tls, env(&[(CERT_ENV, "/c.pem"), (KEY_ENV, "/k.pem")])).unwrap();
        let tls = tls.unwrap();
        assert_eq!(tls, TlsConfig::new("/c.pem", "/k.pem"));
        assert_eq!(tls.reload_interval(), Some(Duration::from_secs(5)));
        tls.validate().unwrap();
    }

    #[test]
    fn one_of_cert_and_key_alone_or_a_client_ca_without_tls_is_refused_naming_the_variables() {
        for pairs in [
            &[(CERT_ENV, "/c.pem")][..],
            &[(KEY_ENV, "/k.pem")][..],
            &[(CLIENT_CA_ENV, "/ca.pem")][..],
        ] {
            let e = TlsConfig::apply_env(&mut None, env(pairs))
                .unwrap_err()
                .to_string();
            assert!(e.contains(CERT_ENV) && e.contains(KEY_ENV), "{e}");
        }
    }

    #[test]
    fn variables_override_the_file_section_one_by_one() {
        let mut tls = Some(TlsConfig::new("/file/c.pem", "/file/k.pem"));
        TlsConfig::apply_env(
            &mut tls,
            env(&[(KEY_ENV, "/env/k.pem"), (CLIENT_CA_ENV, "/env/ca.pem")]),
        )
        .unwrap();
        let tls = tls.unwrap();
        assert_eq!(tls.cert_path, PathBuf::from("/file/c.pem"));
        assert_eq!(tls.key_path, PathBuf::from("/env/k.pem"));
        assert_eq!(tls.client_ca_path, Some(PathBuf::from("/env/ca.pem")));
    }

    #[test]
    fn reload_interval_below_the_minimum_and_a_zero_handshake_timeout_are_named() {
        let mut tls = TlsConfig::new("/c.pem", "/k.pem");
        tls.reload_interval_ms = 10;
        let e = tls.validate().unwrap_err().to_string();
        assert!(e.contains("server.tls.reload_interval_ms"), "{e}");
        tls.reload_interval_ms = 0;
        tls.validate().unwrap();
        assert_eq!(tls.reload_interval(), None);
        tls.handshake_timeout_ms = 0;
        let e = tls.validate().unwrap_err().to_string();
        assert!(e.contains("server.tls.handshake_timeout_ms"), "{e}");
    }
}
