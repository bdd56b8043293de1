//! The intake: a supervised consumer of the jobs queue that hands each message to
//! [`Jobs::accept`] and acks only after the job is durably stored.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt as _, Stream, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, Event};
use prost::Message as _;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::config::AmqpConfig;
use super::headers::{self, Extractor};
use super::{AmqpStatus, Backoff, connect, pause, recover, topology};
use crate::convert;
use crate::domain::{FieldViolation, echo};
use crate::job::now_ms;
use crate::jobs::{Intake as IntakeKind, IntakeOrigin, Jobs, JobsError, RULE_ENVELOPE};
use crate::pb;
use crate::telemetry::propagation::{self, set_remote_parent};
use tracing::Instrument;

/// Reason: the message has no `message_id` (the idempotency key).
pub const REASON_MISSING_MESSAGE_ID: &str = "MISSING_MESSAGE_ID";
/// Reason: no tenant could be found for the message.
pub const REASON_UNKNOWN_TENANT: &str = "UNKNOWN_TENANT";
/// Reason: the body is not a `CreateVideoRequest` in the announced format.
pub const REASON_INVALID_MESSAGE_BODY: &str = "INVALID_MESSAGE_BODY";
/// Reason: a `content_type` / `content_encoding` vidgate does not read.
pub const REASON_UNSUPPORTED_CONTENT_TYPE: &str = "UNSUPPORTED_CONTENT_TYPE";
/// Reason: a body larger than `amqp.max_message_bytes` (as gRPC's `MESSAGE_TOO_LARGE`).
pub const REASON_MESSAGE_TOO_LARGE: &str = "MESSAGE_TOO_LARGE";
/// Reason of a body `request_id` that is neither empty nor the `message_id` (as gRPC's input
/// errors: a field violation on `request_id`).
pub const REASON_INVALID_VIDEO_REQUEST: &str = "INVALID_VIDEO_REQUEST";

/// Reason: `reply_to` names one of vidgate's own queues or exchanges.
pub const REASON_REPLY_TO_NOT_ALLOWED: &str = "REPLY_TO_NOT_ALLOWED";

/// `content_type` of proto3 JSON bodies (the default when none is given).
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// `content_type` of binary protobuf bodies.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";
/// `type` of the rejection sent to `reply_to`.
pub const REJECTION_TYPE: &str = "video.rejected";

/// Longest `x-vidgate-message` header (the message names fields and allowed values; a header
/// is no place for more).
pub const MAX_HEADER_MESSAGE_BYTES: usize = 4096;
/// Longest wait for a closing handshake (cancel, channel or connection close) at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait at shutdown for deliveries in flight (each waits for one store commit and at
/// most one publisher confirm); past it they are abandoned, and the broker redelivers them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// AMQP `delivery_mode` of persistent messages.
pub(crate) const PERSISTENT: u8 = 2;

/// The supervised intake.
/// First wait before a delivery whose job could not be stored is tried again in place.
const STORE_WAIT_MIN: Duration = Duration::from_millis(100);
/// Longest wait between those tries.
const STORE_WAIT_MAX: Duration = Duration::from_secs(5);
/// How long one delivery is held and tried again before it is requeued (and its delivery
/// counted): with the default delivery limit of 20, an outage of about 20 minutes.
const STORE_WAIT_PER_DELIVERY: Duration = Duration::from_secs(60);

pub(crate) struct Intake {
    config: Arc<AmqpConfig>,
    jobs: Jobs,
    status: Arc<watch::Sender<AmqpStatus>>,
    shutdown: CancellationToken,
}

enum SessionEnd {
    Shutdown,
    /// The session ended by itself; `consumed` says it got as far as consuming (so the
    /// supervisor's backoff starts over).
    Lost {
        consumed: bool,
        why: String,
    },
}

fn lost(why: String) -> SessionEnd {
    SessionEnd::Lost {
        consumed: false,
        why,
    }
}

pub(crate) fn short(value: &str) -> ShortString {
    ShortString::try_new(value).unwrap_or_default()
}

