//! The outbox relay: the event log, published to the events exchange with publisher confirms.
//!
//! The store's event log is the outbox: every committed job change is already there, so the
//! relay only has to read it in order after its cursor, publish, and remember how far the broker
//! has confirmed. Confirms may arrive out of order; the cursor is the highest sequence below
//! which *every* event is confirmed (the lowest still-unconfirmed sequence minus one). It is
//! saved in the store (`cursors` table) every [`CURSOR_SAVE_INTERVAL`] while busy, when idle,
//! and at the end of each session, so a restart re-publishes at most the events of the last
//! interval: at-least-once, with the sequence as `message_id` for consumers to drop repeats.
//!
//! While the broker cannot be reached nothing advances: events wait in the log and are
//! published in order once a session is up again. A failed or refused publish sends the relay
//! back to its cursor, so nothing after a gap is ever recorded as done.
//!
//! The store's live broadcast only wakes the relay; what it publishes always comes from the
//! log, so a lagging wake-up never loses anything.
//!
//! One relay publishes for the whole cluster: instances sharing a store compete for the role
//! `relay:<cursor name>` ([`JobStore::hold_role`]), held for [`ROLE_HOLD`] and renewed every
//! [`ROLE_RENEW`]. The others stand by (readiness counts that as healthy) and ask again every
//! [`ROLE_RENEW`]; when the holder dies its hold ends and one of them takes over from the stored
//! cursor. A holder that cannot renew stops publishing before its hold ends. A relay that lost
//! the role while a publish was on its way may still save its cursor: events are then
//! published again (at-least-once, as after any restart), never skipped.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, Event, PublisherConfirm};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::AmqpConfig;
use super::consumer::{CONTENT_TYPE_JSON, PERSISTENT, short, skip_initial_connected};
use super::headers::{self, Injector};
use super::{AmqpStatus, Backoff, connect, pause, recover, topology};
use crate::convert;
use crate::pb;
use crate::store::{EventQuery, JobStore, StoreError, StoredEvent};
use crate::telemetry::propagation::{set_parent_traceparent, traceparent_of};
use tracing::Instrument;

/// Events read from the log per query.
pub const RELAY_PAGE: u32 = 500;
/// How often confirmed progress is written to the store while events keep coming. A restart
/// re-publishes at most about this much; each save is one small write in the store's group
/// commit.
pub const CURSOR_SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// How often the log is read when no live event wakes the relay (a safety net only).
pub const IDLE_POLL: Duration = Duration::from_secs(2);
/// How long a hold on the relay role lasts without renewal: after an instance dies, another
/// takes over within about this long.
pub const ROLE_HOLD: Duration = Duration::from_secs(15);
/// How often the holder renews the role, and a standby asks for it.
pub const ROLE_RENEW: Duration = Duration::from_secs(5);
/// Longest wait at shutdown for confirms of events already published.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The cursor to start from: the stored one, or on the very first start the latest sequence
/// (saved at once), so enabling AMQP publishes events from then on and not the whole history.
pub(crate) async fn initial_cursor(store: &dyn JobStore, name: &str) -> Result<i64, StoreError> {
    if let Some(cursor) = store.load_cursor(name).await? {
        return Ok(cursor);
    }
    let latest = store.latest_sequence().await?;
    store.save_cursor(name, latest).await?;
    tracing::info!(
        cursor = name,
        sequence = latest,
        "AMQP relay starts from the latest event"
    );
    Ok(latest)
}

enum SessionEnd {
    Shutdown,
    Lost { connected: bool, why: String },
}

/// Why publishing stopped.
enum Failure {
    /// The broker refused an event (nack): the channel is fine, try again from the cursor.
    Refused(String),
    /// The channel or connection failed.
    Broken(lapin::Error),
    /// No confirm in time: the connection is not trustworthy.
    Timeout,
}

type Pending = FuturesUnordered<BoxFuture<'static, (i64, Result<u64, Failure>)>>;

