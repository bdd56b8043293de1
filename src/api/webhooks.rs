//! `vidgate.v1.WebhookService`: the gRPC adapter of [`WebhookEndpoints`]. It authenticates,
//! parses each request into the layer's terms, and renders endpoints and deliveries; errors
//! are mapped once (`ApiError` -> `Status`).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::auth::Authenticator;
use super::error::ApiError;
use crate::convert;
use crate::domain::Tenant;
use crate::pb;
use crate::pb::webhook_service_server::WebhookService;
use crate::store::webhooks::{DeliveryRecord, DeliveryState, Endpoint};
use crate::webhooks::endpoints::{
    DEFAULT_ROTATION_GRACE, EndpointChange, WebhookEndpoints, WebhookError, filter,
};

/// Page size when none is asked for.
const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page.
const MAX_PAGE_SIZE: u32 = 100;
/// Fields `UpdateWebhookEndpoint` may change.
const UPDATABLE: [&str; 6] = [
    "url",
    "description",
    "event_types",
    "model",
    "labels",
    "disabled",
];

/// The service.
#[derive(Clone)]
pub struct WebhookApi {
    endpoints: WebhookEndpoints,
    auth: Arc<Authenticator>,
    draining: CancellationToken,
}

impl WebhookApi {
    /// Over the webhooks layer, with the same authentication as `VideoService`.
    pub fn new(
        endpoints: WebhookEndpoints,
        auth: Arc<Authenticator>,
        draining: CancellationToken,
    ) -> Self {
        Self {
            endpoints,
            auth,
            draining,
        }
    }

    fn tenant<T>(&self, request: &Request<T>) -> Result<Tenant, ApiError> {
        if self.draining.is_cancelled() {
            return Err(ApiError::ShuttingDown {
                last_sequence: None,
                next_offset: None,
            });
        }
        self.auth.authenticate(request.metadata())
    }
}

fn invalid(field: &'static str, description: String) -> ApiError {
    ApiError::Webhooks(WebhookError::InvalidArgument {
        field,
        rule: "VG-WEBHOOK-REQUEST",
        description,
    })
}

fn required_id(field: &'static str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(invalid(field, "is required".to_owned()));
    }
    if id.len() > 128 {
        return Err(invalid(field, "at most 128 bytes".to_owned()));
    }
    Ok(())
}

fn page_size(size: i32) -> Result<u32, ApiError> {
    match size {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => Err(invalid(
            "page_size",
            format!("must not be negative (got {n})"),
        )),
        n => Ok(u32::try_from(n).unwrap_or(MAX_PAGE_SIZE).min(MAX_PAGE_SIZE)),
    }
}

fn token_of(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text)
}

fn token_text(token: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| {
            invalid(
                "page_token",
                "is not a token this service gave; pass next_page_token unchanged".to_owned(),
            )
        })
}

fn time(ms: Option<i64>) -> Option<pbjson_types::Timestamp> {
    ms.map(convert::timestamp)
}

/// An endpoint as the API shows it (never its secrets).
pub fn endpoint_pb(e: &Endpoint, now_ms: i64) -> pb::WebhookEndpoint {
    pb::WebhookEndpoint {
        id: e.id.clone(),
        url: e.url.clone(),
        description: e.description.clone(),
        event_types: e.filter.event_types.clone(),
        model: e.filter.model.clone().unwrap_or_default(),
        labels: e.filter.labels.clone(),
        disabled: e.disabled.is_some(),
        disabled_reason: e
            .disabled
            .as_ref()
            .map(|d| d.reason.clone())
            .unwrap_or_default(),
        create_time: time(Some(e.create_time_ms)),
        update_time: time(Some(e.update_time_ms)),
        previous_secret_expire_time: time(
            e.previous_secret
                .as_ref()
                .map(|(_, until)| *until)
                .filter(|until| *until > now_ms),
        ),
        failing_since: time(e.failing_since_ms),
    }
}

