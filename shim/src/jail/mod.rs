//! Host confinement of a sandbox's VMM and helpers (docs/jail.md): the per-sandbox host
//! cgroup v2 under the pod's cgroup parent (cgroup.rs, with systemd.rs for systemd-format
//! paths), the per-sandbox unprivileged uid/gid (uid.rs), the per-sandbox block of ids and
//! user namespace that virtiofsd runs in, over id-mapped mounts (idmap.rs), and how each of
//! QEMU, virtiofsd and vhost-device-vsock is started (process.rs: oom_score_adj, the mount
//! view from mount_view.rs — a root of its own, or the runtime directory covered — the user
//! namespace, no capabilities, the uid/gid, no_new_privs, our seccomp filter from seccomp.rs
//! where the program has none of its own), after checking that the sandbox uid can reach what
//! it needs (reach.rs). The VMM backend (vmm/qemu/) builds a
//! confinement for each process it starts and reports their pids (`Vmm::processes`) for the
//! cgroup. Only the VMM backend starts a helper.

pub mod cgroup;
pub mod idmap;
pub mod mount_view;
pub mod process;
pub mod reach;
pub mod seccomp;
pub mod systemd;
#[cfg(test)]
pub mod testing;
pub mod uid;
