//! containerd-shim-bulwark-v2: runs each pod in a QEMU microVM.
//!
//! Follow one container from containerd to the VM:
//! `service.rs` (shim start/delete) → `task.rs` (Task API: Create/Start/...) →
//! `container.rs` (config.json, rootfs mounts) → `volumes.rs` (host bind mounts into the
//! share) → `sandbox.rs` (one VM per pod: state dir, helpers, boot; `sizing.rs` its size) → `vsock.rs` + `virtiofsd.rs` (helpers) → `hypervisor/` (QEMU, accel) →
//! `agent_client.rs` (ttrpc to bulwark-agent) → `io.rs` (stdio). `config.rs` is the node
//! config, `error.rs` the error types, `child.rs` supervised processes, `process.rs` exit state.
//!
//! Logging: `tracing` macros become `log` records (workspace feature "log") that
//! containerd-shim's logger writes to containerd's shim log. No tracing subscriber here.

mod agent_client;
mod child;
mod config;
mod container;
mod error;
mod exec;
mod hypervisor;
mod io;
mod network;
mod oom;
mod process;
mod sandbox;
mod service;
mod sizing;
mod stats;
mod task;
mod virtiofsd;
mod volumes;
mod vsock;

/// The runtime type containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.bulwark.v2";

fn main() {
    let config = containerd_shim::Config {
        // We supervise our children (QEMU, virtiofsd, vhost-device-vsock) with tokio::process;
        // the library must not waitpid(-1) them away.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(containerd_shim::asynchronous::run::<service::BulwarkShim>(RUNTIME_ID, Some(config)));
    // Let in-flight blocking work finish (e.g. the `delete` reply on stdout), but never hang
    // on a thread stuck in a blocking syscall once everything is torn down.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
}
