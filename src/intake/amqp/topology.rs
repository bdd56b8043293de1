//! The broker topology of API.md "AMQP", declared idempotently at every (re)connect:
//!
//! | what | kind | notes |
//! |---|---|---|
//! | `vidgate.jobs` | topic exchange, durable | producers publish job messages here |
//! | `vidgate.jobs` | quorum queue, durable | bound to it with `#`; dead letters to `vidgate.dead`, delivery limit, at-least-once dead-lettering |
//! | `vidgate.dead` | direct exchange, durable | vidgate's own dead letters and the broker's |
//! | `vidgate.jobs.dead` | quorum queue, durable | bound to `vidgate.dead` with the jobs queue's name as key |
//! | `vidgate.events` | topic exchange, durable | job events, routing key `<tenant>.video.<status>` |
//!
//! Declaring what exists with the same arguments is a no-op; with different arguments the
//! broker refuses (406) and closes the channel, and the error names the queue so an operator
//! can see which declaration disagrees.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use super::config::AmqpConfig;

/// Why a declaration failed.
#[derive(Debug, thiserror::Error)]
#[error("declaring {what}: {source}")]
pub struct TopologyError {
    /// What was being declared.
    pub what: String,
    /// lapin's error (a 406 means the existing object has other arguments).
    #[source]
    pub source: lapin::Error,
}

fn short(name: &str) -> ShortString {
    // Names are checked by `AmqpConfig::validate` to fit a short string; a longer one would
    // be refused by the broker anyway, so an empty name here only changes the error message.
    ShortString::try_new(name).unwrap_or_default()
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// The arguments of the jobs queue. Public so that tests and benchmarks declare exactly what
/// vidgate declares.
pub fn jobs_queue_arguments(config: &AmqpConfig) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    args.insert(
        "x-dead-letter-exchange".into(),
        long_string(&config.dead_exchange),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        long_string(&config.jobs_queue),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(config.delivery_limit)),
    );
    // Quorum-queue dead-lettering is at-most-once unless asked; at-least-once needs
    // reject-publish overflow (RabbitMQ 3.10+).
    args.insert(
        "x-dead-letter-strategy".into(),
        long_string("at-least-once"),
    );
    args.insert("x-overflow".into(), long_string("reject-publish"));
    args
}

fn quorum_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    args
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declares the intake side: jobs exchange and queue, dead-letter exchange and queue.
pub async fn declare_intake(channel: &Channel, config: &AmqpConfig) -> Result<(), TopologyError> {
    let fail = |what: String| move |source| TopologyError { what, source };
    channel
        .exchange_declare(
            short(&config.dead_exchange),
            ExchangeKind::Direct,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
        .map_err(fail(format!("exchange {:?}", config.dead_exchange)))?;
    channel
        .queue_declare(
            short(&config.dead_queue),
            durable_queue(),
            quorum_arguments(),
        )
        .await
        .map_err(fail(format!("queue {:?}", config.dead_queue)))?;
    channel
        .queue_bind(
            short(&config.dead_queue),
            short(&config.dead_exchange),
            short(&config.jobs_queue),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(fail(format!(
            "binding of {:?} to {:?}",
            config.dead_queue, config.dead_exchange
        )))?;
    channel
        .exchange_declare(
            short(&config.jobs_exchange),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
        .map_err(fail(format!("exchange {:?}", config.jobs_exchange)))?;
    channel
        .queue_declare(
            short(&config.jobs_queue),
            durable_queue(),
            jobs_queue_arguments(config),
        )
        .await
        .map_err(fail(format!(
            "queue {:?} (an existing queue of that name with other arguments is refused with 406: delete it or configure another amqp.jobs_queue)",
            config.jobs_queue
        )))?;
    channel
        .queue_bind(
            short(&config.jobs_queue),
            short(&config.jobs_exchange),
            short(&config.jobs_binding_key),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(fail(format!(
            "binding of {:?} to {:?}",
            config.jobs_queue, config.jobs_exchange
        )))?;
    Ok(())
}

/// Declares the events side: the events topic exchange.
pub async fn declare_events(channel: &Channel, config: &AmqpConfig) -> Result<(), TopologyError> {
    channel
        .exchange_declare(
            short(&config.events_exchange),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| TopologyError {
            what: format!("exchange {:?}", config.events_exchange),
            source,
        })
}

/// Declares everything (intake and events).
pub async fn declare_all(channel: &Channel, config: &AmqpConfig) -> Result<(), TopologyError> {
    declare_intake(channel, config).await?;
    declare_events(channel, config).await
}
