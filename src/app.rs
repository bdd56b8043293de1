//! One startup path: [`Application::build`] opens the store, starts the upstream (real or the
//! in-process simulator), the dispatcher and the gRPC server, and returns a handle with the
//! bound address. `main` and every test use it.
//!
//! One stop path too: [`Application::shutdown`] first drains (readiness and gRPC health go
//! not-serving, new calls are refused, open streams end naming where to resume, AMQP
//! consumption and the dispatcher stop taking work), then stops the servers and closes the
//! store, all within `server.shutdown_grace_ms`; past it, whatever is left is abandoned.

use crate::api::webhooks::WebhookApi;
use crate::pb::webhook_service_server::WebhookServiceServer;
use crate::store::webhooks::WebhookStore;
use crate::webhooks::endpoints::WebhookEndpoints;
use crate::webhooks::engine::WebhookEngine;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::auth::{AuthConfigError, AuthMode, Authenticator};
use crate::api::health::ReadinessHealth;
use crate::api::incoming::PrefaceDeadline;
use crate::api::service::VideoApi;
use crate::blob::{BlobError, BlobStore};
use crate::config::{Config, ConfigError, StorageBackend, SyncMode};
use crate::dispatcher::Dispatcher;
use crate::domain::{CatalogError, ModelCatalog};
use crate::intake::amqp::{self, AmqpHandle};
use crate::job::now_ms;
use crate::jobs::Jobs;
use crate::netguard::{AddressGuard, NetworkParseError};
use crate::pb;
use crate::pb::video_service_server::VideoServiceServer;
use crate::store::postgres::{PostgresConfig, PostgresStore};
use crate::store::sqlite::{SqliteConfig, SqliteStore, Synchronous};
use crate::store::{EventQuery, JobStore, StoreError};
use crate::telemetry::admin::{self, AdminState};
use crate::telemetry::metrics::{AmqpCounters, StateGauges};
use crate::telemetry::readiness::{Heartbeat, Readiness};
use crate::telemetry::{self, Metrics, OtlpSettings};
use crate::tls::{LoadError as TlsLoadError, TlsHandle, TlsServer};
use crate::upstream::client::{ClientBuildError, UpstreamConfig};
use crate::upstream::sim::{SimError, SimHandle, Simulator};
use crate::upstream::{ApiKey, UpstreamClient};
use futures::StreamExt as _;
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use tonic::server::NamedService;

