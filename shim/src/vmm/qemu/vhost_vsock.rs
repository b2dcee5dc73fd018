//! vhost-device-vsock, a helper of the QEMU backend: the VM's hybrid-vsock device (a
//! vhost-user backend). The host reaches guest port P by `CONNECT P` on [`uds_path`]; guest
//! connections to the host's port P arrive on [`host_port_path`]. It does not exit when QEMU
//! does: the backend stops it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::jail::vm_dir;
use crate::error::{Error, Result};
use crate::host::child::Child;
use crate::host::{Command, Host};
use crate::jail::process::Confinement;

/// How long vhost-device-vsock may take to create its socket.
const SOCKET_WAIT: Duration = Duration::from_secs(10);

/// vhost-device-vsock's vhost-user socket (the shim connects to it and hands the
/// connection to QEMU). In `<dir>/vm/`, the one directory the helper may write.
pub fn backend_socket(dir: &Path) -> PathBuf {
    vm_dir(dir).join("vhost-vsock.sock")
}

/// The hybrid-vsock socket the host connects to (`CONNECT <port>`).
pub fn uds_path(dir: &Path) -> PathBuf {
    vm_dir(dir).join("vsock.sock")
}

/// Where guest connections to the host's `port` arrive (the shim listens there; the
/// backend gives these sockets to the sandbox uid before QEMU starts).
pub fn host_port_path(dir: &Path, port: u32) -> PathBuf {
    vm_dir(dir).join(format!("vsock.sock_{port}"))
}

/// Prefix of the host-port sockets in `<dir>/vm/`.
pub const HOST_PORT_PREFIX: &str = "vsock.sock_";

/// vhost-device-vsock's log.
pub fn log(dir: &Path) -> PathBuf {
    dir.join("vsock.log")
}

/// The argument list (pure): guest CID 3, the two sockets.
pub fn args(dir: &Path) -> Vec<String> {
    vec![
        "--guest-cid".to_string(),
        bulwark_protocol::GUEST_CID.to_string(),
        "--socket".to_string(),
        backend_socket(dir).to_string_lossy().into_owned(),
        "--uds-path".to_string(),
        uds_path(dir).to_string_lossy().into_owned(),
    ]
}

/// Starts vhost-device-vsock for the sandbox in `dir` and waits for its vhost-user socket.
/// The child is put in `started` as soon as it runs, so the caller can stop it on error.
pub async fn start(
    host: &dyn Host,
    exe: &Path,
    dir: &Path,
    jail: &Confinement,
    started: &mut Option<Child>,
) -> Result<()> {
    if !exe.exists() {
        return Err(Error::Missing {
            what: "vhost-device-vsock binary",
            path: exe.to_path_buf(),
            hint: "install it (cargo install vhost-device-vsock) or set paths.vhost_device_vsock \
                   in the bulwark config"
                .into(),
        });
    }
    let args = args(dir);
    let log = log(dir);
    let child = host.spawn(&Command {
        name: "vhost-device-vsock",
        exe,
        args: &args,
        log: &log,
        keep_fds: &[],
        jail: Some(jail),
    })?;
    let child = started.insert(child);
    child.wait_for_path(&backend_socket(dir), &log, SOCKET_WAIT).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_args() {
        let d = Path::new("/run/bulwark/ns/s1");
        assert_eq!(host_port_path(d, 1025), PathBuf::from("/run/bulwark/ns/s1/vm/vsock.sock_1025"));
        let a = args(d);
        assert_eq!(a[a.len() - 1], "/run/bulwark/ns/s1/vm/vsock.sock");
        assert!(a.contains(&"/run/bulwark/ns/s1/vm/vhost-vsock.sock".to_string()));
    }
}
