//! A container's rootfs on the host: the snapshotter's mounts onto `<bundle>/rootfs` (like
//! runc's shim), bound to `<share>/<id>/rootfs` so virtiofsd serves it, then its host bind
//! mounts shared (volumes.rs). Undone on failure and on Delete.

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::Spec;

use crate::error::{Error, Result};

/// The host mounts of one container's rootfs.
#[derive(Debug, Clone)]
pub struct RootfsMounts {
    /// `<bundle>/rootfs` when the shim mounted it from the snapshotter's mounts.
    pub bundle_rootfs: Option<PathBuf>,
    /// `<share>/<id>` (the rootfs is bind-mounted at `<share>/<id>/rootfs`, host bind mounts
    /// below `<share>/<id>/mounts`).
    pub share_dir: PathBuf,
    /// The host bind mounts shared into the VM (volumes.rs).
    pub shared: Vec<crate::resources::volumes::SharedMount>,
}

/// The guest-side rootfs path, relative to the share.
pub fn guest_rootfs_path(id: &str) -> String {
    format!("{id}/rootfs")
}

/// Mounts the rootfs and binds it into the share. Undoes what it did on failure.
pub fn mount_rootfs(id: &str, bundle: &Path, spec: &Spec, mounts: &[Mount], share: &Path) -> Result<RootfsMounts> {
    let (source, ours) = if !mounts.is_empty() {
        let target = bundle.join("rootfs");
        std::fs::create_dir_all(&target).map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
        for m in mounts {
            let fs_type = (!m.type_.is_empty()).then_some(m.type_.as_str());
            let src = (!m.source.is_empty()).then_some(m.source.as_str());
            if let Err(e) = containerd_shim::mount::mount_rootfs(fs_type, src, &m.options, &target) {
                unmount_all(&target);
                return Err(Error::Mount(format!(
                    "mounting the rootfs ({} {}) on {}: {e}",
                    m.type_,
                    m.source,
                    target.display()
                )));
            }
        }
        (target.clone(), Some(target))
    } else {
        // No mounts: the bundle's rootfs is ready (e.g. prepared by hand); use root.path.
        let root = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .ok_or_else(|| Error::InvalidArgument("no rootfs mounts and no root.path in config.json".into()))?;
        let root = if root.is_absolute() { root } else { bundle.join(root) };
        if !root.is_dir() {
            return Err(Error::InvalidArgument(format!("rootfs {} is not a directory", root.display())));
        }
        (root, None)
    };
    let share_dir = share.join(id);
    let target = share_dir.join("rootfs");
    let res = std::fs::create_dir_all(&target)
        .map_err(|e| Error::io(format!("creating {}", target.display()), e))
        .and_then(|_| {
            mount(Some(&source), &target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                .map_err(|e| Error::Mount(format!("binding {} to {}: {e}", source.display(), target.display())))
        });
    let mut rm = RootfsMounts { bundle_rootfs: ours, share_dir, shared: Vec::new() };
    match res.and_then(|_| crate::resources::volumes::share(id, spec, &rm.share_dir)) {
        Ok(shared) => {
            rm.shared = shared;
            Ok(rm)
        }
        Err(e) => {
            unmount_rootfs(&rm);
            Err(e)
        }
    }
}

fn unmount_all(target: &Path) {
    for _ in 0..16 {
        if umount2(target, MntFlags::MNT_DETACH).is_err() {
            break;
        }
    }
}

/// Undoes [`mount_rootfs`]; logs what it cannot undo.
pub fn unmount_rootfs(m: &RootfsMounts) {
    if m.share_dir.exists() {
        if let Err(e) = crate::resources::mount::cleanup_mounts_and_dir(&m.share_dir) {
            tracing::error!("{e}");
        }
    }
    if let Some(b) = &m.bundle_rootfs {
        unmount_all(b);
    }
}
