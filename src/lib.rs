//! vidgate: a durable gateway in front of the Turing `/videos` API (Veo and Seedance models).
//!
//! Module map (one room each; see `../shared/design/ARCHITECTURE.md`):
//!
//! | module | owns |
//! |---|---|
//! | [`convert`] | the one edge between `vidgate.v1` wire types and domain types |
//! | [`dispatcher`] | job progress: submit once, poll politely, download and verify once |
//! | [`events`] | fan-out of the event log to live streams, bounded, resumable by cursor |
//! | [`domain`] | the model catalog and the validated, provider-neutral [`domain::VideoSpec`]; no I/O |
//! | [`upstream`] | the typed HTTP client of the upstream contract: requests, status normalising, error classification, rate limit |
//! | [`api`] | the gRPC service, bearer-token tenants, the one mapping of errors to `Status`, gRPC health over readiness |
//! | [`intake`] | RabbitMQ: job messages into durable jobs (ack after commit, dead letters with reasons), and the outbox relay publishing events |
//! | [`app`] | the one startup path: `Application::build(config)` wires and starts everything; and the one bounded stop path (`shutdown`) |
//! | [`config`] | one typed configuration from a TOML file and a few environment variables |
//! | [`cli`] | the client commands of the `vidgate` binary (create, get, list, watch, download, cancel, retry, delete) over gRPC |
//! | [`blob`] | stored videos and last frames: put once, read ranges as streams (object_store) |
//! | [`job`] | the durable job record, its statuses, phases and failure reasons |
//! | [`store`] | jobs, idempotency keys and the event log behind [`store::JobStore`]; SQLite embedded |
//! | [`pb`] | the generated `vidgate.v1` protobuf types and service (from `proto/`) |
//! | [`media`] | probing MP4 files (duration, size, tracks) to check downloaded videos; `mp4parse` underneath |
//! | [`upstream::sim`] | a faithful simulator of the upstream for tests, benchmarks and the no-key demo |
//!
//! Rules of the upstream contract are cited by their numbers from `CONTRACT.md` (V1-V5, S1-S10,
//! U1-U4) in code and test names.

pub mod api;
pub mod app;
pub mod blob;
pub mod cli;
pub mod config;
pub mod convert;
pub mod dispatcher;
pub mod domain;
pub mod events;
pub mod healthcheck;
pub mod intake;
pub mod job;
pub mod media;
pub mod pb;
pub mod store;
pub mod telemetry;
pub mod upstream;
