//! Host bind mounts of one container — what the kubelet passes: `/etc/hosts`,
//! `/etc/resolv.conf`, `/etc/hostname`, the termination-message file, and emptyDir,
//! configMap, secret and projected volumes. Each is bind-mounted into the container's tree in
//! the sandbox share at `<id>/mounts/<n>` (read-only on the host too, recursively, when the
//! spec says `ro`, so the guest cannot write through virtiofsd; always nosuid, nodev), and the
//! agent is told which spec mount it replaces (protocol SharedMount). Directories are shared whole, so kubelet's atomic
//! `..data` symlink swap in configMap/secret volumes reaches the guest (virtio-fs,
//! cache=auto: within about a second).
//!
//! Not shared: `/dev/shm` (the agent gives the pod a tmpfs in the VM), sources under
//! `/proc`, `/sys` and `/dev` (the guest has its own), and sources that are neither regular
//! files nor directories (sockets, devices and FIFOs do not cross virtio-fs).

use std::path::{Path, PathBuf};

use std::os::fd::AsRawFd;

use oci_spec::runtime::{Mount, Spec};

use crate::error::{Error, Result};
use crate::host::fs::{open_source, Beneath, BindFlags};
use crate::policy::TenantPolicy;

/// Most host bind mounts one container may have.
const MAX_SHARED_MOUNTS: usize = 256;

/// A spec mount the shim shared into the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedMount {
    /// Index into the spec's `mounts`.
    pub index: u32,
    /// Path relative to the share root.
    pub share_path: String,
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options().as_ref().is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
}

fn has_option(m: &Mount, opt: &str) -> bool {
    m.options().as_ref().is_some_and(|o| o.iter().any(|x| x == opt))
}

/// Which mounts to share (pure): bind mounts of host files and directories, except /dev/shm
/// and the kernel's own filesystems.
pub fn to_share(spec: &Spec) -> Vec<(u32, PathBuf)> {
    let Some(mounts) = spec.mounts() else { return Vec::new() };
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| is_bind(m) && m.destination() != Path::new("/dev/shm"))
        .filter_map(|(i, m)| {
            let src = m.source().as_ref()?;
            let virtual_fs = ["/proc", "/sys", "/dev"].iter().any(|p| src.starts_with(p));
            (src.is_absolute() && !virtual_fs).then(|| (i as u32, src.clone()))
        })
        .collect()
}

