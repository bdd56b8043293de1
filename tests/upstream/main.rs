//! The upstream side, one test binary: the simulator over raw HTTP (`sim_http`), its generated
//! MP4s (`sim_mp4`), and vidgate's upstream client against it (`upstream_client`, which
//! installs this binary's global log subscriber).

#[path = "../support/mod.rs"]
mod support;

mod sim_http;
mod sim_mp4;
mod upstream_client;
