//! virtiofsd, a helper of the QEMU backend: serves the sandbox share to the guest as
//! virtio-fs tag `bulwark-share` over a vhost-user socket in the state directory. It exits by
//! itself when QEMU disconnects; the backend stops it anyway on teardown.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::host::child::Child;
use crate::host::pidfd::Pidfd;
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

/// virtiofsd's serving process. With `--sandbox=namespace` virtiofsd forks it into a new pid
/// namespace and the started process only waits for it; stopped first, that parent can leave
/// the server orphaned until it notices QEMU is gone. The backend pins the server with a pidfd
/// once it runs (no pid reuse can redirect a signal) and ends it with the sandbox.
#[derive(Debug)]
pub struct Server {
    pidfd: Pidfd,
    pub pid: u32,
}

impl Server {
    /// The one child of the started virtiofsd `parent`, pinned. The child list is read by
    /// pid: the pin counts only if the child's parent is still `parent` after the pin and
    /// `parent` has still not exited after that (so its pid was not reused in between).
    pub fn find(parent: &Child) -> std::io::Result<Server> {
        let ppid = parent.pid;
        let kids = std::fs::read_to_string(format!("/proc/{ppid}/task/{ppid}/children"))?;
        let pid: u32 = match kids.split_whitespace().collect::<Vec<_>>()[..] {
            [one] => one.parse().map_err(std::io::Error::other)?,
            ref other => return Err(std::io::Error::other(format!("{} children", other.len()))),
        };
        let pidfd = Pidfd::open(pid)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let parent_now = status.lines().find_map(|l| l.strip_prefix("PPid:")).map(str::trim);
        if parent_now != Some(ppid.to_string().as_str()) {
            return Err(std::io::Error::other(format!("process {pid} is no longer a child of {ppid}")));
        }
        if parent.has_exited() {
            return Err(std::io::Error::other(format!("virtiofsd (pid {ppid}) has exited")));
        }
        Ok(Server { pidfd, pid })
    }

    /// [`Server::find`], retried while `parent` runs, for at most `limit` (virtiofsd forks
    /// its server just after it creates its socket). An error if it never shows: a server the
    /// shim cannot end at stop must not serve a sandbox. None for a simulated parent (unit
    /// tests' fake host), which has no process to find.
    pub async fn wait_for(parent: &Child, limit: Duration) -> Result<Option<Server>, String> {
        if parent.is_simulated() {
            return Ok(None);
        }
        let deadline = Instant::now() + limit;
        loop {
            match Server::find(parent) {
                Ok(s) => return Ok(Some(s)),
                Err(e) if Instant::now() >= deadline || parent.has_exited() => {
                    return Err(format!(
                        "virtiofsd (pid {}): its serving process did not appear within {limit:?}: {e}",
                        parent.pid
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn exited(&self) -> bool {
        self.pidfd.exited()
    }

    /// SIGKILL (it keeps no state) unless it is gone already, then waits up to `limit`.
    /// Returns whether it is gone.
    pub async fn end(&self, limit: Duration) -> bool {
        if !self.exited() {
            let _ = self.pidfd.signal(libc::SIGKILL);
        }
        let deadline = Instant::now() + limit;
        while !self.exited() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
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
