//! vidgate: a durable gateway in front of the Turing `/videos` API (Veo and Seedance models).
//!
//! Module map (one room each; see `../shared/design/ARCHITECTURE.md`). Layers import only
//! downwards: adapters ([`api`], [`intake`]) -> the application layer ([`jobs`]) -> [`dispatcher`]
//! and [`events`] -> [`store`], [`blob`], [`upstream`] -> [`domain`] and [`job`]. Nothing below
//! an adapter knows tonic or lapin; [`app`] wires them all.
//!
//! | module | owns |
//! |---|---|
//! | [`api`] | the gRPC adapter: `VideoService` over [`jobs`] and [`events`], `WebhookService` over [`webhooks`], bearer-token tenants, the one mapping of errors to `Status`, gRPC health over readiness |
//! | [`intake`] | the AMQP adapter: job messages into [`jobs::Jobs::accept`] (ack after commit, dead letters with reasons), and the outbox relay publishing events |
//! | [`jobs`] | the application layer, transport-neutral: accept, get, list, cancel, delete, retry, and their one error enum [`jobs::JobsError`] |
//! | [`dispatcher`] | job progress, a file per phase: claims due jobs with a lease (one writer per job, recorded in the store), submits once, polls politely, downloads and verifies once, applies cancel/delete requests recorded for the jobs it holds |
//! | [`events`] | fan-out of the event log to live streams, bounded, resumable by cursor; its own [`events::FeedError`] |
//! | [`store`] | jobs, idempotency keys, leases and owner requests, and the event log behind [`store::JobStore`]; webhook endpoints and deliveries behind [`store::webhooks::WebhookStore`]; SQLite embedded, PostgreSQL shared |
//! | [`webhooks`] | signed HTTP deliveries of job events (Standard Webhooks): endpoints and their rules, fan-out from the event log, delivery with leases and retries; its own [`webhooks::endpoints::WebhookError`] |
//! | [`budget`] | a channel bounded in bytes: what one server stream may hold for a client that does not read |
//! | [`blob`] | stored videos and last frames: put once, read ranges as streams (object_store) |
//! | [`upstream`] | the typed HTTP client of the upstream contract: requests, status normalising, error classification, rate limit |
//! | [`upstream::sim`] | a faithful simulator of the upstream for tests, benchmarks and the no-key demo |
//! | [`domain`] | the model catalog, the validated, provider-neutral [`domain::VideoSpec`], and [`domain::Tenant`]; no I/O |
//! | [`job`] | the durable job record, its lifecycle transitions, statuses and failure reasons |
//! | [`convert`] | the one edge between `vidgate.v1` wire types and domain types |
//! | [`submission`] | the stored form of an accepted create: the validated spec (versioned JSON) and the catalog rules it passed; reads older protobuf rows too |
//! | [`pb`] | the generated `vidgate.v1` protobuf types and service (from `proto/`), shared by both transports |
//! | [`netguard`] | the one guard against outbound requests to internal addresses (SSRF): URLs others hand vidgate are fetched only from public addresses, checked after DNS |
//! | [`media`] | probing MP4 files (duration, size, tracks) to check downloaded videos; `mp4parse` underneath |
//! | [`app`] | the one startup path: `Application::build(config)` wires and starts everything, a function per part; and the one bounded stop path (`shutdown`) |
//! | [`datadir`] | the data directory private: directories 0700, files 0600, wider ones tightened |
//! | [`config`] | one typed configuration from a TOML file and a few environment variables |
//! | [`telemetry`] | tracing, metrics, readiness and the admin HTTP port |
//! | [`tls`] | TLS on the gRPC port (`[server.tls]`, optional client certificates): handshakes off the accept path, certificates re-read while serving |
//! | [`healthcheck`] | `vidgate healthcheck`: one readiness GET against the admin port, for container health checks |
//! | `fuzzing` | the harnesses of the fuzz targets in `fuzz/`, shared with the corpus replay test (hidden) |
//! | [`cli`] | the client commands of the `vidgate` binary (create, get, list, watch, download, cancel, retry, delete, webhooks) over gRPC |
//!
//! Rules of the upstream contract are cited by their numbers from `CONTRACT.md` (V1-V5, S1-S10,
//! U1-U4) in code and test names.

pub mod api;
pub mod app;
pub mod blob;
pub mod budget;
pub mod cli;
pub mod config;
pub mod convert;
pub mod datadir;
pub mod dispatcher;
pub mod domain;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod healthcheck;
pub mod intake;
pub mod job;
pub mod jobs;
pub mod media;
pub mod netguard;
pub mod pb;
pub mod store;
pub mod submission;
pub mod sweeper;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod webhooks;
