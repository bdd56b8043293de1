//! Webhook endpoints and deliveries, behind one trait implemented by both stores.
//!
//! The event log is the source: a fan-out step reads it from a durable cursor and writes one
//! delivery per (event, matching endpoint), **in the same commit that moves the cursor**
//! ([`WebhookStore::fan_out`], fenced by the cursor's previous value), so an event is fanned
//! out once, even by two instances that both believe they hold the fan-out role. A delivery is
//! keyed by its `webhook-id` (stable per event and endpoint), pending until delivered or
//! failed for good. Senders claim due deliveries with a lease ([`WebhookStore::claim_deliveries`]),
//! at most a given number in flight per endpoint across all instances, and record each attempt
//! fenced by that lease ([`WebhookStore::finish_delivery`]). Nothing here knows HTTP.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::StoreError;
use crate::webhooks::signing::SigningSecret;

/// What kind of receiver an endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKind {
    /// Made over `WebhookService`: a tenant's URL with filters.
    Endpoint,
    /// A job's own `callback_url`: that job's events only, signed with the tenant's callback
    /// secret. Not listed among the tenant's endpoints.
    Callback,
}

impl EndpointKind {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Endpoint => "endpoint",
            Self::Callback => "callback",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "endpoint" => Ok(Self::Endpoint),
            "callback" => Ok(Self::Callback),
            other => Err(StoreError::Corrupt(format!(
                "webhook endpoint kind {other:?} is unknown"
            ))),
        }
    }
}

/// Which events an endpoint receives (all of them must match; empty means any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointFilter {
    /// Event types (`video.completed`, ...); empty = every type.
    pub event_types: Vec<String>,
    /// Only jobs of this model.
    pub model: Option<String>,
    /// Every one of these labels must be on the job with this value.
    pub labels: BTreeMap<String, String>,
    /// Only this job (a callback).
    pub job_id: Option<String>,
}

/// Why and when an endpoint stopped receiving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disabled {
    /// In words (`410 Gone`, `failing since ...`, `disabled by its owner`).
    pub reason: String,
    /// Unix ms.
    pub time_ms: i64,
}

/// A receiver of webhooks.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// `whe_...` (endpoints) or `whc_<job>` (callbacks).
    pub id: String,
    /// Its owner.
    pub tenant: String,
    /// Endpoint or callback.
    pub kind: EndpointKind,
    /// Where deliveries are POSTed.
    pub url: String,
    /// The owner's words.
    pub description: String,
    /// Which events it receives.
    pub filter: EndpointFilter,
    /// Signs every delivery.
    pub secret: SigningSecret,
    /// During a rotation: the previous secret, which signs alongside until the given Unix ms.
    pub previous_secret: Option<(SigningSecret, i64)>,
    /// Set when it receives nothing more.
    pub disabled: Option<Disabled>,
    /// The first failed attempt since the last success (Unix ms).
    pub failing_since_ms: Option<i64>,
    /// Unix ms.
    pub create_time_ms: i64,
    /// Unix ms.
    pub update_time_ms: i64,
    /// Optimistic version: an update based on an older one is refused.
    pub version: i64,
}

impl Endpoint {
    /// Whether `event` (its type, the job's model and labels) is one this endpoint receives.
    pub fn wants(
        &self,
        event_type: &str,
        job_id: &str,
        model: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        let filter = &self.filter;
        self.disabled.is_none()
            && (filter.event_types.is_empty() || filter.event_types.iter().any(|t| t == event_type))
            && filter.model.as_deref().is_none_or(|m| m == model)
            && filter.job_id.as_deref().is_none_or(|j| j == job_id)
            && filter
                .labels
                .iter()
                .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
    }

    /// The secrets that sign a delivery at `now_ms`: the current one, and the previous one
    /// while its grace lasts.
    pub fn signing_secrets(&self, now_ms: i64) -> Vec<SigningSecret> {
        let mut secrets = vec![self.secret.clone()];
        if let Some((previous, until)) = &self.previous_secret
            && *until > now_ms
        {
            secrets.push(previous.clone());
        }
        secrets
    }
}

/// Where a delivery is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for its next attempt (or in flight).
    Pending,
    /// A 2xx was received.
    Delivered,
    /// Every attempt failed, or the endpoint was disabled.
    Failed,
}

