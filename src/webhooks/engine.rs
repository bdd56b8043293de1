//! The delivery engine: from the event log to receivers, durably, at least once.
//!
//! - **Fan-out** (one instance at a time, role `webhook-fanout`): reads the event log after
//!   the durable cursor `webhooks`, writes one delivery per (event, matching endpoint), and
//!   moves the cursor in the same commit, fenced by its previous value
//!   ([`WebhookStore::fan_out`]): an event is fanned out exactly once even if two instances
//!   briefly both hold the role. An endpoint receives events committed after it was created.
//!   A job's own `callback_url` is a callback endpoint made by the fan-out on its first event.
//! - **Sending** (every instance): claims due deliveries with a lease, at most
//!   `max_in_flight` on this instance and `max_in_flight_per_endpoint` per endpoint across
//!   the cluster, so one slow receiver never holds the others' slots; each delivery is retried
//!   on its own schedule (no head-of-line blocking). Every attempt re-checks the URL against
//!   the target policy, and connections resolve names through the network guard, so a name
//!   that now points inside the network is refused. No redirects; connect and total timeouts;
//!   the response body is read up to a small bound.
//! - **Outcomes**: any 2xx delivers; `410 Gone` disables the endpoint at once; anything else
//!   (another status, a timeout, a refused connection) is retried after the next delay of
//!   `[webhooks] retry_delays`, and after the last one the delivery is failed. An endpoint
//!   whose every attempt has failed for `disable_after` is disabled. A disabled endpoint's
//!   pending deliveries fail with the reason; `ReplayWebhooks` sends them again once it is
//!   enabled.
//!
//! A crash loses nothing: a delivery is written before it is sent and finished after its
//! response; one in flight when an instance dies is sent again when its lease ends (same
//! `webhook-id`, so the receiver can drop the duplicate).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::WebhookSettings;
use super::signing::{self, SigningSecret};
use crate::job::now_ms;
use crate::netguard::{AddressGuard, GuardedResolver};
use crate::pb;
use crate::store::webhooks::{
    Attempt, Backlog, Claim, Delivery, Endpoint, EndpointFilter, EndpointHealth, EndpointKind,
    Finish, Finished, NewDelivery, Next, WebhookStore,
};
use crate::store::{EventQuery, JobStore, StoreError, StoredEvent};

/// The fan-out's role among instances sharing the store.
pub const FANOUT_ROLE: &str = "webhook-fanout";
/// The fan-out's durable position in the event log.
pub const FANOUT_CURSOR: &str = "webhooks";
/// Events read from the log per fan-out step.
const EVENTS_PAGE: u32 = 500;
/// Deliveries written at most per fan-out commit (an event's deliveries are never split).
const MAX_ROWS_PER_COMMIT: usize = 5_000;
/// Endpoints the fan-out considers at most.
const MAX_ACTIVE_ENDPOINTS: u32 = 100_000;
/// How long a hold on the fan-out role lasts without renewal.
const ROLE_HOLD: Duration = Duration::from_secs(15);
/// How often the holder renews it (and a standby asks).
const ROLE_RENEW: Duration = Duration::from_secs(5);
/// Events the fan-out may pass over (none of them for any endpoint) before it writes its
/// cursor: passing events nobody wants costs no write until this many, or [`LAZY_WRITE`].
const LAZY_EVENTS: i64 = 1_000;
/// The longest the fan-out's durable cursor stays behind what it has passed over.
const LAZY_WRITE: Duration = Duration::from_secs(10);
/// How often the backlog gauges are read from the store.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(5);
/// How often finished deliveries past the retention are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(600);
/// Tries to record an attempt's outcome before leaving it to the lease (the delivery is then
/// sent again: at least once).
const RECORD_TRIES: u32 = 3;
/// The longest excerpt of a receiver's response kept with a failed attempt.
const EXCERPT_CHARS: usize = 200;

