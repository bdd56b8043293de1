//! Section `[amqp]`: where the broker is, the names of the topology (API.md "AMQP" defaults),
//! how producers map to tenants, and the bounds of the intake and the relay.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::AMQPValue;
use serde::Deserialize;

use crate::domain::{Tenant, valid_tenant};

/// The environment variable that sets `amqp.url` (and so turns the AMQP side on).
pub const URL_ENV: &str = "VIDGATE_AMQP_URL";
/// API.md: the exchange producers publish job messages to.
pub const DEFAULT_JOBS_EXCHANGE: &str = "vidgate.jobs";
/// API.md: the durable quorum queue vidgate consumes.
pub const DEFAULT_JOBS_QUEUE: &str = "vidgate.jobs";
/// The binding of the jobs queue to the jobs exchange (a topic exchange): every routing key.
pub const DEFAULT_JOBS_BINDING_KEY: &str = "#";
/// API.md: where invalid messages (ours) and poison messages (the broker's) go.
pub const DEFAULT_DEAD_EXCHANGE: &str = "vidgate.dead";
/// API.md: the queue holding dead letters.
pub const DEFAULT_DEAD_QUEUE: &str = "vidgate.jobs.dead";
/// API.md: the topic exchange of job events.
pub const DEFAULT_EVENTS_EXCHANGE: &str = "vidgate.events";
/// Prefix of the client-provided connection names (`<name>-intake`, `<name>-relay`), as shown
/// by `rabbitmqctl list_connections name` and the management UI.
pub const DEFAULT_CONNECTION_NAME: &str = "vidgate";
/// Unacknowledged deliveries the broker may push to vidgate at once (`basic.qos`). The
/// consumer's buffer inside lapin is unbounded, so this is the intake's only back-pressure and
/// its concurrency: each delivery in flight is one create waiting for the store's group commit.
/// Measured with `cargo bench --bench amqp_intake` (2 cores, 5000 messages): the intake rate
/// is the same from 32 to 512 (2.7-3.0k msg/s, bounded by the store's writer, not by the
/// window), so the default is the smaller end that still fills group commits: memory held is at
/// most `prefetch` messages (up to `max_message_bytes` each; lower it when bodies carry images).
pub const DEFAULT_PREFETCH: u16 = 64;
/// The largest prefetch accepted. Beyond this, deliveries mostly wait in memory for the writer.
pub const MAX_PREFETCH: u16 = 4096;
/// Deliveries of one message before the broker dead-letters it (`x-delivery-limit`): a message
/// that keeps failing transiently (store down) ends in the dead-letter queue instead of looping
/// for ever. 20 rides out a store outage of several requeue rounds.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;
/// API.md: the same limit as gRPC's `CreateVideo` (12 MiB), so a 10 MiB image gets a field error.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 12 * 1024 * 1024;
/// Name of the relay's durable cursor in the store.
pub const DEFAULT_RELAY_CURSOR: &str = "amqp.events";
/// Published-but-unconfirmed events the relay allows at once; past this it waits for confirms.
pub const DEFAULT_RELAY_WINDOW: usize = 256;
/// The largest relay window accepted.
pub const MAX_RELAY_WINDOW: usize = 8192;
/// First pause of the supervisor (and of lapin's own reconnect attempts) after a failure.
pub const DEFAULT_RECONNECT_MIN_MS: u64 = 200;
/// Longest pause between reconnect attempts: the broker is retried at least this often for as
/// long as it is down (the supervisor never gives up; each wait is bounded instead).
pub const DEFAULT_RECONNECT_MAX_MS: u64 = 15_000;
/// Reconnect attempts lapin's auto-recovery makes before it gives up and the supervisor
/// rebuilds the connection, channels, QoS, topology and consumer from scratch.
pub const DEFAULT_RECOVERY_ATTEMPTS: usize = 5;
/// Longest wait for a connection (TCP + AMQP handshake) before the attempt counts as failed.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Longest wait for one publisher confirm (dead letters, rejections, events). A broker that
/// does not confirm in this time is treated as failed: the message is retried.
pub const DEFAULT_CONFIRM_TIMEOUT_MS: u64 = 30_000;

