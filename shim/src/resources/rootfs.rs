//! A container's rootfs on the host: the snapshotter's mounts onto `<bundle>/rootfs` (like
//! runc's shim), bound into the container's tree in the sandbox share (share.rs) as `rootfs`,
//! then its host bind mounts (volumes.rs); the tree is exposed to the guest once complete.
//! Undone on failure and on Delete.

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;
use nix::mount::{umount2, MntFlags};
use oci_spec::runtime::Spec;

use crate::error::{Error, Result};
use crate::host::fs::BindFlags;
use crate::jail::idmap::IdMap;
use crate::policy::TenantPolicy;
use crate::resources::idmapped_overlay;
use crate::resources::share::{Share, Tree};

/// The host mounts of one container's rootfs.
#[derive(Debug, Clone, Default)]
pub struct RootfsMounts {
    /// `<bundle>/rootfs` when the shim mounted it from the snapshotter's mounts.
    pub bundle_rootfs: Option<PathBuf>,
    /// The container's tree in the sandbox share (`<id>/rootfs`, `<id>/mounts/<n>`).
    pub tree: Tree,
    /// The host bind mounts shared into the VM (volumes.rs).
    pub shared: Vec<crate::resources::volumes::SharedMount>,
}

/// The guest-side rootfs path, relative to the share.
pub fn guest_rootfs_path(id: &str) -> String {
    format!("{id}/rootfs")
}