/// The instruments of webhook delivery.
#[derive(Clone)]
struct WebhookMetrics {
    attempts: Counter<u64>,
    duration: Histogram<f64>,
    latency: Histogram<f64>,
    disabled: Counter<u64>,
    backlog: Arc<Mutex<Backlog>>,
}

impl WebhookMetrics {
    fn new(meter: &Meter) -> Self {
        let backlog = Arc::new(Mutex::new(Backlog::default()));
        let read = backlog.clone();
        meter
            .u64_observable_gauge("vidgate.webhook.backlog")
            .with_description("Webhook deliveries waiting for an attempt (pending), cluster-wide")
            .with_callback(move |observer| {
                let b = *read.lock().unwrap_or_else(|p| p.into_inner());
                observer.observe(b.pending, &[]);
            })
            .build();
        let read = backlog.clone();
        meter
            .f64_observable_gauge("vidgate.webhook.backlog.age")
            .with_description(
                "How long the oldest due webhook delivery has been waiting, in seconds (0 when none)",
            )
            .with_unit("s")
            .with_callback(move |observer| {
                let b = *read.lock().unwrap_or_else(|p| p.into_inner());
                let age = b
                    .oldest_due_ms
                    .map_or(0.0, |due| (now_ms() - due).max(0) as f64 / 1000.0);
                observer.observe(age, &[]);
            })
            .build();
        let read = backlog.clone();
        meter
            .u64_observable_gauge("vidgate.webhook.endpoints.disabled")
            .with_description(
                "Webhook endpoints currently disabled (410 Gone, failing for days, or by hand)",
            )
            .with_callback(move |observer| {
                let b = *read.lock().unwrap_or_else(|p| p.into_inner());
                observer.observe(b.disabled_endpoints, &[]);
            })
            .build();
        Self {
            attempts: meter
                .u64_counter("vidgate.webhook.attempts")
                .with_description(
                    "Webhook delivery attempts by outcome (delivered, retrying, failed) and HTTP status (0: no response)",
                )
                .build(),
            duration: meter
                .f64_histogram("vidgate.webhook.attempt.duration")
                .with_description("How long one webhook attempt took, connect to bounded response")
                .with_unit("s")
                .build(),
            latency: meter
                .f64_histogram("vidgate.webhook.delivery.latency")
                .with_description(
                    "From an event's commit to its webhook's 2xx, in seconds (retries included)",
                )
                .with_unit("s")
                .build(),
            disabled: meter
                .u64_counter("vidgate.webhook.endpoint.disablings")
                .with_description("Webhook endpoints disabled by delivery, by reason (gone, failing)")
                .build(),
            backlog,
        }
    }
}

/// Where the fan-out is: the durable cursor, and how far it has passed over events that no
/// endpoint wanted (not yet written).
#[derive(Debug, Clone, Copy)]
pub struct FanOutPosition {
    durable: i64,
    at: i64,
    written: Instant,
}

/// What one attempt got.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    status: Option<u16>,
    error: Option<String>,
}

/// Webhook delivery for one instance. Cheap to clone.
#[derive(Clone)]
pub struct WebhookEngine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn WebhookStore>,
    jobs: Arc<dyn JobStore>,
    settings: WebhookSettings,
    client: reqwest::Client,
    wake: Notify,
    metrics: WebhookMetrics,
    /// This instance's name as a role holder.
    holder: String,
    in_flight: Arc<Semaphore>,
    /// Attempts under way (waited for at shutdown).
    sending: TaskTracker,
    /// Tenants' callback secrets (they never change once made).
    tenant_secrets: Mutex<HashMap<String, SigningSecret>>,
}