/// Section `[amqp]`. Without a `url` (and without `VIDGATE_AMQP_URL`) vidgate runs without a
/// broker.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:5672/%2f` (`amqps://` with the `amqp-tls` cargo feature).
    pub url: Option<String>,
    /// See [`DEFAULT_CONNECTION_NAME`].
    pub connection_name: String,
    /// Consume job messages (the intake).
    pub intake: bool,
    /// Publish job events (the outbox relay).
    pub relay: bool,
    /// See [`DEFAULT_JOBS_EXCHANGE`].
    pub jobs_exchange: String,
    /// See [`DEFAULT_JOBS_QUEUE`].
    pub jobs_queue: String,
    /// See [`DEFAULT_JOBS_BINDING_KEY`].
    pub jobs_binding_key: String,
    /// See [`DEFAULT_DEAD_EXCHANGE`].
    pub dead_exchange: String,
    /// See [`DEFAULT_DEAD_QUEUE`].
    pub dead_queue: String,
    /// See [`DEFAULT_EVENTS_EXCHANGE`].
    pub events_exchange: String,
    /// See [`DEFAULT_PREFETCH`].
    pub prefetch: u16,
    /// See [`DEFAULT_DELIVERY_LIMIT`].
    pub delivery_limit: u32,
    /// See [`DEFAULT_MAX_MESSAGE_BYTES`].
    pub max_message_bytes: usize,
    /// Producers by broker user: the `user_id` property (which RabbitMQ checks against the
    /// connection's user) mapped to a tenant.
    pub users: BTreeMap<String, String>,
    /// The tenant of messages without a mapped `user_id` (one tenant for the whole queue).
    pub tenant: Option<String>,
    /// A header naming the tenant, trusted only when set here (e.g. behind a gateway that
    /// sets it); by default no header is trusted.
    pub tenant_header: Option<String>,
    /// See [`DEFAULT_RELAY_CURSOR`].
    pub relay_cursor: String,
    /// See [`DEFAULT_RELAY_WINDOW`].
    pub relay_window: usize,
    /// See [`DEFAULT_RECONNECT_MIN_MS`].
    pub reconnect_min_ms: u64,
    /// See [`DEFAULT_RECONNECT_MAX_MS`].
    pub reconnect_max_ms: u64,
    /// See [`DEFAULT_RECOVERY_ATTEMPTS`].
    pub recovery_attempts: usize,
    /// See [`DEFAULT_CONNECT_TIMEOUT_MS`].
    pub connect_timeout_ms: u64,
    /// See [`DEFAULT_CONFIRM_TIMEOUT_MS`].
    pub confirm_timeout_ms: u64,
    /// When set, a message's `reply_to` must start with this (e.g. `"replies."`), so producers
    /// can only have replies published into queues meant for them (and the broker's
    /// permissions on those names decide who reads them). Unset (the default): any queue but
    /// vidgate's own, which are always refused.
    pub reply_to_prefix: Option<String>,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: None,
            connection_name: DEFAULT_CONNECTION_NAME.to_owned(),
            intake: true,
            relay: true,
            jobs_exchange: DEFAULT_JOBS_EXCHANGE.to_owned(),
            jobs_queue: DEFAULT_JOBS_QUEUE.to_owned(),
            jobs_binding_key: DEFAULT_JOBS_BINDING_KEY.to_owned(),
            dead_exchange: DEFAULT_DEAD_EXCHANGE.to_owned(),
            dead_queue: DEFAULT_DEAD_QUEUE.to_owned(),
            events_exchange: DEFAULT_EVENTS_EXCHANGE.to_owned(),
            prefetch: DEFAULT_PREFETCH,
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            users: BTreeMap::new(),
            tenant: None,
            tenant_header: None,
            relay_cursor: DEFAULT_RELAY_CURSOR.to_owned(),
            relay_window: DEFAULT_RELAY_WINDOW,
            reconnect_min_ms: DEFAULT_RECONNECT_MIN_MS,
            reconnect_max_ms: DEFAULT_RECONNECT_MAX_MS,
            recovery_attempts: DEFAULT_RECOVERY_ATTEMPTS,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            confirm_timeout_ms: DEFAULT_CONFIRM_TIMEOUT_MS,
            reply_to_prefix: None,
        }
    }
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("connection_name", &self.connection_name)
            .field("intake", &self.intake)
            .field("relay", &self.relay)
            .field("jobs_exchange", &self.jobs_exchange)
            .field("jobs_queue", &self.jobs_queue)
            .field("dead_exchange", &self.dead_exchange)
            .field("dead_queue", &self.dead_queue)
            .field("events_exchange", &self.events_exchange)
            .field("prefetch", &self.prefetch)
            .field("delivery_limit", &self.delivery_limit)
            .field("users", &self.users)
            .field("tenant", &self.tenant)
            .field("tenant_header", &self.tenant_header)
            .field("reply_to_prefix", &self.reply_to_prefix)
            .finish_non_exhaustive()
    }
}