impl DeliveryState {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "pending" => Ok(Self::Pending),
            "delivered" => Ok(Self::Delivered),
            "failed" => Ok(Self::Failed),
            other => Err(StoreError::Corrupt(format!(
                "webhook delivery state {other:?} is unknown"
            ))),
        }
    }
}

/// One event to send to one endpoint, as the fan-out (or a replay, or a test) makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// The `webhook-id`.
    pub id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The event's sequence (0 for a test event).
    pub sequence: i64,
    /// `video.completed`, ... (`webhook.test`).
    pub event_type: String,
    /// The job (empty for a test event).
    pub job_id: String,
    /// When the event happened (Unix ms): the body's `timestamp`.
    pub event_time_ms: i64,
    /// The JSON body.
    pub body: String,
    /// When to send it first.
    pub due_ms: i64,
}

/// A delivery as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The `webhook-id`.
    pub id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The event's sequence (0 for a test event).
    pub sequence: i64,
    /// The event's type.
    pub event_type: String,
    /// The job.
    pub job_id: String,
    /// The body's `timestamp` (Unix ms).
    pub event_time_ms: i64,
    /// The JSON body; gone once delivered (a replay rebuilds it from the event log).
    pub body: Option<String>,
    /// Pending, delivered or failed.
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (Unix ms; meaningful while pending).
    pub next_attempt_ms: i64,
    /// The status code of the last attempt, if it got a response.
    pub last_status: Option<u16>,
    /// What went wrong in the last attempt.
    pub last_error: Option<String>,
    /// Unix ms.
    pub create_time_ms: i64,
    /// Unix ms.
    pub update_time_ms: i64,
}

/// One attempt at a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first.
    pub number: u32,
    /// When it started (Unix ms).
    pub time_ms: i64,
    /// The response's status code, if one came.
    pub status: Option<u16>,
    /// What went wrong (none for a 2xx).
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: i64,
}

/// A delivery with its most recent attempts, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// The delivery.
    pub delivery: Delivery,
    /// Its latest attempts, newest first (at most [`RECENT_ATTEMPTS`]).
    pub attempts: Vec<Attempt>,
}

/// How many attempts a listing shows per delivery.
pub const RECENT_ATTEMPTS: u32 = 10;

/// What becomes of a delivery after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// A 2xx: done.
    Delivered,
    /// Try again at this Unix ms.
    Retry(i64),
    /// No more attempts.
    Failed,
}

/// What an attempt says about its endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointHealth {
    /// A success: the endpoint is not failing.
    Healthy,
    /// A failure: the endpoint is disabled once it has been failing since before this Unix ms.
    Failing {
        /// Disable when `failing_since_ms` is at or before this.
        disable_if_failing_since: i64,
    },
    /// Disable at once (`410 Gone`), for this reason.
    Gone(String),
}

/// An attempt's outcome, recorded by its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// The delivery.
    pub delivery_id: String,
    /// The sender's claim.
    pub lease_token: String,
    /// The attempt.
    pub attempt: Attempt,
    /// What becomes of the delivery.
    pub next: Next,
    /// What becomes of the endpoint.
    pub health: EndpointHealth,
}

/// What [`WebhookStore::finish_delivery`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Recorded.
    Recorded {
        /// The endpoint was disabled by this attempt: why.
        disabled: Option<String>,
    },
    /// The lease no longer held the delivery (it ended and another sender claimed it, or the
    /// endpoint or delivery was deleted): nothing was written.
    LeaseLost,
}

/// A claim of due deliveries for one sender: see [`WebhookStore::claim_deliveries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Due at or before this (Unix ms).
    pub now_ms: i64,
    /// The lease ends then.
    pub until_ms: i64,
    /// The lease's token (unique per claim).
    pub token: String,
    /// At most this many.
    pub limit: u32,
    /// At most this many leased per endpoint, counting every claim.
    pub per_endpoint: u32,
}

/// Deliveries waiting (for the backlog metric).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Pending deliveries.
    pub pending: u64,
    /// The due time of the oldest pending one that is due (Unix ms).
    pub oldest_due_ms: Option<i64>,
    /// Disabled endpoints.
    pub disabled_endpoints: u64,
}

