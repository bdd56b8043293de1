//! The dispatcher's guarantees, one test binary: one owner per job and requests applied by it
//! (`ownership`), what a crash costs (`crash`), and the order of a job's statuses as
//! subscribers see them (`status`).

#[path = "../support/mod.rs"]
mod support;

mod crash;
mod ownership;
mod status;
