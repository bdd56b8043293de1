//! One typed configuration: a TOML file (optional) plus a few environment variables, checked at
//! start with errors that name the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::api::auth::AuthConfig;
use crate::dispatcher::DispatcherConfig;
use crate::events::{DEFAULT_CHUNK_BYTES, DEFAULT_STREAM_BUDGET_BYTES};
use crate::intake::amqp::AmqpConfig;
use crate::intake::amqp::config::URL_ENV as AMQP_URL_ENV;
use crate::upstream::LimitConfig;
use crate::upstream::client::{
    DEFAULT_BASE_URL, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_CONTENT_BYTES,
    DEFAULT_MIN_TRANSFER_RATE, DEFAULT_READ_IDLE_TIMEOUT, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_TRANSFER_RATE_WINDOW,
};
use crate::upstream::sim::SimConfig;

/// The largest HTTP/2 window (RFC 9113: 2^31 - 1).
const MAX_WINDOW_BYTES: u32 = (1 << 31) - 1;
/// Shortest admin token accepted: short enough guesses would make the token decoration.
const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// Where `vidgate serve` listens for gRPC unless told otherwise.
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:50051";
/// API.md: CreateVideo messages up to 12 MiB, so a 10 MiB image gets a field error rather than
/// a transport one.
pub const DEFAULT_MAX_CREATE_MESSAGE_BYTES: usize = 12 * 1024 * 1024;
/// HTTP/2 keepalive for long-lived watch streams, so dead clients are noticed.
pub const DEFAULT_KEEPALIVE_SECS: u64 = 30;
/// A keepalive PING not answered within this closes the connection (tonic's and hyper's own
/// default, made explicit): a dead or stalled client holds its streams at most
/// `keepalive_secs + keepalive_timeout_secs`.
pub const DEFAULT_KEEPALIVE_TIMEOUT_SECS: u64 = 20;
/// TCP keepalive on accepted gRPC sockets: the kernel probes a silent peer after this long, so
/// a connection whose client vanished (before or without HTTP/2 pings) is dropped rather than
/// held for the system's 2 hours.
pub const DEFAULT_TCP_KEEPALIVE_SECS: u64 = 60;
/// Concurrent streams (RPCs) per HTTP/2 connection (`SETTINGS_MAX_CONCURRENT_STREAMS`; tonic
/// sets none, i.e. unlimited). nginx's default; RFC 9113 asks for at least 100. A client over
/// it waits for a stream to end rather than failing, and one connection cannot hold thousands
/// of streams (and their buffers and descriptors).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 128;
/// HTTP/2 receive window per stream: what a client may send on one stream before vidgate reads
/// it. hyper's default (1 MiB), made explicit: a 12 MiB create uploads in a dozen round trips.
pub const DEFAULT_INITIAL_STREAM_WINDOW_BYTES: u32 = 1024 * 1024;
/// HTTP/2 receive window per connection, shared by its streams: bounds what one connection
/// can have in flight toward vidgate, however many streams it opens. hyper's default (1 MiB).
pub const DEFAULT_INITIAL_CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;
/// How long a stop (SIGTERM, Ctrl-C) may take before whatever is left is abandoned and the
/// process exits anyway. Orchestrators kill after their own grace period (Kubernetes:
/// `terminationGracePeriodSeconds`, 30 s by default); 20 s stays well inside it, leaving room
/// for the signal's delivery and a `preStop` hook, so vidgate ends on its own terms (streams
/// told where to resume, the store closed) rather than by SIGKILL.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 20_000;
/// Where the admin HTTP port (`/healthz`, `/readyz`, `/metrics`) listens unless told otherwise
/// (9464 is the port OpenTelemetry registers for a Prometheus exporter).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";
/// Where the embedded store and the videos live.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// ARCHITECTURE.md: events are kept 7 days.
pub const DEFAULT_EVENT_RETENTION_HOURS: u64 = 7 * 24;
/// The environment variable holding the upstream key (never read from the config file, so it
/// cannot be committed by accident).
pub const API_KEY_ENV: &str = "TURING_API_KEY";