/// A delivery as the API shows it.
pub fn delivery_pb(r: &DeliveryRecord) -> pb::WebhookDelivery {
    let d = &r.delivery;
    let state = match d.state {
        DeliveryState::Pending => pb::WebhookDeliveryState::Pending,
        DeliveryState::Delivered => pb::WebhookDeliveryState::Delivered,
        DeliveryState::Failed => pb::WebhookDeliveryState::Undeliverable,
    };
    pb::WebhookDelivery {
        webhook_id: d.id.clone(),
        endpoint_id: d.endpoint_id.clone(),
        sequence: d.sequence,
        event_type: d.event_type.clone(),
        video_id: d.job_id.clone(),
        state: state as i32,
        attempts: d.attempts,
        next_attempt_time: time((d.state == DeliveryState::Pending).then_some(d.next_attempt_ms)),
        recent_attempts: r
            .attempts
            .iter()
            .map(|a| pb::WebhookAttempt {
                number: a.number,
                time: time(Some(a.time_ms)),
                http_status: u32::from(a.status.unwrap_or(0)),
                error: a.error.clone().unwrap_or_default(),
                duration_ms: u32::try_from(a.duration_ms).unwrap_or(u32::MAX),
            })
            .collect(),
        create_time: time(Some(d.create_time_ms)),
    }
}