impl Intake {
    pub(crate) fn new(
        config: Arc<AmqpConfig>,
        jobs: Jobs,
        status: Arc<watch::Sender<AmqpStatus>>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            config,
            jobs,
            status,
            shutdown,
        }
    }

    /// The supervisor: builds a session (connection, channels, QoS, topology, consumer), runs
    /// it until it is lost, and builds a new one after a capped backoff, until shutdown.
    pub(crate) async fn run(self) {
        let mut backoff = Backoff::new(self.config.reconnect_min(), self.config.reconnect_max());
        loop {
            let end = self.session().await;
            self.status.send_modify(|s| s.consuming = false);
            match end {
                SessionEnd::Shutdown => break,
                SessionEnd::Lost { consumed, why } => {
                    self.status.send_modify(|s| {
                        s.intake_failures += 1;
                        s.intake_error.clone_from(&why);
                    });
                    if consumed {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        error = %why,
                        retry_in_ms = delay.as_millis() as u64,
                        "AMQP intake lost its session; rebuilding connection, channels, QoS, topology and consumer"
                    );
                    if !pause(delay, &self.shutdown).await {
                        break;
                    }
                }
            }
        }
        tracing::info!("AMQP intake stopped");
    }

    async fn session(&self) -> SessionEnd {
        let connection = tokio::select! {
            _ = self.shutdown.cancelled() => return SessionEnd::Shutdown,
            connection = connect(&self.config, "intake") => connection,
        };
        let connection = match connection {
            Ok(connection) => connection,
            Err(why) => return lost(why),
        };
        let end = self.consume(&connection).await;
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            connection.close(200, short("vidgate intake session ended")),
        )
        .await;
        end
    }

    async fn consume(&self, connection: &Connection) -> SessionEnd {
        let config = &self.config;
        // Created first, so every later `Connected` is a recovery by lapin.
        let mut events = connection.events_listener();
        let channel = match connection.create_channel().await {
            Ok(channel) => channel,
            Err(e) => return lost(format!("opening the consuming channel: {e}")),
        };
        if let Err(e) = topology::declare_intake(&channel, config).await {
            return lost(e.to_string());
        }
        if let Err(e) = channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await
        {
            return lost(format!("setting prefetch {}: {e}", config.prefetch));
        }
        let publisher = match connection.create_channel().await {
            Ok(channel) => channel,
            Err(e) => return lost(format!("opening the publishing channel: {e}")),
        };
        if let Err(e) = publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
        {
            return lost(format!("turning publisher confirms on: {e}"));
        }
        let tag = format!(
            "{}-intake-{}",
            config.connection_name,
            uuid::Uuid::now_v7().simple()
        );
        let mut consumer = match channel
            .basic_consume(
                short(&config.jobs_queue),
                short(&tag),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(consumer) => consumer,
            Err(e) => return lost(format!("consuming {:?}: {e}", config.jobs_queue)),
        };
        skip_initial_connected(&mut events);
        self.status.send_modify(|s| {
            s.consuming = true;
            s.intake_sessions += 1;
        });
        tracing::info!(queue = %config.jobs_queue, prefetch = config.prefetch, "AMQP intake consuming");

        let rebuild = CancellationToken::new();
        let handler = Arc::new(Handler {
            config: config.clone(),
            jobs: self.jobs.clone(),
            publisher,
            status: self.status.clone(),
            rebuild: rebuild.clone(),
            shutdown: self.shutdown.clone(),
        });
        let mut in_flight = JoinSet::new();
        // The broker sends at most `prefetch` unacknowledged deliveries; this bound only
        // matters if it ever sent more (it keeps memory bounded regardless).
        let max_in_flight = usize::from(config.prefetch);
        let end = loop {
            if in_flight.len() >= max_in_flight {
                in_flight.join_next().await;
                continue;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => break SessionEnd::Shutdown,
                _ = rebuild.cancelled() => {
                    break SessionEnd::Lost {
                        consumed: true,
                        why: "the publishing channel was closed: dead letters and rejections cannot be sent".into(),
                    };
                }
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                Some(event) = events.next() => match event {
                    Event::Connected => {
                        self.status.send_modify(|s| {
                            s.consuming = true;
                            s.intake_recoveries += 1;
                        });
                        tracing::info!("AMQP intake: lapin reconnected and recovered the consumer");
                    }
                    Event::Error(error) => {
                        self.status.send_modify(|s| s.consuming = false);
                        tracing::warn!(%error, "AMQP intake: connection error; lapin is recovering");
                    }
                    Event::ConnectionBlocked(reason) => {
                        tracing::warn!(%reason, "AMQP intake: the broker blocked the connection (resource alarm)");
                    }
                    _ => {}
                },
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let handler = handler.clone();
                        in_flight.spawn(async move { handler.handle(delivery).await });
                    }
                    Some(Err(error)) => {
                        self.status.send_modify(|s| s.consuming = false);
                        tracing::warn!(%error, "AMQP intake: connection trouble; waiting for lapin's recovery");
                        let recovered = tokio::select! {
                            _ = self.shutdown.cancelled() => break SessionEnd::Shutdown,
                            recovered = recover(&channel, error) => recovered,
                        };
                        match recovered {
                            Ok(()) => {
                                self.status.send_modify(|s| s.consuming = true);
                                tracing::info!("AMQP intake recovered: consuming again");
                            }
                            Err(why) => {
                                break SessionEnd::Lost {
                                    consumed: true,
                                    why,
                                };
                            }
                        }
                    }
                    None => {
                        break SessionEnd::Lost {
                            consumed: true,
                            why: "the consumer was cancelled (queue deleted, or its channel closed)".into(),
                        };
                    }
                },
            }
        };
        if matches!(end, SessionEnd::Shutdown) {
            // No new deliveries; those already here are finished below.
            let _ = tokio::time::timeout(
                CLOSE_TIMEOUT,
                channel.basic_cancel(short(&tag), BasicCancelOptions::default()),
            )
            .await;
        }
        let drain = async { while in_flight.join_next().await.is_some() {} };
        if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
            tracing::warn!(
                abandoned = in_flight.len(),
                "AMQP intake: deliveries still in flight after {DRAIN_TIMEOUT:?}; abandoned (the broker redelivers them)"
            );
            in_flight.abort_all();
        }
        end
    }
}

