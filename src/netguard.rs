//! The one guard against outbound requests to internal addresses (SSRF): every URL that
//! somebody else hands vidgate (upstream's `last_frame_url`, a redirect, later a webhook URL)
//! is fetched only if it leads to a public address.
//!
//! - An IP literal is checked directly; a host name is checked after DNS resolution, at each
//!   connection, by [`GuardedResolver`] (so a name that resolves to a public address at the
//!   first check and to `127.0.0.1` at the second does not get through).
//! - Refused: loopback, private (RFC 1918, unique local `fc00::/7`), link-local (cloud metadata
//!   `169.254.169.254` and `fe80::/10`), shared address space (`100.64.0.0/10`, Alibaba's
//!   metadata `100.100.100.200`), unspecified, broadcast, multicast, documentation and
//!   benchmarking ranges, and IPv4 written as IPv6 (`::ffff:127.0.0.1`, NAT64) by the address
//!   it carries.
//! - One origin is trusted as configured: the operator's own upstream base URL (which is often
//!   internal in tests and in on-premise setups). Its host *name* resolves unchecked; another
//!   origin on the same name (another port) is checked like any other URL.
//! - Networks the operator lists in `allowed_networks` (CIDR) are allowed although internal:
//!   an on-premise object store, say. Empty by default.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use url::{Host, Origin, Url};

/// Why a URL or an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// Only `http` and `https` are fetched.
    #[error("{what} has scheme {scheme:?}; only http and https are fetched")]
    Scheme {
        /// What the URL was (e.g. "last_frame_url").
        what: &'static str,
        /// The scheme found.
        scheme: String,
    },
    /// The URL has no host.
    #[error("{what} has no host")]
    NoHost {
        /// What the URL was.
        what: &'static str,
    },
    /// The address is internal.
    #[error(
        "{what} leads to {addr}, a {kind} address; vidgate fetches only public addresses (allow a network with upstream.allowed_networks)"
    )]
    Internal {
        /// What the URL was.
        what: &'static str,
        /// The address (host name and resolved address, or the literal).
        addr: String,
        /// Which kind of internal address.
        kind: &'static str,
    },
    /// The name did not resolve.
    #[error("{what}: the host {host} did not resolve: {detail}")]
    Resolve {
        /// What the URL was.
        what: &'static str,
        /// The host name.
        host: String,
        /// The resolver's words.
        detail: String,
    },
}

/// Which internal range `ip` is in, if any.
pub fn internal_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_kind_v4(v4),
        IpAddr::V6(v6) => internal_kind_v6(v6),
    }
}

fn internal_kind_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() || a == 0 {
        "unspecified (\"this network\")"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        "link-local (cloud metadata)"
    } else if a == 100 && (64..128).contains(&b) {
        "shared address space (carrier NAT, cloud metadata)"
    } else if ip.is_broadcast() {
        "broadcast"
    } else if ip.is_multicast() {
        "multicast"
    } else if ip.is_documentation() {
        "documentation"
    } else if a == 198 && (b == 18 || b == 19) {
        "benchmarking"
    } else if a == 192 && b == 0 && c == 0 {
        "IETF protocol assignment"
    } else if a >= 240 {
        "reserved"
    } else {
        return None;
    })
}

fn internal_kind_v6(ip: Ipv6Addr) -> Option<&'static str> {
    // IPv4 carried in IPv6: judged by the IPv4 address (`::ffff:127.0.0.1` is loopback).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return internal_kind_v4(v4);
    }
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = segments;
        return internal_kind_v4(Ipv4Addr::from(((hi as u32) << 16) | lo as u32));
    }
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() {
        "unspecified"
    } else if segments[0] & 0xfe00 == 0xfc00 {
        "unique local (private)"
    } else if segments[0] & 0xffc0 == 0xfe80 {
        "link-local"
    } else if ip.is_multicast() {
        "multicast"
    } else if segments[0] == 0x2001 && segments[1] == 0x0db8 {
        "documentation"
    } else if segments[..5] == [0, 0, 0, 0, 0] {
        // `::a.b.c.d` (deprecated IPv4-compatible): judged by the IPv4 address.
        let [.., hi, lo] = segments;
        return internal_kind_v4(Ipv4Addr::from(((hi as u32) << 16) | lo as u32));
    } else {
        return None;
    })
}

