//! Operating vidgate, one test binary: the admin port (`ops_admin`), the real OTLP exporters of
//! a child process (`ops_otlp`) and the deploy files (`deploy_files`). `ops_telemetry` stays a
//! binary of its own: it installs its process's global subscriber.

#[path = "../support/mod.rs"]
mod support;

mod deploy_files;
mod memory;
mod ops_admin;
mod ops_otlp;
