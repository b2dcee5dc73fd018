//! Mount bookkeeping on the host: unmounting everything under a directory before removing
//! it, never removing through a mount that is still there. The mount table itself is read
//! through [`Host::mounts_under`].

use std::path::Path;

use crate::error::{Error, Result};
use crate::host::linux::LinuxHost;
use crate::host::Host;

/// Unmounts everything under `dir` (lazily), then removes it — but never removes through
/// a mount that is still there (that would delete a container's files).
pub fn cleanup_mounts_and_dir(dir: &Path) -> Result<()> {
    cleanup_mounts_and_dir_with(&LinuxHost, dir)
}

/// [`cleanup_mounts_and_dir`] on `host`.
pub fn cleanup_mounts_and_dir_with(host: &dyn Host, dir: &Path) -> Result<()> {
    for m in host.mounts_under(dir) {
        // Repeated: stacked mounts on one point need one unmount each.
        for _ in 0..8 {
            if host.unmount(&m).is_err() {
                break;
            }
        }
    }
    let left = host.mounts_under(dir);
    if !left.is_empty() {
        return Err(Error::Mount(format!(
            "still mounted under {}: {left:?}; not removing the directory (unmount them by hand)",
            dir.display()
        )));
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", dir.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;
    use nix::mount::MsFlags;

    #[test]
    fn cleanup_unmounts_stacked_mounts_then_removes() {
        let dir = crate::host::fake::temp_dir("mount-cleanup");
        let sub = dir.join("a");
        std::fs::create_dir_all(&sub).unwrap();
        let host = FakeHost::new();
        host.mount(Some(Path::new("/src")), &sub, MsFlags::MS_BIND).unwrap();
        host.mount(Some(Path::new("/src")), &sub, MsFlags::MS_BIND).unwrap();
        cleanup_mounts_and_dir_with(host.as_ref(), &dir).unwrap();
        assert!(host.mounts().is_empty());
        assert!(!dir.exists());
        // already gone: fine
        cleanup_mounts_and_dir_with(host.as_ref(), &dir).unwrap();
    }
}