/// Echoed text (a config entry, a scheme, a host) cut to a readable length.
fn echo(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}... ({} characters)", &text[..cut], text.chars().count()),
    }
}

/// The guard: the trusted origin and the allowed networks. Cheap to share (`Arc`).
#[derive(Debug, Clone)]
pub struct AddressGuard {
    trusted: Option<Origin>,
    trusted_host: Option<String>,
    allowed: Vec<IpNet>,
}

/// Why `allowed_networks` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{field}[{index}] = {value:?} is not a network in CIDR notation (e.g. \"10.1.0.0/16\" or \"fd00::/8\"): {detail}"
)]
pub struct NetworkParseError {
    /// The config key.
    pub field: &'static str,
    /// The entry's position.
    pub index: usize,
    /// The entry (short: a config value).
    pub value: String,
    /// The parser's words.
    pub detail: String,
}

impl AddressGuard {
    /// A guard trusting `trusted` (the configured upstream base URL's origin, when given) and
    /// the `allowed` networks.
    pub fn new(trusted: Option<&Url>, allowed: Vec<IpNet>) -> Self {
        Self {
            trusted: trusted.map(Url::origin),
            trusted_host: trusted
                .and_then(Url::host_str)
                .map(|h| h.to_ascii_lowercase()),
            allowed,
        }
    }

    /// Parses `allowed_networks` entries (CIDR; a bare address means just that address).
    pub fn parse_networks(
        field: &'static str,
        entries: &[String],
    ) -> Result<Vec<IpNet>, NetworkParseError> {
        entries
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                let text = entry.trim();
                text.parse::<IpNet>()
                    .or_else(|e| text.parse::<IpAddr>().map(IpNet::from).map_err(|_| e))
                    .map_err(|e| NetworkParseError {
                        field,
                        index,
                        value: echo(entry),
                        detail: e.to_string(),
                    })
            })
            .collect()
    }

    /// Whether `url` is on the trusted origin.
    pub fn is_trusted(&self, url: &Url) -> bool {
        self.trusted.as_ref().is_some_and(|t| *t == url.origin())
    }

    /// Whether connecting to `ip` is allowed (public, or in an allowed network).
    pub fn check_ip(&self, what: &'static str, host: &str, ip: IpAddr) -> Result<(), GuardError> {
        let Some(kind) = internal_kind(ip) else {
            return Ok(());
        };
        if self.allowed.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        let addr = if host.is_empty() || host == ip.to_string() {
            ip.to_string()
        } else {
            format!("{host} ({ip})")
        };
        Err(GuardError::Internal { what, addr, kind })
    }

    /// The checks that need no DNS: the scheme, and an IP-literal host. A host name is checked
    /// when it resolves ([`GuardedResolver`]), except a name of the trusted origin's host on
    /// another origin, which [`AddressGuard::check_url`] resolves itself.
    pub fn check_url_static(&self, what: &'static str, url: &Url) -> Result<(), GuardError> {
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(GuardError::Scheme {
                what,
                scheme: echo(url.scheme()),
            });
        }
        if self.is_trusted(url) {
            return Ok(());
        }
        match url.host() {
            None => Err(GuardError::NoHost { what }),
            Some(Host::Ipv4(ip)) => self.check_ip(what, "", IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => self.check_ip(what, "", IpAddr::V6(ip)),
            Some(Host::Domain(_)) => Ok(()),
        }
    }

    /// Whether `url` names the trusted host by name but is another origin: the resolver lets
    /// that name through, so the caller must check its addresses itself.
    fn is_trusted_name_elsewhere(&self, url: &Url) -> bool {
        matches!(url.host(), Some(Host::Domain(d)) if self.trusted_host.as_deref() == Some(&d.to_ascii_lowercase()))
            && !self.is_trusted(url)
    }

    /// Every check of `url` before a request: [`AddressGuard::check_url_static`], and for a
    /// name of the trusted host on another origin, its resolved addresses.
    pub async fn check_url(&self, what: &'static str, url: &Url) -> Result<(), GuardError> {
        self.check_url_static(what, url)?;
        if self.is_trusted_name_elsewhere(url) {
            let host = url.host_str().unwrap_or_default().to_owned();
            let port = url.port_or_known_default().unwrap_or(80);
            let addrs = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| GuardError::Resolve {
                    what,
                    host: echo(&host),
                    detail: e.to_string(),
                })?;
            for addr in addrs {
                self.check_ip(what, &host, addr.ip())?;
            }
        }
        Ok(())
    }

    /// The check of a redirect's target (no DNS here: the resolver checks names). A redirect to
    /// another origin on the trusted host's name is refused outright: it cannot be resolved
    /// from inside the redirect policy, and a real upstream has no reason for it.
    pub fn check_redirect(&self, url: &Url) -> Result<(), GuardError> {
        let what = "a redirect";
        self.check_url_static(what, url)?;
        if self.is_trusted_name_elsewhere(url) {
            return Err(GuardError::Internal {
                what,
                addr: echo(url.origin().ascii_serialization().as_str()),
                kind: "another port of the upstream's own host",
            });
        }
        Ok(())
    }
}

