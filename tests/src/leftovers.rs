//! What a sandbox may leave behind, looked up from /proc and the filesystem: processes whose
//! command line mentions a directory, mounts under it, and files in the shim's runtime dir.

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
