//! What a sandbox may leave behind, looked up from /proc and the filesystem: processes whose
//! command line mentions a directory, mounts under it, files in the shim's runtime dir,
//! cgroups named after a sandbox or container, and network namespaces held by processes.

use std::path::Path;

/// A process found in /proc.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub cmdline: String,
}

/// Every process (other than this one) whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<Proc> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(Proc { pid, cmdline: cmdline.trim().to_string() });
        }
    }
    found
}

/// Processes of the VM side (QEMU, virtiofsd, vhost-device-vsock, the shim) mentioning `needle`.
pub fn vm_processes(needle: &str) -> Vec<Proc> {
    processes_mentioning(needle)
        .into_iter()
        .filter(|p| {
            ["qemu-system", "virtiofsd", "vhost-device-vsock", "containerd-shim-bulwark"]
                .iter()
                .any(|n| p.cmdline.contains(n))
        })
        .collect()
}

/// Mount points (from /proc/self/mountinfo) under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// Entries directly inside `dir` (empty when it does not exist).
pub fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Cgroup directories (in every hierarchy under /sys/fs/cgroup, cgroup v1 and v2) whose name
/// contains one of `ids` (containerd, runc and the shim name a pod's cgroups after its
/// sandbox or container ids).
pub fn cgroups_mentioning(ids: &[&str]) -> Vec<String> {
    fn walk(dir: &Path, depth: u32, ids: &[&str], found: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if ids.iter().any(|id| !id.is_empty() && name.contains(id)) {
                found.push(e.path().display().to_string());
            } else if depth > 0 {
                walk(&e.path(), depth - 1, ids, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), 6, ids, &mut found);
    found
}

/// A network namespace's identity (device, inode), read from a pinned namespace file (e.g. a
/// CRI pod's `/var/run/netns/cni-...`) while it exists.
pub fn netns_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Processes still in the network namespace `id` (from [`netns_id`]): references that keep
/// it alive after its file was removed.
pub fn processes_in_netns(id: (u64, u64)) -> Vec<Proc> {
    use std::os::unix::fs::MetadataExt;
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(m) = std::fs::metadata(entry.path().join("ns/net")) else { continue };
        if (m.dev(), m.ino()) == id {
            let raw = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push(Proc { pid, cmdline: String::from_utf8_lossy(&raw).replace('\0', " ").trim().to_string() });
        }
    }
    found
}

/// Network interfaces of the host's namespace whose name ends with `suffix` (the shim's taps,
/// `tap<N>_bwk`, live in the pod's namespace: one here has leaked).
pub fn host_interfaces_ending(suffix: &str) -> Vec<String> {
    entries(Path::new("/sys/class/net")).into_iter().filter(|n| n.ends_with(suffix)).collect()
}
