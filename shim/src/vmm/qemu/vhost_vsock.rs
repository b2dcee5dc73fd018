//! vhost-device-vsock: the hybrid-vsock backend of a QEMU VM (a vhost-user device). The
//! host reaches guest port P by `CONNECT P` on [`uds_path`]; guest connections to the host's
//! port P arrive on [`host_port_path`]. It does not exit when QEMU does: its owner stops it.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::host::child::Child;

/// vhost-device-vsock's vhost-user socket (QEMU connects to it).
pub fn backend_socket(dir: &Path) -> PathBuf {
    dir.join("vhost-vsock.sock")
}

/// The hybrid-vsock socket the host connects to (`CONNECT <port>`).
pub fn uds_path(dir: &Path) -> PathBuf {
    dir.join("vsock.sock")
}

/// Where guest connections to the host's `port` arrive.
pub fn host_port_path(dir: &Path, port: u32) -> PathBuf {
    dir.join(format!("vsock.sock_{port}"))
}

/// Starts vhost-device-vsock for the sandbox in `dir` (guest CID 3).
pub fn spawn_backend(cfg: &Config, dir: &Path) -> Result<Child> {
    let exe = &cfg.paths.vhost_device_vsock;
    if !exe.exists() {
        return Err(Error::Missing {
            what: "vhost-device-vsock binary",
            path: exe.clone(),
            hint: "install it (cargo install vhost-device-vsock) or set paths.vhost_device_vsock \
                   in the bulwark config"
                .into(),
        });
    }
    let args = vec![
        "--guest-cid".to_string(),
        bulwark_protocol::GUEST_CID.to_string(),
        "--socket".to_string(),
        backend_socket(dir).to_string_lossy().into_owned(),
        "--uds-path".to_string(),
        uds_path(dir).to_string_lossy().into_owned(),
    ];
    Child::spawn("vhost-device-vsock", exe, &args, &dir.join("vsock.log"))
}