/// Mounts the rootfs (the snapshotter's mounts, or the bundle's `root.path`), builds the
/// container's tree in the share of the sandbox whose state directory is `sandbox_dir` (its
/// rootfs, then its volumes), and exposes it to the guest in one step. Undoes what it did on
/// failure. With `idmap` (the sandbox's, for an unprivileged virtiofsd) everything in the tree
/// is id-mapped: an overlay is mounted over id-mapped layers, anything else is bound
/// id-mapped into the tree.
pub fn mount_rootfs(
    id: &str,
    bundle: &Path,
    spec: &Spec,
    mounts: &[Mount],
    sandbox_dir: &Path,
    tenant: &TenantPolicy,
    idmap: Option<&IdMap>,
) -> Result<RootfsMounts> {
    let userns = idmap.map(IdMap::userns_fd);
    // The rootfs bind into the tree is id-mapped unless the rootfs already is (an overlay).
    let mut rootfs_userns = userns;
    let (source, ours) = if !mounts.is_empty() {
        let target = bundle.join("rootfs");
        std::fs::create_dir_all(&target).map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
        if let Some(map) = idmap.filter(|_| mounts.iter().any(|m| m.type_ == "overlay")) {
            if mounts.len() != 1 {
                return Err(Error::Mount(format!(
                    "{} rootfs mounts with an overlay among them: only a single overlay can be id-mapped",
                    mounts.len()
                )));
            }
            idmapped_overlay::mount(map, &mounts[0].options, &target).map_err(Error::Mount)?;
            rootfs_userns = None;
        }
        // Without an id-mapped overlay: the snapshotter's mounts as they are.
        let plain = if rootfs_userns.is_none() && idmap.is_some() { &[][..] } else { mounts };
        for m in plain {
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
    let mut rm = RootfsMounts { bundle_rootfs: ours, ..Default::default() };
    let res = (|| {
        let share = Share::open(sandbox_dir)?;
        let (tree, root) = share.stage(sandbox_dir, id)?;
        rm.tree = tree;
        root.mkdir(Path::new("rootfs"), 0o755).map_err(|e| Error::Mount(e.to_string()))?;
        root.bind(&source, Path::new("rootfs"), BindFlags { readonly: false, recursive: true, userns: rootfs_userns })
            .map_err(|e| Error::Mount(e.to_string()))?;
        rm.shared = crate::resources::volumes::share_into(&root, id, spec, tenant, userns)?;
        share.expose(&mut rm.tree)
    })();
    match res {
        Ok(()) => Ok(rm),
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
    if !m.tree.id.is_empty() {
        match Share::open(&m.tree.sandbox_dir) {
            Ok(share) => share.remove(&m.tree),
            Err(e) => tracing::error!("container {}: {e}", m.tree.id),
        }
    }
    if let Some(b) = &m.bundle_rootfs {
        unmount_all(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::linux::{mounts_under, LinuxHost};
    use std::os::unix::fs::symlink;

    /// A tenant policy that allows bind mounts from anywhere (the volume is in /tmp).
    fn open() -> TenantPolicy {
        TenantPolicy { host_paths: vec!["/".into()], ..Default::default() }
    }

    fn spec_with(root: &Path, volume: &Path) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0}},
            "root": {"path": root},
            "mounts": [{"destination": "/cfg", "type": "bind", "source": volume, "options": ["rbind", "ro"]}]
        }))
        .expect("spec")
    }

    /// The share as a hostile guest meets it, with real mounts (root): everything the guest
    /// can do goes through virtiofsd, which serves only `export/`, so the test acts on
    /// `export/` the way virtiofsd would for the guest. The skeleton is read-only; what the
    /// guest can write (a rootfs) is never walked by the host; a second container is added and
    /// the first removed while the guest has planted symlinks and renamed entries; nothing
    /// outside the state directory is created, truncated, mounted or unmounted.
    #[test]
    fn a_hostile_guest_cannot_turn_the_share_against_the_host() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root (scripts/test runs as root)");
        let tmp = crate::host::fake::MountedTempDir::new("share-attack");
        let dir = tmp.join("sandbox");
        std::fs::create_dir(&dir).unwrap();
        let (outside, canary) = (tmp.join("outside"), tmp.join("outside/canary"));
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(&canary, b"untouched").unwrap();
        let (root1, root2, vol) = (tmp.join("root1"), tmp.join("root2"), tmp.join("vol"));
        for d in [&root1, &root2, &vol] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(root1.join("hello"), b"1").unwrap();
        std::fs::write(vol.join("cfg"), b"cfg").unwrap();
        // Other tests of this binary mount in their own temp dirs meanwhile: those are not ours.
        let others = std::env::temp_dir().join("bulwark-test-");
        let outside_tests = |m: &std::path::PathBuf| {
            !m.starts_with(&tmp) && !m.as_os_str().as_encoded_bytes().starts_with(others.as_os_str().as_encoded_bytes())
        };
        let mounts_before: Vec<_> = mounts_under(Path::new("/")).into_iter().filter(outside_tests).collect();

        crate::resources::share::create(&LinuxHost, &dir).expect("share");
        let export = crate::resources::share::export_dir(&dir);
        let c1 = mount_rootfs("c1", &tmp, &spec_with(&root1, &vol), &[], &dir, &open(), None).expect("c1");
        // What the guest sees: the rootfs and the volume, complete.
        assert_eq!(std::fs::read(export.join("c1/rootfs/hello")).unwrap(), b"1");
        assert_eq!(std::fs::read(export.join("c1/mounts/0/cfg")).unwrap(), b"cfg");
        // The skeleton and the container's tree are read-only to the guest ...
        let erofs = |r: std::io::Result<()>| assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
        erofs(symlink(&outside, export.join("c2")));
        erofs(symlink(&outside, export.join("c1/evil")));
        erofs(std::fs::rename(export.join("c1/mounts"), export.join("c1/m2")));
        erofs(std::fs::write(export.join("c1/mounts/0/cfg"), b"x"));
        erofs(std::fs::create_dir(export.join("c1/rootfs/../x")));
        // ... but its rootfs is the tenant's own, read-write; plant symlinks and renames there.
        std::fs::write(export.join("c1/rootfs/new"), b"tenant").unwrap();
        symlink(&outside, export.join("c1/rootfs/mounts")).unwrap();
        symlink(&canary, export.join("c1/rootfs/rootfs")).unwrap();
        std::fs::rename(export.join("c1/rootfs/hello"), export.join("c1/rootfs/hello2")).unwrap();

        // A second container while the guest has done all that, then the first one removed.
        let c2 = mount_rootfs("c2", &tmp, &spec_with(&root2, &vol), &[], &dir, &open(), None).expect("c2");
        assert!(export.join("c2/rootfs").is_dir() && export.join("c2/mounts/0/cfg").is_file());
        unmount_rootfs(&c1);
        assert!(!export.join("c1").exists(), "c1's tree is gone from the guest's view");
        assert!(export.join("c2/mounts/0/cfg").is_file(), "c2 is untouched");
        // An id the guest might aim at a host path is refused before any path is built.
        assert!(mount_rootfs("../../etc", &tmp, &spec_with(&root2, &vol), &[], &dir, &open(), None).is_err());
        unmount_rootfs(&c2);

        assert_eq!(std::fs::read(&canary).unwrap(), b"untouched");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1, "nothing created outside");
        let mounts_after: Vec<_> = mounts_under(Path::new("/")).into_iter().filter(outside_tests).collect();
        assert_eq!(mounts_before, mounts_after, "no mount made or removed outside the test's directory");
        let left: Vec<_> = mounts_under(&dir)
            .into_iter()
            .filter(|m| ![dir.join("share"), dir.join("export"), dir.join("staging")].contains(m))
            .collect();
        assert!(left.is_empty(), "only the share's own mounts remain: {left:?}");
        crate::resources::mount::cleanup_mounts_and_dir(&dir).expect("cleanup");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