/// Renews the relay role every [`ROLE_RENEW`]; cancels `held` when it is lost, or when it
/// could not be renewed and its hold is about to end.
async fn keep_role(
    store: Arc<dyn JobStore>,
    role: String,
    holder: String,
    held: CancellationToken,
) {
    let mut held_until = unix_ms().saturating_add(millis(ROLE_HOLD));
    loop {
        tokio::select! {
            () = held.cancelled() => return,
            () = tokio::time::sleep(ROLE_RENEW) => {}
        }
        let now = unix_ms();
        let until = now.saturating_add(millis(ROLE_HOLD));
        match store.hold_role(&role, &holder, now, until).await {
            Ok(true) => held_until = until,
            Ok(false) => {
                held.cancel();
                return;
            }
            Err(e) => {
                // Stop before the hold ends, so two relays never publish at once.
                if now.saturating_add(millis(ROLE_RENEW)) >= held_until {
                    tracing::warn!(error = %e, "AMQP relay: the relay role could not be renewed; stopping before it ends");
                    held.cancel();
                    return;
                }
            }
        }
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The relay task.
pub(crate) struct Relay {
    config: Arc<AmqpConfig>,
    store: Arc<dyn JobStore>,
    status: Arc<watch::Sender<AmqpStatus>>,
    /// Ends publishing: cancelled at shutdown or when the role is lost (a child of `root`).
    shutdown: CancellationToken,
    /// The application's shutdown.
    root: CancellationToken,
    /// This relay's name as a role holder (unique per process start).
    holder: String,
    /// Every event up to here is confirmed.
    confirmed: i64,
    /// The cursor as last saved.
    saved: i64,
    last_save: Instant,
}

impl Relay {
    pub(crate) fn new(
        config: Arc<AmqpConfig>,
        store: Arc<dyn JobStore>,
        status: Arc<watch::Sender<AmqpStatus>>,
        shutdown: CancellationToken,
        cursor: i64,
    ) -> Self {
        Self {
            config,
            store,
            status,
            shutdown: shutdown.child_token(),
            root: shutdown,
            holder: uuid::Uuid::now_v7().simple().to_string(),
            confirmed: cursor,
            saved: cursor,
            last_save: Instant::now(),
        }
    }

    /// The role's name in the store.
    fn role(&self) -> String {
        format!("relay:{}", self.config.relay_cursor)
    }

    /// Holds the relay role and publishes while it is held, until shutdown.
    pub(crate) async fn run(mut self) {
        loop {
            if !self.take_role().await {
                break;
            }
            self.shutdown = self.root.child_token();
            // Another instance may have published since this one last held the role.
            match initial_cursor(self.store.as_ref(), &self.config.relay_cursor).await {
                Ok(cursor) => {
                    self.confirmed = cursor;
                    self.saved = cursor;
                    self.status.send_modify(|s| s.relay_confirmed = cursor);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "AMQP relay: its cursor cannot be read; trying again");
                    let _ = self.store.release_role(&self.role(), &self.holder).await;
                    if !pause(ROLE_RENEW, &self.root).await {
                        break;
                    }
                    continue;
                }
            }
            let keeper = tokio::spawn(keep_role(
                self.store.clone(),
                self.role(),
                self.holder.clone(),
                self.shutdown.clone(),
            ));
            self.run_sessions().await;
            keeper.abort();
            if self.root.is_cancelled() {
                break;
            }
            tracing::warn!(
                confirmed = self.confirmed,
                "AMQP relay: lost its role to another instance (or could not renew it); standing by"
            );
        }
        if let Err(e) = self.store.release_role(&self.role(), &self.holder).await {
            tracing::debug!(error = %e, "AMQP relay: role not released; it ends with its hold");
        }
        tracing::info!(confirmed = self.confirmed, "AMQP relay stopped");
    }

    /// Waits until this instance holds the relay role (`true`) or shutdown (`false`).
    async fn take_role(&mut self) -> bool {
        let mut failures = 0u32;
        loop {
            let now = unix_ms();
            let until = now.saturating_add(millis(ROLE_HOLD));
            match self
                .store
                .hold_role(&self.role(), &self.holder, now, until)
                .await
            {
                Ok(true) => {
                    self.status.send_modify(|s| s.relay_standby = false);
                    tracing::info!(role = %self.role(), "AMQP relay: holding the relay role");
                    return true;
                }
                Ok(false) => {
                    failures = 0;
                    self.status.send_modify(|s| s.relay_standby = true);
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.status.send_modify(|s| s.relay_standby = false);
                    if failures == 1 {
                        tracing::warn!(error = %e, "AMQP relay: cannot ask for the relay role; retrying");
                    }
                }
            }
            if !pause(ROLE_RENEW, &self.root).await {
                return false;
            }
        }
    }

    /// Sessions until `shutdown` (the application's, or the role's end), with a capped backoff
    /// between them.
    async fn run_sessions(&mut self) {
        let mut backoff = Backoff::new(self.config.reconnect_min(), self.config.reconnect_max());
        loop {
            let end = self.session().await;
            self.status.send_modify(|s| s.relay_connected = false);
            self.save().await;
            match end {
                SessionEnd::Shutdown => break,
                SessionEnd::Lost { connected, why } => {
                    self.status.send_modify(|s| {
                        s.relay_failures += 1;
                        s.relay_error.clone_from(&why);
                    });
                    if connected {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        error = %why,
                        confirmed = self.confirmed,
                        retry_in_ms = delay.as_millis() as u64,
                        "AMQP relay lost its session; events wait in the log"
                    );
                    if !pause(delay, &self.shutdown).await {
                        break;
                    }
                }
            }
        }
    }

    async fn save(&mut self) {
        if self.saved == self.confirmed {
            return;
        }
        match self
            .store
            .save_cursor(&self.config.relay_cursor, self.confirmed)
            .await
        {
            Ok(()) => {
                self.saved = self.confirmed;
                self.last_save = Instant::now();
            }
            Err(e) => {
                tracing::warn!(error = %e, "AMQP relay: cursor not saved; will retry (a restart may re-publish some events)")
            }
        }
    }

    async fn session(&mut self) -> SessionEnd {
        let connection = tokio::select! {
            _ = self.shutdown.cancelled() => return SessionEnd::Shutdown,
            connection = connect(&self.config, "relay") => connection,
        };
        let connection = match connection {
            Ok(connection) => connection,
            Err(why) => {
                return SessionEnd::Lost {
                    connected: false,
                    why,
                };
            }
        };
        let end = self.publish_session(&connection).await;
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            connection.close(200, short("vidgate relay session ended")),
        )
        .await;
        end
    }

    async fn publish_session(&mut self, connection: &Connection) -> SessionEnd {
        // Created first, so every later `Connected` is a recovery by lapin.
        let mut events = connection.events_listener();
        let setup = async {
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| format!("opening a channel: {e}"))?;
            topology::declare_events(&channel, &self.config)
                .await
                .map_err(|e| e.to_string())?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| format!("turning publisher confirms on: {e}"))?;
            Ok::<_, String>(channel)
        };
        let channel = match setup.await {
            Ok(channel) => channel,
            Err(why) => {
                return SessionEnd::Lost {
                    connected: false,
                    why,
                };
            }
        };
        skip_initial_connected(&mut events);
        self.status.send_modify(|s| {
            s.relay_connected = true;
            s.relay_sessions += 1;
        });
        tracing::info!(exchange = %self.config.events_exchange, confirmed = self.confirmed, "AMQP relay publishing");
        let mut refusals = Backoff::new(self.config.reconnect_min(), self.config.reconnect_max());
        loop {
            match self.publish_from_cursor(&channel, &mut events).await {
                Ok(()) => return SessionEnd::Shutdown,
                Err(Failure::Refused(why)) => {
                    let delay = refusals.next_delay();
                    tracing::warn!(
                        error = %why,
                        confirmed = self.confirmed,
                        retry_in_ms = delay.as_millis() as u64,
                        "AMQP relay: the broker refused an event; publishing again from the cursor"
                    );
                    self.save().await;
                    if !pause(delay, &self.shutdown).await {
                        return SessionEnd::Shutdown;
                    }
                }
                Err(Failure::Broken(error)) => {
                    self.status.send_modify(|s| s.relay_connected = false);
                    self.save().await;
                    tracing::warn!(%error, "AMQP relay: connection trouble; waiting for lapin's recovery");
                    let recovered = tokio::select! {
                        _ = self.shutdown.cancelled() => return SessionEnd::Shutdown,
                        recovered = recover(&channel, error) => recovered,
                    };
                    match recovered {
                        Ok(()) => {
                            self.status.send_modify(|s| s.relay_connected = true);
                            tracing::info!(
                                confirmed = self.confirmed,
                                "AMQP relay recovered: publishing again from the cursor"
                            );
                        }
                        Err(why) => {
                            return SessionEnd::Lost {
                                connected: true,
                                why,
                            };
                        }
                    }
                }
                Err(Failure::Timeout) => {
                    return SessionEnd::Lost {
                        connected: true,
                        why: format!(
                            "no publisher confirm within {:?}",
                            self.config.confirm_timeout()
                        ),
                    };
                }
            }
        }
    }

    /// Publishes from the cursor on until shutdown (`Ok`) or a failure. Every failure leaves
    /// `confirmed` where every event up to it is confirmed; the caller starts again from there.
    async fn publish_from_cursor(
        &mut self,
        channel: &Channel,
        events: &mut (impl Stream<Item = Event> + Unpin),
    ) -> Result<(), Failure> {
        let mut live = self.store.subscribe();
        let mut live_open = true;
        match self.store.pruned_through().await {
            Ok(pruned) if pruned > self.confirmed => {
                tracing::error!(
                    from = self.confirmed + 1,
                    through = pruned,
                    "AMQP relay: events were pruned (older than the retention) before the broker could take them; they are not published"
                );
                self.set_confirmed(pruned);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "AMQP relay: pruned_through unknown"),
        }
        let mut published = self.confirmed;
        let mut outstanding = BTreeSet::new();
        let mut pending = Pending::new();
        let mut buffer: VecDeque<StoredEvent> = VecDeque::new();
        let mut caught_up = false;
        let window = self.config.relay_window;
        loop {
            if buffer.is_empty() && !caught_up {
                match self
                    .store
                    .events_after(&EventQuery {
                        after_sequence: published,
                        tenant: None,
                        job_id: None,
                        limit: RELAY_PAGE,
                    })
                    .await
                {
                    Ok(page) => {
                        caught_up = page.len() < RELAY_PAGE as usize;
                        buffer.extend(page);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "AMQP relay: reading the event log failed; will retry");
                        caught_up = true;
                    }
                }
            }
            while pending.len() < window
                && let Some(event) = buffer.pop_front()
            {
                published = event.sequence;
                if event.job.is_deleted() {
                    // A deleted job's last event: nothing to tell (as the gRPC streams).
                    continue;
                }
                // Bounded: a broker that blocks publishing (resource alarm) must not hold the
                // relay, or its shutdown, for ever.
                let sent = tokio::select! {
                    _ = self.shutdown.cancelled() => {
                        self.finish(&mut pending, &mut outstanding, published - 1).await;
                        return Ok(());
                    }
                    sent = tokio::time::timeout(
                        self.config.confirm_timeout(),
                        self.publish(channel, &event),
                    ) => sent,
                };
                match sent {
                    Ok(Ok(Some(confirms))) => {
                        outstanding.insert(event.sequence);
                        pending.push(confirms);
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => return Err(Failure::Broken(e)),
                    Err(_) => return Err(Failure::Timeout),
                }
            }
            self.advance(&outstanding, published);
            if self.last_save.elapsed() >= CURSOR_SAVE_INTERVAL
                || (buffer.is_empty() && caught_up && pending.is_empty())
            {
                self.save().await;
            }
            let window_full = !buffer.is_empty();
            if !window_full && !caught_up {
                continue;
            }
            let idle = buffer.is_empty() && caught_up;
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    self.finish(&mut pending, &mut outstanding, published).await;
                    return Ok(());
                }
                Some((sequence, result)) = pending.next(), if !pending.is_empty() => {
                    let count = result?;
                    outstanding.remove(&sequence);
                    self.status.send_modify(|s| s.relay_published += count);
                }
                Some(event) = events.next() => match event {
                    Event::Connected => {
                        self.status.send_modify(|s| {
                            s.relay_connected = true;
                            s.relay_recoveries += 1;
                        });
                        tracing::info!("AMQP relay: lapin reconnected");
                    }
                    Event::Error(error) => {
                        self.status.send_modify(|s| s.relay_connected = false);
                        tracing::warn!(%error, "AMQP relay: connection error; lapin is recovering");
                    }
                    Event::ConnectionBlocked(reason) => {
                        tracing::warn!(%reason, "AMQP relay: the broker blocked publishing (resource alarm); events wait");
                    }
                    _ => {}
                },
                woke = live.recv(), if idle && live_open => {
                    if matches!(woke, Err(broadcast::error::RecvError::Closed)) {
                        live_open = false;
                    }
                    // Several commits may have woken us; one read of the log covers them.
                    while live.try_recv().is_ok() {}
                    caught_up = false;
                }
                _ = tokio::time::sleep(IDLE_POLL), if idle => {
                    caught_up = false;
                }
            }
        }
    }

    /// At shutdown: collects the confirms of what was already published, for a while.
    async fn finish(
        &mut self,
        pending: &mut Pending,
        outstanding: &mut BTreeSet<i64>,
        published: i64,
    ) {
        let collect = async {
            while let Some((sequence, result)) = pending.next().await {
                match result {
                    Ok(count) => {
                        outstanding.remove(&sequence);
                        self.status.send_modify(|s| s.relay_published += count);
                    }
                    Err(_) => break,
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, collect).await;
        self.advance(outstanding, published);
    }

    fn advance(&mut self, outstanding: &BTreeSet<i64>, published: i64) {
        let confirmed = outstanding
            .first()
            .map(|lowest| lowest - 1)
            .unwrap_or(published);
        if confirmed > self.confirmed {
            self.set_confirmed(confirmed);
        }
    }

    fn set_confirmed(&mut self, confirmed: i64) {
        self.confirmed = confirmed;
        self.status
            .send_modify(|s| s.relay_confirmed = s.relay_confirmed.max(confirmed));
    }

    /// Publishes one event (and its `reply_to` copy); the future resolves when the broker has
    /// confirmed all of them. `None`: nothing to wait for (the event cannot be encoded).
    async fn publish(
        &self,
        channel: &Channel,
        event: &StoredEvent,
    ) -> Result<Option<BoxFuture<'static, (i64, Result<u64, Failure>)>>, lapin::Error> {
        let sequence = event.sequence;
        let body = match serde_json::to_vec(&video_event(event)) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(sequence, error = %e, "AMQP relay: event not encodable; skipped");
                return Ok(None);
            }
        };
        let routing_key = routing_key(event);
        // A producer span (OpenTelemetry messaging conventions) in the job's trace; its context
        // travels in the message's `traceparent`, so a consumer's span joins the trace.
        let span = tracing::info_span!(
            "event publish",
            otel.name = %format!("{} publish", self.config.events_exchange),
            otel.kind = "producer",
            messaging.system = "rabbitmq",
            messaging.operation.type = "send",
            messaging.operation.name = "publish",
            messaging.destination.name = %self.config.events_exchange,
            messaging.rabbitmq.destination.routing_key = %routing_key,
            messaging.message.id = sequence,
            vidgate.job.id = %event.job_id,
        );
        set_parent_traceparent(&span, event.job.trace_context.as_deref());
        let traceparent = traceparent_of(&span).or_else(|| event.job.trace_context.clone());
        let properties = event_properties(event, traceparent.as_deref());
        let mut confirms: Vec<PublisherConfirm> = Vec::with_capacity(2);
        confirms.push(
            channel
                .basic_publish(
                    short(&self.config.events_exchange),
                    short(&routing_key),
                    BasicPublishOptions::default(),
                    &body,
                    properties.clone(),
                )
                .instrument(span.clone())
                .await?,
        );
        if let Some(reply_to) = event.job.reply_to.as_deref().filter(|r| !r.is_empty()) {
            let mut reply = properties;
            if let Some(correlation) = event.job.correlation_id.as_deref() {
                reply = reply.with_correlation_id(short(correlation));
            }
            confirms.push(
                channel
                    .basic_publish(
                        short(""),
                        short(reply_to),
                        BasicPublishOptions::default(),
                        &body,
                        reply,
                    )
                    .instrument(span)
                    .await?,
            );
        }
        let limit = self.config.confirm_timeout();
        Ok(Some(Box::pin(async move {
            let wait = async {
                let mut count = 0;
                for confirm in confirms {
                    match confirm.await {
                        Ok(Confirmation::Ack(_)) => count += 1,
                        Ok(other) => {
                            return Err(Failure::Refused(format!(
                                "event {sequence} was not confirmed: {other:?}"
                            )));
                        }
                        Err(e) => return Err(Failure::Broken(e)),
                    }
                }
                Ok(count)
            };
            let result = match tokio::time::timeout(limit, wait).await {
                Ok(result) => result,
                Err(_) => Err(Failure::Timeout),
            };
            (sequence, result)
        })))
    }
}

