//! A sandbox's state directory `<runtime_dir>/<ns>/<id>/`: where it is, the pid file of its
//! helpers, and the cleanup after a crashed shim. Public: the shim's `delete`, operator tools
//! and the tests find a sandbox's files, processes and leftovers through this module.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::resources::mount::cleanup_mounts_and_dir;
use crate::resources::network;

/// Unix socket paths are limited to 107 bytes (sun_path minus NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Longest file name we create in the state dir for a socket ("vhost-vsock.sock").
const LONGEST_SOCKET_NAME: usize = 16;
/// Name of the pid file `delete` reads after a crashed shim.
pub const PID_FILE: &str = "pids";

/// The state directory of sandbox `id` in containerd namespace `ns`:
/// `<runtime_dir>/<ns>/<id>`, or `<runtime_dir>/<ns>/h-<hash>` when socket paths below it
/// would be too long, or `<runtime_dir>/h-<hash>` if even that is (pure). `ns` and `id`
/// must be validated already (containerd identifiers: no '/', no "..").
pub fn sandbox_dir(runtime_dir: &Path, ns: &str, id: &str) -> PathBuf {
    let fits = |p: &Path| p.as_os_str().len() + 1 + LONGEST_SOCKET_NAME <= MAX_SOCKET_PATH;
    let plain = runtime_dir.join(ns).join(id);
    if fits(&plain) {
        return plain;
    }
    let digest = Sha256::digest(format!("{ns}/{id}").as_bytes());
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    let hashed = runtime_dir.join(ns).join(format!("h-{hex}"));
    if fits(&hashed) {
        return hashed;
    }
    runtime_dir.join(format!("h-{hex}"))
}

/// Parses the pid file: (name, pid, exe) per well-formed line (pure; the file is ours but
/// may be truncated by a crash).
pub fn parse_pid_file(text: &str) -> Vec<(String, i32, PathBuf)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            let name = it.next()?.to_string();
            let pid: i32 = it.next()?.parse().ok()?;
            let exe = PathBuf::from(it.next()?);
            (pid > 1 && exe.is_absolute()).then_some((name, pid, exe))
        })
        .collect()
}

/// Whether /proc/<pid>/exe is `exe` (a deleted binary shows as "<path> (deleted)").
fn pid_runs(pid: i32, exe: &Path) -> bool {
    match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(p) => {
            let want = std::fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
            p == want || p == exe || p.to_string_lossy() == format!("{} (deleted)", want.display())
        }
        Err(_) => false,
    }
}

/// Cleanup after a crashed shim: SIGKILL the recorded helpers that are still those
/// programs, unmount, remove the directory.
pub fn cleanup_dir(dir: &Path) -> Result<()> {
    if let Ok(text) = std::fs::read_to_string(dir.join(PID_FILE)) {
        for (name, pid, exe) in parse_pid_file(&text) {
            if pid_runs(pid, &exe) {
                tracing::warn!("killing leftover {name} (pid {pid}, {})", exe.display());
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        // Give the kernel a moment to release their mounts and sockets.
        std::thread::sleep(Duration::from_millis(100));
    }
    network::cleanup_saved(dir);
    cleanup_mounts_and_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_names_fit_sockets() {
        let rd = Path::new("/run/bulwark");
        assert_eq!(sandbox_dir(rd, "default", "abc"), PathBuf::from("/run/bulwark/default/abc"));
        let id64 = "a".repeat(64);
        assert_eq!(sandbox_dir(rd, "k8s.io", &id64), rd.join("k8s.io").join(&id64));
        // namespaces do not share directories
        assert_ne!(sandbox_dir(rd, "a", "x"), sandbox_dir(rd, "b", "x"));
        let long_rd = Path::new("/tmp/a-rather-long-runtime-directory-name-xx");
        let d = sandbox_dir(long_rd, "k8s.io", &id64);
        assert!(d.file_name().unwrap().to_string_lossy().starts_with("h-"));
        assert!(d.starts_with(long_rd.join("k8s.io")));
        assert!(d.join("vhost-vsock.sock").as_os_str().len() <= MAX_SOCKET_PATH);
        // stable and distinct
        assert_eq!(d, sandbox_dir(long_rd, "k8s.io", &id64));
        assert_ne!(d, sandbox_dir(long_rd, "k8s.io", &"b".repeat(64)));
        let d = sandbox_dir(long_rd, &"n".repeat(76), &id64);
        assert!(d.join("vhost-vsock.sock").as_os_str().len() <= MAX_SOCKET_PATH, "{d:?}");
    }

    #[test]
    fn pid_file_parsing() {
        let v = parse_pid_file(
            "qemu 123 /usr/bin/qemu-system-x86_64\nvirtiofsd 1 /x\ngarbage\nvsock x /y\nv 7 rel\nv 9 /a b/c\n",
        );
        assert_eq!(v.len(), 2);
        assert_eq!(v[0], ("qemu".into(), 123, PathBuf::from("/usr/bin/qemu-system-x86_64")));
        assert_eq!(v[1].2, PathBuf::from("/a b/c"));
    }

    #[test]
    fn own_exe_is_recognised() {
        let me = std::env::current_exe().unwrap();
        assert!(pid_runs(std::process::id() as i32, &me));
        assert!(!pid_runs(std::process::id() as i32, Path::new("/usr/bin/qemu-system-x86_64")));
    }
}