/// Why a message is refused: what goes into the dead-letter headers and the `Rejection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable reason (`x-vidgate-reason`).
    pub reason: String,
    /// For people (`x-vidgate-message`).
    pub message: String,
    /// Field violations, when the request itself was invalid.
    pub violations: Vec<FieldViolation>,
}

impl Rejection {
    fn new(reason: &str, message: impl Into<String>) -> Self {
        Self {
            reason: reason.to_owned(),
            message: message.into(),
            violations: Vec::new(),
        }
    }

    /// The application layer's refusal as a dead-letter reason: the same stable reason and
    /// message gRPC gives.
    fn from_jobs(error: &JobsError) -> Self {
        let mut violations = error.violations();
        if let JobsError::InvalidArgument { field, description } = error {
            violations.push(FieldViolation {
                field: (*field).to_owned(),
                rule: RULE_ENVELOPE.to_owned(),
                description: description.clone(),
            });
        }
        Self {
            reason: error.reason().to_owned(),
            message: error.to_string(),
            violations,
        }
    }

    /// The `VideoEvent.rejection` of this refusal.
    pub fn to_pb(&self, message_id: &str) -> pb::Rejection {
        pb::Rejection {
            message_id: message_id.to_owned(),
            reason: self.reason.clone(),
            message: self.message.clone(),
            violations: self
                .violations
                .iter()
                .map(|v| pb::Violation {
                    field: v.field.clone(),
                    rule: v.rule.clone(),
                    description: v.description.clone(),
                })
                .collect(),
        }
    }
}

/// What to do with a delivery.
enum Decision {
    /// Durably stored (`new`: a new job; otherwise the existing job of this key): ack.
    Stored { new: bool },
    /// Could not be decided now: requeue.
    Retry(String),
    /// Invalid: dead-letter with a reason, then ack.
    Reject(Rejection),
}

/// Handles deliveries of one session.
struct Handler {
    config: Arc<AmqpConfig>,
    jobs: Jobs,
    publisher: Channel,
    status: Arc<watch::Sender<AmqpStatus>>,
    /// Cancelled when the publishing channel is closed for good (e.g. by a broker error):
    /// the session is rebuilt, since lapin does not reopen a channel the broker closed.
    rebuild: CancellationToken,
    /// The application's shutdown: a held delivery stops waiting for the store.
    shutdown: CancellationToken,
}

