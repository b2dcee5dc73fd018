//! How the QEMU backend confines its three processes (the mechanisms are `jail/`; this only decides):
//!
//! | process | runs as | capabilities | no_new_privs | mounts | seccomp |
//! | --- | --- | --- | --- | --- | --- |
//! | QEMU | the sandbox's QEMU uid/gid (+ the group of /dev/kvm under KVM) | none (also bounding, ambient) | yes | a root of its own: [`system_root`], the kernel and initrd | its own `-sandbox on,...` |
//! | vhost-device-vsock | the sandbox's vsock uid/gid (not QEMU's) | none | yes | a root of its own: [`system_root`] and its `vm/` | ours ([`crate::jail::seccomp`]) |
//! | virtiofsd | root of the sandbox's id-map user namespace (jail/idmap.rs; host root with `jail.unprivileged_virtiofsd = false`) | that namespace's; virtiofsd drops what it does not use | yes | runtime dir hidden but for the share and its `fs/`; then its own (`--sandbox=namespace`) | its own (`--seccomp=kill`) |
//!
//! All three get `oom_score_adj` = `jail.oom_score_adj` (not containerd's -999). QEMU opens
//! nothing in the state directory: the shim passes it connected sockets to its two helpers
//! and the console log as fds. vhost-device-vsock creates its sockets in `<dir>/vm/`, owned by
//! its uid; the state directory itself stays 0700 root.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::jail::idmap::IdMap;
use crate::jail::mount_view::{MountView, NewRoot};
use crate::jail::process::{Confinement, Creds, Resource};
use crate::jail::seccomp;
use crate::jail::uid::UidRange;

/// The confinement settings of the backend (from the node configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Sandbox uids/gids.
    pub range: UidRange,
    pub oom_score_adj: i32,
    /// Holds every sandbox's state; hidden from QEMU and vhost-device-vsock.
    pub runtime_dir: PathBuf,
    /// `vm.acceleration = "auto"` with `vm.allow_tcg_fallback = false`.
    pub forbid_tcg_fallback: bool,
}

impl Policy {
    pub fn from_config(cfg: &Config) -> Self {
        Policy {
            range: UidRange { base: cfg.jail.uid_base, count: cfg.jail.uid_count },
            oom_score_adj: cfg.jail.oom_score_adj,
            runtime_dir: cfg.paths.runtime_dir.clone(),
            forbid_tcg_fallback: cfg.vm.acceleration == crate::config::Acceleration::Auto && !cfg.vm.allow_tcg_fallback,
        }
    }
}

/// The directory of vhost-device-vsock's sockets, owned by its uid.
pub fn vm_dir(dir: &Path) -> PathBuf {
    dir.join("vm")
}

/// The group owning /dev/kvm (QEMU needs it under KVM), unless it is root's.
pub fn kvm_gid() -> Option<u32> {
    std::fs::metadata("/dev/kvm").ok().map(|m| m.gid()).filter(|&g| g != 0)
}

/// Open files of QEMU (a small VM uses well under 200: eventfds per virtqueue, its fds).
pub const QEMU_MAX_FILES: u64 = 4096;
/// Open files of vhost-device-vsock (a unix socket per guest connection, a few of its own).
pub const VSOCK_MAX_FILES: u64 = 1024;
/// Processes and threads of one jail uid (QEMU's: a thread per vCPU, its worker pool;
/// vhost-device-vsock's: a few).
pub const SANDBOX_MAX_PROCS: u64 = 1024;

fn unprivileged(p: &Policy, id: u32, groups: Vec<u32>, max_files: u64) -> Confinement {
    Confinement {
        creds: Some(Creds { uid: id, gid: id, groups }),
        no_new_privs: true,
        drop_caps: true,
        oom_score_adj: Some(p.oom_score_adj),
        mounts: None,
        rlimits: vec![(Resource::NoFile, max_files), (Resource::NProc, SANDBOX_MAX_PROCS), (Resource::Core, 0)],
        seccomp: None,
        userns: None,
    }
}