/// `<tenant>.video.<status>`, status in lower case (API.md).
pub fn routing_key(event: &StoredEvent) -> String {
    format!("{}.video.{}", event.tenant, event.job.status().as_str())
}

/// The `VideoEvent` of a logged event: the job's state, never its bytes.
pub fn video_event(event: &StoredEvent) -> pb::VideoEvent {
    pb::VideoEvent {
        sequence: event.sequence,
        video_id: event.job_id.clone(),
        time: Some(convert::timestamp(event.time_ms)),
        kind: Some(pb::video_event::Kind::Video(convert::video(&event.job))),
    }
}

/// API.md: `message_id` = the sequence, `type` = `video.<status>`, `content_type` JSON;
/// persistent; the tenant and the trace context (`traceparent`: the publish span's, in the
/// job's trace) as headers.
pub fn event_properties(event: &StoredEvent, traceparent: Option<&str>) -> BasicProperties {
    let mut table = FieldTable::default();
    headers::set_str(&mut table, headers::TENANT, &event.tenant);
    if let Some(trace) = traceparent {
        Injector(&mut table).set(headers::TRACEPARENT, trace);
    }
    BasicProperties::default()
        .with_content_type(short(CONTENT_TYPE_JSON))
        .with_type(short(&format!("video.{}", event.job.status().as_str())))
        .with_message_id(short(&event.sequence.to_string()))
        .with_delivery_mode(PERSISTENT)
        .with_timestamp(u64::try_from(event.time_ms.div_euclid(1000)).unwrap_or(0))
        .with_app_id(short("vidgate"))
        .with_headers(table)
}
