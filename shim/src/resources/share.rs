//! The sandbox's virtio-fs share, laid out so that the guest can never turn it against the
//! host (Kata CVE-2020-2026/2024 class: a guest planting symlinks or renaming entries in a
//! share that root on the host later walks by path).
//!
//! In the sandbox state directory (0700, root):
//! - `share/`: a small tmpfs (bounded size and inodes: the guest cannot fill the node's
//!   `/run`), host-only and read-write: the skeleton, one mount point per container. It is a
//!   shared mount, so what is mounted below it also appears in its peer `export/`.
//! - `export/`: a bind of `share/`, read-only, nosuid, nodev, noexec: the only tree virtiofsd
//!   serves. The guest can create, rename or link nothing in the skeleton.
//! - `staging/`: a private tmpfs, host-only, never served: each container's tree is built here
//!   first ([`stage`]) and moved into `share/<id>` in one step ([`expose`]) once every host
//!   mount of it is in place, so the guest never sees a partial tree.
//!
//! A container's tree is its own small tmpfs (read-only once built) holding `rootfs` (the
//! container's rootfs, read-write: the tenant's own files) and `mounts/<n>` (its volumes, with
//! their own flags). Every path operation below the state directory goes through
//! `host/fs.rs` (openat2 beneath, no symlinks); binds are attached onto fds.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::error::{Error, Result};
use crate::host::fs::Beneath;
use crate::host::Host;

/// The skeleton's tmpfs: one directory per container.
pub const SHARE_TMPFS: &str = "size=256k,nr_inodes=4096,mode=0755";
/// The staging tmpfs: one directory per container being built.
pub const STAGING_TMPFS: &str = "size=256k,nr_inodes=4096,mode=0700";
/// One container's tree: `rootfs`, `mounts/`, one mount point per volume.
pub const CONTAINER_TMPFS: &str = "size=256k,nr_inodes=1024,mode=0755";

/// The host-only read-write skeleton.
pub fn share_dir(dir: &Path) -> PathBuf {
    dir.join("share")
}

/// What virtiofsd serves: the read-only view of the skeleton.
pub fn export_dir(dir: &Path) -> PathBuf {
    dir.join("export")
}

/// Where containers' trees are built before they are exposed.
pub fn staging_dir(dir: &Path) -> PathBuf {
    dir.join("staging")
}

/// Creates `share/`, `export/` and `staging/` in the sandbox state directory `dir` (which the
/// caller created, empty). On error the caller removes `dir` (unmounting what is there).
pub fn create(host: &dyn Host, dir: &Path) -> Result<()> {
    let (share, export, staging) = (share_dir(dir), export_dir(dir), staging_dir(dir));
    let mkdir = |p: &Path| host.create_dir(p).map_err(|e| Error::io(format!("creating {}", p.display()), e));
    let mount = |src: Option<&Path>, p: &Path, flags: MsFlags| {
        host.mount(src, p, flags).map_err(|e| Error::Mount(format!("{} ({flags:?}): {e}", p.display())))
    };
    let tmpfs = |p: &Path, opts: &str| {
        host.mount_tmpfs(p, opts).map_err(|e| Error::Mount(format!("tmpfs on {}: {e}", p.display())))
    };
    mkdir(&share)?;
    tmpfs(&share, SHARE_TMPFS)?;
    // Its own peer group (whatever /run's propagation is), shared with export/ and virtiofsd.
    mount(None, &share, MsFlags::MS_PRIVATE)?;
    mount(None, &share, MsFlags::MS_SHARED)?;
    mkdir(&export)?;
    mount(Some(&share), &export, MsFlags::MS_BIND)?;
    let ro = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    mount(None, &export, ro)?;
    mkdir(&staging)?;
    tmpfs(&staging, STAGING_TMPFS)?;
    // Private: a mount can only be moved out of a parent that does not propagate.
    mount(None, &staging, MsFlags::MS_PRIVATE)?;
    Ok(())
}

/// The sandbox's share, opened for one container operation.
pub struct Share {
    share: Beneath,
    staging: Beneath,
}

