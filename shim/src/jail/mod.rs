//! Host confinement of a sandbox's VMM and helpers (a room, empty for now): the per-sandbox
//! host cgroup v2 under the pod's cgroup parent, the unprivileged uid/gid, no_new_privs, the
//! minimal mount namespace and the seccomp filter that QEMU, virtiofsd and vhost-device-vsock
//! run under. It will plug in between the VMM backend and the host: the backend (vmm/qemu/)
//! asks this module how to start each of its processes — a confined form of the
//! `host::Command` it passes to `Host::spawn` — and reports their pids (`Vmm::processes`)
//! for the cgroup. Only the VMM backend starts a helper.

pub mod cgroup;
pub mod process;
pub mod reach;
pub mod seccomp;
pub mod systemd;
#[cfg(test)]
pub mod testing;
pub mod uid;