impl Handler {
    async fn handle(&self, delivery: Delivery) {
        // A consumer span (OpenTelemetry messaging conventions), a child of the producer's
        // `traceparent`: the job's trace starts here.
        let span = tracing::info_span!(
            "delivery process",
            otel.name = %format!("{} process", self.config.jobs_queue),
            otel.kind = "consumer",
            messaging.system = "rabbitmq",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = %self.config.jobs_queue,
            messaging.message.id = delivery
                .properties
                .message_id()
                .as_ref()
                .map_or("", ShortString::as_str),
            messaging.rabbitmq.message.delivery_tag = delivery.delivery_tag,
            messaging.message.body.size = delivery.data.len(),
            vidgate.amqp.outcome = tracing::field::Empty,
        );
        set_remote_parent(
            &span,
            propagation::extract(&Extractor(delivery.properties.headers().as_ref())),
        );
        self.handle_in_span(delivery, &span)
            .instrument(span.clone())
            .await;
    }

    async fn handle_in_span(&self, delivery: Delivery, span: &tracing::Span) {
        let redelivered = delivery.redelivered;
        self.status.send_modify(|s| {
            s.deliveries += 1;
            s.redelivered += u64::from(redelivered);
        });
        // A store that cannot answer (a database restarting) is waited for with the delivery
        // held, not answered by requeueing at once: every requeue counts towards the queue's
        // delivery limit, and twenty immediate ones would dead-letter a valid job within
        // milliseconds of an outage. Held deliveries are bounded by the prefetch.
        let mut decision = self.decide(&delivery).await;
        let give_up = tokio::time::Instant::now() + STORE_WAIT_PER_DELIVERY;
        let mut wait = STORE_WAIT_MIN;
        while matches!(decision, Decision::Retry(_)) && tokio::time::Instant::now() + wait < give_up
        {
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = self.rebuild.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(STORE_WAIT_MAX);
            decision = self.decide(&delivery).await;
        }
        match decision {
            Decision::Stored { new } => {
                ack(&delivery).await;
                span.record(
                    "vidgate.amqp.outcome",
                    if new { "stored" } else { "duplicate" },
                );
                self.status.send_modify(|s| {
                    if new {
                        s.created += 1;
                    } else {
                        s.duplicates += 1;
                    }
                });
            }
            Decision::Retry(why) => {
                tracing::warn!(error = %why, redelivered = delivery.redelivered, "AMQP intake: job not stored; message requeued");
                requeue(&delivery).await;
                span.record("vidgate.amqp.outcome", "requeued");
                self.status.send_modify(|s| s.requeued += 1);
            }
            Decision::Reject(rejection) => match self.dead_letter(&delivery, &rejection).await {
                Ok(()) => {
                    tracing::info!(
                        reason = %rejection.reason,
                        message_id = ?delivery.properties.message_id(),
                        "AMQP intake: message dead-lettered"
                    );
                    ack(&delivery).await;
                    span.record("vidgate.amqp.outcome", "dead_lettered");
                    self.status.send_modify(|s| s.dead_lettered += 1);
                    self.reply_rejection(&delivery, &rejection).await;
                }
                Err(why) => {
                    tracing::warn!(error = %why, reason = %rejection.reason, "AMQP intake: dead-lettering failed; message requeued");
                    requeue(&delivery).await;
                    self.status.send_modify(|s| s.requeued += 1);
                }
            },
        }
    }