/// Every environment variable `vidgate serve` reads, with what it sets. Deployment files (the
/// compose file, the Dockerfile) are checked against this list by the tests.
pub const ENVIRONMENT: &[(&str, &str)] = &[
    (
        API_KEY_ENV,
        "the upstream API key; without it the built-in simulator stands in",
    ),
    ("TURING_BASE_URL", "upstream.base_url"),
    ("VIDGATE_CONFIG", "the TOML configuration file"),
    ("VIDGATE_GRPC_LISTEN", "server.grpc_listen"),
    (
        crate::tls::CERT_ENV,
        "server.tls.cert_path (with VIDGATE_TLS_KEY: TLS on the gRPC port)",
    ),
    (crate::tls::KEY_ENV, "server.tls.key_path"),
    (
        crate::tls::CLIENT_CA_ENV,
        "server.tls.client_ca_path (clients must present a certificate)",
    ),
    (
        "VIDGATE_ADMIN_LISTEN",
        "admin.listen (/healthz, /readyz, /metrics)",
    ),
    (
        ADMIN_TOKEN_ENV,
        "admin.token (bearer token for /readyz and /metrics)",
    ),
    ("VIDGATE_DATA_DIR", "storage.data_dir"),
    (
        DATABASE_URL_ENV,
        "storage.url (postgres://... = the shared PostgreSQL store)",
    ),
    (
        BLOB_URL_ENV,
        "blob.url (s3://bucket/prefix, gs://bucket/prefix or az://container/prefix = videos in an object store)",
    ),
    (
        BLOB_ENDPOINT_ENV,
        "blob.endpoint (an S3-compatible server, e.g. http://minio:9000, or an Azure account endpoint)",
    ),
    (
        "AWS_ACCESS_KEY_ID",
        "with AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN): S3's credentials; unset = the instance's role",
    ),
    ("AWS_SECRET_ACCESS_KEY", "S3's secret key"),
    ("AWS_REGION", "the bucket's region (blob.region wins)"),
    (
        "GOOGLE_SERVICE_ACCOUNT",
        "Google Cloud Storage: a service account key file (or GOOGLE_APPLICATION_CREDENTIALS); unset = the instance's service account",
    ),
    (
        "AZURE_STORAGE_ACCOUNT_NAME",
        "Azure Blob Storage: the account, with AZURE_STORAGE_ACCOUNT_KEY (or another AZURE_* credential, or a managed identity)",
    ),
    (
        "AZURE_STORAGE_ACCOUNT_KEY",
        "Azure Blob Storage: the account's key",
    ),
    (AMQP_URL_ENV, "amqp.url (turns the RabbitMQ intake on)"),
    ("VIDGATE_LOG_FORMAT", "text or json log lines"),
    (
        "VIDGATE_HEALTHCHECK_URL",
        "the URL `vidgate healthcheck` asks (default http://127.0.0.1:9464/readyz)",
    ),
    ("RUST_LOG", "log level filter, e.g. info,vidgate=debug"),
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTLP/gRPC collector, e.g. http://collector:4317; unset = no export",
    ),
    (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTLP endpoint for traces only",
    ),
    (
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTLP endpoint for metrics only",
    ),
    (
        "OTEL_SERVICE_NAME",
        "service.name of traces and metrics (default vidgate)",
    ),
    (
        "OTEL_RESOURCE_ATTRIBUTES",
        "extra resource attributes, key=value,...",
    ),
    ("OTEL_SDK_DISABLED", "true turns OpenTelemetry export off"),
];

/// The gRPC and admin ports a container exposes by default (the Dockerfile and the compose file
/// are checked against them): gRPC 50051, admin 9464.
pub const CONTAINER_PORTS: [u16; 2] = [50051, 9464];

