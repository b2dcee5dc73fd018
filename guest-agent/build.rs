//! Compiles the syscall collector's BPF programs (`bpf/collector.bpf.c`, CO-RE, with the
//! hand-written `bpf/vmlinux.h`) with clang into `$OUT_DIR/collector.bpf.o`, which the agent
//! embeds (src/telemetry/bpf.rs). libbpf's BPF headers come from libbpf-sys (DEP_BPF_INCLUDE).
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bpf_dir = manifest.join("bpf");
    let include = std::env::var_os("DEP_BPF_INCLUDE").expect("libbpf-sys exports its headers (DEP_BPF_INCLUDE)");
    for f in ["collector.bpf.c", "collector.h", "vmlinux.h"] {
        println!("cargo:rerun-if-changed=bpf/{f}");
    }
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
    let clang = std::env::var("BPF_CLANG").unwrap_or_else(|_| "clang".into());
    let object = out.join("collector.bpf.o");
    let status = Command::new(&clang)
        .args(["-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Werror"])
        .arg("-I")
        .arg(&include)
        .arg("-I")
        .arg(&bpf_dir)
        .arg("-c")
        .arg(bpf_dir.join("collector.bpf.c"))
        .arg("-o")
        .arg(&object)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed to compile bpf/collector.bpf.c ({s})"),
        Err(e) => panic!(
            "cannot run {clang} ({e}): the BPF collector needs clang (Debian: apt-get install clang, \
             or scripts/lib/deps.sh bulwark_install_deps)"
        ),
    }
}
