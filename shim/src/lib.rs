//! The Bulwark shim as a library: everything `containerd-shim-bulwark-v2` (src/main.rs) runs,
//! and the pieces the benchmark reuses (the QEMU command line in `vmm::qemu`).
//!
//! Layers, each calling only down:
//! - `shim.rs`: containerd's shim lifecycle (start, delete after a crash, the task service).
//! - `task/`: containerd's Task API, thin dispatch: find the container, then the process,
//!   then call the verb; events go down one channel to one forwarder.
//! - `container/`: one container (spec, id rules) holding its processes: one `Process`
//!   model for the init process and execs, their stdio.
//! - `sandbox/`: one microVM per pod: `Sandbox` and its state, the boot sequence (boot.rs),
//!   sizing, OOM watch, the state directory (state_dir.rs, public).
//! - edges: `vmm/` (trait `Vmm`; the QEMU backend owns its helper processes; a fake for
//!   tests), `agent/` (everything asked of the guest, the boot handshake, guest→host
//!   streams), `resources/` (rootfs, volumes, mount cleanup, pod network), `jail/` (host
//!   confinement of the VMM, a room), `host/` (trait `Host`: child processes, mounts),
//!   `telemetry/` (the relay of the guest's syscall events to the node).
//! - `config.rs` (the node configuration, public: the `bulwark` CLI reads it too) and
//!   `error.rs` (typed errors) at the bottom.
//!
//! No module imports one above it; `scripts/module-deps` lists the edges and fails on a cycle.
//!
//! Logging: `tracing` macros become `log` records (workspace feature "log") that
//! containerd-shim's logger writes to containerd's shim log. No tracing subscriber here.

mod agent;
pub mod config;
mod container;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod host;
mod jail;
mod policy;
mod resources;
pub mod sandbox;
pub mod shim;
mod task;
/// Public for the relay benchmark (tests/src/bench/relay.rs), not an API.
#[doc(hidden)]
pub mod telemetry;
pub mod vmm;

/// The runtime type containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.bulwark.v2";
