//! The service from the outside, one test binary: the gRPC semantics users rely on
//! (`service_grpc`), operability and the stop (`service_ops`), the client commands
//! (`cli_client`) and the README's request examples (`readme_examples`).

#[path = "../support/mod.rs"]
mod support;

mod cli_client;
mod readme_examples;
mod service_grpc;
mod service_ops;
mod stored_once;
