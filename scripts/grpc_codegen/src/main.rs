//! Writes the Rust code of proto/grpc_service.proto (prost messages, tonic server and client)
//! to the directory given as the only argument, as `inference.rs`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::env::args_os().nth(1).map(PathBuf::from).ok_or("usage: flaxlayer-grpc-codegen OUT_DIR")?;
    let fds = protox::compile([root.join("proto/grpc_service.proto")], [root.join("proto")])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The client's `connect` needs tonic's `transport` feature, which flaxlayer leaves out.
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .out_dir(&out)
        .compile_fds(fds)?;
    Ok(())
}