/// How often readiness's asked checks (store, dispatcher) are re-run besides every `/readyz`
/// (and, with OTLP metrics on, how often the state gauges are re-read). Changes pushed to
/// readiness (the broker's state, a shutdown) are published at once, not at this pace.
pub const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// The part of the shutdown grace kept, after the tasks, for closing the store (its last batch
/// committed, not cut) and flushing metrics; at most a quarter of the grace.
pub const CLOSE_RESERVE: Duration = Duration::from_secs(2);
/// How often old events are pruned.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Why vidgate could not start. Each names the part and the cause.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// `[auth]` is unusable.
    #[error("auth: {0}")]
    Auth(#[from] AuthConfigError),
    /// The model catalog file is unusable.
    #[error("model catalog: {0}")]
    Catalog(#[from] CatalogError),
    /// `[storage]` is unusable.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The data directory could not be created (or made private).
    #[error("data directory {dir} (storage.data_dir / VIDGATE_DATA_DIR): {source}")]
    DataDir {
        /// The directory.
        dir: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store did not open.
    #[error("job store: {0}")]
    Store(#[from] StoreError),
    /// The blob directory is unusable.
    #[error("blob store: {0}")]
    Blobs(#[from] BlobError),
    /// The simulator did not start.
    #[error("upstream simulator: {0}")]
    Simulator(#[from] SimError),
    /// The upstream client could not be built.
    #[error("upstream client: {0}")]
    Client(#[from] ClientBuildError),
    /// The key is unusable.
    #[error("{0}")]
    ApiKey(String),
    /// `upstream.allowed_networks` is unusable.
    #[error("{0}")]
    Networks(#[from] NetworkParseError),
    /// The gRPC port could not be bound.
    #[error("could not listen on {addr} for gRPC: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The admin HTTP port could not be bound.
    #[error(
        "could not listen on {addr} for the admin HTTP port (admin.listen / VIDGATE_ADMIN_LISTEN): {source}"
    )]
    AdminBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Metrics could not be set up.
    #[error("metrics: {0}")]
    Telemetry(String),
    /// `[server.tls]` names files that cannot be used.
    #[error("TLS on the gRPC port: {0}")]
    Tls(#[from] TlsLoadError),
    /// `[webhooks]` cannot work.
    #[error("webhooks: {0}")]
    Webhooks(String),
    /// Reflection descriptors could not be loaded (a build problem).
    #[error("gRPC reflection: {0}")]
    Reflection(String),
}

/// Deletes events older than `before_ms`, but never one a durable reader has not consumed:
/// `cursors` names their positions (the AMQP relay's, confirmed by the broker; the webhook
/// fan-out's). An event is kept until every one of them is past it, however old. Returns how
/// many were deleted.
pub async fn prune_events(
    store: &dyn JobStore,
    before_ms: i64,
    cursors: &[&str],
) -> Result<u64, StoreError> {
    let mut before = before_ms;
    for name in cursors {
        let Some(consumed) = store.load_cursor(name).await? else {
            // A reader that never started keeps nothing back (it starts from the latest).
            continue;
        };
        let first_unconsumed = store
            .events_after(&EventQuery {
                after_sequence: consumed,
                tenant: None,
                job_id: None,
                limit: 1,
            })
            .await?;
        // The store prunes a prefix up to the first event at or after the bound.
        if let Some(event) = first_unconsumed.first() {
            before = before.min(event.time_ms);
        }
    }
    store.prune_events(before).await
}

/// A running vidgate.
pub struct Application {
    grpc_addr: SocketAddr,
    grpc_tls: Option<TlsHandle>,
    admin_addr: Option<SocketAddr>,
    meter_provider: SdkMeterProvider,
    store: OpenedStore,
    dispatcher: Arc<Dispatcher>,
    jobs: Jobs,
    simulator: Option<SimHandle>,
    amqp: Option<AmqpHandle>,
    readiness: Readiness,
    grace: Duration,
    /// Cancelled first on shutdown: stop taking work, end streams.
    draining: CancellationToken,
    /// Cancelled once the work has drained: stop the servers.
    stop: CancellationToken,
    /// Tasks that do work (dispatcher, AMQP, pruning); they end on `draining`.
    work_tasks: Vec<JoinHandle<()>>,
    /// Tasks that serve (gRPC, admin, readiness upkeep); they end on `stop`.
    serve_tasks: Vec<JoinHandle<()>>,
}

/// How [`Application::shutdown`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Everything finished within the grace.
    Cleanly,
    /// The grace ran out: this many tasks (or the store's close) were abandoned.
    Abandoned(usize),
}

impl Application {
    /// Starts everything. The dispatcher runs only when `dispatcher.enabled`; otherwise tests
    /// drive it with [`Dispatcher::step`].
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let auth = authenticator(&config)?;
        let catalog = Arc::new(model_catalog(&config)?);
        let tls = config
            .server
            .tls
            .as_ref()
            .map(TlsServer::load)
            .transpose()?;
        crate::datadir::private_dir(&config.storage.data_dir).map_err(|source| {
            StartupError::DataDir {
                dir: config.storage.data_dir.clone(),
                source,
            }
        })?;
        let store = open_store(&config).await?;
        let telemetry = Telemetry::start()?;
        let blobs = BlobStore::open(&config.blob, &config.storage.data_dir)?;
        tracing::info!(blobs = %blobs.describe(), "stored videos");
        let upstream = start_upstream(&config, &telemetry.metrics).await?;
        let store_dyn: Arc<dyn JobStore> = store.as_dyn();
        let dispatcher = Arc::new(
            Dispatcher::new(
                store_dyn.clone(),
                upstream.client,
                blobs.clone(),
                catalog.clone(),
                config.dispatcher.clone(),
            )
            .with_metrics(telemetry.metrics.clone()),
        );
        let draining = CancellationToken::new();
        let stop = CancellationToken::new();
        let jobs = Jobs::new(
            store_dyn.clone(),
            blobs.clone(),
            catalog,
            dispatcher.clone(),
        )
        .with_job_max_age_ms(config.dispatcher.max_age_ms)
        .with_metrics(telemetry.metrics.clone());
        let webhook_settings = config.webhooks.settings().map_err(StartupError::Webhooks)?;
        let jobs = jobs.with_callback_policy(webhook_settings.policy);
        let webhooks = WebhookEngine::new(
            store.webhooks(),
            store_dyn.clone(),
            webhook_settings,
            &telemetry.meter,
        )
        .map_err(StartupError::Webhooks)?;
        let webhook_api = WebhookApi::new(
            WebhookEndpoints::new(webhooks.clone()),
            auth.clone(),
            draining.clone(),
        );
        let readiness_blobs = blobs.clone();
        let sweep_blobs = blobs.clone();
        let api = VideoApi::new(
            jobs.clone(),
            store_dyn.clone(),
            blobs,
            auth,
            config.events.chunk_bytes,
        )
        .with_stream_budget(config.events.stream_budget_bytes)
        .with_metrics(telemetry.metrics.clone())
        .with_draining(draining.clone())
        .with_max_streams_per_tenant(config.server.max_streams_per_tenant);
        let (listener, grpc_addr) = bind_grpc(&config).await?;

        let mut tasks = Tasks::default();
        // Started before anything is served, so the relay's first cursor is set before the
        // first job can be accepted.
        let amqp = start_amqp(&config, &jobs, &store_dyn, &draining, &mut tasks).await?;
        let counters = amqp
            .clone()
            .map(|handle| Arc::new(handle) as Arc<dyn AmqpCounters>);
        let gauges = StateGauges::register(&telemetry.meter, store_dyn.clone(), counters);
        let readiness = start_readiness(&config, &store_dyn, &dispatcher, amqp.as_ref())
            .with_objects(readiness_blobs);
        if let Some(handle) = &amqp {
            tasks
                .serve
                .push(follow_broker(handle, readiness.clone(), stop.clone()));
        }
        let admin = AdminState {
            readiness: readiness.clone(),
            registry: telemetry.registry,
            gauges: gauges.clone(),
        };
        let admin_addr = start_admin(&config, admin, &stop, &mut tasks).await?;
        let (grpc_tasks, grpc_tls) = serve_grpc(
            &config,
            listener,
            tls,
            (api, webhook_api),
            readiness.clone(),
            stop.clone(),
        )?;
        tasks.serve.extend(grpc_tasks);
        if webhooks.settings().enabled {
            tasks.work.extend(webhooks.start(&draining));
        }
        if config.dispatcher.enabled {
            let d = dispatcher.clone();
            let draining = draining.clone();
            tasks
                .work
                .push(tokio::spawn(async move { d.run(draining).await }));
        } else {
            tracing::warn!(
                "dispatcher disabled (dispatcher.enabled = false): jobs are accepted and wait"
            );
        }
        tasks.serve.push(keep_readiness_fresh(
            readiness.clone(),
            telemetry.otlp_metrics.then_some(gauges),
            stop.clone(),
        ));
        tasks.work.push(prune_old_events(
            &config,
            store_dyn.clone(),
            draining.clone(),
        ));
        if config.blob.sweep_interval_ms > 0 {
            tasks.work.push(sweep_orphans(
                &config,
                sweep_blobs,
                store_dyn,
                telemetry.metrics.clone(),
                draining.clone(),
            ));
        }

        let simulator = upstream.simulator;
        tracing::info!(%grpc_addr, grpc_tls = grpc_tls.is_some(), admin_addr = ?admin_addr, data_dir = %config.storage.data_dir.display(), simulator = simulator.is_some(), "vidgate serving");
        Ok(Self {
            grpc_addr,
            grpc_tls,
            admin_addr,
            meter_provider: telemetry.provider,
            store,
            dispatcher,
            jobs,
            simulator,
            amqp,
            readiness,
            grace: Duration::from_millis(config.server.shutdown_grace_ms),
            draining,
            stop,
            work_tasks: tasks.work,
            serve_tasks: tasks.serve,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// What the gRPC port serves over TLS (certificate fingerprint, reloads), when
    /// `[server.tls]` is set.
    pub fn grpc_tls(&self) -> Option<&TlsHandle> {
        self.grpc_tls.as_ref()
    }

    /// The bound admin HTTP address (`/healthz`, `/readyz`, `/metrics`), when enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The dispatcher (tests call [`Dispatcher::step`]).
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// The store.
    pub fn store(&self) -> Arc<dyn JobStore> {
        self.store.as_dyn()
    }

    /// The application layer, as the gRPC service and the AMQP intake call it (benchmarks
    /// measure `accept` without a transport).
    pub fn jobs(&self) -> &Jobs {
        &self.jobs
    }

    /// The AMQP side, when `[amqp]` is configured.
    pub fn amqp(&self) -> Option<&AmqpHandle> {
        self.amqp.as_ref()
    }

    /// The in-process simulator, when it stands in for the upstream.
    pub fn simulator(&self) -> Option<&SimHandle> {
        self.simulator.as_ref()
    }

    /// Readiness, as `/readyz` and gRPC health report it.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// How long [`Application::shutdown`] may take (`server.shutdown_grace_ms`).
    pub fn shutdown_grace(&self) -> Duration {
        self.grace
    }

    /// The first, immediate part of a shutdown (idempotent): readiness and gRPC health go
    /// not-serving, new calls are refused and open streams end (`UNAVAILABLE`,
    /// `SERVER_SHUTTING_DOWN`, with where to resume), AMQP consumption and the dispatcher stop
    /// taking work. The servers keep answering until [`Application::shutdown`] stops them.
    pub fn begin_shutdown(&self) {
        self.readiness.shut_down();
        self.draining.cancel();
    }

    /// Drains ([`Application::begin_shutdown`]), waits for the work in flight (upstream
    /// requests, AMQP deliveries), stops the servers and closes the store, all within the
    /// shutdown grace; tasks still running when it runs out are abandoned (aborted).
    pub async fn shutdown(self) -> Stopped {
        let started = Instant::now();
        let close_by = started + self.grace;
        let tasks_by = close_by - CLOSE_RESERVE.min(self.grace / 4);
        self.begin_shutdown();
        let mut abandoned = join_until(self.work_tasks, tasks_by).await;
        self.stop.cancel();
        abandoned += join_until(self.serve_tasks, tasks_by).await;
        if tokio::time::timeout_at(close_by, self.store.close())
            .await
            .is_err()
        {
            tracing::error!("the store did not close within the shutdown grace");
            abandoned += 1;
        }
        if let Some(sim) = self.simulator
            && tokio::time::timeout_at(close_by, sim.shutdown())
                .await
                .is_err()
        {
            tracing::warn!("the upstream simulator did not stop within the shutdown grace");
        }
        // Pushes the last metrics when OTLP is on.
        if let Err(e) = self.meter_provider.shutdown() {
            tracing::debug!(error = %e, "meter provider shutdown");
        }
        if abandoned == 0 {
            Stopped::Cleanly
        } else {
            Stopped::Abandoned(abandoned)
        }
    }

    /// Write transactions this instance's store committed so far (the benchmark harness
    /// compares them with the writes asked for, to show group commit at work).
    pub fn batches_committed(&self) -> u64 {
        match &self.store {
            OpenedStore::Sqlite(store) => store.batches_committed(),
            OpenedStore::Postgres(store) => store.batches_committed(),
        }
    }
}

/// Waits for `tasks` until `deadline`, then aborts those still running; returns how many.
async fn join_until(tasks: Vec<JoinHandle<()>>, deadline: Instant) -> usize {
    let mut abandoned = 0;
    for mut task in tasks {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
            abandoned += 1;
        }
    }
    if abandoned > 0 {
        tracing::warn!(
            abandoned,
            "shutdown grace ran out: tasks still running were abandoned (jobs stay due in the store, unacked deliveries return to the queue)"
        );
    }
    abandoned
}

/// The tasks [`Application::build`] starts, by how they end.
#[derive(Default)]
struct Tasks {
    /// Tasks that do work; they end on `draining`.
    work: Vec<JoinHandle<()>>,
    /// Tasks that serve; they end on `stop`.
    serve: Vec<JoinHandle<()>>,
}

/// The bearer-token tenants of `[auth]`; says loudly when authentication is off.
fn authenticator(config: &Config) -> Result<Arc<Authenticator>, StartupError> {
    let auth = Arc::new(Authenticator::new(&config.auth)?);
    if auth.mode() == AuthMode::None {
        tracing::warn!(
            tenant = %config.auth.no_auth_tenant,
            "AUTHENTICATION IS OFF (auth.mode = \"none\"): every caller is one tenant. For local use and the demo only"
        );
    }
    Ok(auth)
}

/// The built-in catalog, or the operator's file.
fn model_catalog(config: &Config) -> Result<ModelCatalog, StartupError> {
    Ok(match &config.catalog.file {
        Some(path) => ModelCatalog::load(path)?,
        None => ModelCatalog::default(),
    })
}

/// The store `[storage]` selects, kept concrete for what the trait does not show.
enum OpenedStore {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PostgresStore>),
}

impl OpenedStore {
    fn as_dyn(&self) -> Arc<dyn JobStore> {
        match self {
            Self::Sqlite(store) => store.clone(),
            Self::Postgres(store) => store.clone(),
        }
    }

    fn webhooks(&self) -> Arc<dyn WebhookStore> {
        match self {
            Self::Sqlite(store) => store.clone(),
            Self::Postgres(store) => store.clone(),
        }
    }

    async fn close(&self) {
        match self {
            Self::Sqlite(store) => store.close().await,
            Self::Postgres(store) => store.close().await,
        }
    }
}

/// The store `[storage] url` names: SQLite in the data directory (with `[storage]`'s
/// durability and batching), or a shared PostgreSQL database.
async fn open_store(config: &Config) -> Result<OpenedStore, StartupError> {
    let storage = &config.storage;
    if let StorageBackend::Postgres(url) = storage.backend()? {
        let mut postgres = PostgresConfig::new(url);
        postgres.schema = storage.schema.clone();
        postgres.pool_size = storage.pool_size;
        postgres.statement_timeout = Duration::from_millis(storage.statement_timeout_ms);
        postgres.max_batch = storage.max_batch;
        postgres.event_buffer = storage.event_buffer;
        return Ok(OpenedStore::Postgres(Arc::new(
            PostgresStore::open(postgres).await?,
        )));
    }
    let mut sqlite = SqliteConfig::new(storage.data_dir.join("vidgate.db"));
    sqlite.synchronous = match storage.synchronous {
        SyncMode::Full => Synchronous::Full,
        SyncMode::Normal => Synchronous::Normal,
    };
    sqlite.max_batch = storage.max_batch;
    sqlite.event_buffer = storage.event_buffer;
    Ok(OpenedStore::Sqlite(Arc::new(
        SqliteStore::open(sqlite).await?,
    )))
}

/// This application's own metrics: a meter provider read by `/metrics` (Prometheus) and, when
/// an OTLP endpoint is set, pushed periodically.
struct Telemetry {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    meter: Meter,
    metrics: Metrics,
    /// Whether metrics are also pushed over OTLP (then the state gauges are re-read too).
    otlp_metrics: bool,
}

impl Telemetry {
    fn start() -> Result<Self, StartupError> {
        let registry = prometheus::Registry::new();
        let prometheus_reader = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
            .map_err(|e| StartupError::Telemetry(e.to_string()))?;
        let mut provider = SdkMeterProvider::builder()
            .with_reader(prometheus_reader)
            .with_resource(telemetry::resource());
        let otlp = OtlpSettings::from_process_env();
        if otlp.metrics {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .build()
                .map_err(|e| {
                    StartupError::Telemetry(format!(
                        "OTLP metric exporter (OTEL_EXPORTER_OTLP_ENDPOINT; write it with its scheme, e.g. http://collector:4317): {e}"
                    ))
                })?;
            provider = provider.with_periodic_exporter(exporter);
        }
        let provider = provider.build();
        let meter = provider.meter(telemetry::SCOPE);
        let metrics = Metrics::new(&meter);
        Ok(Self {
            provider,
            registry,
            meter,
            metrics,
            otlp_metrics: otlp.metrics,
        })
    }
}

/// The upstream as the dispatcher sees it: a client of the real API, or of the in-process
/// simulator when no key is configured.
struct Upstream {
    simulator: Option<SimHandle>,
    client: UpstreamClient,
}

async fn start_upstream(config: &Config, metrics: &Metrics) -> Result<Upstream, StartupError> {
    let (simulator, base_url, key) = if config.uses_simulator() {
        let sim = Simulator::start(
            config.simulator.clone(),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .await?;
        tracing::warn!(
            base_url = %sim.base_url(),
            "no TURING_API_KEY: the built-in upstream SIMULATOR stands in for the real API (no real videos are generated)"
        );
        let base = sim.base_url();
        let key = sim.api_key().to_owned();
        (Some(sim), base, key)
    } else {
        let key = config.api_key.clone().unwrap_or_default();
        (None, config.upstream.base_url.clone(), key)
    };
    let base_url = url::Url::parse(&base_url).map_err(|e| {
        StartupError::ApiKey(format!("upstream.base_url {base_url:?} is not a URL: {e}"))
    })?;
    let api_key = ApiKey::new(key).map_err(|e| StartupError::ApiKey(e.to_string()))?;
    let allowed_networks = AddressGuard::parse_networks(
        "upstream.allowed_networks",
        &config.upstream.allowed_networks,
    )?;
    let client = UpstreamClient::new(UpstreamConfig {
        connect_timeout: Duration::from_millis(config.upstream.connect_timeout_ms),
        request_timeout: Duration::from_millis(config.upstream.request_timeout_ms),
        read_idle_timeout: Duration::from_millis(config.upstream.read_idle_timeout_ms),
        limits: config.upstream.limits.clone(),
        max_content_bytes: config.upstream.max_content_bytes,
        min_transfer_rate: config.upstream.min_transfer_rate,
        transfer_rate_window: Duration::from_millis(config.upstream.transfer_rate_window_ms),
        allowed_networks,
        ..UpstreamConfig::new(base_url, api_key)
    })?
    .with_metrics(metrics.clone());
    Ok(Upstream { simulator, client })
}

/// Binds the gRPC port now, so the bound address (port 0 in tests) is known before serving.
async fn bind_grpc(config: &Config) -> Result<(tokio::net::TcpListener, SocketAddr), StartupError> {
    let addr = config.server.grpc_listen;
    let bind_error = |source| StartupError::Bind { addr, source };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    Ok((listener, bound))
}

/// AMQP (only with `[amqp] url`): intake and outbox relay. Both stop when draining begins: the
/// consumer is cancelled (deliveries not acked go back to the queue), the relay saves its
/// cursor and the next process goes on from it.
async fn start_amqp(
    config: &Config,
    jobs: &Jobs,
    store: &Arc<dyn JobStore>,
    draining: &CancellationToken,
    tasks: &mut Tasks,
) -> Result<Option<AmqpHandle>, StartupError> {
    if !config.amqp.enabled() {
        return Ok(None);
    }
    let (handle, amqp_tasks) = amqp::start(
        config.amqp.clone(),
        jobs.clone(),
        store.clone(),
        draining.clone(),
    )
    .await?;
    tasks.work.extend(amqp_tasks);
    Ok(Some(handle))
}

/// Readiness over the store, the broker (when AMQP is on) and the running dispatcher.
fn start_readiness(
    config: &Config,
    store: &Arc<dyn JobStore>,
    dispatcher: &Arc<Dispatcher>,
    amqp: Option<&AmqpHandle>,
) -> Readiness {
    Readiness::new(
        store.clone(),
        amqp.is_some(),
        config
            .dispatcher
            .enabled
            .then(|| dispatcher.clone() as Arc<dyn Heartbeat>),
        Duration::from_millis(config.dispatcher.idle_wake_ms),
    )
    .with_disk_floor(
        config.storage.data_dir.clone(),
        if config.dispatcher.enabled {
            config.dispatcher.min_free_disk_bytes
        } else {
            0
        },
    )
}

/// The broker's state reaches readiness (and so gRPC health) the moment it changes.
fn follow_broker(
    amqp: &AmqpHandle,
    readiness: Readiness,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let mut status = amqp.watch();
    tokio::spawn(async move {
        loop {
            let check = status.borrow_and_update().readiness();
            readiness.set_broker(check);
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = status.changed() => if changed.is_err() { break },
            }
        }
    })
}

/// The admin HTTP port (`/healthz`, `/readyz`, `/metrics`), when enabled; its bound address.
async fn start_admin(
    config: &Config,
    state: AdminState,
    stop: &CancellationToken,
    tasks: &mut Tasks,
) -> Result<Option<SocketAddr>, StartupError> {
    if !config.admin.enabled {
        return Ok(None);
    }
    let addr = config.admin.listen;
    let bind_error = |source| StartupError::AdminBind { addr, source };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    let limits = admin::AdminLimits {
        header_read_timeout: Duration::from_millis(config.admin.header_read_timeout_ms),
        max_connections: config.admin.max_connections,
        token: config.admin.token.as_deref().map(admin::AdminToken::new),
    };
    // Served until the work has drained, so `/readyz` says 503 meanwhile.
    tasks.serve.push(tokio::spawn(admin::serve(
        listener,
        state,
        limits,
        stop.clone(),
    )));
    Ok(Some(bound))
}

/// The gRPC server: health over readiness, reflection, and `vidgate.v1.VideoService`, in
/// plaintext or, with `[server.tls]`, over TLS (all on the one port either way).
fn serve_grpc(
    config: &Config,
    listener: tokio::net::TcpListener,
    tls: Option<TlsServer>,
    (api, webhook_api): (VideoApi, WebhookApi),
    readiness: Readiness,
    stop: CancellationToken,
) -> Result<(Vec<JoinHandle<()>>, Option<TlsHandle>), StartupError> {
    let health_service = ReadinessHealth::server(
        readiness,
        &[
            <VideoServiceServer<VideoApi> as NamedService>::NAME,
            <WebhookServiceServer<WebhookApi> as NamedService>::NAME,
        ],
        stop.clone(),
    );
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartupError::Reflection(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| StartupError::Reflection(e.to_string()))?;
    let video_service = VideoServiceServer::new(api)
        .max_decoding_message_size(config.server.max_create_message_bytes);
    let server = tonic::transport::Server::builder()
        .trace_fn(telemetry::propagation::grpc_server_span)
        .layer(telemetry::grpc::RecordStatusLayer)
        .http2_keepalive_interval(Some(Duration::from_secs(config.server.keepalive_secs)))
        .http2_keepalive_timeout(Some(Duration::from_secs(
            config.server.keepalive_timeout_secs,
        )))
        .max_concurrent_streams(config.server.max_concurrent_streams)
        .initial_stream_window_size(config.server.initial_stream_window_bytes)
        .initial_connection_window_size(config.server.initial_connection_window_bytes)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(video_service)
        .add_service(WebhookServiceServer::new(webhook_api));
    let tcp_keepalive = Duration::from_secs(config.server.tcp_keepalive_secs);
    let handshake = Duration::from_secs(config.server.handshake_timeout_secs);
    // The server stops only once the work has drained: until then health answers
    // NOT_SERVING and new calls are refused with a reason, rather than connections reset.
    // Open streams have ended by then, so its own graceful stop does not wait on them.
    let Some(tls) = tls else {
        return Ok((
            vec![tokio::spawn(async move {
                if let Err(e) = server
                    .serve_with_incoming_shutdown(
                        // Nagle's algorithm on accepted sockets plus the client's delayed ACK
                        // held every unary answer ~40 ms (measured by the benchmark harness).
                        tonic::transport::server::TcpIncoming::from(listener)
                            .with_nodelay(Some(true))
                            .with_keepalive(Some(tcp_keepalive))
                            .map(move |accepted| {
                                accepted.map(|io| PrefaceDeadline::new(io, handshake))
                            }),
                        stop.cancelled(),
                    )
                    .await
                {
                    tracing::error!(error = %e, "gRPC server stopped with an error");
                }
            })],
            None,
        ));
    };
    // The accept loop sets TCP_NODELAY itself and ends on `stop` too.
    let (incoming, handle, mut tasks) = tls.start(listener, stop.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = server
            // The TLS handshake has its own deadline; the HTTP/2 preface after it, this one.
            .serve_with_incoming_shutdown(
                incoming
                    .map(move |accepted| accepted.map(|io| PrefaceDeadline::new(io, handshake))),
                stop.cancelled(),
            )
            .await
        {
            tracing::error!(error = %e, "gRPC server stopped with an error");
        }
    }));
    Ok((tasks, Some(handle)))
}

/// Re-runs readiness's asked checks now and then, so a store or dispatcher that stops working
/// is noticed without a `/readyz` call; re-reads the state `gauges` when given (OTLP on).
fn keep_readiness_fresh(
    readiness: Readiness,
    gauges: Option<StateGauges>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut was_ready = true;
        loop {
            if let Some(gauges) = &gauges {
                gauges.refresh().await;
            }
            let report = readiness.refresh().await;
            if was_ready && !report.ready && !report.shutting_down {
                tracing::warn!(store = ?report.store, broker = ?report.broker, dispatcher = ?report.dispatcher, "not ready: reporting NOT_SERVING");
            }
            was_ready = report.ready;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(HEALTH_CHECK_INTERVAL) => {}
            }
        }
    })
}

