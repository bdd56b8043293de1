//! Compiles `proto/` with protox (pure Rust: no system `protoc`), then generates the prost
//! messages, the tonic service, and pbjson's proto3-JSON serde impls from one descriptor set.
//! The descriptor set is also kept in OUT_DIR for gRPC server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // `sqlx::migrate!` embeds these at compile time.
    println!("cargo:rerun-if-changed=migrations");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("vidgate_descriptor.bin");

    let fds = protox::compile(["vidgate/v1/vidgate.proto"], ["proto"])?;
    std::fs::write(&descriptor_path, fds.encode_to_vec())?;

    tonic_prost_build::configure()
        // Chunks and images as `bytes::Bytes`: no copy per chunk.
        .bytes(".")
        // Maps as BTreeMap: deterministic encoding, so a request's fingerprint is stable.
        .btree_map(".")
        // Well-known types from pbjson-types, so Timestamp has the canonical JSON mapping.
        // (prost only lets the mapping be replaced when it does not add its own default.)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        // tonic-prost's codec, but a message that does not decode is INVALID_ARGUMENT.
        .codec_path("crate::api::codec::ProtoCodec")
        .compile_fds(fds)?;

    let descriptor_set = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        // pbjson maps `.google.protobuf` to `::pbjson_types` by itself.
        .register_descriptors(&descriptor_set)?
        .btree_map(["."])
        .build(&[".vidgate"])?;
    Ok(())
}
