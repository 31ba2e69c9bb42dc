//! Compiles `proto/fallow.proto` with protox (pure Rust), so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/fallow.proto"];
    println!("cargo:rerun-if-changed=proto/fallow.proto");
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The coordinator answers every worker with one shared copy of a module's bytes
        // (`coordinator::modules`), not a copy per call.
        .bytes(".fallow.v1.GetModuleResponse.module")
        .compile_fds(descriptors)?;
    Ok(())
}