/// Webhook endpoints and their deliveries. Implemented by both stores; every write is
/// durable when it returns.
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// Inserts a new endpoint.
    async fn create_endpoint(&self, endpoint: &Endpoint) -> Result<(), StoreError>;

    /// An endpoint by id (any tenant: callers check the tenant).
    async fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, StoreError>;

    /// A page of `tenant`'s endpoints (kind `endpoint`), by id, after `after_id`.
    async fn list_endpoints(
        &self,
        tenant: &str,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Endpoint>, StoreError>;

    /// Every endpoint that is not disabled (for the fan-out), at most `limit`.
    async fn active_endpoints(&self, limit: u32) -> Result<Vec<Endpoint>, StoreError>;

    /// Writes `endpoint` if its stored version still equals `endpoint.version`; returns it
    /// with the next version. [`StoreError::VersionConflict`] otherwise, [`StoreError::NotFound`]
    /// when it is gone. Disabling fails its pending deliveries in the same commit.
    async fn update_endpoint(&self, endpoint: &Endpoint) -> Result<Endpoint, StoreError>;

    /// Deletes an endpoint with its deliveries; false when there was none.
    async fn delete_endpoint(&self, id: &str) -> Result<bool, StoreError>;

    /// In one commit: inserts `deliveries` (one already there, same id, is left as it is),
    /// inserts `callbacks` (endpoints, when missing) and moves cursor `cursor` from `from` to
    /// `to`. False, and nothing written, when the cursor was no longer at `from` (another
    /// instance fanned out first). A cursor never saved counts as at `from` when `from` is 0.
    async fn fan_out(
        &self,
        cursor: &str,
        from: i64,
        to: i64,
        callbacks: &[Endpoint],
        deliveries: &[NewDelivery],
    ) -> Result<bool, StoreError>;

    /// [`WebhookStore::fan_out`], writing the new deliveries already leased to `claim` as far
    /// as its bounds allow (at most `claim.limit`, and per endpoint `claim.per_endpoint`
    /// counting leases held by anyone): the instance that fans out sends what it just wrote,
    /// without a second commit. Returns the deliveries it leased; `None`, and nothing
    /// written, when the cursor had moved.
    async fn fan_out_claiming(
        &self,
        cursor: &str,
        from: i64,
        to: i64,
        callbacks: &[Endpoint],
        deliveries: &[NewDelivery],
        claim: &Claim,
    ) -> Result<Option<Vec<Delivery>>, StoreError>;

    /// Makes each of `deliveries` pending again, due at its `due_ms`, with its body (inserting
    /// it when missing): a replay or a test event. Returns how many.
    async fn requeue(&self, deliveries: &[NewDelivery], now_ms: i64) -> Result<u64, StoreError>;

    /// Claims at most `limit` pending deliveries due at `now_ms` whose endpoint is enabled,
    /// with a lease `token` until `until_ms`, soonest first; an endpoint never has more than
    /// `per_endpoint` leased at once (counting other claims, also of other instances).
    async fn claim_deliveries(
        &self,
        now_ms: i64,
        until_ms: i64,
        token: &str,
        limit: u32,
        per_endpoint: u32,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// Records one attempt, fenced by its lease, and what follows for the delivery and the
    /// endpoint, in one commit. Disabling an endpoint fails its pending deliveries.
    async fn finish_delivery(&self, finish: &Finish, now_ms: i64) -> Result<Finished, StoreError>;

    /// A delivery by its `webhook-id`.
    async fn delivery(&self, id: &str) -> Result<Option<DeliveryRecord>, StoreError>;

    /// A page of an endpoint's deliveries, newest first, before `(create_time_ms, id)`.
    async fn list_deliveries(
        &self,
        endpoint_id: &str,
        before: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError>;

    /// The backlog at `now_ms`.
    async fn backlog(&self, now_ms: i64) -> Result<Backlog, StoreError>;

    /// The earliest due time of a pending delivery, if any.
    async fn next_delivery_due_ms(&self) -> Result<Option<i64>, StoreError>;

    /// Deletes finished deliveries (and their attempts) last changed before `before_ms`, and
    /// callbacks with nothing left to send created before it; returns how many deliveries.
    async fn prune_deliveries(&self, before_ms: i64) -> Result<u64, StoreError>;

    /// The secret that signs `tenant`'s callbacks, made (and stored) on first use.
    async fn tenant_secret(&self, tenant: &str) -> Result<SigningSecret, StoreError>;
}

/// The columns [`endpoint_from_row`] reads, in order (a macro, so that queries built with
/// `concat!` stay `&'static str`).
macro_rules! endpoint_columns {
    () => {
        "id, tenant, kind, url, description, event_types, model, labels, job_id, secret, \
         previous_secret, previous_until_ms, disabled_reason, disabled_ms, failing_since_ms, \
         create_time_ms, update_time_ms, version"
    };
}
pub(crate) use endpoint_columns;

/// The columns [`delivery_from_row`] reads, in order.
macro_rules! delivery_columns {
    () => {
        "id, endpoint_id, sequence, event_type, job_id, event_time_ms, body, state, attempts, \
         next_attempt_ms, last_status, last_error, create_time_ms, update_time_ms"
    };
}
pub(crate) use delivery_columns;

fn column<'r, R, T>(row: &'r R, i: usize, what: &str) -> Result<T, StoreError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    T: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    row.try_get(i)
        .map_err(|e| corrupt(&format!("{what} column {i}"), e))
}

