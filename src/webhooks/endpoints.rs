//! The application layer of webhooks: what `WebhookService` (and the CLI through it) may do
//! with a tenant's endpoints, checked here once: URLs against the target policy, filters,
//! bounds, tenancy. Its one error enum, [`WebhookError`], is mapped to gRPC once (in
//! `api::error`).

use std::collections::BTreeMap;
use std::time::Duration;

use super::engine::WebhookEngine;
use super::signing::SigningSecret;
use super::target::TargetError;
use crate::job::{JobStatus, now_ms};
use crate::pb;
use crate::store::webhooks::{
    DeliveryRecord, Disabled, Endpoint, EndpointFilter, EndpointKind, NewDelivery,
};
use crate::store::{EventQuery, StoreError};

/// Longest description.
pub const MAX_DESCRIPTION_CHARS: usize = 500;
/// Most event types in a filter.
pub const MAX_EVENT_TYPES: usize = 16;
/// Most labels in a filter.
pub const MAX_FILTER_LABELS: usize = 16;
/// Default grace of a rotated-out secret.
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(86_400);
/// Longest grace of a rotated-out secret.
pub const MAX_ROTATION_GRACE: Duration = Duration::from_secs(7 * 86_400);
/// Most events one replay looks at.
pub const MAX_REPLAY_EVENTS: u32 = 10_000;
/// How long `SendTestWebhook` waits for the first attempt of its event.
pub const TEST_WAIT: Duration = Duration::from_secs(20);
/// The type of a test event.
pub const TEST_EVENT_TYPE: &str = "webhook.test";

/// Refusals and failures of webhook operations; every message names the field or the cause.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A field breaks a rule.
    #[error("{field}: {description}")]
    InvalidArgument {
        /// The request field.
        field: &'static str,
        /// The rule id (`VG-WEBHOOK-...`).
        rule: &'static str,
        /// What is allowed and what was given.
        description: String,
    },
    /// The URL is not one webhooks may go to.
    #[error(transparent)]
    TargetNotAllowed(#[from] TargetError),
    /// No such endpoint for this tenant.
    #[error("webhook endpoint {0} does not exist")]
    EndpointNotFound(String),
    /// No such delivery for this endpoint.
    #[error("webhook delivery {0} does not exist for this endpoint")]
    DeliveryNotFound(String),
    /// The tenant has as many endpoints as it may.
    #[error(
        "this tenant already has {limit} webhook endpoints ([webhooks] max_endpoints_per_tenant); delete one first"
    )]
    TooManyEndpoints {
        /// The bound.
        limit: u32,
    },
    /// The endpoint is disabled: nothing is sent to it.
    #[error(
        "webhook endpoint {id} is disabled ({reason}); enable it first (UpdateWebhookEndpoint with disabled = false)"
    )]
    EndpointDisabled {
        /// The endpoint.
        id: String,
        /// Why it is disabled.
        reason: String,
    },
    /// Changed by someone else meanwhile.
    #[error("webhook endpoint {0} was changed concurrently; read it again and retry")]
    Changed(String),
    /// The events to replay are no longer in the log.
    #[error(
        "after_sequence {cursor} is older than the retained events (kept from {first_kept}); replay from {first_kept} or later"
    )]
    EventsPruned {
        /// The sequence asked for.
        cursor: i64,
        /// The first sequence still kept.
        first_kept: i64,
    },
    /// The store cannot be reached; retry.
    #[error("the store is unavailable; retry")]
    StoreUnavailable,
    /// Something vidgate did not expect; details are in the server log.
    #[error("internal error; see the server log (ref {0})")]
    Internal(String),
}

