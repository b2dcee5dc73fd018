//! The pod's network namespace: validating the path the OCI spec names, and running code
//! inside it on a dedicated thread (setns(2) changes only the calling thread; the thread
//! ends afterwards, so no thread of the shim stays in — or keeps alive — the pod netns).

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use super::error::NetworkError;

/// Longest netns path accepted.
const MAX_PATH: usize = 512;

/// Accepts an absolute path with normal components only (no `..`, `.`, or `//`) (pure).
/// Where the namespace is pinned differs by setup (`/var/run/netns/<name>` for kubelet's
/// containerd, `<state>/io.containerd.grpc.v1.cri/netns/<name>` with
/// `netns_mounts_under_state_dir`, `/proc/<pid>/ns/net`); what the file *is* gets checked
/// when it is opened ([`open_pod_netns`]: on nsfs, a network namespace, not the host's).
pub fn validate_path(raw: &str) -> Result<PathBuf, NetworkError> {
    let bad =
        |why: &str| NetworkError::InvalidNetnsPath { path: raw.chars().take(200).collect(), why: why.to_string() };
    if raw.len() > MAX_PATH {
        return Err(bad("too long"));
    }
    if !raw.starts_with('/') {
        return Err(bad("not absolute"));
    }
    if raw.contains('\0') || raw.contains("//") || raw.ends_with('/') {
        return Err(bad("malformed"));
    }
    // Split by hand: Path::components() silently drops "." components.
    let parts: Vec<&str> = raw[1..].split('/').collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(bad("contains '.' or '..'"));
    }
    if parts.len() < 2 {
        return Err(bad("not a namespace file path"));
    }
    Ok(PathBuf::from(raw))
}

/// (device, inode) of a namespace file.
fn ns_id(f: &File) -> std::io::Result<(u64, u64)> {
    let md = f.metadata()?;
    Ok((md.dev(), md.ino()))
}

/// Opens `path` and checks that it is a network namespace other than the shim's own (the
/// host's): redirecting the host's interfaces into a VM must never happen.
fn open_pod_netns(path: &Path) -> Result<File, NetworkError> {
    // Check the filesystem before opening: opening a FIFO or a device could block or act.
    let fs = nix::sys::statfs::statfs(path)
        .map_err(|e| NetworkError::NetnsOpen { path: path.to_path_buf(), source: e.into() })?;
    if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        return Err(NetworkError::InvalidNetnsPath {
            path: path.display().to_string(),
            why: "not a namespace file (not on nsfs)".into(),
        });
    }
    let f = File::open(path).map_err(|source| NetworkError::NetnsOpen { path: path.to_path_buf(), source })?;
    let own = File::open("/proc/self/ns/net")
        .and_then(|o| ns_id(&o))
        .map_err(|source| NetworkError::NetnsOpen { path: "/proc/self/ns/net".into(), source })?;
    let target = ns_id(&f).map_err(|source| NetworkError::NetnsOpen { path: path.to_path_buf(), source })?;
    let init = File::open("/proc/1/ns/net").and_then(|o| ns_id(&o)).ok();
    if target == own || Some(target) == init {
        return Err(NetworkError::HostNetns(path.to_path_buf()));
    }
    Ok(f)
}

/// Starts a thread that enters the netns at `path` (closing the namespace fd again), runs
/// `f` there, sends the result and ends.
fn spawn_in<T, F>(
    path: &Path,
    f: F,
    done: impl FnOnce(Result<T, NetworkError>) + Send + 'static,
) -> Result<(), NetworkError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetworkError> + Send + 'static,
{
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("bwk-netns".into())
        .spawn(move || {
            let run = || {
                let ns = open_pod_netns(&path)?;
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetworkError::Setns { path: path.clone(), source: e.into() })?;
                drop(ns);
                f()
            };
            done(run());
        })
        .map(|_| ())
        .map_err(NetworkError::Thread)
}

fn panicked() -> NetworkError {
    NetworkError::Thread(std::io::Error::other("the netns thread panicked"))
}

/// Runs `f` inside the network namespace at `path`, on a new thread that ends afterwards.
pub async fn run_in<T, F>(path: &Path, f: F) -> Result<T, NetworkError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetworkError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawn_in(path, f, move |r| {
        let _ = tx.send(r);
    })?;
    rx.await.unwrap_or_else(|_| Err(panicked()))
}

/// [`run_in`] for synchronous callers (the `delete` after a crashed shim).
pub fn run_in_blocking<T, F>(path: &Path, f: F) -> Result<T, NetworkError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetworkError> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_in(path, f, move |r| {
        let _ = tx.send(r);
    })?;
    rx.recv().unwrap_or_else(|_| Err(panicked()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_paths() {
        for ok in [
            "/var/run/netns/cni-1234-abcd",
            "/run/netns/bwk-t1",
            "/proc/123/ns/net",
            "/run/containerd/io.containerd.grpc.v1.cri/netns/cni-1",
        ] {
            assert_eq!(validate_path(ok).unwrap(), PathBuf::from(ok), "{ok}");
        }
        for bad in [
            "",
            "var/run/netns/x",
            "/var/run/netns/../../etc/passwd",
            "/var/run/netns/./x",
            "/var/run/netns//x",
            "/var/run/netns/",
            "/netns",
            "/run/netns/x\0",
        ] {
            assert!(validate_path(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_path(&format!("/run/netns/{}", "a".repeat(600))).is_err());
    }

    #[tokio::test]
    async fn host_netns_is_refused() {
        let e = run_in(Path::new("/proc/self/ns/net"), || Ok(())).await.unwrap_err();
        assert!(matches!(e, NetworkError::HostNetns(_)), "{e}");
        let e = run_in(Path::new("/run/netns/bwk-does-not-exist"), || Ok(())).await.unwrap_err();
        assert!(matches!(e, NetworkError::NetnsOpen { .. }), "{e}");
        // Files that are not namespaces, and namespaces of another type, are refused.
        let e = run_in(Path::new("/etc/passwd"), || Ok(())).await.unwrap_err();
        assert!(matches!(e, NetworkError::InvalidNetnsPath { .. }), "{e}");
        let e = run_in(Path::new("/proc/self/ns/mnt"), || Ok(())).await.unwrap_err();
        assert!(matches!(e, NetworkError::HostNetns(_) | NetworkError::Setns { .. }), "{e}");
    }
}