/// Reads an endpoint row ([`ENDPOINT_COLUMNS`]) back.
pub(crate) fn endpoint_from_row<'r, R>(row: &'r R) -> Result<Endpoint, StoreError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let w = "webhook endpoint";
    let id: String = column(row, 0, w)?;
    let what = format!("webhook endpoint {id}");
    let secret_of = |text: &str| SigningSecret::parse(text).map_err(|e| corrupt(&what, e));
    let kind: String = column(row, 2, w)?;
    let event_types: String = column(row, 5, w)?;
    let labels: String = column(row, 7, w)?;
    let secret: String = column(row, 9, w)?;
    let previous_secret: Option<String> = column(row, 10, w)?;
    let previous_until_ms: Option<i64> = column(row, 11, w)?;
    let disabled_reason: Option<String> = column(row, 12, w)?;
    let disabled_ms: Option<i64> = column(row, 13, w)?;
    let previous_secret = match (previous_secret, previous_until_ms) {
        (Some(text), Some(until)) => Some((secret_of(&text)?, until)),
        _ => None,
    };
    let disabled = match (disabled_reason, disabled_ms) {
        (Some(reason), Some(time_ms)) => Some(Disabled { reason, time_ms }),
        _ => None,
    };
    Ok(Endpoint {
        kind: EndpointKind::parse(&kind)?,
        tenant: column(row, 1, w)?,
        url: column(row, 3, w)?,
        description: column(row, 4, w)?,
        filter: EndpointFilter {
            event_types: serde_json::from_str(&event_types).map_err(|e| corrupt(&what, e))?,
            model: column(row, 6, w)?,
            labels: serde_json::from_str(&labels).map_err(|e| corrupt(&what, e))?,
            job_id: column(row, 8, w)?,
        },
        secret: secret_of(&secret)?,
        previous_secret,
        disabled,
        failing_since_ms: column(row, 14, w)?,
        create_time_ms: column(row, 15, w)?,
        update_time_ms: column(row, 16, w)?,
        version: column(row, 17, w)?,
        id,
    })
}

/// Reads a delivery row ([`DELIVERY_COLUMNS`]) back.
pub(crate) fn delivery_from_row<'r, R>(row: &'r R) -> Result<Delivery, StoreError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let w = "webhook delivery";
    let state: String = column(row, 7, w)?;
    let attempts: i64 = column(row, 8, w)?;
    let last_status: Option<i64> = column(row, 10, w)?;
    Ok(Delivery {
        id: column(row, 0, w)?,
        endpoint_id: column(row, 1, w)?,
        sequence: column(row, 2, w)?,
        event_type: column(row, 3, w)?,
        job_id: column(row, 4, w)?,
        event_time_ms: column(row, 5, w)?,
        body: column(row, 6, w)?,
        state: DeliveryState::parse(&state)?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        next_attempt_ms: column(row, 9, w)?,
        last_status: last_status.and_then(|s| u16::try_from(s).ok()),
        last_error: column(row, 11, w)?,
        create_time_ms: column(row, 12, w)?,
        update_time_ms: column(row, 13, w)?,
    })
}

/// The columns of an attempt row: delivery id, attempt, time, status, error, duration.
pub(crate) type AttemptRow = (String, i64, i64, Option<i64>, Option<String>, i64);

