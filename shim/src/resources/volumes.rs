//! Host bind mounts of one container — what the kubelet passes: `/etc/hosts`,
//! `/etc/resolv.conf`, `/etc/hostname`, the termination-message file, and emptyDir,
//! configMap, secret and projected volumes. Each is bind-mounted into the sandbox share at
//! `<share>/<id>/mounts/<n>` (read-only on the host too when the spec says `ro`, so the
//! guest cannot write through virtiofsd), and the agent is told which spec mount it
//! replaces (protocol SharedMount). Directories are shared whole, so kubelet's atomic
//! `..data` symlink swap in configMap/secret volumes reaches the guest (virtio-fs,
//! cache=auto: within about a second).
//!
//! Not shared: `/dev/shm` (the agent gives the pod a tmpfs in the VM), sources under
//! `/proc`, `/sys` and `/dev` (the guest has its own), and sources that are neither regular
//! files nor directories (sockets, devices and FIFOs do not cross virtio-fs).

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use oci_spec::runtime::{Mount, Spec};

use crate::error::{Error, Result};

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

/// Bind-mounts every host bind mount of `spec` below `<share_dir>/mounts`. `share_dir` is
/// the container's directory in the share (`<share>/<id>`); share paths are relative to its
/// parent. On error, what was mounted stays below `share_dir`, which the caller's rootfs
/// cleanup unmounts and removes.
pub fn share(id: &str, spec: &Spec, share_dir: &Path) -> Result<Vec<SharedMount>> {
    let wanted = to_share(spec);
    if wanted.len() > MAX_SHARED_MOUNTS {
        return Err(Error::InvalidArgument(format!(
            "container {id} has {} host bind mounts; at most {MAX_SHARED_MOUNTS} are supported",
            wanted.len()
        )));
    }
    let mounts = spec.mounts().as_deref().unwrap_or_default();
    let dir = share_dir.join("mounts");
    let mut shared = Vec::with_capacity(wanted.len());
    for (index, source) in wanted {
        let m = &mounts[index as usize];
        let md = match std::fs::metadata(&source) {
            Ok(md) => md,
            Err(e) => {
                return Err(Error::InvalidArgument(format!(
                    "bind mount source {} (for {}) is not usable: {e}",
                    source.display(),
                    m.destination().display()
                )))
            }
        };
        if !md.is_dir() && !md.is_file() {
            tracing::warn!(
                "container {id}: bind mount of {} on {} is neither a file nor a directory; not shared into the VM",
                source.display(),
                m.destination().display()
            );
            continue;
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let target = dir.join(index.to_string());
        if md.is_dir() { std::fs::create_dir(&target) } else { std::fs::File::create(&target).map(drop) }
            .map_err(|e| Error::io(format!("creating mount point {}", target.display()), e))?;
        let rec = if has_option(m, "rbind") { MsFlags::MS_REC } else { MsFlags::empty() };
        mount(Some(&source), &target, None::<&str>, MsFlags::MS_BIND | rec, None::<&str>)
            .map_err(|e| Error::Mount(format!("binding {} to {}: {e}", source.display(), target.display())))?;
        if has_option(m, "ro") {
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | rec,
                None::<&str>,
            )
            .map_err(|e| Error::Mount(format!("making {} read-only: {e}", target.display())))?;
        }
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
}
