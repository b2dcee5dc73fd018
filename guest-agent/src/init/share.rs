//! The sandbox's virtio-fs share (tag protocol::SHARE_TAG), mounted once, at boot when present
//! or lazily on the first CreateContainer.
use std::path::Path;

use nix::mount::MsFlags;

pub const SHARE_DIR: &str = "/run/bulwark/share";

#[derive(Debug, thiserror::Error)]
#[error(
    "mounting virtio-fs tag {tag} on {dir}: {source} (is the share attached to the VM and the virtiofs module loaded?)"
)]
pub struct ShareError {
    tag: &'static str,
    dir: &'static str,
    source: nix::Error,
}

pub struct Share {
    mounted: tokio::sync::Mutex<bool>,
}

impl Share {
    pub fn new() -> Self {
        Self { mounted: tokio::sync::Mutex::new(false) }
    }

    /// Mounts the share unless already mounted. Returns its directory.
    pub async fn ensure_mounted(&self) -> Result<&'static Path, ShareError> {
        let mut mounted = self.mounted.lock().await;
        if !*mounted {
            let _ = std::fs::create_dir_all(SHARE_DIR);
            if !crate::init::boot::is_mountpoint(Path::new(SHARE_DIR)) {
                nix::mount::mount(
                    Some(protocol::SHARE_TAG),
                    SHARE_DIR,
                    Some("virtiofs"),
                    MsFlags::MS_NODEV,
                    None::<&str>,
                )
                .map_err(|source| ShareError { tag: protocol::SHARE_TAG, dir: SHARE_DIR, source })?;
                tracing::info!("mounted virtio-fs share {} on {SHARE_DIR}", protocol::SHARE_TAG);
            }
            *mounted = true;
        }
        Ok(Path::new(SHARE_DIR))
    }
}