/// Top-level directories that hold programs and libraries: bound read-only where they are
/// directories, recreated where they are symlinks into /usr (a merged /usr).
const SYSTEM_DIRS: [&str; 6] = ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// The host's system in a jailed helper's root (Firecracker's jailer copies the binary into an
/// empty chroot; ours are dynamically linked Debian programs, so their libraries and data come
/// along, read-only): `/usr` (QEMU's firmware is in /usr/share), [`SYSTEM_DIRS`], the dynamic
/// loader's cache, `extra` files (the guest kernel and initrd), `/dev/null`, `zero`, `full`,
/// `random`, `urandom` (and `/dev/kvm` with `kvm`), a proc showing only its own uid's
/// processes. Nothing else of the host: no /etc, /home, /root, /var, /tmp, /sys, /run.
pub fn system_root(extra: &[&Path], kvm: bool) -> NewRoot {
    let mut root = NewRoot { read_only: vec!["/usr".into()], proc: true, ..Default::default() };
    for d in SYSTEM_DIRS {
        match std::fs::symlink_metadata(d) {
            Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(d) {
                Ok(to) => root.symlinks.push((d.into(), to)),
                Err(e) => tracing::warn!("{d}: unreadable symlink, left out of the VMM helpers' root: {e}"),
            },
            Ok(m) if m.is_dir() => root.read_only.push(d.into()),
            Ok(_) => tracing::warn!("{d}: neither a directory nor a symlink, left out of the VMM helpers' root"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("{d}: left out of the VMM helpers' root: {e}"),
        }
    }
    if Path::new("/etc/ld.so.cache").is_file() {
        root.read_only.push("/etc/ld.so.cache".into());
    }
    root.read_only.extend(extra.iter().map(|p| p.to_path_buf()));
    root.devices = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"].map(PathBuf::from).into();
    if kvm {
        root.devices.push("/dev/kvm".into());
    }
    root
}

/// QEMU: its jail uid `id`, no capabilities, a root of its own holding the system, the guest's
/// `kernel` and `initrd` and nothing of the runtime directory (it gets its files as fds),
/// `kvm_group` and /dev/kvm under KVM. Its seccomp filter is its own `-sandbox`.
pub fn qemu(p: &Policy, id: u32, kvm: bool, kvm_group: Option<u32>, kernel: &Path, initrd: &Path) -> Confinement {
    Confinement {
        mounts: Some(MountView {
            hide: p.runtime_dir.clone(),
            expose: vec![],
            root: Some(system_root(&[kernel, initrd], kvm)),
        }),
        ..unprivileged(p, id, kvm_group.into_iter().collect(), QEMU_MAX_FILES)
    }
}

/// vhost-device-vsock: its jail uid `id` (not QEMU's), no capabilities, a root of its own holding the system
/// and its `<dir>/vm`, our seccomp filter.
pub fn vhost_device_vsock(p: &Policy, id: u32, dir: &Path) -> Confinement {
    Confinement {
        mounts: Some(MountView {
            hide: p.runtime_dir.clone(),
            expose: vec![vm_dir(dir)],
            root: Some(system_root(&[], false)),
        }),
        seccomp: Some(seccomp::vhost_device_vsock()),
        ..unprivileged(p, id, vec![], VSOCK_MAX_FILES)
    }
}

/// Open files of virtiofsd: one per inode the guest looked up (its own default 1,000,000), at
/// most the host's `fs.nr_open` and the shim's own hard limit (inherited from containerd:
/// raising a hard limit takes CAP_SYS_RESOURCE, which a containerized node may not grant);
/// their kernel memory is charged to the sandbox's host cgroup.
pub fn virtiofsd_max_files() -> u64 {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok());
    let mut own = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given, which lives on this stack.
    let hard = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut own) } == 0 { own.rlim_max } else { u64::MAX };
    nr_open.unwrap_or(1_048_576).min(1_000_000).min(hard)
}