/// Section `[server]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// gRPC listen address (port 0 = any free port).
    pub grpc_listen: SocketAddr,
    /// See [`DEFAULT_MAX_CREATE_MESSAGE_BYTES`].
    pub max_create_message_bytes: usize,
    /// See [`DEFAULT_KEEPALIVE_SECS`].
    pub keepalive_secs: u64,
    /// See [`DEFAULT_KEEPALIVE_TIMEOUT_SECS`].
    pub keepalive_timeout_secs: u64,
    /// See [`DEFAULT_TCP_KEEPALIVE_SECS`].
    pub tcp_keepalive_secs: u64,
    /// See [`DEFAULT_MAX_CONCURRENT_STREAMS`].
    pub max_concurrent_streams: u32,
    /// See [`DEFAULT_INITIAL_STREAM_WINDOW_BYTES`].
    pub initial_stream_window_bytes: u32,
    /// See [`DEFAULT_INITIAL_CONNECTION_WINDOW_BYTES`].
    pub initial_connection_window_bytes: u32,
    /// See [`crate::api::streams::DEFAULT_MAX_STREAMS_PER_TENANT`].
    pub max_streams_per_tenant: usize,
    /// See [`crate::api::incoming::DEFAULT_HANDSHAKE_TIMEOUT_SECS`].
    pub handshake_timeout_secs: u64,
    /// See [`DEFAULT_SHUTDOWN_GRACE_MS`].
    pub shutdown_grace_ms: u64,
    /// `[server.tls]`: absent = plaintext gRPC (the local default).
    pub tls: Option<crate::tls::TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_listen: DEFAULT_GRPC_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 50051))),
            max_create_message_bytes: DEFAULT_MAX_CREATE_MESSAGE_BYTES,
            keepalive_secs: DEFAULT_KEEPALIVE_SECS,
            keepalive_timeout_secs: DEFAULT_KEEPALIVE_TIMEOUT_SECS,
            tcp_keepalive_secs: DEFAULT_TCP_KEEPALIVE_SECS,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            initial_stream_window_bytes: DEFAULT_INITIAL_STREAM_WINDOW_BYTES,
            initial_connection_window_bytes: DEFAULT_INITIAL_CONNECTION_WINDOW_BYTES,
            max_streams_per_tenant: crate::api::streams::DEFAULT_MAX_STREAMS_PER_TENANT,
            handshake_timeout_secs: crate::api::incoming::DEFAULT_HANDSHAKE_TIMEOUT_SECS,
            shutdown_grace_ms: DEFAULT_SHUTDOWN_GRACE_MS,
            tls: None,
        }
    }
}

/// SQLite durability (`[storage] synchronous`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Survives power loss (the default).
    #[default]
    Full,
    /// Survives a process crash, not a power cut; faster.
    Normal,
}

/// The environment variable that sets `[storage] url`.
pub const DATABASE_URL_ENV: &str = "VIDGATE_DATABASE_URL";
/// Sets `blob.url`.
pub const BLOB_URL_ENV: &str = "VIDGATE_BLOB_URL";
/// Sets `blob.endpoint`.
pub const BLOB_ENDPOINT_ENV: &str = "VIDGATE_BLOB_ENDPOINT";

/// Section `[storage]`.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Holds `vidgate.db` (unless `url` names PostgreSQL) and `blobs/`.
    pub data_dir: PathBuf,
    /// Where jobs and events live: `None` or `sqlite:` = `vidgate.db` in `data_dir` (one
    /// instance); `postgres://user:password@host/db` = a PostgreSQL database that several
    /// instances share. Never logged (it may hold a password).
    pub url: Option<String>,
    /// PostgreSQL only: the schema holding vidgate's tables (created if missing; default: the
    /// connection's `search_path`, normally `public`).
    pub schema: Option<String>,
    /// PostgreSQL only: most connections per instance (the writer, the event listener and
    /// reads share them).
    pub pool_size: u32,
    /// PostgreSQL only: the server cancels any statement running longer.
    pub statement_timeout_ms: u64,
    /// See [`SyncMode`].
    pub synchronous: SyncMode,
    /// Most writes committed together (group commit).
    pub max_batch: usize,
    /// Live events buffered for subscribers; a subscriber further behind is told it lagged.
    pub event_buffer: usize,
    /// See [`DEFAULT_EVENT_RETENTION_HOURS`].
    pub event_retention_hours: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        let sqlite = crate::store::sqlite::SqliteConfig::new("unused");
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            url: None,
            schema: None,
            pool_size: crate::store::postgres::DEFAULT_POOL_SIZE,
            statement_timeout_ms: u64::try_from(
                crate::store::postgres::DEFAULT_STATEMENT_TIMEOUT.as_millis(),
            )
            .unwrap_or(u64::MAX),
            synchronous: SyncMode::Full,
            max_batch: sqlite.max_batch,
            event_buffer: sqlite.event_buffer,
            event_retention_hours: DEFAULT_EVENT_RETENTION_HOURS,
        }
    }
}

