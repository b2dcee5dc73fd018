//! The pod's network namespace: validating the path the OCI spec names, and running code
//! inside it on a dedicated thread (setns(2) changes only the calling thread; the thread
//! ends afterwards, so no thread of the shim stays in — or keeps alive — the pod netns).

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use super::NetworkError;

/// Longest netns path accepted.
const MAX_PATH: usize = 512;

/// Accepts `/var/run/netns/<name>`, `/run/netns/<name>` and `/proc/<pid>/ns/net`: absolute,
/// normal components only (no `..`, `.`, or `//`), nothing else (pure).
pub fn validate_path(raw: &str) -> Result<PathBuf, NetworkError> {
    let bad = |why: &str| NetworkError::InvalidNetnsPath {
        path: raw.chars().take(200).collect(),
        why: why.to_string(),
    };
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
    let path = Path::new(raw);
    let name_ok = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    let ok = match parts.as_slice() {
        ["var", "run", "netns", name] | ["run", "netns", name] => name_ok(name),
        ["proc", pid, "ns", "net"] => !pid.is_empty() && pid.len() <= 10 && pid.bytes().all(|b| b.is_ascii_digit()),
        _ => false,
    };
    if !ok {
        return Err(bad("must be /var/run/netns/<name>, /run/netns/<name> or /proc/<pid>/ns/net"));
    }
    Ok(path.to_path_buf())
}

/// (device, inode) of a namespace file.
fn ns_id(f: &File) -> std::io::Result<(u64, u64)> {
    let md = f.metadata()?;
    Ok((md.dev(), md.ino()))
}

/// Opens `path` and checks that it is a network namespace other than the shim's own (the
/// host's): redirecting the host's interfaces into a VM must never happen.
fn open_pod_netns(path: &Path) -> Result<File, NetworkError> {
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
fn spawn_in<T, F>(path: &Path, f: F, done: impl FnOnce(Result<T, NetworkError>) + Send + 'static) -> Result<(), NetworkError>
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
        for ok in ["/var/run/netns/cni-1234-abcd", "/run/netns/bwk-t1", "/proc/123/ns/net"] {
            assert_eq!(validate_path(ok).unwrap(), PathBuf::from(ok), "{ok}");
        }
        for bad in [
            "",
            "var/run/netns/x",
            "/var/run/netns/../../etc/passwd",
            "/var/run/netns/./x",
            "/var/run/netns//x",
            "/var/run/netns/",
            "/var/run/netns",
            "/var/run/netns/a/b",
            "/etc/passwd",
            "/proc/self/ns/net",
            "/proc/1/ns/mnt",
            "/proc/12345678901/ns/net",
            "/run/netns/a b",
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
    }
}