/// virtiofsd, serving `share` of the sandbox in `dir`: with `idmap`, root of the id-map's user
/// namespace (host ids: the block's, capabilities only over the id-mapped share), in a mount
/// view that shows of the runtime directory only the share and its own directory; without,
/// host root. Both: no_new_privs, the oom score, bounded open files, no core dumps; it
/// sandboxes itself (namespaces, seccomp).
pub fn virtiofsd(p: &Policy, dir: &Path, share: &Path, idmap: Option<&IdMap>) -> Confinement {
    Confinement {
        no_new_privs: true,
        oom_score_adj: Some(p.oom_score_adj),
        rlimits: vec![(Resource::NoFile, virtiofsd_max_files()), (Resource::Core, 0)],
        userns: idmap.map(IdMap::userns_fd),
        mounts: idmap.map(|_| MountView {
            hide: p.runtime_dir.clone(),
            expose: vec![share.to_path_buf(), super::virtiofsd::fs_dir(dir)],
            root: None,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            range: UidRange { base: 2_000_000_000, count: 10 },
            oom_score_adj: 0,
            runtime_dir: "/run/bulwark".into(),
            forbid_tcg_fallback: false,
        }
    }

    #[test]
    fn each_process_gets_its_confinement() {
        let p = policy();
        let (kernel, initrd) = (Path::new("/opt/b/vmlinux"), Path::new("/opt/b/initrd"));
        let q = qemu(&p, 2_000_000_003, true, Some(104), kernel, initrd);
        let c = q.creds.as_ref().unwrap();
        assert_eq!((c.uid, c.gid, c.groups.as_slice()), (2_000_000_003, 2_000_000_003, &[104][..]));
        assert!(q.no_new_privs && q.drop_caps && q.seccomp.is_none());
        let view = q.mounts.as_ref().unwrap();
        assert_eq!(view.hide, PathBuf::from("/run/bulwark"));
        assert!(view.expose.is_empty());
        let root = view.root.as_ref().expect("a root of its own");
        assert!(root.proc && root.read_only.contains(&"/usr".into()));
        assert!(root.read_only.contains(&kernel.into()) && root.read_only.contains(&initrd.into()));
        assert!(root.devices.contains(&"/dev/kvm".into()) && root.devices.contains(&"/dev/urandom".into()));
        for host_only in ["/etc", "/home", "/root", "/var", "/tmp", "/sys", "/run", "/dev"] {
            assert!(!root.read_only.iter().chain(&root.devices).any(|p| p == Path::new(host_only)), "{host_only}");
        }
        let tcg = qemu(&p, 5, false, None, kernel, initrd);
        assert!(tcg.creds.unwrap().groups.is_empty());
        assert!(!tcg.mounts.unwrap().root.unwrap().devices.contains(&"/dev/kvm".into()));

        let v = vhost_device_vsock(&p, 7, Path::new("/run/bulwark/ns/s"));
        assert_eq!(v.creds.as_ref().unwrap().uid, 7);
        assert!(v.creds.as_ref().unwrap().groups.is_empty());
        assert!(v.no_new_privs && v.drop_caps && v.seccomp.is_some());
        let view = v.mounts.unwrap();
        assert_eq!(view.expose, [PathBuf::from("/run/bulwark/ns/s/vm")]);
        assert!(view.root.is_some_and(|r| !r.devices.contains(&"/dev/kvm".into())));

        let f = virtiofsd(&p, Path::new("/run/bulwark/ns/s"), Path::new("/run/bulwark/ns/s/export"), None);
        assert!(f.creds.is_none() && f.no_new_privs && !f.drop_caps && f.mounts.is_none() && f.userns.is_none());
        assert_eq!(f.oom_score_adj, Some(0));

        // No core dumps (guest memory) from any of them; the unprivileged ones bounded in
        // files and, together, in processes.
        let q = qemu(&p, 5, false, None, kernel, initrd);
        assert!(q.rlimits.contains(&(Resource::NoFile, QEMU_MAX_FILES)));
        let v = vhost_device_vsock(&p, 5, Path::new("/run/bulwark/ns/s"));
        assert!(v.rlimits.contains(&(Resource::NoFile, VSOCK_MAX_FILES)));
        for c in [&q, &v] {
            assert!(
                c.rlimits.contains(&(Resource::NProc, SANDBOX_MAX_PROCS)) && c.rlimits.contains(&(Resource::Core, 0))
            );
        }
        assert_eq!(f.rlimits, [(Resource::NoFile, virtiofsd_max_files()), (Resource::Core, 0)]);
    }

    #[test]
    fn tcg_fallback_is_forbidden_only_for_auto_without_permission() {
        let mut cfg = Config::default();
        assert!(!Policy::from_config(&cfg).forbid_tcg_fallback);
        cfg.vm.allow_tcg_fallback = false;
        assert!(Policy::from_config(&cfg).forbid_tcg_fallback);
        cfg.vm.acceleration = crate::config::Acceleration::Tcg;
        assert!(!Policy::from_config(&cfg).forbid_tcg_fallback, "an explicit tcg is no fallback");
    }
}