    async fn decide(&self, delivery: &Delivery) -> Decision {
        let properties = &delivery.properties;
        let Some(message_id) = properties
            .message_id()
            .as_ref()
            .map(ShortString::as_str)
            .filter(|id| !id.is_empty())
        else {
            return Decision::Reject(Rejection::new(
                REASON_MISSING_MESSAGE_ID,
                "the message has no message_id property: set it to a unique id of this request (it is the idempotency key; a retry must reuse it)",
            ));
        };
        let tenant = match self.config.tenant_of(properties) {
            Ok(tenant) => tenant,
            Err(why) => return Decision::Reject(Rejection::new(REASON_UNKNOWN_TENANT, why)),
        };
        if let Some(reply_to) = properties.reply_to().as_ref().map(ShortString::as_str)
            && !reply_to.is_empty()
            && let Err(why) = self.config.check_reply_to(reply_to)
        {
            return Decision::Reject(Rejection::new(REASON_REPLY_TO_NOT_ALLOWED, why));
        }
        let mut request =
            match decode_body(properties, &delivery.data, self.config.max_message_bytes) {
                Ok(request) => request,
                Err(rejection) => return Decision::Reject(rejection),
            };
        if !request.request_id.is_empty() && request.request_id != message_id {
            return Decision::Reject(Rejection {
                reason: REASON_INVALID_VIDEO_REQUEST.to_owned(),
                message: format!(
                    "request_id {:?} in the body differs from the message_id property {:?}",
                    echo(&request.request_id),
                    echo(message_id)
                ),
                violations: vec![FieldViolation {
                    field: "request_id".to_owned(),
                    rule: RULE_ENVELOPE.to_owned(),
                    description: "over AMQP the request id is the message_id property: leave request_id empty or equal to it".to_owned(),
                }],
            });
        }
        request.request_id = message_id.to_owned();
        let non_empty = |value: &Option<ShortString>| {
            value
                .as_ref()
                .map(|v| v.as_str().to_owned())
                .filter(|v| !v.is_empty())
        };
        let origin = IntakeOrigin {
            intake: IntakeKind::Amqp,
            trace_context: Extractor(properties.headers().as_ref()).get(headers::TRACEPARENT),
            reply_to: non_empty(properties.reply_to()),
            correlation_id: non_empty(properties.correlation_id()),
        };
        match self.jobs.accept(&tenant, request, origin).await {
            Ok((_, new)) => Decision::Stored { new },
            Err(JobsError::StoreUnavailable) => {
                Decision::Retry("the job store is unavailable".into())
            }
            // A store error vidgate did not expect (logged with a reference where it
            // happened); requeue: the delivery limit ends a message that always fails.
            Err(e @ JobsError::Internal(_)) => Decision::Retry(e.to_string()),
            Err(e) => Decision::Reject(Rejection::from_jobs(&e)),
        }
    }

    /// Republishes the message to the dead-letter exchange with the reason headers and waits
    /// for the broker's confirm. `Err` means it is not safely there.
    async fn dead_letter(&self, delivery: &Delivery, rejection: &Rejection) -> Result<(), String> {
        let original = &delivery.properties;
        let mut table = original.headers().clone().unwrap_or_default();
        headers::set_str(&mut table, headers::REASON, &rejection.reason);
        headers::set_str(
            &mut table,
            headers::MESSAGE,
            truncate(&rejection.message, MAX_HEADER_MESSAGE_BYTES),
        );
        headers::set_str(
            &mut table,
            headers::ORIGINAL_EXCHANGE,
            delivery.exchange.as_str(),
        );
        headers::set_str(
            &mut table,
            headers::ORIGINAL_ROUTING_KEY,
            delivery.routing_key.as_str(),
        );
        if let Some(user) = original.user_id() {
            headers::set_str(&mut table, headers::ORIGINAL_USER_ID, user.as_str());
        }
        let properties = republished_properties(original).with_headers(table);
        let confirm = self
            .publish(
                &self.config.dead_exchange,
                &self.config.jobs_queue,
                true,
                &delivery.data,
                properties,
            )
            .await?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(format!(
                "the dead-letter exchange {:?} has no queue bound for {:?} ({})",
                self.config.dead_exchange, self.config.jobs_queue, returned.reply_text
            )),
            Confirmation::Nack(_) => Err("the broker refused the dead letter (nack)".into()),
            Confirmation::NotRequested => {
                Err("publisher confirms are off on the publishing channel".into())
            }
        }
    }

    /// Sends the `VideoEvent` with the rejection to the message's `reply_to`. Best effort: the
    /// message is already in the dead-letter queue with the same reason.
    async fn reply_rejection(&self, delivery: &Delivery, rejection: &Rejection) {
        let original = &delivery.properties;
        let Some(reply_to) = original
            .reply_to()
            .as_ref()
            .map(ShortString::as_str)
            .filter(|r| !r.is_empty() && self.config.check_reply_to(r).is_ok())
        else {
            return;
        };
        let message_id = original
            .message_id()
            .as_ref()
            .map(ShortString::as_str)
            .unwrap_or_default();
        let event = pb::VideoEvent {
            sequence: 0,
            video_id: String::new(),
            time: Some(convert::timestamp(now_ms())),
            kind: Some(pb::video_event::Kind::Rejection(
                rejection.to_pb(message_id),
            )),
        };
        let body = match serde_json::to_vec(&event) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "AMQP intake: rejection not encodable");
                return;
            }
        };
        let mut properties = BasicProperties::default()
            .with_content_type(short(CONTENT_TYPE_JSON))
            .with_type(short(REJECTION_TYPE))
            .with_delivery_mode(PERSISTENT)
            .with_app_id(short("vidgate"));
        if let Some(correlation) = original.correlation_id() {
            properties = properties.with_correlation_id(correlation.clone());
        }
        match self.publish("", reply_to, false, &body, properties).await {
            Ok(Confirmation::Ack(_)) => {}
            Ok(other) => {
                tracing::warn!(
                    reply_to,
                    ?other,
                    "AMQP intake: rejection reply not confirmed"
                )
            }
            Err(e) => tracing::warn!(reply_to, error = %e, "AMQP intake: rejection reply failed"),
        }
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<Confirmation, String> {
        let publish = async {
            self.publisher
                .basic_publish(
                    short(exchange),
                    short(routing_key),
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties,
                )
                .await?
                .await
        };
        match tokio::time::timeout(self.config.confirm_timeout(), publish).await {
            Ok(Ok(confirmation)) => Ok(confirmation),
            Ok(Err(e)) => {
                let status = self.publisher.status();
                if !status.connected() && !status.reconnecting() {
                    self.rebuild.cancel();
                }
                Err(format!("publishing to {exchange:?}: {e}"))
            }
            Err(_) => Err(format!(
                "publishing to {exchange:?}: no confirm within {:?}",
                self.config.confirm_timeout()
            )),
        }
    }
}

