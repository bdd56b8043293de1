//! Where a webhook may be sent: the rules a URL must meet when an endpoint (or a job's
//! callback) is created, and again before each delivery, since DNS can change in between.
//!
//! - `https` only; plain `http` when `allow_http` is set (tests, a demo, a receiver on the
//!   same private network behind TLS termination);
//! - no user information (`https://user:pass@host`): credentials do not belong in a URL that
//!   is listed and logged; at most [`MAX_URL_BYTES`];
//! - every address the host resolves to is public: loopback, private, link-local (cloud
//!   metadata `169.254.169.254`), shared and other internal ranges are refused (the ranges are
//!   [`crate::netguard`]'s, the one guard of every outbound request), unless
//!   `allow_private_targets` is set. The connection itself is made through the same guard
//!   ([`crate::netguard::GuardedResolver`]), so a name that resolves elsewhere between the
//!   check and the request is still refused.

use std::net::IpAddr;

use url::{Host, Url};

use crate::netguard;

/// The longest webhook URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

/// Why a webhook URL is refused; every message names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Longer than [`MAX_URL_BYTES`].
    #[error("{field} is {len} bytes long; at most {MAX_URL_BYTES} are accepted")]
    TooLong {
        /// The request field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// Not a URL.
    #[error("{field} is not an absolute URL ({detail}); e.g. https://hooks.example.com/vidgate")]
    NotAUrl {
        /// The request field.
        field: &'static str,
        /// The parser's words.
        detail: String,
    },
    /// Not `https` (or `http` where allowed).
    #[error(
        "{field} has scheme {scheme:?}; webhooks are sent over https{}",
        if *allow_http { " or http" } else { " only (plain http needs [webhooks] allow_http = true)" }
    )]
    Scheme {
        /// The request field.
        field: &'static str,
        /// The scheme found.
        scheme: String,
        /// Whether http was allowed.
        allow_http: bool,
    },
    /// `user:password@` in the URL.
    #[error(
        "{field} carries user information; credentials do not belong in a webhook URL (verify vidgate's signature instead)"
    )]
    Credentials {
        /// The request field.
        field: &'static str,
    },
    /// No host.
    #[error("{field} has no host")]
    NoHost {
        /// The request field.
        field: &'static str,
    },
    /// The host is, or resolves to, an internal address.
    #[error(
        "{field} leads to {addr}, a {kind} address; webhooks go to public addresses only (set [webhooks] allow_private_targets = true to allow internal ones)"
    )]
    Internal {
        /// The request field.
        field: &'static str,
        /// The host and the address.
        addr: String,
        /// Which kind of internal address.
        kind: &'static str,
    },
    /// The host did not resolve (now: it may later; creation refuses it).
    #[error("{field}: the host {host} did not resolve ({detail})")]
    Resolve {
        /// The request field.
        field: &'static str,
        /// The host.
        host: String,
        /// The resolver's words.
        detail: String,
    },
}

impl TargetError {
    /// The request field the refusal is about.
    pub fn field(&self) -> &'static str {
        match self {
            Self::TooLong { field, .. }
            | Self::NotAUrl { field, .. }
            | Self::Scheme { field, .. }
            | Self::Credentials { field }
            | Self::NoHost { field }
            | Self::Internal { field, .. }
            | Self::Resolve { field, .. } => field,
        }
    }
}

/// The rules in force (`[webhooks]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    /// Plain `http` URLs are accepted.
    pub allow_http: bool,
    /// Internal addresses are accepted (tests, the demo, a receiver on the same network).
    pub allow_private_targets: bool,
}

impl TargetPolicy {
    /// The rules that need no DNS: length, syntax, scheme, user information, an IP-literal
    /// host. `field` names the request field in errors.
    pub fn parse(&self, field: &'static str, text: &str) -> Result<Url, TargetError> {
        let text = text.trim();
        if text.len() > MAX_URL_BYTES {
            return Err(TargetError::TooLong {
                field,
                len: text.len(),
            });
        }
        let url = Url::parse(text).map_err(|e| TargetError::NotAUrl {
            field,
            detail: e.to_string(),
        })?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            other => {
                return Err(TargetError::Scheme {
                    field,
                    scheme: other.chars().take(32).collect(),
                    allow_http: self.allow_http,
                });
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(TargetError::Credentials { field });
        }
        match url.host() {
            None => return Err(TargetError::NoHost { field }),
            Some(Host::Domain("")) => return Err(TargetError::NoHost { field }),
            Some(Host::Ipv4(ip)) => self.check_ip(field, "", IpAddr::V4(ip))?,
            Some(Host::Ipv6(ip)) => self.check_ip(field, "", IpAddr::V6(ip))?,
            Some(Host::Domain(_)) => {}
        }
        Ok(url)
    }