impl WebhookEngine {
    /// An engine over `store` (the same store as `jobs`, whose event log it reads).
    pub fn new(
        store: Arc<dyn WebhookStore>,
        jobs: Arc<dyn JobStore>,
        settings: WebhookSettings,
        meter: &Meter,
    ) -> Result<Self, String> {
        let mut client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            .user_agent(concat!("vidgate-webhooks/", env!("CARGO_PKG_VERSION")))
            // A proxy would resolve the name itself, out of the guard's reach.
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(30))
            // Endpoints often share a host (one receiver, many paths): keep what may be in flight.
            .pool_max_idle_per_host(settings.max_in_flight as usize);
        if !settings.policy.allow_private_targets {
            let guard = Arc::new(AddressGuard::new(None, Vec::new()));
            client = client.dns_resolver(Arc::new(GuardedResolver::new(guard)));
        }
        let client = client
            .build()
            .map_err(|e| format!("the webhook HTTP client cannot be built: {e}"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                in_flight: Arc::new(Semaphore::new(settings.max_in_flight as usize)),
                sending: TaskTracker::new(),
                store,
                jobs,
                client,
                wake: Notify::new(),
                metrics: WebhookMetrics::new(meter),
                holder: uuid::Uuid::now_v7().simple().to_string(),
                tenant_secrets: Mutex::new(HashMap::new()),
                settings,
            }),
        })
    }

    /// The endpoints and deliveries.
    pub fn store(&self) -> &Arc<dyn WebhookStore> {
        &self.inner.store
    }

    /// The job store whose event log is delivered.
    pub fn jobs(&self) -> &Arc<dyn JobStore> {
        &self.inner.jobs
    }

    /// `[webhooks]`.
    pub fn settings(&self) -> &WebhookSettings {
        &self.inner.settings
    }

    /// Looks at the delivery queue now (something was queued).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Starts the fan-out, the sender and the upkeep (backlog gauges, pruning); they end on
    /// `draining` (attempts in flight finish first, within the attempt timeout).
    pub fn start(&self, draining: &CancellationToken) -> Vec<JoinHandle<()>> {
        vec![
            tokio::spawn(self.clone().run_fan_out(draining.clone())),
            tokio::spawn(self.clone().run_sender(draining.clone())),
            tokio::spawn(self.clone().run_upkeep(draining.clone())),
        ]
    }

    async fn run_fan_out(self, draining: CancellationToken) {
        let jobs = self.inner.jobs.clone();
        let mut live = jobs.subscribe();
        let mut held_until: Option<Instant> = None;
        let mut position: Option<FanOutPosition> = None;
        let mut failures = 0u32;
        loop {
            if draining.is_cancelled() {
                break;
            }
            if held_until.is_none_or(|until| Instant::now() + ROLE_HOLD - ROLE_RENEW >= until) {
                let now = now_ms();
                match jobs
                    .hold_role(
                        FANOUT_ROLE,
                        &self.inner.holder,
                        now,
                        now + millis(ROLE_HOLD),
                    )
                    .await
                {
                    Ok(true) => {
                        if held_until.is_none() {
                            // Another instance may have fanned out since this one last did.
                            position = None;
                        }
                        held_until = Some(Instant::now() + ROLE_HOLD);
                    }
                    Ok(false) => {
                        held_until = None;
                        tokio::select! {
                            () = draining.cancelled() => break,
                            () = tokio::time::sleep(ROLE_RENEW) => continue,
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "webhooks: the fan-out role could not be taken or renewed; trying again");
                        held_until = None;
                        tokio::select! {
                            () = draining.cancelled() => break,
                            () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                }
            }
            match self.fan_out_step(&mut position).await {
                Ok(true) => {
                    failures = 0;
                    continue;
                }
                Ok(false) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, "webhooks: fan-out failed; trying again");
                }
            }
            let pause = if failures > 0 {
                Duration::from_millis(200u64.saturating_mul(1 << failures.min(5)))
            } else {
                self.inner.settings.poll_interval
            };
            tokio::select! {
                () = draining.cancelled() => break,
                _ = live.recv() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
        if held_until.is_some() {
            if let Some(p) = position.filter(|p| p.at > p.durable) {
                // What was passed over is not passed over again by the next holder.
                let _ = self
                    .inner
                    .store
                    .fan_out(FANOUT_CURSOR, p.durable, p.at, &[], &[])
                    .await;
            }
            let _ = jobs.release_role(FANOUT_ROLE, &self.inner.holder).await;
        }
    }

    /// One fan-out step from `position` (read from the store when `None`): true when it got
    /// further (there may be more to do).
    pub async fn fan_out_step(
        &self,
        position: &mut Option<FanOutPosition>,
    ) -> Result<bool, StoreError> {
        let jobs = &self.inner.jobs;
        let store = &self.inner.store;
        let Some(p) = position.as_mut() else {
            let durable = match jobs.load_cursor(FANOUT_CURSOR).await? {
                Some(cursor) => cursor,
                None => {
                    // First start: from the latest event on (endpoints receive what happens
                    // after they were made, and none existed before).
                    let latest = jobs.latest_sequence().await?;
                    store.fan_out(FANOUT_CURSOR, 0, latest, &[], &[]).await?;
                    return Ok(true);
                }
            };
            *position = Some(FanOutPosition {
                durable,
                at: durable,
                written: Instant::now(),
            });
            return Ok(true);
        };
        let cursor = p.at;
        let events = jobs
            .events_after(&EventQuery {
                after_sequence: cursor,
                tenant: None,
                job_id: None,
                limit: EVENTS_PAGE,
            })
            .await?;
        if events.is_empty() {
            if p.at > p.durable && p.written.elapsed() >= LAZY_WRITE {
                self.write_position(position, &[], &[], &HashMap::new())
                    .await?;
            }
            return Ok(false);
        }
        let endpoints = store.active_endpoints(MAX_ACTIVE_ENDPOINTS).await?;
        let mut by_tenant: HashMap<&str, Vec<&Endpoint>> = HashMap::new();
        for endpoint in &endpoints {
            by_tenant
                .entry(endpoint.tenant.as_str())
                .or_default()
                .push(endpoint);
        }
        let now = now_ms();
        let mut rows: Vec<NewDelivery> = Vec::new();
        let mut callbacks: Vec<Endpoint> = Vec::new();
        let mut to = cursor;
        for event in &events {
            let kind = super::event_type(event);
            let job = &event.job;
            let matching: Vec<&Endpoint> = by_tenant
                .get(event.tenant.as_str())
                .map(|list| {
                    list.iter()
                        .copied()
                        .filter(|e| {
                            e.create_time_ms <= event.time_ms
                                && e.wants(&kind, &job.id, &job.model, &job.labels)
                        })
                        .collect()
                })
                .unwrap_or_default();
            // A deleted job's last event: nothing to tell (as the streams and the AMQP relay).
            let callback = callback_url(event).filter(|_| !job.is_deleted());
            let needed = if job.is_deleted() {
                0
            } else {
                matching.len() + usize::from(callback.is_some())
            };
            if needed == 0 {
                to = event.sequence;
                continue;
            }
            if !rows.is_empty() && rows.len() + needed > MAX_ROWS_PER_COMMIT {
                break;
            }
            let body = String::from_utf8_lossy(&super::body(event)).into_owned();
            let delivery = |endpoint_id: &str| NewDelivery {
                id: super::webhook_id(endpoint_id, event.sequence),
                endpoint_id: endpoint_id.to_owned(),
                sequence: event.sequence,
                event_type: kind.clone(),
                job_id: job.id.clone(),
                event_time_ms: event.time_ms,
                body: body.clone(),
                due_ms: now,
            };
            for endpoint in matching {
                rows.push(delivery(&endpoint.id));
            }
            if let Some(url) = callback {
                let endpoint = self.callback_endpoint(event, url).await?;
                rows.push(delivery(&endpoint.id));
                if !callbacks.iter().any(|c| c.id == endpoint.id) {
                    callbacks.push(endpoint);
                }
            }
            to = event.sequence;
        }
        let Some(p) = position.as_mut() else {
            return Ok(true);
        };
        p.at = to;
        if rows.is_empty() && to - p.durable < LAZY_EVENTS && p.written.elapsed() < LAZY_WRITE {
            return Ok(true);
        }
        let known: HashMap<&str, &Endpoint> = endpoints
            .iter()
            .chain(&callbacks)
            .map(|e| (e.id.as_str(), e))
            .collect();
        if self
            .write_position(position, &callbacks, &rows, &known)
            .await?
            && !rows.is_empty()
        {
            // Whatever the claim left (no free slot, an endpoint at its bound).
            self.wake();
        }
        Ok(true)
    }

    /// Writes `rows` and moves the durable cursor to the position, in one commit; false (and
    /// the position forgotten, to be read again) when another instance moved it first. With
    /// free sending slots, the same commit claims deliveries for them, and they are sent at
    /// once (`known`: the endpoints the rows are for, as the fan-out read them).
    async fn write_position(
        &self,
        position: &mut Option<FanOutPosition>,
        callbacks: &[Endpoint],
        rows: &[NewDelivery],
        known: &HashMap<&str, &Endpoint>,
    ) -> Result<bool, StoreError> {
        let Some(p) = position.as_mut() else {
            return Ok(false);
        };
        let store = &self.inner.store;
        let slots = if rows.is_empty() {
            None
        } else {
            self.take_slots(rows.len())
        };
        let moved = match slots {
            None => {
                store
                    .fan_out(FANOUT_CURSOR, p.durable, p.at, callbacks, rows)
                    .await?
            }
            Some(permits) => {
                let claim = self.claim(permits.num_permits());
                match store
                    .fan_out_claiming(FANOUT_CURSOR, p.durable, p.at, callbacks, rows, &claim)
                    .await?
                {
                    Some(claimed) => {
                        self.send_claimed(claimed, &claim.token, permits, known);
                        true
                    }
                    None => false,
                }
            }
        };
        if moved {
            p.durable = p.at;
            p.written = Instant::now();
        } else {
            *position = None;
        }
        Ok(moved)
    }

    async fn callback_endpoint(
        &self,
        event: &StoredEvent,
        url: String,
    ) -> Result<Endpoint, StoreError> {
        let secret = self.tenant_secret(&event.tenant).await?;
        Ok(Endpoint {
            id: format!("whc_{}", event.job_id),
            tenant: event.tenant.clone(),
            kind: EndpointKind::Callback,
            url,
            description: format!("callback_url of {}", event.job_id),
            filter: EndpointFilter {
                job_id: Some(event.job_id.clone()),
                ..EndpointFilter::default()
            },
            secret,
            previous_secret: None,
            disabled: None,
            failing_since_ms: None,
            create_time_ms: event.time_ms,
            update_time_ms: event.time_ms,
            version: 1,
        })
    }

    /// The secret that signs `tenant`'s callbacks.
    pub async fn tenant_secret(&self, tenant: &str) -> Result<SigningSecret, StoreError> {
        if let Some(secret) = self
            .inner
            .tenant_secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
        {
            return Ok(secret.clone());
        }
        let secret = self.inner.store.tenant_secret(tenant).await?;
        self.inner
            .tenant_secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.to_owned(), secret.clone());
        Ok(secret)
    }

    /// How long a claim holds a delivery: past the attempt's own timeout, with room for
    /// recording it. An instance that dies mid-attempt leaves its deliveries to the others
    /// this long after it claimed them.
    fn lease(&self) -> Duration {
        self.inner.settings.timeout * 2 + Duration::from_secs(5)
    }

    /// A claim for up to `limit` deliveries now, under a new token.
    fn claim(&self, limit: usize) -> Claim {
        let now = now_ms();
        Claim {
            now_ms: now,
            until_ms: now + millis(self.lease()),
            token: uuid::Uuid::now_v7().simple().to_string(),
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
            per_endpoint: self.inner.settings.max_in_flight_per_endpoint,
        }
    }

    /// Sends each claimed delivery in a task of its own, each holding one of `permits` (taken
    /// before the claim, so every claimed delivery has its slot); unused permits go back.
    /// `known` holds endpoints already read (the fan-out's), so their deliveries skip a read.
    fn send_claimed(
        &self,
        claimed: Vec<Delivery>,
        token: &str,
        mut permits: OwnedSemaphorePermit,
        known: &HashMap<&str, &Endpoint>,
    ) {
        for delivery in claimed {
            let Some(permit) = permits.split(1) else {
                // More claimed than permits cannot happen (the claim's limit is the permits);
                // were it to, the delivery goes when its lease ends.
                break;
            };
            let endpoint = known
                .get(delivery.endpoint_id.as_str())
                .map(|e| (*e).clone());
            let engine = self.clone();
            let token = token.to_owned();
            self.inner.sending.spawn(async move {
                engine.send(delivery, &token, endpoint).await;
                drop(permit);
                engine.wake();
            });
        }
    }

    /// Up to `wanted` of this instance's free sending slots, when any is free.
    fn take_slots(&self, wanted: usize) -> Option<OwnedSemaphorePermit> {
        let free = self.inner.in_flight.available_permits().min(wanted);
        if free == 0 {
            return None;
        }
        self.inner
            .in_flight
            .clone()
            .try_acquire_many_owned(u32::try_from(free).unwrap_or(u32::MAX))
            .ok()
    }

    async fn run_sender(self, draining: CancellationToken) {
        let settings = &self.inner.settings;
        loop {
            if draining.is_cancelled() {
                break;
            }
            if self.inner.in_flight.available_permits() == 0 {
                tokio::select! {
                    () = draining.cancelled() => break,
                    () = self.inner.wake.notified() => continue,
                    () = tokio::time::sleep(settings.poll_interval) => continue,
                }
            }
            let now = now_ms();
            // A read first: claiming is a write, and most looks find nothing due.
            let due = match self.inner.store.next_delivery_due_ms().await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: the delivery queue could not be read; trying again");
                    Some(now + millis(settings.poll_interval))
                }
            };
            if due.is_none_or(|due| due > now) {
                let pause = due.map_or(settings.poll_interval, |due| {
                    Duration::from_millis(u64::try_from(due - now).unwrap_or(0))
                        .min(settings.poll_interval)
                });
                tokio::select! {
                    () = draining.cancelled() => break,
                    () = self.inner.wake.notified() => {}
                    () = tokio::time::sleep(pause) => {}
                }
                continue;
            }
            let Some(permits) = self.take_slots(usize::MAX) else {
                continue;
            };
            let slots = permits.num_permits();
            let claim = self.claim(slots);
            let mut full = false;
            match self
                .inner
                .store
                .claim_deliveries(
                    claim.now_ms,
                    claim.until_ms,
                    &claim.token,
                    claim.limit,
                    claim.per_endpoint,
                )
                .await
            {
                Ok(claimed) => {
                    full = claimed.len() >= slots;
                    self.send_claimed(claimed, &claim.token, permits, &HashMap::new());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: deliveries could not be claimed; trying again");
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                () = draining.cancelled() => break,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(settings.poll_interval) => {}
            }
        }
        // Attempts in flight finish (each is bounded by the attempt timeout).
        self.inner.sending.close();
        let wait = settings.timeout + Duration::from_secs(2);
        let _ = tokio::time::timeout(wait, self.inner.sending.wait()).await;
    }

    async fn run_upkeep(self, draining: CancellationToken) {
        let mut last_prune: Option<Instant> = None;
        loop {
            match self.inner.store.backlog(now_ms()).await {
                Ok(backlog) => {
                    *self
                        .inner
                        .metrics
                        .backlog
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = backlog;
                }
                Err(e) => tracing::debug!(error = %e, "webhooks: backlog not read"),
            }
            if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_INTERVAL) {
                last_prune = Some(Instant::now());
                let before = now_ms() - millis(self.inner.settings.retention);
                match self.inner.store.prune_deliveries(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(pruned = n, "webhooks: finished deliveries pruned"),
                    Err(e) => tracing::warn!(error = %e, "webhooks: pruning failed; will retry"),
                }
            }
            tokio::select! {
                () = draining.cancelled() => break,
                () = tokio::time::sleep(BACKLOG_INTERVAL) => {}
            }
        }
    }

    /// One attempt at `delivery`, claimed under `token`, and its outcome recorded.
    async fn send(&self, delivery: Delivery, token: &str, known: Option<Endpoint>) {
        let store = &self.inner.store;
        let read = match known {
            Some(endpoint) => Ok(Some(endpoint)),
            None => store.endpoint(&delivery.endpoint_id).await,
        };
        let endpoint = match read {
            Ok(Some(endpoint)) if endpoint.disabled.is_none() => endpoint,
            // Deleted or disabled meanwhile: nothing to send (a disable failed it already).
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, webhook_id = %delivery.id, "webhooks: endpoint not read; the delivery is sent when its lease ends");
                return;
            }
        };
        let started_ms = now_ms();
        let started = Instant::now();
        let outcome = self.attempt(&endpoint, &delivery, started_ms).await;
        let elapsed = started.elapsed();
        let (next, health) = self.decide(&delivery, &outcome, started_ms);
        let label = match next {
            Next::Delivered => "delivered",
            Next::Retry(_) => "retrying",
            Next::Failed => "failed",
        };
        let metrics = &self.inner.metrics;
        metrics.attempts.add(
            1,
            &[
                KeyValue::new("vidgate.webhook.outcome", label),
                KeyValue::new(
                    "http.response.status_code",
                    i64::from(outcome.status.unwrap_or(0)),
                ),
            ],
        );
        metrics.duration.record(
            elapsed.as_secs_f64(),
            &[KeyValue::new("vidgate.webhook.outcome", label)],
        );
        if next == Next::Delivered && delivery.sequence > 0 {
            let latency = (now_ms() - delivery.event_time_ms).max(0) as f64 / 1000.0;
            metrics.latency.record(latency, &[]);
        }
        let finish = Finish {
            delivery_id: delivery.id.clone(),
            lease_token: token.to_owned(),
            attempt: Attempt {
                number: 0,
                time_ms: started_ms,
                status: outcome.status,
                error: outcome.error.clone(),
                duration_ms: i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
            },
            next,
            health,
        };
        for attempt in 1..=RECORD_TRIES {
            match store.finish_delivery(&finish, now_ms()).await {
                Ok(Finished::Recorded { disabled }) => {
                    if let Some(reason) = disabled {
                        let kind = if matches!(finish.health, EndpointHealth::Gone(_)) {
                            "gone"
                        } else {
                            "failing"
                        };
                        metrics
                            .disabled
                            .add(1, &[KeyValue::new("vidgate.webhook.reason", kind)]);
                        tracing::warn!(endpoint = %endpoint.id, tenant = %endpoint.tenant, %reason, "webhooks: endpoint disabled; its pending deliveries failed (enable it with UpdateWebhookEndpoint, then ReplayWebhooks)");
                    }
                    if let Some(error) = &outcome.error {
                        tracing::info!(webhook_id = %delivery.id, endpoint = %endpoint.id, outcome = label, %error, "webhooks: attempt failed");
                    }
                    return;
                }
                Ok(Finished::LeaseLost) => {
                    tracing::info!(webhook_id = %delivery.id, "webhooks: the attempt's lease ended before it was recorded; another attempt follows");
                    return;
                }
                Err(e) if attempt < RECORD_TRIES => {
                    tracing::debug!(error = %e, "webhooks: attempt not recorded; trying again");
                    tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, webhook_id = %delivery.id, "webhooks: attempt not recorded; the delivery is sent again when its lease ends");
                }
            }
        }
    }

    /// What follows an attempt: for the delivery, and for its endpoint.
    fn decide(&self, delivery: &Delivery, outcome: &Outcome, now: i64) -> (Next, EndpointHealth) {
        let settings = &self.inner.settings;
        match outcome.status {
            Some(status) if (200..300).contains(&status) => {
                return (Next::Delivered, EndpointHealth::Healthy);
            }
            Some(410) => {
                return (
                    Next::Failed,
                    EndpointHealth::Gone(format!(
                        "the receiver answered 410 Gone at {}",
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH
                                + Duration::from_millis(now.max(0).unsigned_abs())
                        )
                    )),
                );
            }
            _ => {}
        }
        let health = EndpointHealth::Failing {
            disable_if_failing_since: now - millis(settings.disable_after),
        };
        let next = match settings.retry_delays.get(delivery.attempts as usize) {
            Some(delay) => Next::Retry(now + millis(jitter(*delay))),
            None => Next::Failed,
        };
        (next, health)
    }

    /// Sends `delivery` to `endpoint` once.
    async fn attempt(&self, endpoint: &Endpoint, delivery: &Delivery, now: i64) -> Outcome {
        let failed = |error: String| Outcome {
            status: None,
            error: Some(error),
        };
        let settings = &self.inner.settings;
        let Some(body) = delivery.body.as_deref() else {
            return failed("the delivery has no body (it was already delivered)".to_owned());
        };
        let url = match settings.policy.check("url", &endpoint.url).await {
            Ok(url) => url,
            Err(e) => return failed(e.to_string()),
        };
        let secrets = endpoint.signing_secrets(now);
        let refs: Vec<&SigningSecret> = secrets.iter().collect();
        let headers = match signing::sign(&delivery.id, now / 1000, body.as_bytes(), &refs) {
            Ok(headers) => headers,
            Err(e) => return failed(format!("the delivery could not be signed: {e}")),
        };
        let mut request = self
            .inner
            .client
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_owned());
        for (name, value) in headers.pairs() {
            request = request.header(name, value);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return failed(describe(&e)),
        };
        let status = response.status();
        let excerpt = read_bounded(response, settings.max_response_bytes).await;
        if status.is_success() {
            return Outcome {
                status: Some(status.as_u16()),
                error: None,
            };
        }
        let what = if status.is_redirection() {
            "a redirect, which is not followed (give the final URL)".to_owned()
        } else {
            format!("{status}")
        };
        Outcome {
            status: Some(status.as_u16()),
            error: Some(if excerpt.is_empty() {
                format!("the receiver answered {what}")
            } else {
                format!("the receiver answered {what}: {excerpt}")
            }),
        }
    }
}

/// The `callback_url` of the event's job, when it has one.
fn callback_url(event: &StoredEvent) -> Option<String> {
    use prost::Message;
    pb::CreateVideoRequest::decode(event.job.request.as_ref())
        .ok()
        .map(|r| r.callback_url)
        .filter(|url| !url.is_empty())
}

/// A transport error in words, without the URL (a receiver's URL may carry a token).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    let mut text = format!("the request {kind}");
    let mut source = std::error::Error::source(error);
    let mut depth = 0;
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
        depth += 1;
        if depth >= 4 {
            break;
        }
    }
    text
}

/// At most `limit` bytes of the response body, as a short printable excerpt.
async fn read_bounded(response: reqwest::Response, limit: usize) -> String {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    let text = String::from_utf8_lossy(&body);
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(EXCERPT_CHARS)
        .collect();
    cleaned.trim().to_owned()
}

/// `delay` ± 10 %.
fn jitter(delay: Duration) -> Duration {
    let factor = rand::random_range(0.9..=1.1);
    delay.mul_f64(factor)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(100));
            assert!((Duration::from_secs(90)..=Duration::from_secs(110)).contains(&d));
        }
    }
}
