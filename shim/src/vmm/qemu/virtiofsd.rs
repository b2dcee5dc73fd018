//! virtiofsd: serves the sandbox share `<dir>/share` (container rootfs, later volumes) to
//! the guest as virtio-fs tag `bulwark-share`.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::host::child::Child;

/// virtiofsd's vhost-user socket (QEMU connects to it).
pub fn socket(dir: &Path) -> PathBuf {
    dir.join("virtiofsd.sock")
}

/// The argument list (pure).
pub fn args(dir: &Path, share: &Path) -> Vec<String> {
    vec![
        format!("--socket-path={}", socket(dir).display()),
        format!("--shared-dir={}", share.display()),
        "--sandbox=namespace".into(),
        "--cache=auto".into(),
        "--announce-submounts".into(),
    ]
}

/// Starts virtiofsd for the sandbox in `dir`. It exits by itself when QEMU disconnects.
pub fn spawn(cfg: &Config, dir: &Path, share: &Path) -> Result<Child> {
    let exe = &cfg.paths.virtiofsd;
    if !exe.exists() {
        return Err(Error::Missing {
            what: "virtiofsd binary",
            path: exe.clone(),
            hint: "install it (cargo install virtiofsd) or set paths.virtiofsd in the bulwark config".into(),
        });
    }
    Child::spawn("virtiofsd", exe, &args(dir, share), &dir.join("virtiofsd.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_name_socket_and_share() {
        let a = args(Path::new("/run/bulwark/s1"), Path::new("/run/bulwark/s1/share"));
        assert!(a.contains(&"--socket-path=/run/bulwark/s1/virtiofsd.sock".to_string()));
        assert!(a.contains(&"--shared-dir=/run/bulwark/s1/share".to_string()));
        assert!(a.contains(&"--sandbox=namespace".to_string()));
    }
}