impl WebhookError {
    /// The stable `ErrorInfo.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "INVALID_WEBHOOK_REQUEST",
            Self::TargetNotAllowed(_) => "WEBHOOK_TARGET_NOT_ALLOWED",
            Self::EndpointNotFound(_) => "WEBHOOK_ENDPOINT_NOT_FOUND",
            Self::DeliveryNotFound(_) => "WEBHOOK_DELIVERY_NOT_FOUND",
            Self::TooManyEndpoints { .. } => "TOO_MANY_WEBHOOK_ENDPOINTS",
            Self::EndpointDisabled { .. } => "WEBHOOK_ENDPOINT_DISABLED",
            Self::Changed(_) => "WEBHOOK_ENDPOINT_CHANGED",
            Self::EventsPruned { .. } => "CURSOR_EXPIRED",
            Self::StoreUnavailable => "STORE_UNAVAILABLE",
            Self::Internal(_) => "INTERNAL",
        }
    }

    /// The field and rule a refusal is about, for `BadRequest`.
    pub fn violation(&self) -> Option<(&'static str, &'static str, String)> {
        match self {
            Self::InvalidArgument {
                field,
                rule,
                description,
            } => Some((field, rule, description.clone())),
            Self::TargetNotAllowed(e) => Some((e.field(), "VG-WEBHOOK-URL", e.to_string())),
            _ => None,
        }
    }
}

impl From<StoreError> for WebhookError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => {
                tracing::warn!(error = %why, "webhooks: store unavailable");
                Self::StoreUnavailable
            }
            StoreError::VersionConflict { id, .. } => Self::Changed(id),
            StoreError::NotFound(id) => Self::EndpointNotFound(id),
            other => {
                let reference = uuid::Uuid::now_v7().simple().to_string();
                tracing::error!(error = %other, reference, "webhooks: store failure");
                Self::Internal(reference)
            }
        }
    }
}

fn invalid(field: &'static str, rule: &'static str, description: String) -> WebhookError {
    WebhookError::InvalidArgument {
        field,
        rule,
        description,
    }
}

/// The event types a filter may name.
pub fn event_types() -> Vec<String> {
    let mut types: Vec<String> = [
        JobStatus::Queued,
        JobStatus::Processing,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ]
    .iter()
    .map(|s| format!("video.{}", s.as_str()))
    .collect();
    types.push(TEST_EVENT_TYPE.to_owned());
    types
}

/// A checked filter, or the field that breaks a rule.
pub fn filter(
    event_types_given: &[String],
    model: &str,
    labels: &BTreeMap<String, String>,
) -> Result<EndpointFilter, WebhookError> {
    let known = event_types();
    if event_types_given.len() > MAX_EVENT_TYPES {
        return Err(invalid(
            "event_types",
            "VG-WEBHOOK-FILTER",
            format!(
                "at most {MAX_EVENT_TYPES} event types (got {})",
                event_types_given.len()
            ),
        ));
    }
    let mut types = Vec::new();
    for t in event_types_given {
        if !known.contains(t) {
            return Err(invalid(
                "event_types",
                "VG-WEBHOOK-FILTER",
                format!("{t:?} is not an event type; one of {}", known.join(", ")),
            ));
        }
        if !types.contains(t) {
            types.push(t.clone());
        }
    }
    if model.len() > 128 {
        return Err(invalid(
            "model",
            "VG-WEBHOOK-FILTER",
            "at most 128 bytes".to_owned(),
        ));
    }
    if labels.len() > MAX_FILTER_LABELS
        || labels
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 63 || v.len() > 63)
    {
        return Err(invalid(
            "labels",
            "VG-WEBHOOK-FILTER",
            format!(
                "at most {MAX_FILTER_LABELS} labels, keys 1-63 bytes, values at most 63 bytes (as on videos)"
            ),
        ));
    }
    Ok(EndpointFilter {
        event_types: types,
        model: (!model.is_empty()).then(|| model.to_owned()),
        labels: labels.clone(),
        job_id: None,
    })
}

