//! The service from the outside, one test binary: the gRPC semantics users rely on
//! (`service_grpc`), operability and the stop (`service_ops`), the client commands
//! (`cli_client`), the README's request examples (`readme_examples`), TLS on the gRPC port
//! (`tls`), hostile input at the edge (`edge`) and requests stored once, answered small
//! (`stored_once`).

#[path = "../support/mod.rs"]
mod support;

mod cli_client;
mod edge;
mod readme_examples;
mod service_grpc;
mod service_ops;
mod stored_once;
mod tls;
mod webhooks;
