//! A container's files in the guest: its rootfs and shared mounts, resolved inside the
//! virtio-fs share (they must exist and stay inside it, symlinks included), and its bundle
//! directory (`config.json`, and each exec's process JSON while the exec starts).
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::container::{validate_rootfs_path, ContainerError};

/// Where bundles (config.json) are written.
pub const BUNDLE_DIR: &str = "/run/bulwark/bundles";

/// Resolves a relative path (rootfs_path rules) inside the share; it must exist and stay
/// inside (symlinks included).
pub fn resolve_in_share(share: &Path, rel: &str) -> Result<PathBuf, ContainerError> {
    let joined = share.join(validate_rootfs_path(rel)?);
    let err = |reason: String| ContainerError::Rootfs { path: joined.display().to_string(), reason };
    let canon = joined.canonicalize().map_err(|e| err(e.to_string()))?;
    let share_canon = share.canonicalize().map_err(|e| err(format!("share: {e}")))?;
    if !canon.starts_with(&share_canon) {
        return Err(err(format!("resolves to {} outside the share", canon.display())));
    }
    Ok(canon)
}

/// Resolves the rootfs inside the share: a directory that stays inside it.
pub fn resolve_rootfs(share: &Path, rootfs_path: &str) -> Result<PathBuf, ContainerError> {
    let canon = resolve_in_share(share, rootfs_path)?;
    if !canon.is_dir() {
        return Err(ContainerError::Rootfs { path: canon.display().to_string(), reason: "not a directory".into() });
    }
    Ok(canon)
}

/// Writes `<BUNDLE_DIR>/<id>/config.json`; returns the bundle directory.
pub fn write_bundle(id: &str, spec: &Value) -> Result<PathBuf, ContainerError> {
    let dir = Path::new(BUNDLE_DIR).join(id);
    let io = |what, path: &Path| {
        let path = path.display().to_string();
        move |source| ContainerError::Io { what, path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let file = dir.join("config.json");
    let bytes = serde_json::to_vec_pretty(spec).map_err(|e| ContainerError::Spec(e.to_string()))?;
    std::fs::write(&file, bytes).map_err(io("writing", &file))?;
    Ok(dir)
}

pub fn remove_bundle(id: &str) {
    let _ = std::fs::remove_dir_all(Path::new(BUNDLE_DIR).join(id));
}

/// Where the process JSON of exec `exec_id` of container `id` is written while it starts.
pub fn process_path(id: &str, exec_id: &str) -> PathBuf {
    Path::new(BUNDLE_DIR).join(id).join(format!("exec-{exec_id}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_must_be_a_directory_inside_the_share() {
        let share = std::env::temp_dir().join(format!("bwk-bundle-test-{}", std::process::id()));
        std::fs::create_dir_all(share.join("c1/rootfs")).expect("mkdir");
        std::fs::write(share.join("c1/file"), b"").expect("write");
        std::os::unix::fs::symlink("/etc", share.join("c1/esc")).expect("symlink");
        let canon = share.canonicalize().expect("canon");
        assert_eq!(resolve_rootfs(&share, "./c1/rootfs").expect("rootfs"), canon.join("c1/rootfs"));
        let not_dir = resolve_rootfs(&share, "c1/file").expect_err("a file");
        assert!(matches!(&not_dir, ContainerError::Rootfs { reason, .. } if reason == "not a directory"), "{not_dir}");
        let escape = resolve_rootfs(&share, "c1/esc").expect_err("symlink out");
        assert!(escape.to_string().contains("outside the share"), "{escape}");
        assert!(matches!(resolve_rootfs(&share, "c1/none"), Err(ContainerError::Rootfs { .. })));
        assert!(matches!(resolve_rootfs(&share, "../c1"), Err(ContainerError::InvalidRootfsPath(_))));
        std::fs::remove_dir_all(&share).expect("cleanup");
    }

    #[test]
    fn exec_process_files_live_in_the_bundle() {
        assert_eq!(process_path("c1", "e1"), Path::new(BUNDLE_DIR).join("c1/exec-e1.json"));
    }
}
