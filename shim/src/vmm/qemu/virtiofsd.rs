//! virtiofsd, a helper of the QEMU backend: serves the sandbox share to the guest as
//! virtio-fs tag `bulwark-share` over a vhost-user socket in the state directory. It exits by
//! itself when QEMU disconnects; the backend stops it anyway on teardown.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::host::child::Child;
use crate::host::{Command, Host};
use crate::jail::process::Confinement;

/// How long virtiofsd may take to create its socket.
const SOCKET_WAIT: Duration = Duration::from_secs(10);

/// virtiofsd's own directory (0700, owned by the uid it runs as): its socket and pid file.
pub fn fs_dir(dir: &Path) -> PathBuf {
    dir.join("fs")
}

/// virtiofsd's vhost-user socket (the shim connects to it and passes the connection to QEMU).
pub fn socket(dir: &Path) -> PathBuf {
    fs_dir(dir).join("virtiofsd.sock")
}

/// virtiofsd's log.
pub fn log(dir: &Path) -> PathBuf {
    dir.join("virtiofsd.log")
}

/// The argument list (pure).
pub fn args(dir: &Path, share: &Path) -> Vec<String> {
    vec![
        format!("--socket-path={}", socket(dir).display()),
        format!("--shared-dir={}", share.display()),
        "--sandbox=namespace".into(),
        // its own seccomp filter: a syscall outside it kills virtiofsd
        "--seccomp=kill".into(),
        "--cache=auto".into(),
        "--announce-submounts".into(),
        // its open files are bounded by the jail (it would raise its own limit otherwise)
        "--rlimit-nofile=0".into(),
    ]
}

/// Starts virtiofsd serving `share` for the sandbox in `dir` and waits for its socket. The
/// child is put in `started` as soon as it runs, so the caller can stop it on error.
pub async fn start(
    host: &dyn Host,
    exe: &Path,
    dir: &Path,
    share: &Path,
    jail: &Confinement,
    started: &mut Option<Child>,
) -> Result<()> {
    if !exe.exists() {
        return Err(Error::Missing {
            what: "virtiofsd binary",
            path: exe.to_path_buf(),
            hint: "install it (cargo install virtiofsd) or set paths.virtiofsd in the bulwark config".into(),
        });
    }
    let args = args(dir, share);
    let log = log(dir);
    let child =
        host.spawn(&Command { name: "virtiofsd", exe, args: &args, log: &log, keep_fds: &[], jail: Some(jail) })?;
    let child = started.insert(child);
    child.wait_for_path(&socket(dir), &log, SOCKET_WAIT).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_name_socket_and_share() {
        let a = args(Path::new("/run/bulwark/s1"), Path::new("/run/bulwark/s1/share"));
        assert!(a.contains(&"--socket-path=/run/bulwark/s1/fs/virtiofsd.sock".to_string()));
        assert!(a.contains(&"--rlimit-nofile=0".to_string()));
        assert!(a.contains(&"--shared-dir=/run/bulwark/s1/share".to_string()));
        assert!(a.contains(&"--sandbox=namespace".to_string()));
        assert!(a.contains(&"--seccomp=kill".to_string()));
    }
}