/// The orphan sweeper (`src/sweeper.rs`) every `[blob] sweep_interval_ms`, the first sweep
/// after one interval (with up to 10% jitter, so instances started together spread out); a
/// shared object store by one instance per interval ([`crate::sweeper::takes_objects`]).
fn sweep_orphans(
    config: &Config,
    blobs: BlobStore,
    store: Arc<dyn JobStore>,
    metrics: crate::telemetry::metrics::Metrics,
    draining: CancellationToken,
) -> JoinHandle<()> {
    let interval = Duration::from_millis(config.blob.sweep_interval_ms);
    let grace = Duration::from_millis(config.blob.orphan_grace_ms);
    // This instance's name as the sweeper role's holder (unique per process start).
    let holder = uuid::Uuid::now_v7().simple().to_string();
    tokio::spawn(async move {
        loop {
            let jitter = interval.mul_f64(rand::random_range(0.0..0.1));
            tokio::select! {
                _ = draining.cancelled() => break,
                _ = tokio::time::sleep(interval + jitter) => {}
            }
            let objects =
                crate::sweeper::takes_objects(&blobs, store.as_ref(), &holder, interval).await;
            match crate::sweeper::sweep(&blobs, store.as_ref(), grace, &metrics, objects).await {
                Ok(r)
                    if r.removed_objects
                        + r.removed_staged
                        + r.expired_objects
                        + r.aborted_uploads
                        > 0 =>
                {
                    tracing::info!(
                        examined = r.examined,
                        expired_objects = r.expired_objects,
                        removed_objects = r.removed_objects,
                        removed_staged = r.removed_staged,
                        aborted_uploads = r.aborted_uploads,
                        "orphan sweep"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "orphan sweep failed; the next one tries again")
                }
            }
        }
    })
}

/// Prunes events past `storage.event_retention_hours` every [`PRUNE_INTERVAL`], keeping those
/// a durable reader (the AMQP relay, the webhook fan-out) has not consumed yet.
fn prune_old_events(
    config: &Config,
    store: Arc<dyn JobStore>,
    draining: CancellationToken,
) -> JoinHandle<()> {
    let retention_ms = config
        .storage
        .event_retention_hours
        .saturating_mul(3_600_000) as i64;
    let mut cursors: Vec<String> = Vec::new();
    if config.amqp.enabled() {
        cursors.push(config.amqp.relay_cursor.clone());
    }
    if config.webhooks.enabled {
        cursors.push(crate::webhooks::engine::FANOUT_CURSOR.to_owned());
    }
    tokio::spawn(async move {
        loop {
            let before = now_ms() - retention_ms;
            let names: Vec<&str> = cursors.iter().map(String::as_str).collect();
            match prune_events(store.as_ref(), before, &names).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(pruned = n, "old events pruned"),
                Err(e) => tracing::warn!(error = %e, "event pruning failed; will retry"),
            }
            tokio::select! {
                _ = draining.cancelled() => break,
                _ = tokio::time::sleep(PRUNE_INTERVAL) => {}
            }
        }
    })
}
