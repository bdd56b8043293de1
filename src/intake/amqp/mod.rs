//! RabbitMQ (AMQP 0-9-1, lapin 4): the intake that turns job messages into durable jobs, and
//! the outbox relay that publishes job events back.
//!
//! # Intake ([`consumer`])
//!
//! One connection (`<connection_name>-intake`) with a consuming channel (QoS = `prefetch`) and a
//! publishing channel in confirm mode. Each delivery goes through [`crate::jobs::Jobs::accept`], the same
//! path as gRPC `CreateVideo` (validation, idempotency by `message_id`, durable group commit):
//!
//! - stored (new or an idempotent repeat) -> `basic.ack`, only after the commit;
//! - invalid (bad body, failed validation, unknown tenant, missing `message_id`, ...) ->
//!   republished to the dead-letter exchange with `x-vidgate-reason` / `x-vidgate-message`,
//!   confirmed, then acked; a `VideoEvent` with `rejection` goes to its `reply_to`;
//! - transient (store unavailable) -> `basic.nack` with requeue; the queue's delivery limit
//!   sends a message that never succeeds to the dead-letter queue (at-least-once).
//!
//! Deliveries are handled concurrently (at most `prefetch` at once), so the store commits them
//! together.
//!
//! # Relay ([`relay`])
//!
//! One connection (`<connection_name>-relay`), a channel in confirm mode. It reads the event
//! log after its durable cursor, publishes each event to the events exchange (and to the job's
//! `reply_to`), and records the highest sequence below which every event is confirmed.
//!
//! # Connection loss
//!
//! lapin's auto-recovery (opt-in) reconnects and replays channels, QoS, topology and the
//! consumer; a supervisor loop around each side rebuilds everything from scratch when that
//! recovery gives up, a channel is closed by a broker error, or the consumer is cancelled.
//! Acks lost with an old channel are harmless: the broker redelivers, and the `message_id`
//! makes the redelivery an idempotent repeat. The supervisor never gives up; its pauses are
//! capped (`amqp.reconnect_max_ms`).
//!
//! # Message reference (API.md "AMQP")
//!
//! A job message, published to `vidgate.jobs` (any routing key) or straight to the queue:
//!
//! | property | meaning |
//! |---|---|
//! | `message_id` | required: the request id (idempotency key); the body's `request_id` must be empty or equal |
//! | `content_type` | `application/json` (proto3 JSON, the default) or `application/x-protobuf` |
//! | `user_id` | the producer's broker user (RabbitMQ checks it); mapped to a tenant by `amqp.users` |
//! | `reply_to`, `correlation_id` | optional: the job's events (or the rejection) go there, with the correlation id |
//! | header `traceparent` | optional W3C trace context, kept on the job and put on its events |
//!
//! Body (the `CreateVideoRequest` of gRPC):
//! `{"model":"turing/veo-3.1-generate","prompt":"a cat playing piano","veo":{"seconds":6,"size":"1280x720"}}`
//!
//! Events: topic exchange `vidgate.events`, routing key `<tenant>.video.<status>`, `message_id`
//! = the event's sequence (drop repeats by it), `type` = `video.<status>`, body = `VideoEvent`
//! in proto3 JSON with the `Video` (status, error, content facts; never the video bytes:
//! those come from `DownloadVideo`).
//!
//! Dead letters (`vidgate.jobs.dead`): the original body and properties (`user_id` moved to the
//! header `x-vidgate-original-user-id`) with headers `x-vidgate-reason` and `x-vidgate-message`.
//! Reasons: `MISSING_MESSAGE_ID`, `UNKNOWN_TENANT`, `INVALID_MESSAGE_BODY`,
//! `UNSUPPORTED_CONTENT_TYPE`, `MESSAGE_TOO_LARGE`, and those of gRPC (`INVALID_VIDEO_REQUEST`,
//! `UNKNOWN_MODEL`, `REQUEST_ID_REUSED`). The broker's own dead letters (delivery limit
//! reached) carry its `x-death` headers instead. A message dead-lettered just before a
//! connection loss may be dead-lettered twice (its ack was lost): at-least-once.

