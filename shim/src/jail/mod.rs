//! Host confinement of a sandbox's VMM and helpers (a room, empty for now): the per-sandbox
//! host cgroup v2 under the pod's cgroup parent, the unprivileged uid/gid, no_new_privs, the
//! minimal mount namespace and the seccomp filter that QEMU, virtiofsd and vhost-device-vsock
//! run under. The VMM backend asks this module how to start its processes; nothing else
//! starts a helper.