/// The original's properties for a republish: everything but `user_id` (RabbitMQ refuses a
/// `user_id` other than the publisher's own; it moves to a header) and `expiration` (a dead
/// letter must not expire, as the broker's own dead-lettering also drops it). Persistent.
fn republished_properties(original: &BasicProperties) -> BasicProperties {
    let mut p = BasicProperties::default().with_delivery_mode(PERSISTENT);
    if let Some(v) = original.content_type() {
        p = p.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        p = p.with_content_encoding(v.clone());
    }
    if let Some(v) = original.priority() {
        p = p.with_priority(*v);
    }
    if let Some(v) = original.correlation_id() {
        p = p.with_correlation_id(v.clone());
    }
    if let Some(v) = original.reply_to() {
        p = p.with_reply_to(v.clone());
    }
    if let Some(v) = original.message_id() {
        p = p.with_message_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        p = p.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        p = p.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        p = p.with_app_id(v.clone());
    }
    p
}

/// Reads the body in the format its `content_type` announces (proto3 JSON when none).
pub fn decode_body(
    properties: &BasicProperties,
    data: &[u8],
    max_bytes: usize,
) -> Result<pb::CreateVideoRequest, Rejection> {
    if data.len() > max_bytes {
        return Err(Rejection::new(
            REASON_MESSAGE_TOO_LARGE,
            format!(
                "the body has {} bytes; at most {max_bytes} are accepted",
                data.len()
            ),
        ));
    }
    if let Some(encoding) = properties
        .content_encoding()
        .as_ref()
        .map(|e| e.as_str().trim())
        .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("identity"))
    {
        return Err(Rejection::new(
            REASON_UNSUPPORTED_CONTENT_TYPE,
            format!(
                "content_encoding {:?} is not supported: send the body unencoded (no content_encoding)",
                echo(encoding)
            ),
        ));
    }
    let content_type = properties
        .content_type()
        .as_ref()
        .map(|c| {
            c.as_str()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    match content_type.as_str() {
        "" | CONTENT_TYPE_JSON => serde_json::from_slice(data).map_err(|e| {
            Rejection::new(
                REASON_INVALID_MESSAGE_BODY,
                format!(
                    "the body is not a CreateVideoRequest in proto3 JSON ({e}); example: {{\"model\":\"turing/veo-3.1-generate\",\"prompt\":\"a cat playing piano\",\"veo\":{{\"seconds\":6,\"size\":\"1280x720\"}}}}"
                ),
            )
        }),
        CONTENT_TYPE_PROTOBUF | "application/protobuf" | "application/vnd.google.protobuf" => {
            pb::CreateVideoRequest::decode(data).map_err(|e| {
                Rejection::new(
                    REASON_INVALID_MESSAGE_BODY,
                    format!("the body is not a binary CreateVideoRequest ({e})"),
                )
            })
        }
        other => Err(Rejection::new(
            REASON_UNSUPPORTED_CONTENT_TYPE,
            format!(
                "content_type {:?} is not supported: use {CONTENT_TYPE_JSON} (proto3 JSON, the default) or {CONTENT_TYPE_PROTOBUF} (binary)",
                echo(other)
            ),
        )),
    }
}

fn truncate(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Drops the `Connected` event of the connection's first handshake, which may reach a listener
/// created right after `connect` returned. Called after the session's setup round trips, by
/// which time lapin has certainly sent it; every later `Connected` is a recovery.
pub(crate) fn skip_initial_connected(events: &mut (impl Stream<Item = Event> + Unpin)) {
    while let Some(Some(_)) = events.next().now_or_never() {}
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel this delivery came on is gone: the broker redelivers the message, and
        // its message_id makes the redelivery an idempotent repeat.
        tracing::debug!(error = %e, "AMQP intake: ack lost with its channel; the broker will redeliver");
    }
}

async fn requeue(delivery: &Delivery) {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(e) = delivery.acker.nack(options).await {
        tracing::debug!(error = %e, "AMQP intake: nack lost with its channel; the broker will redeliver");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_type(content_type: Option<&str>) -> BasicProperties {
        let p = BasicProperties::default();
        match content_type {
            Some(t) => p.with_content_type(short(t)),
            None => p,
        }
    }

    const BODY: &str = r#"{"model":"turing/veo-3.1-generate","prompt":"please generate a video of a cat playing piano","veo":{"seconds":6,"size":"1280x720"}}"#;

    #[test]
    fn json_is_the_default_and_binary_protobuf_is_the_same_schema() {
        let from_json = decode_body(&with_type(None), BODY.as_bytes(), 1 << 20).expect("json");
        assert_eq!(from_json.model, "turing/veo-3.1-generate");
        let same = decode_body(
            &with_type(Some("application/json; charset=utf-8")),
            BODY.as_bytes(),
            1 << 20,
        )
        .expect("json with parameters");
        assert_eq!(same, from_json);
        let binary = from_json.encode_to_vec();
        let from_binary =
            decode_body(&with_type(Some(CONTENT_TYPE_PROTOBUF)), &binary, 1 << 20).expect("pb");
        assert_eq!(from_binary, from_json);
    }

    #[test]
    fn bad_bodies_types_and_sizes_are_rejections_with_their_reasons() {
        let reason = |p: &BasicProperties, body: &[u8], max| {
            decode_body(p, body, max).expect_err("rejected").reason
        };
        assert_eq!(
            reason(&with_type(None), b"{not json", 1 << 20),
            REASON_INVALID_MESSAGE_BODY
        );
        assert_eq!(
            reason(
                &with_type(Some(CONTENT_TYPE_PROTOBUF)),
                b"\xff\xff\xff",
                1 << 20
            ),
            REASON_INVALID_MESSAGE_BODY
        );
        assert_eq!(
            reason(&with_type(Some("text/plain")), BODY.as_bytes(), 1 << 20),
            REASON_UNSUPPORTED_CONTENT_TYPE
        );
        assert_eq!(
            reason(
                &with_type(None).with_content_encoding(short("gzip")),
                BODY.as_bytes(),
                1 << 20
            ),
            REASON_UNSUPPORTED_CONTENT_TYPE
        );
        assert_eq!(
            reason(&with_type(None), BODY.as_bytes(), 10),
            REASON_MESSAGE_TOO_LARGE
        );
    }

    #[test]
    fn republishing_drops_user_id_and_expiration_and_keeps_the_rest() {
        let original = BasicProperties::default()
            .with_user_id(short("bob"))
            .with_expiration(short("60000"))
            .with_message_id(short("m-1"))
            .with_correlation_id(short("c-1"))
            .with_reply_to(short("replies"))
            .with_content_type(short(CONTENT_TYPE_JSON));
        let p = republished_properties(&original);
        assert_eq!(p.user_id(), &None);
        assert_eq!(p.expiration(), &None);
        assert_eq!(p.message_id(), &Some(short("m-1")));
        assert_eq!(p.correlation_id(), &Some(short("c-1")));
        assert_eq!(p.reply_to(), &Some(short("replies")));
        assert_eq!(p.delivery_mode(), &Some(PERSISTENT));
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
