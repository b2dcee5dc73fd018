//! A sandbox's state directory `<runtime_dir>/<ns>/<id>/` and everything in it: the share,
//! the pid file of its VM's processes, the guest console log, the VMM backend's sockets and
//! logs, the saved pod network; listing the sandboxes under a runtime directory; and the
//! cleanup after a crashed shim. Public: the shim's `delete`, operator tools and the tests
//! find a sandbox's files, processes and leftovers through this module.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::host::linux::LinuxHost;
use crate::host::Host;
use crate::resources::mount::cleanup_mounts_and_dir_with;
use crate::resources::network;

/// Unix socket paths are limited to 107 bytes (sun_path minus NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Longest path we create below the state dir for a socket ("vm/vhost-vsock.sock").
const LONGEST_SOCKET_NAME: usize = 19;
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

/// The host-only skeleton of the share: one mount point per container (resources/share.rs).
pub fn share(dir: &Path) -> PathBuf {
    crate::resources::share::share_dir(dir)
}

/// The read-only view of the share that virtiofsd serves to the guest.
pub fn export(dir: &Path) -> PathBuf {
    crate::resources::share::export_dir(dir)
}

/// One container's entry in the share: `<share>/<container id>` (its rootfs and volumes).
pub fn container_share(dir: &Path, container_id: &str) -> PathBuf {
    share(dir).join(container_id)
}

/// The pid file: "<name> <pid> <exe>" per process of the VM (hypervisor and helpers).
pub fn pid_file(dir: &Path) -> PathBuf {
    dir.join(PID_FILE)
}

/// The guest's serial console.
pub fn console_log(dir: &Path) -> PathBuf {
    dir.join("console.log")
}

/// The sandbox's recent guest syscall events, as the telemetry relay enriched them: a
/// sequence of frames (`u32` big-endian length + one `bulwark.telemetry.v1.Enriched`
/// message, the node socket's framing), capped in size; when full it is renamed to
/// [`telemetry_frames_old`] and a new one starts. Read by `bulwark events`.
pub fn telemetry_frames(dir: &Path) -> PathBuf {
    dir.join("telemetry.frames")
}

/// The previous [`telemetry_frames`] file, once the current one reached its cap.
pub fn telemetry_frames_old(dir: &Path) -> PathBuf {
    dir.join("telemetry.frames.1")
}

/// The saved pod network (what `delete` undoes after a crashed shim).
pub fn network_state(dir: &Path) -> PathBuf {
    dir.join(network::STATE_FILE)
}

/// The VMM backend's files: ("what", path) of its sockets and its processes' logs.
pub fn vmm_files(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    crate::vmm::backend::state_files(dir)
}

/// Every log of the sandbox: the guest console, then the VMM's processes' logs.
pub fn logs(dir: &Path) -> Vec<PathBuf> {
    std::iter::once(console_log(dir))
        .chain(vmm_files(dir).into_iter().filter(|(what, _)| what.ends_with(" log")).map(|(_, p)| p))
        .collect()
}

/// A sandbox directory found under a runtime directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The containerd namespace (None for a `<runtime_dir>/h-<hash>` directory).
    pub namespace: Option<String>,
    /// The directory's name: the sandbox id, or `h-<hash>` for a long one.
    pub name: String,
    pub dir: PathBuf,
}

/// The sandbox directories under `runtime_dir` (`<ns>/<id>`, `<ns>/h-<hash>` and
/// `h-<hash>`), sorted. Files there (the accel probe cache, its lock) are skipped.
pub fn list(runtime_dir: &Path) -> Vec<Found> {
    let subdirs = |d: &Path| -> Vec<(String, PathBuf)> {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect();
        v.sort();
        v
    };
    let mut out = Vec::new();
    for (name, path) in subdirs(runtime_dir) {
        if name.starts_with("h-") {
            out.push(Found { namespace: None, name, dir: path });
            continue;
        }
        for (id, dir) in subdirs(&path) {
            out.push(Found { namespace: Some(name.clone()), name: id, dir });
        }
    }
    out
}