/// Which [`crate::store::JobStore`] `[storage]` selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageBackend {
    /// `vidgate.db` in the data directory.
    Sqlite,
    /// A PostgreSQL URL.
    Postgres(String),
}

impl StorageConfig {
    /// The backend `url` names; an error names `storage.url` and what is allowed.
    pub fn backend(&self) -> Result<StorageBackend, ConfigError> {
        match self.url.as_deref().map(str::trim) {
            None | Some("") => Ok(StorageBackend::Sqlite),
            Some(url) if url == "sqlite:" || url == "sqlite://" => Ok(StorageBackend::Sqlite),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(StorageBackend::Postgres(url.to_owned()))
            }
            Some(url) => Err(ConfigError::Invalid {
                key: "storage.url",
                message: format!(
                    "must be empty or `sqlite:` (vidgate.db in storage.data_dir) or a postgres:// URL; got a value starting {:?}",
                    url.split(':')
                        .next()
                        .unwrap_or_default()
                        .chars()
                        .take(16)
                        .collect::<String>()
                ),
            }),
        }
    }
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field("data_dir", &self.data_dir)
            .field(
                "url",
                &self
                    .url
                    .as_deref()
                    .map(crate::store::postgres::redacted_url),
            )
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("statement_timeout_ms", &self.statement_timeout_ms)
            .field("synchronous", &self.synchronous)
            .field("max_batch", &self.max_batch)
            .field("event_buffer", &self.event_buffer)
            .field("event_retention_hours", &self.event_retention_hours)
            .finish()
    }
}

/// Which upstream to talk to.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamMode {
    /// The real API when `TURING_API_KEY` is set, else the built-in simulator (the default).
    #[default]
    Auto,
    /// The real API; refuses to start without a key.
    Real,
    /// The built-in simulator, in-process.
    Simulator,
}

/// Section `[upstream]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSection {
    /// See [`UpstreamMode`].
    pub mode: UpstreamMode,
    /// The API's base URL (also `TURING_BASE_URL`).
    pub base_url: String,
    /// Milliseconds.
    pub connect_timeout_ms: u64,
    /// Milliseconds, for create and status calls.
    pub request_timeout_ms: u64,
    /// Milliseconds without a byte before a download is considered broken.
    pub read_idle_timeout_ms: u64,
    /// The shared rate limit.
    pub limits: LimitConfig,
    /// The largest video downloaded, in bytes (`Content-Length` first, then counted).
    pub max_content_bytes: u64,
    /// The slowest download kept going, in bytes per second over `transfer_rate_window_ms`
    /// (0 = no minimum); a slower one is resumed later with `Range`.
    pub min_transfer_rate: u64,
    /// Milliseconds over which `min_transfer_rate` is measured.
    pub transfer_rate_window_ms: u64,
    /// Internal networks (CIDR) that URLs upstream hands back (`last_frame_url`, redirects) may
    /// lead to anyway; empty = only public addresses (and the configured `base_url`).
    pub allowed_networks: Vec<String>,
}

impl Default for UpstreamSection {
    fn default() -> Self {
        Self {
            mode: UpstreamMode::Auto,
            base_url: DEFAULT_BASE_URL.to_owned(),
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT.as_millis() as u64,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT.as_millis() as u64,
            read_idle_timeout_ms: DEFAULT_READ_IDLE_TIMEOUT.as_millis() as u64,
            limits: LimitConfig::default(),
            max_content_bytes: DEFAULT_MAX_CONTENT_BYTES,
            min_transfer_rate: DEFAULT_MIN_TRANSFER_RATE,
            transfer_rate_window_ms: DEFAULT_TRANSFER_RATE_WINDOW.as_millis() as u64,
            allowed_networks: Vec::new(),
        }
    }
}

