//! The Bulwark shim as a library: everything `containerd-shim-bulwark-v2` (src/main.rs) runs,
//! and the pieces the benchmark reuses (the QEMU command line in `hypervisor::qemu`).
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

mod agent;
mod child;
mod config;
mod container;
mod error;
mod exec;
pub mod hypervisor;
mod io;
pub mod network;
mod oom;
mod process;
mod sandbox;
pub mod service;
mod sizing;
mod stats;
mod task;
mod virtiofsd;
mod volumes;
mod vsock;

/// The runtime type containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.bulwark.v2";