/// One container's tree in the share, as far as it got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    pub id: String,
    /// The sandbox state directory.
    pub sandbox_dir: PathBuf,
    /// Mount id of the tree's tmpfs while it is in `staging/<id>`.
    pub staged: Option<u64>,
    /// Mount id of the tree once moved to `share/<id>`.
    pub exposed: Option<u64>,
}

fn io_err(e: std::io::Error) -> Error {
    Error::Mount(e.to_string())
}

impl Share {
    /// Opens the share of the sandbox whose state directory is `dir`.
    pub fn open(dir: &Path) -> Result<Share> {
        let open = |p: PathBuf| Beneath::open(&p).map_err(io_err);
        Ok(Share { share: open(share_dir(dir))?, staging: open(staging_dir(dir))? })
    }

    /// Starts container `id`'s tree in `staging/<id>` (its own tmpfs) and returns it with a
    /// handle on the tree's root, where the caller mounts `rootfs` and `mounts/<n>`.
    pub fn stage(&self, dir: &Path, id: &str) -> Result<(Tree, Beneath)> {
        bulwark_protocol::validate_id(id).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let rel = Path::new(id);
        let mut tree = Tree { id: id.to_string(), sandbox_dir: dir.to_path_buf(), ..Default::default() };
        self.staging.mkdir(rel, 0o700).map_err(io_err)?;
        tree.staged = Some(self.staging.mount_tmpfs(rel, CONTAINER_TMPFS).map_err(io_err)?);
        let root = self.staging.open_dir(rel).map_err(io_err)?;
        Ok((tree, root))
    }

    /// Makes the staged tree read-only at its top (its submounts keep their flags) and moves
    /// it to `share/<id>`: it appears in `export/` complete, in one step.
    pub fn expose(&self, tree: &mut Tree) -> Result<()> {
        let rel = Path::new(&tree.id);
        self.staging.set_readonly(rel).map_err(io_err)?;
        self.share.mkdir(rel, 0o755).map_err(io_err)?;
        let id = self.share.move_here(&self.staging, rel, rel).map_err(io_err)?;
        tree.staged = None;
        tree.exposed = Some(id);
        Ok(())
    }

    /// Removes the tree (exposed or still staged) with everything mounted in it, and its
    /// directories. Only the mounts recorded in `tree` are unmounted. Logs what it cannot do.
    pub fn remove(&self, tree: &Tree) {
        let rel = Path::new(&tree.id);
        for (what, dir, id) in [("share", &self.share, tree.exposed), ("staging", &self.staging, tree.staged)] {
            if let Some(id) = id {
                match dir.unmount(rel, id) {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!("{what}/{}: not the recorded mount any more; left alone", tree.id),
                    Err(e) => tracing::error!("unmounting {what}/{}: {e}", tree.id),
                }
            }
            if let Err(e) = dir.rmdir(rel) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::error!("{e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    #[test]
    fn the_layout_is_made_in_order() {
        let dir = crate::host::fake::temp_dir("share-layout");
        let host = FakeHost::new();
        create(host.as_ref(), &dir).expect("create");
        let calls = host.calls().join("\n");
        let share = share_dir(&dir).display().to_string();
        let export = export_dir(&dir).display().to_string();
        let pos = |needle: &str| calls.find(needle).unwrap_or_else(|| panic!("{needle:?} not in {calls}"));
        assert!(pos(&format!("mount tmpfs {share} {SHARE_TMPFS}")) < pos("MS_SHARED"));
        assert!(pos("MS_SHARED") < pos(&format!("{share} {export} MsFlags(MS_BIND)")), "export binds a shared share");
        let ro = calls.lines().find(|l| l.contains(&export) && l.contains("MS_REMOUNT")).expect("ro remount");
        for f in ["MS_RDONLY", "MS_NOSUID", "MS_NODEV", "MS_NOEXEC"] {
            assert!(ro.contains(f), "{ro}");
        }
        assert!(calls.contains(&format!("mount tmpfs {} {STAGING_TMPFS}", staging_dir(&dir).display())));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