/// The environment variable that sets `[admin] token`.
pub const ADMIN_TOKEN_ENV: &str = "VIDGATE_ADMIN_TOKEN";

/// Section `[admin]`: the small HTTP port for operators.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Whether the admin port is served at all.
    pub enabled: bool,
    /// Listen address (port 0 = any free port).
    pub listen: SocketAddr,
    /// When set, `/readyz` and `/metrics` need `authorization: Bearer <token>` (`/healthz`
    /// stays open for liveness probes). Prefer [`ADMIN_TOKEN_ENV`] to the file. Never logged.
    pub token: Option<String>,
    /// See [`crate::telemetry::admin::DEFAULT_HEADER_READ_TIMEOUT_MS`].
    pub header_read_timeout_ms: u64,
    /// See [`crate::telemetry::admin::DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: DEFAULT_ADMIN_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9464))),
            token: None,
            header_read_timeout_ms: crate::telemetry::admin::DEFAULT_HEADER_READ_TIMEOUT_MS,
            max_connections: crate::telemetry::admin::DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("enabled", &self.enabled)
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("header_read_timeout_ms", &self.header_read_timeout_ms)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// Section `[events]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Content chunk size of `DownloadVideo` and watch streams.
    pub chunk_bytes: usize,
    /// What one event stream may hold for its client, in bytes; past it the subscriber is
    /// lagging (`ABORTED` / `SUBSCRIBER_LAGGED`). See [`DEFAULT_STREAM_BUDGET_BYTES`].
    pub stream_budget_bytes: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            stream_budget_bytes: DEFAULT_STREAM_BUDGET_BYTES,
        }
    }
}

/// Section `[catalog]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogSection {
    /// A TOML file merged over the built-in model catalog.
    pub file: Option<PathBuf>,
}

/// The whole configuration.
#[derive(Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[storage]`.
    pub storage: StorageConfig,
    /// `[blob]`: where finished videos are kept (a local directory by default).
    pub blob: crate::blob::BlobConfig,
    /// `[upstream]`.
    pub upstream: UpstreamSection,
    /// `[simulator]`: the in-process simulator, when the upstream is simulated.
    pub simulator: SimConfig,
    /// `[dispatcher]`.
    pub dispatcher: DispatcherConfig,
    /// `[auth]`.
    pub auth: AuthConfig,
    /// `[events]`.
    pub events: EventsConfig,
    /// `[catalog]`.
    pub catalog: CatalogSection,
    /// `[amqp]`: RabbitMQ intake and event relay; off unless `amqp.url` (or
    /// `VIDGATE_AMQP_URL`) is set.
    pub amqp: AmqpConfig,
    /// `[webhooks]`: signed HTTP deliveries of job events.
    pub webhooks: crate::webhooks::config::WebhooksConfig,
    /// From `TURING_API_KEY` only.
    #[serde(skip)]
    pub api_key: Option<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("server", &self.server)
            .field("admin", &self.admin)
            .field("storage", &self.storage)
            .field("blob", &self.blob)
            .field("upstream", &self.upstream)
            .field("dispatcher", &self.dispatcher)
            .field("auth_mode", &self.auth.mode)
            .field("amqp", &self.amqp)
            .field("webhooks", &self.webhooks)
            .field("api_key", &self.api_key.as_ref().map(|_| "[REDACTED]"))
            .finish_non_exhaustive()
    }
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("could not read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message names the key and line).
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with line and key.
        message: String,
    },
    /// A value that cannot work.
    #[error("config value {key} is invalid: {message}")]
    Invalid {
        /// The key, e.g. `events.chunk_bytes`.
        key: &'static str,
        /// What is allowed.
        message: String,
    },
}

