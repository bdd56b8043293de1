//! Intakes other than gRPC: transports that turn messages into jobs through the same
//! [`crate::jobs::Jobs::accept`] path (validation, idempotency, durable insert),
//! and publish job events back.
//!
//! [`amqp`]: RabbitMQ (lapin 4): a supervised consumer of the jobs queue that acks only after
//! the durable insert and dead-letters invalid messages with a reason, and the outbox relay
//! that publishes the event log to the events exchange with publisher confirms.

pub mod amqp;
