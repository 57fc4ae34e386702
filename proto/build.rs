//! Compiles `csi.proto` with protox (pure Rust, so no `protoc` is needed) and
//! generates prost messages plus tonic clients and servers from the result.

use std::{env, error::Error, fs, path::PathBuf};

const PROTO: &str = "csi.proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed=build.rs");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    // protox ships the google/protobuf well-known types itself.
    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_imports(true).include_source_info(false);
    compiler.open_file(PROTO)?;

    // Embed the protox encoding, not a prost-types round trip: prost-types
    // drops extension values, which would erase every (csi_secret) and
    // (alpha_*) option. Imports stay in the set so gRPC reflection can
    // resolve Timestamp, the wrappers and the option extensions on its own.
    fs::write(
        out_dir.join("csi_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    // prost-build needs the imports to resolve field types; it maps
    // google.protobuf to prost-types instead of generating it again.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
