//! The gRPC API: `vidgate.v1.VideoService` and `vidgate.v1.WebhookService` ([`webhooks`]), auth, the one mapping of errors to `Status`, and
//! `grpc.health.v1.Health` over readiness; the protobuf codec (undecodable bytes are the
//! caller's error), the per-tenant stream cap, and the deadline for a new connection's preface.

pub mod auth;
pub mod codec;
pub mod error;
pub mod health;
pub mod incoming;
pub mod service;
pub mod streams;
pub mod webhooks;