    /// Every rule: [`TargetPolicy::parse`], then every address the host resolves to.
    pub async fn check(&self, field: &'static str, text: &str) -> Result<Url, TargetError> {
        let url = self.parse(field, text)?;
        if self.allow_private_targets {
            return Ok(url);
        }
        if let Some(Host::Domain(host)) = url.host() {
            let port = url.port_or_known_default().unwrap_or(443);
            let addrs =
                tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|e| TargetError::Resolve {
                        field,
                        host: host.chars().take(253).collect(),
                        detail: e.to_string(),
                    })?;
            for addr in addrs {
                self.check_ip(field, host, addr.ip())?;
            }
        }
        Ok(url)
    }

    fn check_ip(&self, field: &'static str, host: &str, ip: IpAddr) -> Result<(), TargetError> {
        if self.allow_private_targets {
            return Ok(());
        }
        match netguard::internal_kind(ip) {
            None => Ok(()),
            Some(kind) => Err(TargetError::Internal {
                field,
                addr: if host.is_empty() {
                    ip.to_string()
                } else {
                    format!("{host} ({ip})")
                },
                kind,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: TargetPolicy = TargetPolicy {
        allow_http: false,
        allow_private_targets: false,
    };

    #[tokio::test]
    async fn internal_targets_are_refused_naming_the_rule_unless_allowed() {
        for (url, kind) in [
            ("https://127.0.0.1/hook", "loopback"),
            ("https://10.1.2.3/hook", "private"),
            ("https://169.254.169.254/latest/meta-data", "link-local"),
            ("https://[::1]/hook", "loopback"),
            ("https://[::ffff:10.0.0.1]/hook", "private"),
            ("https://100.100.100.200/", "shared"),
            // A name that resolves to loopback is refused by its address.
            ("https://localhost:8443/hook", "loopback"),
        ] {
            let e = STRICT.check("url", url).await.unwrap_err();
            let text = e.to_string();
            assert!(
                matches!(e, TargetError::Internal { .. })
                    && text.contains(kind)
                    && text.contains("allow_private_targets"),
                "{url}: {text}"
            );
        }
        let open = TargetPolicy {
            allow_http: true,
            allow_private_targets: true,
        };
        for url in [
            "http://127.0.0.1:9000/hook",
            "https://10.1.2.3/hook",
            "http://localhost/x",
        ] {
            assert!(open.check("url", url).await.is_ok(), "{url}");
        }
    }

    #[test]
    fn the_scheme_the_credentials_and_the_length_are_checked_first() {
        let e = STRICT
            .parse("url", "http://hooks.example.com/x")
            .unwrap_err();
        assert!(e.to_string().contains("allow_http"), "{e}");
        let e = STRICT
            .parse("url", "ftp://hooks.example.com/x")
            .unwrap_err();
        assert!(matches!(e, TargetError::Scheme { .. }), "{e}");
        let e = STRICT
            .parse("callback_url", "https://user:pw@hooks.example.com/x")
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("callback_url carries user information"),
            "{e}"
        );
        assert!(!e.to_string().contains("pw"));
        let e = STRICT.parse("url", "hooks.example.com/x").unwrap_err();
        assert!(matches!(e, TargetError::NotAUrl { .. }), "{e}");
        let long = format!("https://hooks.example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert!(matches!(
            STRICT.parse("url", &long),
            Err(TargetError::TooLong { .. })
        ));
        let url = STRICT
            .parse("url", " https://hooks.example.com/vidgate?team=a ")
            .unwrap();
        assert_eq!(url.as_str(), "https://hooks.example.com/vidgate?team=a");
        let http = TargetPolicy {
            allow_http: true,
            ..STRICT
        };
        assert!(http.parse("url", "http://hooks.example.com/x").is_ok());
        // http allowed does not mean internal allowed.
        assert!(matches!(
            http.parse("url", "http://192.168.1.1/x"),
            Err(TargetError::Internal { .. })
        ));
    }
}