impl Config {
    /// Reads `path` (if any) and the environment: `TURING_API_KEY`, `TURING_BASE_URL`,
    /// `VIDGATE_GRPC_LISTEN`, `VIDGATE_ADMIN_LISTEN`, `VIDGATE_DATA_DIR`, `VIDGATE_AMQP_URL`
    /// (the whole list, with the variables read elsewhere, is [`ENVIRONMENT`]).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => Self::from_toml(&std::fs::read_to_string(path).map_err(|source| {
                ConfigError::Read {
                    path: path.to_owned(),
                    source,
                }
            })?)
            .map_err(|message| ConfigError::Parse {
                path: path.to_owned(),
                message,
            })?,
            None => Self::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML (no environment).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Applies environment overrides through `get` (a test passes a map).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(key) = get(API_KEY_ENV).filter(|k| !k.is_empty()) {
            self.api_key = Some(key);
        }
        if let Some(url) = get("TURING_BASE_URL").filter(|u| !u.is_empty()) {
            self.upstream.base_url = url;
        }
        if let Some(listen) = get("VIDGATE_GRPC_LISTEN").filter(|v| !v.is_empty()) {
            self.server.grpc_listen = listen.parse().map_err(|e| ConfigError::Invalid {
                key: "VIDGATE_GRPC_LISTEN",
                message: format!("{listen:?} is not a socket address like 127.0.0.1:50051 ({e})"),
            })?;
        }
        crate::tls::TlsConfig::apply_env(&mut self.server.tls, &get)?;
        if let Some(listen) = get("VIDGATE_ADMIN_LISTEN").filter(|v| !v.is_empty()) {
            self.admin.listen = listen.parse().map_err(|e| ConfigError::Invalid {
                key: "VIDGATE_ADMIN_LISTEN",
                message: format!("{listen:?} is not a socket address like 127.0.0.1:9464 ({e})"),
            })?;
        }
        if let Some(token) = get(ADMIN_TOKEN_ENV).filter(|v| !v.is_empty()) {
            self.admin.token = Some(token);
        }
        if let Some(dir) = get("VIDGATE_DATA_DIR").filter(|v| !v.is_empty()) {
            self.storage.data_dir = PathBuf::from(dir);
        }
        if let Some(url) = get(AMQP_URL_ENV).filter(|v| !v.is_empty()) {
            self.amqp.url = Some(url);
        }
        if let Some(url) = get(DATABASE_URL_ENV).filter(|v| !v.is_empty()) {
            self.storage.url = Some(url);
        }
        if let Some(url) = get(BLOB_URL_ENV).filter(|v| !v.is_empty()) {
            self.blob.url = Some(url);
        }
        if let Some(endpoint) = get(BLOB_ENDPOINT_ENV).filter(|v| !v.is_empty()) {
            self.blob.endpoint = Some(endpoint);
        }
        Ok(())
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        if let Err(message) = self.blob.location(&self.storage.data_dir) {
            return invalid("blob", message);
        }
        if let Err(message) = self.webhooks.settings() {
            return invalid("webhooks", message);
        }
        if self.events.chunk_bytes == 0 || self.events.chunk_bytes > crate::events::MAX_CHUNK_BYTES
        {
            return invalid(
                "events.chunk_bytes",
                format!(
                    "must be 1 to {} (got {})",
                    crate::events::MAX_CHUNK_BYTES,
                    self.events.chunk_bytes
                ),
            );
        }
        if self.server.max_create_message_bytes < 1024 * 1024 {
            return invalid(
                "server.max_create_message_bytes",
                "must be at least 1 MiB".into(),
            );
        }
        if self.server.keepalive_secs == 0 || self.server.keepalive_timeout_secs == 0 {
            return invalid(
                "server.keepalive_secs",
                "keepalive_secs and keepalive_timeout_secs must be at least 1 (seconds): without them a dead client holds its streams until TCP notices".into(),
            );
        }
        if self.server.max_concurrent_streams == 0 {
            return invalid("server.max_concurrent_streams", "must be at least 1".into());
        }
        // RFC 9113 §6.9.2: windows below 65 535 are legal but stall every transfer.
        for (key, window) in [
            (
                "server.initial_stream_window_bytes",
                self.server.initial_stream_window_bytes,
            ),
            (
                "server.initial_connection_window_bytes",
                self.server.initial_connection_window_bytes,
            ),
        ] {
            if !(65_535..=MAX_WINDOW_BYTES).contains(&window) {
                return invalid(
                    key,
                    format!("must be 65535 to {MAX_WINDOW_BYTES} bytes (got {window})"),
                );
            }
        }
        if self.server.handshake_timeout_secs == 0 {
            return invalid(
                "server.handshake_timeout_secs",
                "must be at least 1 (seconds)".into(),
            );
        }
        if self.server.max_streams_per_tenant == 0 {
            return invalid("server.max_streams_per_tenant", "must be at least 1".into());
        }
        if self.admin.header_read_timeout_ms == 0 || self.admin.max_connections == 0 {
            return invalid(
                "admin.header_read_timeout_ms",
                "header_read_timeout_ms and max_connections must be at least 1".into(),
            );
        }
        if self
            .admin
            .token
            .as_ref()
            .is_some_and(|t| t.trim().len() < MIN_ADMIN_TOKEN_CHARS)
        {
            return invalid(
                "admin.token",
                format!(
                    "must be at least {MIN_ADMIN_TOKEN_CHARS} characters (a random string; it is compared in full)"
                ),
            );
        }
        if self.server.shutdown_grace_ms == 0 {
            return invalid(
                "server.shutdown_grace_ms",
                "must be at least 1 (milliseconds)".into(),
            );
        }
        if let Some(tls) = &self.server.tls {
            tls.validate()?;
        }
        if self.dispatcher.lease_ms == 0 {
            return invalid(
                "dispatcher.lease_ms",
                "must be at least 1 (milliseconds)".into(),
            );
        }
        // A create still unanswered when its submit lease ends is taken for crashed and failed
        // as an unknown outcome: the lease must outlast the request it covers.
        if self.dispatcher.submit_lease_ms <= self.upstream.request_timeout_ms {
            return invalid(
                "dispatcher.submit_lease_ms",
                format!(
                    "must be longer than upstream.request_timeout_ms ({} ms), or a slow create is failed as an unknown outcome while it is still on the wire (got {} ms)",
                    self.upstream.request_timeout_ms, self.dispatcher.submit_lease_ms
                ),
            );
        }
        if self.storage.max_batch == 0 {
            return invalid("storage.max_batch", "must be at least 1".into());
        }
        if let StorageBackend::Postgres(_) = self.storage.backend()? {
            if self.storage.pool_size < crate::store::postgres::MIN_POOL_SIZE {
                return invalid(
                    "storage.pool_size",
                    format!(
                        "must be at least {} (the writer, the event listener and reads each need a connection; got {})",
                        crate::store::postgres::MIN_POOL_SIZE,
                        self.storage.pool_size
                    ),
                );
            }
            if self.storage.statement_timeout_ms == 0 {
                return invalid(
                    "storage.statement_timeout_ms",
                    "must be at least 1 (milliseconds)".into(),
                );
            }
        }
        if self.storage.event_buffer == 0 {
            return invalid("storage.event_buffer", "must be at least 1".into());
        }
        if self.dispatcher.max_concurrent_jobs == 0 {
            return invalid(
                "dispatcher.max_concurrent_jobs",
                "must be at least 1".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.dispatcher.poll_jitter) {
            return invalid(
                "dispatcher.poll_jitter",
                format!(
                    "must be between 0 and 1 (got {})",
                    self.dispatcher.poll_jitter
                ),
            );
        }
        if self.dispatcher.backoff_min_ms > self.dispatcher.backoff_max_ms {
            return invalid(
                "dispatcher.backoff_min_ms",
                "must not exceed dispatcher.backoff_max_ms".into(),
            );
        }
        if self.upstream.mode == UpstreamMode::Real && self.api_key.is_none() {
            return invalid(
                "upstream.mode",
                format!("is \"real\" but {API_KEY_ENV} is not set"),
            );
        }
        if url::Url::parse(&self.upstream.base_url).is_err() {
            return invalid(
                "upstream.base_url",
                format!("{:?} is not a URL", self.upstream.base_url),
            );
        }
        if let Err(e) = self.amqp.validate() {
            return invalid(e.key, e.message);
        }
        Ok(())
    }

    /// Whether the in-process simulator stands in for the upstream.
    pub fn uses_simulator(&self) -> bool {
        match self.upstream.mode {
            UpstreamMode::Simulator => true,
            UpstreamMode::Real => false,
            UpstreamMode::Auto => self.api_key.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_simulated_without_a_key() {
        let c = Config::default();
        c.validate().unwrap();
        assert!(c.uses_simulator());
        assert_eq!(c.server.max_create_message_bytes, 12 * 1024 * 1024);
    }

    #[test]
    fn a_submit_lease_not_longer_than_the_request_timeout_is_refused_naming_both() {
        let mut c = Config::default();
        c.upstream.request_timeout_ms = 5_000;
        c.dispatcher.submit_lease_ms = 5_000;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("dispatcher.submit_lease_ms") && e.contains("upstream.request_timeout_ms"),
            "{e}"
        );
        c.dispatcher.submit_lease_ms = 5_001;
        c.validate().unwrap();
        c.dispatcher.lease_ms = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("dispatcher.lease_ms"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = Config::from_toml("[server]\ngrpc_lisen = \"x\"\n")
            .err()
            .unwrap();
        assert!(e.contains("grpc_lisen"), "{e}");
        let mut c = Config::from_toml("[events]\nchunk_bytes = 0\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("events.chunk_bytes"), "{e}");
        c.events.chunk_bytes = 1024;
        c.upstream.mode = UpstreamMode::Real;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("TURING_API_KEY"), "{e}");
    }

    #[test]
    fn amqp_is_off_by_default_and_the_environment_turns_it_on() {
        let mut c = Config::default();
        assert!(!c.amqp.enabled());
        c.apply_env(|k| {
            (k == "VIDGATE_AMQP_URL").then(|| "amqp://u:pw-secret@127.0.0.1:5672/%2f".to_owned())
        })
        .unwrap();
        assert!(c.amqp.enabled());
        c.validate().unwrap();
        assert!(!format!("{c:?}").contains("pw-secret"));
        let mut c = Config::from_toml("[amqp]\nurl = \"amqp://h\"\nprefetch = 0\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("amqp.prefetch"), "{e}");
        c.amqp.prefetch = 10;
        c.validate().unwrap();
    }

    #[test]
    fn the_admin_token_comes_from_the_environment_is_checked_and_never_shown() {
        let mut c = Config::default();
        c.apply_env(|k| (k == ADMIN_TOKEN_ENV).then(|| "admin-secret-0123456789".to_owned()))
            .unwrap();
        assert_eq!(c.admin.token.as_deref(), Some("admin-secret-0123456789"));
        c.validate().unwrap();
        assert!(!format!("{c:?}").contains("admin-secret"));
        c.admin.token = Some("short".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("admin.token") && !e.contains("short"), "{e}");
    }

    #[test]
    fn connection_limits_have_defaults_and_bad_values_are_named() {
        let c = Config::default();
        assert_eq!(
            c.server.max_concurrent_streams,
            DEFAULT_MAX_CONCURRENT_STREAMS
        );
        assert_eq!(
            c.server.keepalive_timeout_secs,
            DEFAULT_KEEPALIVE_TIMEOUT_SECS
        );
        let mut c = Config::from_toml("[server]\ninitial_stream_window_bytes = 100\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("server.initial_stream_window_bytes"), "{e}");
        c.server.initial_stream_window_bytes = DEFAULT_INITIAL_STREAM_WINDOW_BYTES;
        c.server.max_streams_per_tenant = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("server.max_streams_per_tenant"), "{e}");
    }

    #[test]
    fn environment_sets_the_key_which_debug_never_shows() {
        let mut c = Config::default();
        c.apply_env(|k| (k == API_KEY_ENV).then(|| "sk-secret-1".to_owned()))
            .unwrap();
        assert!(!c.uses_simulator());
        assert!(!format!("{c:?}").contains("sk-secret-1"));
        let e = c
            .apply_env(|k| (k == "VIDGATE_GRPC_LISTEN").then(|| "nope".to_owned()))
            .unwrap_err();
        assert!(e.to_string().contains("VIDGATE_GRPC_LISTEN"));
    }
}
