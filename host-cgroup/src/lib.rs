//! The host cgroup v2 of one Bulwark sandbox, shared by the shim (`shim/src/jail/cgroup.rs`)
//! and the test /init that proves it inside a VM (`images/test-init`, mode `bw.mode=cgroup`).
//! std only.
//!
//! - [`path`]: the pod's `linux.cgroupsPath` (cgroupfs or systemd format), validated.
//! - [`limits`]: `cpu.max`, `cpu.weight`, `memory.max`, `memory.high`, `pids.max`,
//!   `io.weight` from the pod's resources and the node's overhead.
//! - [`cgroupfs`]: find a usable hierarchy, create / fill / remove the sandbox cgroup.

pub mod cgroupfs;
pub mod limits;
pub mod path;

pub use cgroupfs::{Applied, Error, FakeKernel, Hierarchy, Kernel, RealKernel, SandboxCgroup, SHIM_LEAF, VMM_LEAF};
pub use limits::{compute, Limits, Overhead, PodResources};
pub use path::{CgroupPath, Driver, PathError, SystemdUnit};