/// The url with its password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("REDACTED"));
            }
            parsed.to_string()
        }
        Err(_) => "<not a URL>".to_owned(),
    }
}

/// A value of `[amqp]` that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config value {key} is invalid: {message}")]
pub struct AmqpConfigError {
    /// The key, e.g. `amqp.prefetch`.
    pub key: &'static str,
    /// What is allowed.
    pub message: String,
}

/// Longest AMQP short string (names, routing keys, property values).
const MAX_NAME_BYTES: usize = 255;
/// Longest configured name: room for the suffixes vidgate adds (`-intake`, consumer tags
/// `<connection_name>-intake-<32 hex>`) within a short string.
const MAX_CONFIG_NAME_BYTES: usize = 200;

impl AmqpConfig {
    /// Whether the AMQP side runs at all.
    pub fn enabled(&self) -> bool {
        self.url.as_deref().is_some_and(|u| !u.is_empty())
    }

    /// Checks values that parse but cannot work. Only meaningful when [`Self::enabled`].
    pub fn validate(&self) -> Result<(), AmqpConfigError> {
        let invalid = |key, message: String| Err(AmqpConfigError { key, message });
        let Some(url) = self.url.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(());
        };
        match url.parse::<lapin::uri::AMQPUri>() {
            Ok(uri) => {
                if uri.scheme == lapin::uri::AMQPScheme::AMQPS && !cfg!(feature = "amqp-tls") {
                    return invalid(
                        "amqp.url",
                        "is amqps:// but this vidgate was built without TLS for AMQP: build with `--features amqp-tls`".into(),
                    );
                }
            }
            Err(e) => {
                return invalid(
                    "amqp.url",
                    format!(
                        "{} is not an AMQP URL like amqp://user:password@host:5672/%2f ({e})",
                        redact_url(url)
                    ),
                );
            }
        }
        let names: [(&'static str, &str); 7] = [
            ("amqp.connection_name", &self.connection_name),
            ("amqp.jobs_exchange", &self.jobs_exchange),
            ("amqp.jobs_queue", &self.jobs_queue),
            ("amqp.dead_exchange", &self.dead_exchange),
            ("amqp.dead_queue", &self.dead_queue),
            ("amqp.events_exchange", &self.events_exchange),
            ("amqp.relay_cursor", &self.relay_cursor),
        ];
        for (key, name) in names {
            if name.is_empty()
                || name.len() > MAX_CONFIG_NAME_BYTES
                || name.starts_with("amq.")
                || name.chars().any(char::is_control)
            {
                return invalid(
                    key,
                    format!(
                        "{name:?} must be 1-{} bytes without control characters and must not start with \"amq.\" (reserved by RabbitMQ)",
                        MAX_CONFIG_NAME_BYTES
                    ),
                );
            }
        }
        if self.jobs_binding_key.len() > MAX_NAME_BYTES {
            return invalid(
                "amqp.jobs_binding_key",
                format!("must be at most {MAX_NAME_BYTES} bytes"),
            );
        }
        if self.prefetch == 0 || self.prefetch > MAX_PREFETCH {
            return invalid(
                "amqp.prefetch",
                format!("must be 1 to {MAX_PREFETCH} (got {})", self.prefetch),
            );
        }
        if self.delivery_limit == 0 {
            return invalid("amqp.delivery_limit", "must be at least 1".into());
        }
        if self.max_message_bytes == 0 {
            return invalid("amqp.max_message_bytes", "must be at least 1".into());
        }
        if self.relay_window == 0 || self.relay_window > MAX_RELAY_WINDOW {
            return invalid(
                "amqp.relay_window",
                format!(
                    "must be 1 to {MAX_RELAY_WINDOW} (got {})",
                    self.relay_window
                ),
            );
        }
        for (user, tenant) in &self.users {
            if !valid_tenant(tenant) {
                return invalid(
                    "amqp.users",
                    format!(
                        "user {user:?} maps to {tenant:?}, which is not a tenant name (1-64 characters of a-z, A-Z, 0-9, '-' or '_')"
                    ),
                );
            }
        }
        if let Some(tenant) = &self.tenant
            && !valid_tenant(tenant)
        {
            return invalid(
                "amqp.tenant",
                format!(
                    "{tenant:?} is not a tenant name (1-64 characters of a-z, A-Z, 0-9, '-' or '_')"
                ),
            );
        }
        if let Some(header) = &self.tenant_header
            && (header.is_empty() || header.len() > MAX_NAME_BYTES)
        {
            return invalid(
                "amqp.tenant_header",
                format!("must be 1-{MAX_NAME_BYTES} bytes"),
            );
        }
        if let Some(prefix) = &self.reply_to_prefix
            && (prefix.is_empty()
                || prefix.len() > MAX_NAME_BYTES
                || prefix.chars().any(char::is_control))
        {
            return invalid(
                "amqp.reply_to_prefix",
                format!(
                    "must be 1-{MAX_NAME_BYTES} bytes without control characters (leave it out to allow any queue but vidgate's own)"
                ),
            );
        }
        if self.reconnect_min_ms == 0 || self.reconnect_min_ms > self.reconnect_max_ms {
            return invalid(
                "amqp.reconnect_min_ms",
                "must be at least 1 and not exceed amqp.reconnect_max_ms".into(),
            );
        }
        if self.connect_timeout_ms == 0 || self.confirm_timeout_ms == 0 {
            return invalid(
                "amqp.connect_timeout_ms",
                "connect_timeout_ms and confirm_timeout_ms must be at least 1".into(),
            );
        }
        Ok(())
    }

