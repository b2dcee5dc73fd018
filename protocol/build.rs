//! Compiles `proto/agent.proto` to Rust (protobuf messages + async ttrpc client/server) and
//! `proto/telemetry.proto` (protobuf messages only: telemetry is a framed stream, not ttrpc).
use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    println!("cargo:rerun-if-changed=proto/agent.proto");
    println!("cargo:rerun-if-changed=proto/telemetry.proto");
    Codegen::new()
        .out_dir(&out)
        .inputs(["proto/agent.proto", "proto/telemetry.proto"])
        .include("proto")
        .rust_protobuf()
        .customize(Customize { async_all: true, ..Default::default() })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generating the agent API and telemetry messages from proto/");
    // The generated files start with inner attributes (`#![...]`), which `include!` cannot
    // take; src/lib.rs sets the lints they set, on the modules that include them.
    for file in ["agent.rs", "agent_ttrpc.rs", "telemetry.rs"] {
        let path = std::path::Path::new(&out).join(file);
        let text = std::fs::read_to_string(&path).expect("reading generated code");
        let kept: Vec<&str> =
            text.lines().filter(|l| !l.trim_start().starts_with("#![") && !l.trim_start().starts_with("//!")).collect();
        std::fs::write(&path, kept.join("\n")).expect("writing generated code");
    }
}
