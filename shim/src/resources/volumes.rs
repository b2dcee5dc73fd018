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

use nix::mount::MsFlags;
use oci_spec::runtime::{Mount, Spec};

use crate::error::{Error, Result};
use crate::host::linux::LinuxHost;
use crate::host::Host;

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
    share_with(&LinuxHost, id, spec, share_dir)
}

/// [`share`], mounting through `host`.
pub fn share_with(host: &dyn Host, id: &str, spec: &Spec, share_dir: &Path) -> Result<Vec<SharedMount>> {
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
        host.mount(Some(&source), &target, MsFlags::MS_BIND | rec)
            .map_err(|e| Error::Mount(format!("binding {} to {}: {e}", source.display(), target.display())))?;
        if has_option(m, "ro") {
            host.mount(None, &target, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | rec)
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

    #[test]
    fn shares_files_and_dirs_read_only_as_asked() {
        use crate::host::fake::{temp_dir, FakeHost};
        let tmp = temp_dir("volumes");
        let (file, dir) = (tmp.join("hosts"), tmp.join("cm"));
        std::fs::write(&file, b"127.0.0.1 localhost\n").unwrap();
        std::fs::create_dir(&dir).unwrap();
        let s = spec(serde_json::json!([
            {"destination": "/etc/hosts", "type": "bind", "source": file, "options": ["rbind", "rw"]},
            {"destination": "/cfg", "type": "bind", "source": dir, "options": ["bind", "ro"]},
            {"destination": "/missing", "type": "bind", "source": tmp.join("nope"), "options": ["bind"]}
        ]));
        let share_dir = tmp.join("share").join("c1");
        std::fs::create_dir_all(&share_dir).unwrap();
        let host = FakeHost::new();
        // a missing source is refused
        let e = share_with(host.as_ref(), "c1", &s, &share_dir).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        let mut ok = s.clone();
        ok.set_mounts(s.mounts().as_ref().map(|m| m[..2].to_vec()));
        // (what the failed call mounted stays for the caller's cleanup: start afresh)
        let share_dir = tmp.join("share2").join("c1");
        std::fs::create_dir_all(&share_dir).unwrap();
        let host = FakeHost::new();
        let shared = share_with(host.as_ref(), "c1", &ok, &share_dir).unwrap();
        assert_eq!(
            shared,
            [
                SharedMount { index: 0, share_path: "c1/mounts/0".into() },
                SharedMount { index: 1, share_path: "c1/mounts/1".into() }
            ]
        );
        assert!(share_dir.join("mounts/0").is_file() && share_dir.join("mounts/1").is_dir());
        let calls: Vec<_> = host.calls().into_iter().filter(|c| c.starts_with("mount")).collect();
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert!(calls[0].contains("MS_BIND | MS_REC") && !calls[0].contains("MS_RDONLY"), "{calls:?}");
        assert!(calls[2].contains("MS_RDONLY") && calls[2].contains("MS_REMOUNT"), "{calls:?}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