/// Bind-mounts every host bind mount of `spec` below `mounts/` of the container's tree
/// (`tree`: the tree's root, still in staging, not visible to the guest). Each source is
/// opened once and mounted from that fd (its type checked on the same inode); mount points
/// are created exclusively, without following symlinks; `ro` mounts are read-only
/// recursively before they are attached. Share paths are relative to the share root. On
/// error, what was mounted stays in the tree, which the caller's cleanup removes whole. With
/// `userns` (the sandbox's id-map, jail/idmap.rs) every bind is id-mapped through it.
pub fn share_into(
    tree: &Beneath,
    id: &str,
    spec: &Spec,
    tenant: &TenantPolicy,
    userns: Option<std::os::fd::RawFd>,
) -> Result<Vec<SharedMount>> {
    let wanted = to_share(spec);
    if wanted.len() > MAX_SHARED_MOUNTS {
        return Err(Error::InvalidArgument(format!(
            "container {id} has {} host bind mounts; at most {MAX_SHARED_MOUNTS} are supported",
            wanted.len()
        )));
    }
    let mounts = spec.mounts().as_deref().unwrap_or_default();
    let mut shared = Vec::with_capacity(wanted.len());
    let mut made_dir = false;
    for (index, source) in wanted {
        let m = &mounts[index as usize];
        let unusable = |e: std::io::Error| {
            Error::InvalidArgument(format!(
                "bind mount source {} (for {}) is not usable: {e}",
                source.display(),
                m.destination().display()
            ))
        };
        let src = open_source(&source).map_err(unusable)?;
        // The path the fd really names (symlinks resolved), checked against the tenant's
        // allowed host paths: what is mounted is this inode, whatever the path says later.
        let real = std::fs::read_link(format!("/proc/self/fd/{}", src.as_raw_fd())).map_err(unusable)?;
        if !tenant.host_path_allowed(&real) {
            return Err(Error::InvalidArgument(format!(
                "bind mount of {} (for {}) is not allowed: {} is outside the host paths the node's tenant \
                 policy allows ({:?}; host_paths in config.toml)",
                source.display(),
                m.destination().display(),
                real.display(),
                tenant.host_paths
            )));
        }
        let md = nix::sys::stat::fstat(src.as_raw_fd()).map_err(|e| unusable(e.into()))?;
        let kind = md.st_mode & libc::S_IFMT;
        if kind != libc::S_IFDIR && kind != libc::S_IFREG {
            tracing::warn!(
                "container {id}: bind mount of {} on {} is neither a file nor a directory; not shared into the VM",
                source.display(),
                m.destination().display()
            );
            continue;
        }
        if !made_dir {
            tree.mkdir(Path::new("mounts"), 0o755).map_err(|e| Error::Mount(e.to_string()))?;
            made_dir = true;
        }
        let target = PathBuf::from(format!("mounts/{index}"));
        if kind == libc::S_IFDIR { tree.mkdir(&target, 0o755) } else { tree.create_file(&target, 0o644).map(drop) }
            .map_err(|e| Error::Mount(format!("creating the mount point: {e}")))?;
        let flags = BindFlags { readonly: has_option(m, "ro"), recursive: has_option(m, "rbind"), userns };
        tree.bind_fd(&src, &source, &target, flags).map_err(|e| Error::Mount(e.to_string()))?;
        shared.push(SharedMount { index, share_path: format!("{id}/mounts/{index}") });
    }
    Ok(shared)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mounts: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0}},
            "mounts": mounts
        }))
        .expect("spec")
    }

    #[test]
    fn kubelet_mounts_are_shared_and_kernel_ones_are_not() {
        let s = spec(serde_json::json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/kubelet/pods/p/etc-hosts", "options": ["rbind", "rprivate", "rw"]},
            {"destination": "/dev/shm", "type": "bind", "source": "/run/containerd/sandboxes/x/shm", "options": ["rbind"]},
            {"destination": "/cfg", "type": "none", "source": "/var/lib/kubelet/pods/p/volumes/cm", "options": ["rbind", "ro"]},
            {"destination": "/dev/fuse", "type": "bind", "source": "/dev/fuse", "options": ["bind"]},
            {"destination": "/rel", "type": "bind", "source": "relative", "options": ["bind"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}
        ]));
        let got: Vec<u32> = to_share(&s).into_iter().map(|(i, _)| i).collect();
        assert_eq!(got, [1, 3]);
    }

    /// Real mounts (the test suite runs as root): files and directories, `ro` read-only even
    /// in a submount of the source, a missing source refused, a planted symlink never followed.
    #[test]
    fn shares_files_and_dirs_read_only_as_asked() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root (scripts/test runs as root)");
        let tmp = crate::host::fake::MountedTempDir::new("volumes");
        let (file, dir) = (tmp.join("hosts"), tmp.join("cm"));
        std::fs::write(&file, b"127.0.0.1 localhost\n").unwrap();
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        // A submount inside the ro source: recursively read-only too.
        nix::mount::mount(Some("tmpfs"), &dir.join("sub"), Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>)
            .unwrap();
        let s = spec(serde_json::json!([
            {"destination": "/etc/hosts", "type": "bind", "source": file, "options": ["rbind", "rw"]},
            {"destination": "/cfg", "type": "bind", "source": dir, "options": ["rbind", "ro"]},
            {"destination": "/missing", "type": "bind", "source": tmp.join("nope"), "options": ["bind"]}
        ]));
        let tree_dir = tmp.join("tree");
        std::fs::create_dir(&tree_dir).unwrap();
        let tree = Beneath::open(&tree_dir).unwrap();
        let anywhere = TenantPolicy { host_paths: vec!["/".into()], ..Default::default() };
        let e = share_into(&tree, "c1", &s, &anywhere, None).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        let mut ok = s.clone();
        ok.set_mounts(s.mounts().as_ref().map(|m| m[..2].to_vec()));
        // (what the failed call mounted stays for the caller's cleanup: start afresh)
        let tree_dir = tmp.join("tree2");
        std::fs::create_dir(&tree_dir).unwrap();
        let tree = Beneath::open(&tree_dir).unwrap();
        // Outside the tenant's host paths: refused, nothing mounted.
        let strict = TenantPolicy { host_paths: vec!["/var/lib/kubelet/pods".into()], ..Default::default() };
        let e = share_into(&tree, "c1", &ok, &strict, None).unwrap_err().to_string();
        assert!(e.contains("not allowed") && e.contains("host_paths"), "{e}");
        assert!(!tree_dir.join("mounts/0").exists());
        let shared = share_into(&tree, "c1", &ok, &anywhere, None).unwrap();
        assert_eq!(
            shared,
            [
                SharedMount { index: 0, share_path: "c1/mounts/0".into() },
                SharedMount { index: 1, share_path: "c1/mounts/1".into() }
            ]
        );
        assert_eq!(std::fs::read(tree_dir.join("mounts/0")).unwrap(), b"127.0.0.1 localhost\n");
        std::fs::write(tree_dir.join("mounts/0"), b"rw\n").expect("rw file volume");
        let ro = std::fs::write(tree_dir.join("mounts/1/x"), b"x").unwrap_err();
        assert_eq!(ro.raw_os_error(), Some(libc::EROFS));
        let ro_sub = std::fs::write(tree_dir.join("mounts/1/sub/x"), b"x").unwrap_err();
        assert_eq!(ro_sub.raw_os_error(), Some(libc::EROFS), "ro is recursive");
        // A second container's tree where `mounts` is a planted symlink: nothing is created
        // or mounted through it.
        let evil_dir = tmp.join("evil-tree");
        let outside = tmp.join("outside");
        std::fs::create_dir_all(&evil_dir).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, evil_dir.join("mounts")).unwrap();
        let evil = Beneath::open(&evil_dir).unwrap();
        assert!(share_into(&evil, "c2", &ok, &anywhere, None).is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing created outside");
        for m in crate::host::linux::mounts_under(&tmp) {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
