//! `<state dir>/sandbox.json`: what the shim records about a booted sandbox for operator tools
//! (`bulwark ps`, `bulwark inspect`): the pod's identity as containerd's CRI plugin passed it,
//! the VM's size and acceleration, and when it booted. Written once at boot, atomically, 0600;
//! nothing reads it back into the shim.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file's name in the state directory.
pub const FILE: &str = "sandbox.json";
/// Longest file a reader accepts.
pub const MAX_FILE: u64 = 64 * 1024;
/// Longest identity string kept (pod names and namespaces are at most 253 bytes).
const MAX_FIELD: usize = 253;

/// The pod's name (CRI metadata), as containerd passes it to the sandbox container.
pub const POD_NAME_ANNOTATION: &str = "io.kubernetes.cri.sandbox-name";
/// The pod's uid.
pub const POD_UID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-uid";

/// What `sandbox.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxInfo {
    pub sandbox_id: String,
    /// The Kubernetes pod (empty outside CRI, e.g. `ctr run`).
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    /// The tenant whose policy applies (None: the default policy).
    pub tenant: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// "kvm" or "tcg".
    pub accel: String,
    /// The hypervisor's host pid at boot.
    pub vm_pid: u32,
    /// Boot time, seconds since the epoch.
    pub started_unix: u64,
}

/// The pod's identity from the sandbox container's annotations (bounded copies; the values
/// come with the pod spec and are only ever displayed).
pub fn identity(annotations: &HashMap<String, String>) -> SandboxInfo {
    let get = |k: &str| {
        let v = annotations.get(k).map(String::as_str).unwrap_or_default();
        v.chars().filter(|c| !c.is_control()).take(MAX_FIELD).collect::<String>()
    };
    SandboxInfo {
        pod_name: get(POD_NAME_ANNOTATION),
        pod_namespace: get(crate::policy::NAMESPACE_ANNOTATION),
        pod_uid: get(POD_UID_ANNOTATION),
        tenant: crate::policy::tenant_of(annotations),
        ..SandboxInfo::default()
    }
}

/// `<dir>/sandbox.json`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Writes `info` to `<dir>/sandbox.json` atomically (a 0600 temporary file, then a rename).
pub fn write(dir: &Path, info: &SandboxInfo) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(info).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(".{FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(&json)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path(dir))
}

/// Reads `<dir>/sandbox.json` (at most [`MAX_FILE`] bytes).
pub fn read(dir: &Path) -> Result<SandboxInfo, String> {
    let p = path(dir);
    let f = std::fs::File::open(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    let mut text = Vec::new();
    f.take(MAX_FILE + 1).read_to_end(&mut text).map_err(|e| format!("{}: {e}", p.display()))?;
    if text.len() as u64 > MAX_FILE {
        return Err(format!("{}: larger than {MAX_FILE} bytes", p.display()));
    }
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn identity_is_taken_bounded_and_written_privately() {
        let ann: HashMap<String, String> = [
            (POD_NAME_ANNOTATION, "web-0\u{1b}[31m"),
            (crate::policy::NAMESPACE_ANNOTATION, "team-a"),
            (POD_UID_ANNOTATION, &"u".repeat(400)),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut info = identity(&ann);
        assert_eq!(info.pod_name, "web-0[31m", "control characters are dropped");
        assert_eq!(info.pod_namespace, "team-a");
        assert_eq!(info.tenant.as_deref(), Some("team-a"), "the tenant is the namespace without an annotation");
        assert_eq!(info.pod_uid.len(), MAX_FIELD);
        info.vcpus = 2;
        let dir = crate::host::fake::temp_dir("sandbox-info");
        write(&dir, &info).unwrap();
        assert_eq!(std::fs::metadata(path(&dir)).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read(&dir).unwrap(), info);
        write(&dir, &SandboxInfo::default()).unwrap();
        assert_eq!(read(&dir).unwrap(), SandboxInfo::default(), "rewritten in place");
        std::fs::write(path(&dir), vec![b' '; MAX_FILE as usize + 1]).unwrap();
        assert!(read(&dir).unwrap_err().contains("larger"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
