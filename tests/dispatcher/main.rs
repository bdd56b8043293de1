//! The dispatcher's guarantees, one test binary: races of the due list (`race`), what a crash
//! costs (`crash`), and the order of a job's statuses as subscribers see them (`status`).

#[path = "../support/mod.rs"]
mod support;

mod crash;
mod race;
mod status;
