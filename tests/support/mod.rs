//! The helpers of every integration test binary, in one module. A binary declares it once
//! (`#[path = "../support/mod.rs"] mod support;` from its `main.rs`); each binary uses only
//! some of it.
//!
//! - the app, re-exported here from [`app`]: `spawn_app()`, the real startup on port 0 against
//!   the simulator, tokens of two tenants, requests and the dispatcher stepped by the test;
//! - [`upstream`]: vidgate's upstream client against the simulator, outside the app;
//! - [`amqp`]: the broker (`VIDGATE_TEST_AMQP_URL`, else testcontainers, else the test fails
//!   saying what to set), unique names, the test's own client, a proxy the test can cut;
//! - [`hostile`]: an upstream that misbehaves on purpose (endless or trickling content,
//!   redirects to internal addresses, echoed keys), per job by a word in its prompt;
//! - [`s3`]: an S3-compatible server (`VIDGATE_TEST_S3_ENDPOINT`, else a moto server the
//!   support starts, else the test fails saying how to provide one), a key prefix per test;
//! - [`azure`]: an Azure Blob Storage server (`VIDGATE_TEST_AZURE_ENDPOINT`, else an Azurite
//!   the support starts, else the test fails saying how to provide one), a prefix per test;
//! - [`child`]: `vidgate serve` as a child process the test can `SIGKILL`;
//! - [`receiver`]: a webhook receiver that verifies every signature with the Standard Webhooks
//!   library and can answer 503 or 410, be slow, or be down;
//! - [`postgres`]: the database (`VIDGATE_TEST_DATABASE_URL`, else testcontainers, else the
//!   test fails saying what to set) and a schema of the test's own.
#![allow(dead_code)]

pub mod amqp;
pub mod app;
pub mod azure;
pub mod child;
pub mod hostile;
pub mod postgres;
pub mod receiver;
pub mod s3;
pub mod upstream;

// Unused in the binaries that never start the app (`domain`).
#[allow(unused_imports)]
pub use app::*;

pub const VEO: &str = "turing/veo-3.1-generate";
pub const SEEDANCE: &str = "doubao-seedance-2-0-260128";