/// The processes recorded in the pid file of `dir` (empty if there is none).
pub fn read_pids(dir: &Path) -> Vec<(String, i32, PathBuf)> {
    std::fs::read_to_string(pid_file(dir)).map(|t| parse_pid_file(&t)).unwrap_or_default()
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

/// The host cgroup's path (jail/cgroup.rs), for `delete` after a crashed shim.
pub fn cgroup_record(dir: &Path) -> PathBuf {
    dir.join("cgroup")
}

/// Cleanup after a crashed shim: SIGKILL the recorded processes that are still those
/// programs, undo the saved pod network, unmount, remove the directory.
pub fn cleanup_dir(dir: &Path) -> Result<()> {
    cleanup_dir_with(&LinuxHost, dir)
}

/// [`cleanup_dir`] with the mounts on `host`.
pub fn cleanup_dir_with(host: &dyn Host, dir: &Path) -> Result<()> {
    if let Ok(text) = std::fs::read_to_string(pid_file(dir)) {
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
    if let Ok(recorded) = std::fs::read_to_string(cgroup_record(dir)) {
        if let Err(e) = crate::jail::cgroup::remove_leftover(Path::new(recorded.trim())) {
            tracing::warn!("removing the host cgroup of {}: {e}", dir.display());
        }
    }
    // The sandbox uid's lock file (its shim is gone, so nobody holds it).
    crate::jail::uid::release_recorded(dir);
    cleanup_mounts_and_dir_with(host, dir)
}

/// `delete` of one container of a pod after a crashed shim: its share entry only (the
/// pod's VM belongs to the sandbox container's delete).
pub fn cleanup_container_share(dir: &Path, container_id: &str) -> Result<()> {
    let staged = crate::resources::share::staging_dir(dir).join(container_id);
    for d in [container_share(dir, container_id), staged] {
        if d.exists() {
            crate::resources::mount::cleanup_mounts_and_dir(&d)?;
        }
    }
    Ok(())
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
        assert!(d.join("vm/vhost-vsock.sock").as_os_str().len() <= MAX_SOCKET_PATH);
        // stable and distinct
        assert_eq!(d, sandbox_dir(long_rd, "k8s.io", &id64));
        assert_ne!(d, sandbox_dir(long_rd, "k8s.io", &"b".repeat(64)));
        let d = sandbox_dir(long_rd, &"n".repeat(76), &id64);
        assert!(d.join("vm/vhost-vsock.sock").as_os_str().len() <= MAX_SOCKET_PATH, "{d:?}");
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
    fn files_and_listing() {
        let rd = crate::host::fake::temp_dir("state-dir-list");
        let d = sandbox_dir(&rd, "k8s.io", "pod1");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::create_dir_all(rd.join("default").join("c1")).unwrap();
        std::fs::create_dir_all(rd.join("h-0123")).unwrap();
        std::fs::write(rd.join("accel-probe"), b"x").unwrap();
        let found = list(&rd);
        let names: Vec<_> = found.iter().map(|f| (f.namespace.as_deref(), f.name.as_str())).collect();
        assert_eq!(names, [(Some("default"), "c1"), (None, "h-0123"), (Some("k8s.io"), "pod1")]);
        assert_eq!(found[2].dir, d);
        assert_eq!(pid_file(&d), d.join("pids"));
        assert_eq!(container_share(&d, "c"), d.join("share").join("c"));
        let logs = logs(&d);
        assert_eq!(logs[0], d.join("console.log"));
        assert!(logs.contains(&d.join("qemu.log")) && logs.contains(&d.join("virtiofsd.log")), "{logs:?}");
        assert!(read_pids(&d).is_empty());
        std::fs::write(pid_file(&d), "qemu 123 /usr/bin/qemu-system-x86_64\n").unwrap();
        assert_eq!(read_pids(&d).len(), 1);
        std::fs::remove_dir_all(&rd).unwrap();
    }

    #[test]
    fn own_exe_is_recognised() {
        let me = std::env::current_exe().unwrap();
        assert!(pid_runs(std::process::id() as i32, &me));
        assert!(!pid_runs(std::process::id() as i32, Path::new("/usr/bin/qemu-system-x86_64")));
    }
}
