//! Generates the tonic/prost code with protox, so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/concord/v1/user.proto",
        "proto/concord/v1/mesh.proto",
        "proto/concord/v1/evidence.proto",
        "proto/concord/v1/peer.proto",
    ];
    let descriptors = protox::compile(files, ["proto"])?;
    // Every service encodes through the codec that wipes secret fields after encoding (src/wipe.rs).
    tonic_prost_build::configure()
        .codec_path("crate::wipe::WipingCodec")
        .compile_fds(descriptors)?;
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    Ok(())
}