/// An endpoint's columns as written (the same order as [`ENDPOINT_COLUMNS`]).
pub(crate) struct EndpointColumns {
    pub event_types: String,
    pub labels: String,
    pub previous_secret: Option<String>,
    pub previous_until_ms: Option<i64>,
    pub disabled_reason: Option<String>,
    pub disabled_ms: Option<i64>,
}

/// The encoded columns of `endpoint`.
pub(crate) fn encode_endpoint(endpoint: &Endpoint) -> EndpointColumns {
    // Vectors and maps of strings always serialize.
    let event_types = serde_json::to_string(&endpoint.filter.event_types)
        .unwrap_or_else(|_| unreachable!("strings serialize"));
    let labels = serde_json::to_string(&endpoint.filter.labels)
        .unwrap_or_else(|_| unreachable!("strings serialize"));
    EndpointColumns {
        event_types,
        labels,
        previous_secret: endpoint
            .previous_secret
            .as_ref()
            .map(|(s, _)| s.expose().to_owned()),
        previous_until_ms: endpoint.previous_secret.as_ref().map(|(_, until)| *until),
        disabled_reason: endpoint.disabled.as_ref().map(|d| d.reason.clone()),
        disabled_ms: endpoint.disabled.as_ref().map(|d| d.time_ms),
    }
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {error}"))
}

/// Groups attempt rows (ordered by delivery, newest attempt first) under their deliveries.
pub(crate) fn with_attempts(
    deliveries: Vec<Delivery>,
    attempts: Vec<AttemptRow>,
) -> Vec<DeliveryRecord> {
    let mut by_delivery: std::collections::HashMap<String, Vec<Attempt>> =
        std::collections::HashMap::new();
    for (delivery_id, number, time_ms, status, error, duration_ms) in attempts {
        let list = by_delivery.entry(delivery_id).or_default();
        if list.len() < RECENT_ATTEMPTS as usize {
            list.push(Attempt {
                number: u32::try_from(number).unwrap_or(u32::MAX),
                time_ms,
                status: status.and_then(|s| u16::try_from(s).ok()),
                error,
                duration_ms,
            });
        }
    }
    deliveries
        .into_iter()
        .map(|delivery| DeliveryRecord {
            attempts: by_delivery.remove(&delivery.id).unwrap_or_default(),
            delivery,
        })
        .collect()
}

/// The longest error text kept per attempt.
pub const MAX_ERROR_CHARS: usize = 512;

/// `text` cut to [`MAX_ERROR_CHARS`] characters.
pub(crate) fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

/// Why an endpoint failing since `since_ms` is disabled at `now_ms`.
pub(crate) fn failing_reason(since_ms: i64, now_ms: i64) -> String {
    let hours = (now_ms - since_ms).max(0) / 3_600_000;
    format!(
        "every attempt failed for {hours} hours (since {})",
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(since_ms.max(0).unsigned_abs())
        )
    )
}

/// Which of `rows` a fan-out leases to its own sender (see [`WebhookStore::fan_out_claiming`]):
/// in order, at most `claim.limit` in all, and per endpoint at most `claim.per_endpoint`
/// counting `busy` (leases already held, by endpoint).
pub(crate) fn fan_out_leases(
    rows: &[NewDelivery],
    busy: &std::collections::HashMap<String, i64>,
    claim: &Claim,
) -> Vec<bool> {
    let mut held: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    let mut taken = 0u32;
    rows.iter()
        .map(|row| {
            let n = held
                .entry(row.endpoint_id.as_str())
                .or_insert_with(|| busy.get(&row.endpoint_id).copied().unwrap_or(0));
            let lease = taken < claim.limit && *n < i64::from(claim.per_endpoint);
            if lease {
                *n += 1;
                taken += 1;
            }
            lease
        })
        .collect()
}

/// A delivery a fan-out wrote and leased, as stored.
pub(crate) fn fanned_out(row: &NewDelivery) -> Delivery {
    Delivery {
        id: row.id.clone(),
        endpoint_id: row.endpoint_id.clone(),
        sequence: row.sequence,
        event_type: row.event_type.clone(),
        job_id: row.job_id.clone(),
        event_time_ms: row.event_time_ms,
        body: Some(row.body.clone()),
        state: DeliveryState::Pending,
        attempts: 0,
        next_attempt_ms: row.due_ms,
        last_status: None,
        last_error: None,
        create_time_ms: row.due_ms,
        update_time_ms: row.due_ms,
    }
}
