//! Regenerate the checked-in ONNX protobuf bindings.
//!
//! Run from the repository root:
//!
//! ```text
//! cargo run --manifest-path tools/protogen/Cargo.toml
//! ```
//!
//! It parses `proto/onnx.proto` with protox (pure Rust, no `protoc` binary) and writes
//! `crates/bitnet-model/src/proto/onnx.rs` with prost-build. Raw byte fields (`raw_data`,
//! `string_data` elements stay `Vec<u8>`) use `bytes::Bytes` so large weights are not copied.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let proto_dir = root.join("proto");
    let out_dir = root.join("crates/bitnet-model/src/proto");
    std::fs::create_dir_all(&out_dir)?;
    let fds = protox::compile([proto_dir.join("onnx.proto")], [&proto_dir])?;
    let mut config = prost_build::Config::new();
    config.bytes([".onnx.TensorProto.raw_data"]);
    config.out_dir(&out_dir);
    config.compile_fds(fds)?;
    println!("wrote {}", out_dir.join("onnx.rs").display());
    Ok(())
}
