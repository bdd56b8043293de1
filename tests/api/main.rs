//! The service from the outside, one test binary: the gRPC semantics users rely on
//! (`service_grpc`), operability and the stop (`service_ops`), the client commands
//! (`cli_client`), the README's request examples (`readme_examples`), TLS on the gRPC port
//! (`tls`) and hostile input at the edge (`edge`).

#[path = "../support/mod.rs"]
mod support;

mod cli_client;
mod edge;
mod readme_examples;
mod service_grpc;
mod service_ops;
mod tls;
