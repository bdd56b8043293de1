//! The generated `vidgate.v1` types (prost messages, tonic service, proto3 JSON via pbjson).
#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("vidgate.v1");
include!(concat!(env!("OUT_DIR"), "/vidgate.v1.serde.rs"));

/// The encoded descriptor set of `proto/`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/vidgate_descriptor.bin"));
