// Generates the sluice.v1 gRPC code with a vendored protoc, so no system install is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let files = [
        "proto/sluice/v1/common.proto",
        "proto/sluice/v1/nameserver.proto",
        "proto/sluice/v1/broker.proto",
        "proto/sluice/v1/replication.proto",
        "proto/sluice/v1/access.proto",
    ];
    tonic_prost_build::configure()
        // Message bodies stay `Bytes` so the broker can hand out slices of its read buffers.
        .bytes(".sluice.v1")
        .compile_protos(&files, &["proto"])?;
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}