pub mod config;
pub mod consumer;
pub mod headers;
pub mod relay;
pub mod topology;

use std::sync::Arc;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::jobs::Jobs;
use crate::store::{JobStore, StoreError};
use crate::telemetry::metrics::{AmqpCounters, AmqpCounts};
use crate::telemetry::readiness::Check;

pub use config::AmqpConfig;

/// What the AMQP side is doing, for tests, benchmarks and health reporting. Counters only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AmqpStatus {
    /// The intake consumer is registered and receiving.
    pub consuming: bool,
    /// Sessions the intake supervisor built (1 after the first connect; +1 per rebuild).
    pub intake_sessions: u64,
    /// Times lapin's auto-recovery reconnected the intake (the consumer resumes without a
    /// rebuild).
    pub intake_recoveries: u64,
    /// Intake sessions that ended or failed to start (each followed by a rebuild).
    pub intake_failures: u64,
    /// Why the last intake session ended or failed.
    pub intake_error: String,
    /// Deliveries received (redeliveries included).
    pub deliveries: u64,
    /// Deliveries the broker marked `redelivered` (sent before, not acked).
    pub redelivered: u64,
    /// Deliveries that created a new job and were acked.
    pub created: u64,
    /// Deliveries that named an existing job (same tenant and `message_id`) and were acked.
    pub duplicates: u64,
    /// Deliveries dead-lettered by vidgate (confirmed) and acked.
    pub dead_lettered: u64,
    /// Deliveries returned to the queue for a later try.
    pub requeued: u64,
    /// The relay is connected with confirms on.
    pub relay_connected: bool,
    /// Another instance holds the relay role; this one stands by (healthy).
    pub relay_standby: bool,
    /// Sessions the relay supervisor built.
    pub relay_sessions: u64,
    /// Times lapin's auto-recovery reconnected the relay.
    pub relay_recoveries: u64,
    /// Relay sessions that ended or failed to start.
    pub relay_failures: u64,
    /// Why the last relay session ended or failed.
    pub relay_error: String,
    /// Highest sequence below which every event is confirmed by the broker.
    pub relay_confirmed: i64,
    /// Publishes of events the broker confirmed (reply_to copies included; re-sends too).
    pub relay_published: u64,
}

impl AmqpStatus {
    /// This side's part of readiness: the intake consumes and the relay is connected.
    pub fn readiness(&self) -> Check {
        match (self.consuming, self.relay_connected || self.relay_standby) {
            (true, true) => Check::Ok,
            (false, _) => Check::Failing(format!(
                "the AMQP intake is not consuming{}",
                reason(&self.intake_error)
            )),
            (true, false) => Check::Failing(format!(
                "the AMQP event relay is not connected{}",
                reason(&self.relay_error)
            )),
        }
    }
}

fn reason(error: &str) -> String {
    if error.is_empty() {
        String::new()
    } else {
        format!(": {error}")
    }
}

/// A handle on the running AMQP side.
#[derive(Clone)]
pub struct AmqpHandle {
    status: watch::Receiver<AmqpStatus>,
}

impl AmqpHandle {
    /// The current status.
    pub fn status(&self) -> AmqpStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch(&self) -> watch::Receiver<AmqpStatus> {
        self.status.clone()
    }

    /// Waits until `predicate` holds for the status; `false` if `limit` passed first.
    pub async fn wait_for(
        &self,
        limit: Duration,
        predicate: impl FnMut(&AmqpStatus) -> bool,
    ) -> bool {
        let mut rx = self.status.clone();
        matches!(
            tokio::time::timeout(limit, rx.wait_for(predicate)).await,
            Ok(Ok(_))
        )
    }
}

/// The state gauges read the delivery outcomes and the relay's confirmed sequence.
impl AmqpCounters for AmqpHandle {
    fn amqp_counts(&self) -> AmqpCounts {
        let s = self.status.borrow();
        AmqpCounts {
            stored: s.created,
            duplicates: s.duplicates,
            dead_lettered: s.dead_lettered,
            requeued: s.requeued,
            relay_confirmed: s.relay_confirmed,
        }
    }
}