    /// Whether a message's `reply_to` may receive vidgate's replies: never one of vidgate's own
    /// queues or exchanges (its events would be published into its own intake or dead
    /// letters), and only names under [`Self::reply_to_prefix`] when it is set. `Err` says why
    /// not, for the rejection.
    pub fn check_reply_to(&self, reply_to: &str) -> Result<(), String> {
        let own = [
            &self.jobs_queue,
            &self.dead_queue,
            &self.jobs_exchange,
            &self.dead_exchange,
            &self.events_exchange,
        ];
        if own.iter().any(|own| own.as_str() == reply_to) {
            return Err(format!(
                "reply_to {:?} is one of vidgate's own queues or exchanges; name a queue of your own (or none)",
                crate::domain::echo(reply_to)
            ));
        }
        match &self.reply_to_prefix {
            Some(prefix) if !reply_to.starts_with(prefix.as_str()) => Err(format!(
                "reply_to {:?} is not allowed: reply queues must start with {prefix:?} (amqp.reply_to_prefix)",
                crate::domain::echo(reply_to)
            )),
            _ => Ok(()),
        }
    }

    /// The tenant of a message: a trusted header when configured, else the broker-checked
    /// `user_id` mapped through `users`, else the queue's one tenant. `Err` says why none.
    pub fn tenant_of(&self, properties: &BasicProperties) -> Result<Tenant, String> {
        if let Some(header) = &self.tenant_header
            && let Some(value) = properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(header.as_str()))
        {
            let name = match value {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.as_str().to_owned(),
                _ => String::new(),
            };
            return if valid_tenant(&name) {
                Ok(Tenant(name))
            } else {
                Err(format!(
                    "header {header:?} must be a string naming a tenant (1-64 characters of a-z, A-Z, 0-9, '-' or '_')"
                ))
            };
        }
        let user = properties
            .user_id()
            .as_ref()
            .map(|u| u.as_str())
            .filter(|u| !u.is_empty());
        if let Some(tenant) = user.and_then(|u| self.users.get(u)) {
            return Ok(Tenant(tenant.clone()));
        }
        if let Some(tenant) = &self.tenant {
            return Ok(Tenant(tenant.clone()));
        }
        Err(match user {
            Some(user) => format!(
                "user_id {:?} is not mapped to a tenant (amqp.users) and the queue has no tenant of its own (amqp.tenant)",
                crate::domain::echo(user)
            ),
            None => "the message has no user_id property and the queue has no tenant of its own (amqp.tenant); set user_id to your broker user".to_owned(),
        })
    }

    pub(crate) fn reconnect_min(&self) -> Duration {
        Duration::from_millis(self.reconnect_min_ms)
    }

    pub(crate) fn reconnect_max(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_ms)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(crate) fn confirm_timeout(&self) -> Duration {
        Duration::from_millis(self.confirm_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldTable, LongString, ShortString};

    fn enabled() -> AmqpConfig {
        AmqpConfig {
            url: Some("amqp://guest:secret-pw@127.0.0.1:5672/%2f".into()),
            ..AmqpConfig::default()
        }
    }

    #[test]
    fn defaults_are_the_names_of_api_md_and_valid() {
        let c = enabled();
        c.validate().expect("valid");
        assert_eq!(c.jobs_exchange, "vidgate.jobs");
        assert_eq!(c.jobs_queue, "vidgate.jobs");
        assert_eq!(c.dead_exchange, "vidgate.dead");
        assert_eq!(c.dead_queue, "vidgate.jobs.dead");
        assert_eq!(c.events_exchange, "vidgate.events");
        assert!(!AmqpConfig::default().enabled());
        assert!(c.enabled());
    }

    #[test]
    fn debug_never_shows_the_password() {
        let text = format!("{:?}", enabled());
        assert!(!text.contains("secret-pw"), "{text}");
        assert!(text.contains("REDACTED"), "{text}");
    }

    #[test]
    fn bad_values_are_named() {
        let key = |c: AmqpConfig| c.validate().expect_err("invalid").key;
        assert_eq!(
            key(AmqpConfig {
                url: Some("http://x".into()),
                ..enabled()
            }),
            "amqp.url"
        );
        assert_eq!(
            key(AmqpConfig {
                prefetch: 0,
                ..enabled()
            }),
            "amqp.prefetch"
        );
        assert_eq!(
            key(AmqpConfig {
                jobs_queue: "amq.x".into(),
                ..enabled()
            }),
            "amqp.jobs_queue"
        );
        assert_eq!(
            key(AmqpConfig {
                tenant: Some("a.b".into()),
                ..enabled()
            }),
            "amqp.tenant"
        );
        let mut users = BTreeMap::new();
        users.insert("bob".to_owned(), "no spaces".to_owned());
        assert_eq!(key(AmqpConfig { users, ..enabled() }), "amqp.users");
    }

    fn props(user: Option<&str>, header: Option<(&str, &str)>) -> BasicProperties {
        let mut p = BasicProperties::default();
        if let Some(user) = user {
            p = p.with_user_id(ShortString::from(user));
        }
        if let Some((k, v)) = header {
            let mut h = FieldTable::default();
            h.insert(
                ShortString::from(k),
                AMQPValue::LongString(LongString::from(v)),
            );
            p = p.with_headers(h);
        }
        p
    }

    #[test]
    fn tenants_come_from_mapped_users_then_the_queue_and_headers_only_when_trusted() {
        let mut c = enabled();
        c.users.insert("svc-acme".into(), "acme".into());
        let t = |c: &AmqpConfig, p| c.tenant_of(&p).map(|t| t.0);
        assert_eq!(t(&c, props(Some("svc-acme"), None)), Ok("acme".into()));
        assert!(t(&c, props(Some("stranger"), None)).is_err());
        assert!(t(&c, props(None, None)).is_err());
        // An untrusted header changes nothing.
        assert!(t(&c, props(None, Some(("x-tenant", "globex")))).is_err());
        c.tenant = Some("shared".into());
        assert_eq!(t(&c, props(Some("stranger"), None)), Ok("shared".into()));
        assert_eq!(t(&c, props(Some("svc-acme"), None)), Ok("acme".into()));
        c.tenant_header = Some("x-tenant".into());
        assert_eq!(
            t(&c, props(Some("svc-acme"), Some(("x-tenant", "globex")))),
            Ok("globex".into())
        );
        assert!(t(&c, props(None, Some(("x-tenant", "not.valid")))).is_err());
    }
}