#[tonic::async_trait]
impl WebhookService for WebhookApi {
    async fn create_webhook_endpoint(
        &self,
        request: Request<pb::CreateWebhookEndpointRequest>,
    ) -> Result<Response<pb::CreateWebhookEndpointResponse>, Status> {
        let tenant = self.tenant(&request)?;
        let r = request.into_inner();
        if r.url.is_empty() {
            return Err(invalid(
                "url",
                "is required (e.g. https://hooks.example.com/vidgate)".into(),
            )
            .into());
        }
        let endpoint_filter =
            filter(&r.event_types, &r.model, &r.labels).map_err(ApiError::from)?;
        let endpoint = self
            .endpoints
            .create(&tenant.0, &r.url, &r.description, endpoint_filter)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::CreateWebhookEndpointResponse {
            endpoint: Some(endpoint_pb(&endpoint, crate::job::now_ms())),
            signing_secret: endpoint.secret.expose().to_owned(),
        }))
    }

    async fn get_webhook_endpoint(
        &self,
        request: Request<pb::GetWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let tenant = self.tenant(&request)?;
        let id = request.into_inner().id;
        required_id("id", &id)?;
        let endpoint = self
            .endpoints
            .get(&tenant.0, &id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(endpoint_pb(&endpoint, crate::job::now_ms())))
    }

    async fn list_webhook_endpoints(
        &self,
        request: Request<pb::ListWebhookEndpointsRequest>,
    ) -> Result<Response<pb::ListWebhookEndpointsResponse>, Status> {
        let tenant = self.tenant(&request)?;
        let r = request.into_inner();
        let size = page_size(r.page_size)?;
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(token_text(&r.page_token)?)
        };
        let endpoints = self
            .endpoints
            .list(&tenant.0, after.as_deref(), size + 1)
            .await
            .map_err(ApiError::from)?;
        let more = endpoints.len() > size as usize;
        let page: Vec<&Endpoint> = endpoints.iter().take(size as usize).collect();
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => token_of(&last.id),
            _ => String::new(),
        };
        let now = crate::job::now_ms();
        Ok(Response::new(pb::ListWebhookEndpointsResponse {
            endpoints: page.iter().map(|e| endpoint_pb(e, now)).collect(),
            next_page_token,
        }))
    }

    async fn update_webhook_endpoint(
        &self,
        request: Request<pb::UpdateWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let tenant = self.tenant(&request)?;
        let r = request.into_inner();
        let Some(endpoint) = r.endpoint else {
            return Err(invalid("endpoint", "is required (with endpoint.id)".into()).into());
        };
        required_id("endpoint.id", &endpoint.id)?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(invalid(
                "update_mask",
                format!("name the fields to change, among {}", UPDATABLE.join(", ")),
            )
            .into());
        }
        let mut change = EndpointChange::default();
        for path in &paths {
            match path.as_str() {
                "url" => change.url = Some(endpoint.url.clone()),
                "description" => change.description = Some(endpoint.description.clone()),
                "event_types" => change.event_types = Some(endpoint.event_types.clone()),
                "model" => change.model = Some(endpoint.model.clone()),
                "labels" => change.labels = Some(endpoint.labels.clone()),
                "disabled" => change.disabled = Some(endpoint.disabled),
                other => {
                    return Err(invalid(
                        "update_mask",
                        format!(
                            "{other:?} cannot be changed; the fields are {}",
                            UPDATABLE.join(", ")
                        ),
                    )
                    .into());
                }
            }
        }
        let updated = self
            .endpoints
            .update(&tenant.0, &endpoint.id, change)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(endpoint_pb(&updated, crate::job::now_ms())))
    }

    async fn delete_webhook_endpoint(
        &self,
        request: Request<pb::DeleteWebhookEndpointRequest>,
    ) -> Result<Response<pb::DeleteWebhookEndpointResponse>, Status> {
        let tenant = self.tenant(&request)?;
        let id = request.into_inner().id;
        required_id("id", &id)?;
        self.endpoints
            .delete(&tenant.0, &id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::DeleteWebhookEndpointResponse {}))
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::RotateWebhookSecretResponse>, Status> {
        let tenant = self.tenant(&request)?;
        let r = request.into_inner();
        required_id("id", &r.id)?;
        let grace = match r.grace_seconds {
            0 => DEFAULT_ROTATION_GRACE,
            s => Duration::from_secs(u64::from(s)),
        };
        let endpoint = self
            .endpoints
            .rotate(&tenant.0, &r.id, grace)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::RotateWebhookSecretResponse {
            endpoint: Some(endpoint_pb(&endpoint, crate::job::now_ms())),
            signing_secret: endpoint.secret.expose().to_owned(),
        }))
    }

    async fn send_test_webhook(
        &self,
        request: Request<pb::SendTestWebhookRequest>,
    ) -> Result<Response<pb::WebhookDelivery>, Status> {
        let tenant = self.tenant(&request)?;
        let id = request.into_inner().id;
        required_id("id", &id)?;
        let record = self
            .endpoints
            .send_test(&tenant.0, &id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(delivery_pb(&record)))
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        let tenant = self.tenant(&request)?;
        let r = request.into_inner();
        required_id("endpoint_id", &r.endpoint_id)?;
        let size = page_size(r.page_size)?;
        let before = if r.page_token.is_empty() {
            None
        } else {
            let text = token_text(&r.page_token)?;
            let parsed = text
                .split_once('/')
                .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id.to_owned())));
            Some(parsed.ok_or_else(|| {
                invalid(
                    "page_token",
                    "is not a token this service gave; pass next_page_token unchanged".into(),
                )
            })?)
        };
        let records = self
            .endpoints
            .deliveries(&tenant.0, &r.endpoint_id, before, size + 1)
            .await
            .map_err(ApiError::from)?;
        let more = records.len() > size as usize;
        let page: Vec<&DeliveryRecord> = records.iter().take(size as usize).collect();
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => token_of(&format!(
                "{}/{}",
                last.delivery.create_time_ms, last.delivery.id
            )),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListWebhookDeliveriesResponse {
            deliveries: page.iter().map(|r| delivery_pb(r)).collect(),
            next_page_token,
        }))
    }

    async fn replay_webhooks(
        &self,
        request: Request<pb::ReplayWebhooksRequest>,
    ) -> Result<Response<pb::ReplayWebhooksResponse>, Status> {
        let tenant = self.tenant(&request)?;
        let r = request.into_inner();
        required_id("endpoint_id", &r.endpoint_id)?;
        let (queued, last_sequence, more) = match r.what {
            Some(pb::replay_webhooks_request::What::WebhookId(id)) => {
                required_id("webhook_id", &id)?;
                let n = self
                    .endpoints
                    .replay_one(&tenant.0, &r.endpoint_id, &id)
                    .await
                    .map_err(ApiError::from)?;
                (n, 0, false)
            }
            Some(pb::replay_webhooks_request::What::AfterSequence(after)) => self
                .endpoints
                .replay_after(&tenant.0, &r.endpoint_id, after)
                .await
                .map_err(ApiError::from)?,
            None => {
                return Err(invalid(
                    "what",
                    "set webhook_id (one delivery) or after_sequence (every event after it)".into(),
                )
                .into());
            }
        };
        Ok(Response::new(pb::ReplayWebhooksResponse {
            queued: u32::try_from(queued).unwrap_or(u32::MAX),
            last_sequence,
            more,
        }))
    }

    async fn get_callback_secret(
        &self,
        request: Request<pb::GetCallbackSecretRequest>,
    ) -> Result<Response<pb::CallbackSecret>, Status> {
        let tenant = self.tenant(&request)?;
        let secret = self
            .endpoints
            .engine()
            .tenant_secret(&tenant.0)
            .await
            .map_err(|e| ApiError::from(WebhookError::from(e)))?;
        Ok(Response::new(pb::CallbackSecret {
            signing_secret: secret.expose().to_owned(),
        }))
    }
}