fn description(text: &str) -> Result<String, WebhookError> {
    if text.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(invalid(
            "description",
            "VG-WEBHOOK-DESCRIPTION",
            format!("at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    Ok(text.to_owned())
}

/// What changes an `UpdateWebhookEndpoint` asks for.
#[derive(Debug, Clone, Default)]
pub struct EndpointChange {
    /// A new URL.
    pub url: Option<String>,
    /// A new description.
    pub description: Option<String>,
    /// A new filter (event types, model, labels: given together or kept; `None` = kept).
    pub event_types: Option<Vec<String>>,
    /// A new model filter (empty = every model).
    pub model: Option<String>,
    /// New label filter.
    pub labels: Option<BTreeMap<String, String>>,
    /// Disable (true) or enable (false).
    pub disabled: Option<bool>,
}

/// Webhook operations of one tenant's callers.
#[derive(Clone)]
pub struct WebhookEndpoints {
    engine: WebhookEngine,
}

impl WebhookEndpoints {
    /// Over `engine` (its store and settings).
    pub fn new(engine: WebhookEngine) -> Self {
        Self { engine }
    }

    /// The engine.
    pub fn engine(&self) -> &WebhookEngine {
        &self.engine
    }

    /// A new endpoint and its secret (the caller shows it once).
    pub async fn create(
        &self,
        tenant: &str,
        url: &str,
        description_text: &str,
        endpoint_filter: EndpointFilter,
    ) -> Result<Endpoint, WebhookError> {
        let settings = self.engine.settings();
        let url = settings.policy.check("url", url).await?;
        let description_text = description(description_text)?;
        let store = self.engine.store();
        let limit = settings.max_endpoints_per_tenant;
        let existing = store.list_endpoints(tenant, None, limit).await?;
        if existing.len() >= limit as usize {
            return Err(WebhookError::TooManyEndpoints { limit });
        }
        let now = now_ms();
        let endpoint = Endpoint {
            id: format!("whe_{}", uuid::Uuid::now_v7().simple()),
            tenant: tenant.to_owned(),
            kind: EndpointKind::Endpoint,
            url: url.to_string(),
            description: description_text,
            filter: endpoint_filter,
            secret: SigningSecret::generate(),
            previous_secret: None,
            disabled: None,
            failing_since_ms: None,
            create_time_ms: now,
            update_time_ms: now,
            version: 1,
        };
        store.create_endpoint(&endpoint).await?;
        Ok(endpoint)
    }

    /// The tenant's endpoint `id`.
    pub async fn get(&self, tenant: &str, id: &str) -> Result<Endpoint, WebhookError> {
        match self.engine.store().endpoint(id).await? {
            Some(e) if e.tenant == tenant && e.kind == EndpointKind::Endpoint => Ok(e),
            _ => Err(WebhookError::EndpointNotFound(id.to_owned())),
        }
    }

    /// A page of the tenant's endpoints after `after_id`.
    pub async fn list(
        &self,
        tenant: &str,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Endpoint>, WebhookError> {
        Ok(self
            .engine
            .store()
            .list_endpoints(tenant, after_id, limit)
            .await?)
    }

    /// Applies `change` (retried once over a concurrent change by delivery, e.g. a disable).
    pub async fn update(
        &self,
        tenant: &str,
        id: &str,
        change: EndpointChange,
    ) -> Result<Endpoint, WebhookError> {
        let settings = self.engine.settings();
        let url = match &change.url {
            Some(url) => Some(
                settings
                    .policy
                    .check("endpoint.url", url)
                    .await?
                    .to_string(),
            ),
            None => None,
        };
        let description_text = change.description.as_deref().map(description).transpose()?;
        let mut tries = 0;
        loop {
            tries += 1;
            let mut endpoint = self.get(tenant, id).await?;
            let now = now_ms();
            if let Some(url) = &url {
                endpoint.url = url.clone();
            }
            if let Some(text) = &description_text {
                endpoint.description = text.clone();
            }
            let types = change
                .event_types
                .clone()
                .unwrap_or_else(|| endpoint.filter.event_types.clone());
            let model = change
                .model
                .clone()
                .unwrap_or_else(|| endpoint.filter.model.clone().unwrap_or_default());
            let labels = change
                .labels
                .clone()
                .unwrap_or_else(|| endpoint.filter.labels.clone());
            endpoint.filter = filter(&types, &model, &labels)?;
            match change.disabled {
                Some(true) if endpoint.disabled.is_none() => {
                    endpoint.disabled = Some(Disabled {
                        reason: "disabled by its owner".to_owned(),
                        time_ms: now,
                    });
                }
                Some(false) => endpoint.disabled = None,
                _ => {}
            }
            endpoint.update_time_ms = now;
            match self.engine.store().update_endpoint(&endpoint).await {
                Ok(stored) => return Ok(stored),
                Err(StoreError::VersionConflict { .. }) if tries < 3 => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Deletes the tenant's endpoint `id` with its deliveries.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<(), WebhookError> {
        self.get(tenant, id).await?;
        self.engine.store().delete_endpoint(id).await?;
        Ok(())
    }

    /// A new secret for `id`; the previous one signs alongside for `grace`.
    pub async fn rotate(
        &self,
        tenant: &str,
        id: &str,
        grace: Duration,
    ) -> Result<Endpoint, WebhookError> {
        if grace > MAX_ROTATION_GRACE {
            return Err(invalid(
                "grace_seconds",
                "VG-WEBHOOK-ROTATION",
                format!(
                    "at most {} (7 days; got {})",
                    MAX_ROTATION_GRACE.as_secs(),
                    grace.as_secs()
                ),
            ));
        }
        let mut endpoint = self.get(tenant, id).await?;
        let now = now_ms();
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        let previous = std::mem::replace(&mut endpoint.secret, SigningSecret::generate());
        endpoint.previous_secret = (grace_ms > 0).then(|| (previous, now.saturating_add(grace_ms)));
        endpoint.update_time_ms = now;
        Ok(self.engine.store().update_endpoint(&endpoint).await?)
    }

    /// Queues a test event for `id` and waits up to [`TEST_WAIT`] for its first attempt.
    pub async fn send_test(&self, tenant: &str, id: &str) -> Result<DeliveryRecord, WebhookError> {
        let endpoint = self.get(tenant, id).await?;
        if let Some(disabled) = &endpoint.disabled {
            return Err(WebhookError::EndpointDisabled {
                id: id.to_owned(),
                reason: disabled.reason.clone(),
            });
        }
        let now = now_ms();
        let delivery_id = format!("msg_{id}_test_{}", uuid::Uuid::now_v7().simple());
        let video = pb::Video {
            id: "vid_test".to_owned(),
            model: endpoint.filter.model.clone().unwrap_or_default(),
            status: pb::VideoStatus::Completed as i32,
            labels: BTreeMap::from([("vidgate.test".to_owned(), "true".to_owned())]),
            create_time: Some(crate::convert::timestamp(now)),
            update_time: Some(crate::convert::timestamp(now)),
            ..Default::default()
        };
        let body =
            String::from_utf8_lossy(&super::body_of(TEST_EVENT_TYPE, now, &video)).into_owned();
        let delivery = NewDelivery {
            id: delivery_id.clone(),
            endpoint_id: id.to_owned(),
            sequence: 0,
            event_type: TEST_EVENT_TYPE.to_owned(),
            job_id: String::new(),
            event_time_ms: now,
            body,
            due_ms: now,
        };
        let store = self.engine.store();
        store.requeue(std::slice::from_ref(&delivery), now).await?;
        self.engine.wake();
        let deadline = tokio::time::Instant::now() + TEST_WAIT;
        loop {
            let record = store
                .delivery(&delivery_id)
                .await?
                .ok_or_else(|| WebhookError::DeliveryNotFound(delivery_id.clone()))?;
            if !record.attempts.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(record);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The endpoint's deliveries, newest first, before `before`.
    pub async fn deliveries(
        &self,
        tenant: &str,
        id: &str,
        before: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, WebhookError> {
        self.get(tenant, id).await?;
        Ok(self
            .engine
            .store()
            .list_deliveries(id, before, limit)
            .await?)
    }

    /// Sends one delivery again (by its `webhook-id`), with the body the event log has for it
    /// (or the one kept with it).
    pub async fn replay_one(
        &self,
        tenant: &str,
        id: &str,
        webhook_id: &str,
    ) -> Result<u64, WebhookError> {
        let endpoint = self.enabled(tenant, id).await?;
        let store = self.engine.store();
        let record = store
            .delivery(webhook_id)
            .await?
            .filter(|r| r.delivery.endpoint_id == endpoint.id)
            .ok_or_else(|| WebhookError::DeliveryNotFound(webhook_id.to_owned()))?;
        let d = record.delivery;
        let body = match d.body {
            Some(body) => body,
            None => {
                let jobs = self.engine.jobs();
                let events = jobs
                    .events_after(&EventQuery {
                        after_sequence: d.sequence - 1,
                        tenant: Some(tenant.to_owned()),
                        job_id: None,
                        limit: 1,
                    })
                    .await?;
                match events.into_iter().find(|e| e.sequence == d.sequence) {
                    Some(event) => String::from_utf8_lossy(&super::body(&event)).into_owned(),
                    None => {
                        let first_kept = jobs.pruned_through().await? + 1;
                        return Err(WebhookError::EventsPruned {
                            cursor: d.sequence,
                            first_kept,
                        });
                    }
                }
            }
        };
        let now = now_ms();
        let n = store
            .requeue(
                &[NewDelivery {
                    id: d.id,
                    endpoint_id: d.endpoint_id,
                    sequence: d.sequence,
                    event_type: d.event_type,
                    job_id: d.job_id,
                    event_time_ms: d.event_time_ms,
                    body,
                    due_ms: now,
                }],
                now,
            )
            .await?;
        self.engine.wake();
        Ok(n)
    }

    /// Sends again every event after `after_sequence` that the endpoint's filters match (at
    /// most [`MAX_REPLAY_EVENTS`] looked at): how many were queued, the last sequence looked
    /// at, and whether the log holds more.
    pub async fn replay_after(
        &self,
        tenant: &str,
        id: &str,
        after_sequence: i64,
    ) -> Result<(u64, i64, bool), WebhookError> {
        if after_sequence < 0 {
            return Err(invalid(
                "after_sequence",
                "VG-WEBHOOK-REPLAY",
                format!("must be 0 or more (got {after_sequence})"),
            ));
        }
        let endpoint = self.enabled(tenant, id).await?;
        let jobs = self.engine.jobs();
        let pruned = jobs.pruned_through().await?;
        if after_sequence < pruned {
            return Err(WebhookError::EventsPruned {
                cursor: after_sequence,
                first_kept: pruned + 1,
            });
        }
        let events = jobs
            .events_after(&EventQuery {
                after_sequence,
                tenant: Some(tenant.to_owned()),
                job_id: None,
                limit: MAX_REPLAY_EVENTS,
            })
            .await?;
        let more = events.len() >= MAX_REPLAY_EVENTS as usize;
        let last = events.last().map_or(after_sequence, |e| e.sequence);
        let now = now_ms();
        let deliveries: Vec<NewDelivery> = events
            .iter()
            .filter(|event| {
                if event.job.is_deleted() {
                    return false;
                }
                let kind = super::event_type(event);
                endpoint.wants(&kind, &event.job.id, &event.job.model, &event.job.labels)
            })
            .map(|event| NewDelivery {
                id: super::webhook_id(&endpoint.id, event.sequence),
                endpoint_id: endpoint.id.clone(),
                sequence: event.sequence,
                event_type: super::event_type(event),
                job_id: event.job_id.clone(),
                event_time_ms: event.time_ms,
                body: String::from_utf8_lossy(&super::body(event)).into_owned(),
                due_ms: now,
            })
            .collect();
        let mut queued = 0;
        for chunk in deliveries.chunks(1_000) {
            queued += self.engine.store().requeue(chunk, now).await?;
        }
        self.engine.wake();
        Ok((queued, last, more))
    }

    async fn enabled(&self, tenant: &str, id: &str) -> Result<Endpoint, WebhookError> {
        let endpoint = self.get(tenant, id).await?;
        if let Some(disabled) = &endpoint.disabled {
            return Err(WebhookError::EndpointDisabled {
                id: id.to_owned(),
                reason: disabled.reason.clone(),
            });
        }
        Ok(endpoint)
    }

    /// Checks a job's `callback_url` (at creation).
    pub async fn check_callback(&self, url: &str) -> Result<(), WebhookError> {
        self.engine
            .settings()
            .policy
            .check("callback_url", url)
            .await?;
        Ok(())
    }
}
