//! Compiles our own `.proto` files (../../proto) with protox — a pure-Rust compiler, so no `protoc` is
//! needed — and generates prost messages plus tonic clients and servers. Maps become `BTreeMap` so that
//! encoding is deterministic (map entries sorted by key, as the Go wire vectors are).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "connectioncontext.proto",
        "connection.proto",
        "networkservice.proto",
        "registry.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", proto_dir.join(f).display());
    }
    let fds = protox::compile(files, [&proto_dir])?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("nsm_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    tonic_prost_build::configure()
        .btree_map(".")
        // Prost encoding with per-call buffers sized for NSM messages (src/codec.rs).
        .codec_path("crate::codec::NsmCodec")
        // The context is most of a Connection's size; boxed, every Request and Connection moved
        // through a chain element (and every map of connections) is ~half as large. Wire unchanged.
        .boxed(".connection.Connection.context")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
