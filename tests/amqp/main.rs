//! vidgate against a real RabbitMQ, one test binary: the intake (`amqp_intake`) and the outbox
//! relay of events (`amqp_events`). The broker is `VIDGATE_TEST_AMQP_URL`, else testcontainers;
//! without one the tests fail, saying what to set.

#[path = "../support/mod.rs"]
mod support;

mod amqp_events;
mod amqp_intake;