/// Starts the intake and the relay as configured. Returns the handle and the tasks, which end
/// after `shutdown` is cancelled (in-flight deliveries finished, the relay's cursor saved).
/// The relay's cursor is initialised here, before anything can be accepted, so that a first
/// start publishes every event from now on and none from before.
pub async fn start(
    config: AmqpConfig,
    jobs: Jobs,
    store: Arc<dyn JobStore>,
    shutdown: CancellationToken,
) -> Result<(AmqpHandle, Vec<JoinHandle<()>>), StoreError> {
    let config = Arc::new(config);
    let (status_tx, status_rx) = watch::channel(AmqpStatus::default());
    let status = Arc::new(status_tx);
    let mut tasks = Vec::new();
    if config.relay {
        let cursor = relay::initial_cursor(store.as_ref(), &config.relay_cursor).await?;
        status.send_modify(|s| s.relay_confirmed = cursor);
        let relay = relay::Relay::new(
            config.clone(),
            store.clone(),
            status.clone(),
            shutdown.clone(),
            cursor,
        );
        tasks.push(tokio::spawn(relay.run()));
    }
    if config.intake {
        let intake = consumer::Intake::new(config.clone(), jobs, status.clone(), shutdown.clone());
        tasks.push(tokio::spawn(intake.run()));
    }
    tracing::info!(
        url = %config::redact_url(config.url.as_deref().unwrap_or_default()),
        intake = config.intake,
        relay = config.relay,
        jobs_queue = %config.jobs_queue,
        events_exchange = %config.events_exchange,
        "AMQP started"
    );
    Ok((AmqpHandle { status: status_rx }, tasks))
}

/// Opens a named connection with lapin's auto-recovery on and its reconnect attempts bounded
/// by the config (after those, the caller's supervisor takes over).
pub(crate) async fn connect(config: &AmqpConfig, role: &str) -> Result<Connection, String> {
    let url = config.url.as_deref().unwrap_or_default();
    let min = config.reconnect_min();
    let max = config.reconnect_max();
    let attempts = config.recovery_attempts;
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("{}-{role}", config.connection_name).into())
        .enable_auto_recover()
        .configure_backoff(move |b| {
            b.with_min_delay(min)
                .with_max_delay(max)
                .with_max_times(attempts)
                .with_jitter()
        });
    match tokio::time::timeout(
        config.connect_timeout(),
        Connection::connect(url, properties),
    )
    .await
    {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(format!("connecting to {}: {e}", config::redact_url(url))),
        Err(_) => Err(format!(
            "connecting to {}: no answer within {:?}",
            config::redact_url(url),
            config.connect_timeout()
        )),
    }
}

/// Capped exponential backoff of a supervisor: `min`, `2 min`, ... up to `max`, never ending.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The next pause (with up to 25% jitter subtracted, so instances do not stampede).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = rand::random_range(0.0..0.25);
        delay.mul_f64(1.0 - jitter)
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Longest wait for lapin's own recovery of a channel. Its future has been seen to stay pending
/// after the connection broke (a test's proxy cut and restored: the relay waited over a minute
/// where a fresh connection would have worked), so past this the session is dropped and rebuilt
/// on a new connection, which reconnects with backoff like any other loss.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(20);

/// Waits for lapin to recover `channel` after `error`, at most [`RECOVERY_TIMEOUT`]. `Err`
/// says why the session should be rebuilt instead.
pub(crate) async fn recover(channel: &lapin::Channel, error: lapin::Error) -> Result<(), String> {
    match tokio::time::timeout(RECOVERY_TIMEOUT, channel.wait_for_recovery(error)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("lapin's recovery gave up: {e}")),
        Err(_) => Err(format!(
            "lapin's recovery did not finish within {RECOVERY_TIMEOUT:?}"
        )),
    }
}

/// Sleeps `delay` unless `shutdown` comes first; `false` on shutdown.
pub(crate) async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let d: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert!(d[0] <= Duration::from_millis(100) && d[0] >= Duration::from_millis(75));
        assert!(d[1] <= Duration::from_millis(200) && d[1] >= Duration::from_millis(150));
        assert!(d[4] <= Duration::from_millis(350) && d[4] >= Duration::from_millis(262));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