/// A DNS resolver for reqwest that refuses names resolving to internal addresses (all of them
/// are checked: one internal address refuses the name), except the trusted host's own name.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    guard: Arc<AddressGuard>,
}

impl GuardedResolver {
    /// A resolver applying `guard`.
    pub fn new(guard: Arc<AddressGuard>) -> Self {
        Self { guard }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = Arc::clone(&self.guard);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let trusted = guard.trusted_host.as_deref() == Some(&host.to_ascii_lowercase());
            if !trusted {
                for addr in &addrs {
                    guard
                        .check_ip("the host", &host, addr.ip())
                        .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
                }
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_ranges_are_named_and_public_ones_pass() {
        for (addr, kind) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local (cloud metadata)"),
            (
                "100.100.100.200",
                "shared address space (carrier NAT, cloud metadata)",
            ),
            ("0.0.0.0", "unspecified (\"this network\")"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.1", "multicast"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00:ec2::254", "unique local (private)"),
            ("fe80::1", "link-local"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local (cloud metadata)"),
            ("64:ff9b::a00:1", "private"),
            ("::127.0.0.1", "loopback"),
        ] {
            assert_eq!(internal_kind(ip(addr)), Some(kind), "{addr}");
        }
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "172.32.0.1",
            "100.128.0.1",
        ] {
            assert_eq!(internal_kind(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn ip_literals_are_refused_unless_trusted_or_allowed() {
        let base = Url::parse("http://127.0.0.1:8080/api/v1").unwrap();
        let guard = AddressGuard::new(Some(&base), vec![]);
        let same = Url::parse("http://127.0.0.1:8080/x.png").unwrap();
        assert_eq!(guard.check_url_static("u", &same), Ok(()));
        let admin = Url::parse("http://127.0.0.1:9464/metrics").unwrap();
        let err = guard
            .check_url_static("last_frame_url", &admin)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("last_frame_url leads to 127.0.0.1, a loopback address"),
            "{err}"
        );
        let metadata = Url::parse("http://[::ffff:a9fe:a9fe]/latest").unwrap();
        assert!(guard.check_url_static("u", &metadata).is_err());
        let allowed = AddressGuard::new(
            Some(&base),
            AddressGuard::parse_networks("n", &["127.0.0.0/8".into()]).unwrap(),
        );
        assert_eq!(allowed.check_url_static("u", &admin), Ok(()));
        let file = Url::parse("file:///etc/passwd").unwrap();
        assert!(matches!(
            guard.check_url_static("u", &file),
            Err(GuardError::Scheme { .. })
        ));
    }

    #[test]
    fn networks_parse_as_cidr_or_bare_addresses_and_errors_name_the_entry() {
        let nets = AddressGuard::parse_networks("f", &["10.0.0.0/8".into(), "::1".into()]).unwrap();
        assert_eq!(nets.len(), 2);
        let err = AddressGuard::parse_networks(
            "upstream.allowed_networks",
            &["10.0.0.0/8".into(), "nope".into()],
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("upstream.allowed_networks[1] = \"nope\" is not a network"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_trusted_name_on_another_port_is_resolved_and_checked() {
        let base = Url::parse("http://localhost:8080/api/v1").unwrap();
        let guard = AddressGuard::new(Some(&base), vec![]);
        let same = Url::parse("http://localhost:8080/videos/x/content").unwrap();
        assert_eq!(guard.check_url("u", &same).await, Ok(()));
        let other = Url::parse("http://localhost:9464/metrics").unwrap();
        assert!(matches!(
            guard.check_url("u", &other).await,
            Err(GuardError::Internal { .. })
        ));
        assert!(guard.check_redirect(&other).is_err());
    }
}
