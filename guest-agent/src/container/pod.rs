//! One VM is one pod. Maps a container's OCI spec onto what the pod shares in the guest:
//! - the VM's own network and UTS namespaces (eth0 and the hostname SetupSandbox set up), so
//!   every container of the pod sees the same interfaces, `127.0.0.1` and hostname;
//! - the sandbox (pause) container's IPC namespace, and its PID namespace when the spec
//!   shares one (the host paths `/proc/<pid>/ns/*` in the spec name the host's view);
//! - one pod-wide tmpfs for `/dev/shm` instead of the host's sandbox shm directory;
//! - host bind mounts the shim shared through virtio-fs (SharedMount in the protocol);
//! - network sysctls, which belong to the VM's network namespace, applied VM-wide;
//! - a cgroup namespace for every container (the guest is a cgroup v2 node).
//!
//! [`rewrite`] is pure (shared mount paths are resolved through [`PodView::resolve_shared`]);
//! [`ensure_shm`], [`release`] and [`apply_sysctls`] are the I/O.
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use serde_json::{Map, Value};

use crate::container::ContainerError;
use crate::init::boot::is_mountpoint;

/// Per-pod guest state (the /dev/shm tmpfs) lives below this directory.
pub const PODS_DIR: &str = "/run/bulwark/pods";
/// Size of the pod's /dev/shm tmpfs (what runc pods get from containerd by default).
const SHM_SIZE: &str = "size=65536k";

/// Resolves a path relative to the virtio-fs share to its place in the guest.
pub type ResolveShared<'a> = Box<dyn Fn(&str) -> Result<PathBuf, ContainerError> + 'a>;

/// What the agent knows about the pod when it rewrites one container's spec.
pub struct PodView<'a> {
    pub container_id: &'a str,
    pub sandbox_id: &'a str,
    /// Guest pid of the sandbox container's init process, if it is in this VM.
    pub sandbox_pid: Option<i32>,
    /// Resolves a path relative to the virtio-fs share (the agent passes
    /// `bundle::resolve_in_share`; the rewrite itself does no I/O).
    pub resolve_shared: ResolveShared<'a>,
    /// (spec mount index, path relative to the share) for host bind mounts.
    pub shared_mounts: &'a [(u32, String)],
    /// The pod's /dev/shm directory in the guest.
    pub shm_dir: &'a Path,
}

impl PodView<'_> {
    fn is_sandbox(&self) -> bool {
        self.container_id == self.sandbox_id
    }
}

/// The pod's /dev/shm directory (a tmpfs mounted by [`ensure_shm`]).
pub fn shm_dir(sandbox_id: &str) -> PathBuf {
    Path::new(PODS_DIR).join(sandbox_id).join("shm")
}

/// Mounts the pod's /dev/shm tmpfs unless it is already there.
pub fn ensure_shm(sandbox_id: &str) -> Result<PathBuf, ContainerError> {
    let dir = shm_dir(sandbox_id);
    if is_mountpoint(&dir) {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).map_err(|source| ContainerError::Io {
        what: "creating",
        path: dir.display().to_string(),
        source,
    })?;
    nix::mount::mount(
        Some("shm"),
        &dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(format!("mode=1777,{SHM_SIZE}").as_str()),
    )
    .map_err(|e| ContainerError::Io {
        what: "mounting tmpfs on",
        path: dir.display().to_string(),
        source: e.into(),
    })?;
    Ok(dir)
}

/// Unmounts and removes the pod's guest state (when its sandbox container is removed).
pub fn release(sandbox_id: &str) {
    let dir = Path::new(PODS_DIR).join(sandbox_id);
    let shm = dir.join("shm");
    if is_mountpoint(&shm) {
        if let Err(e) = nix::mount::umount2(&shm, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!("unmounting {}: {e}", shm.display());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rewrites namespaces, hostname, sysctls and mounts of `spec` for the pod. Returns the
/// network sysctls to apply VM-wide (see [`apply_sysctls`]).
pub fn rewrite(
    spec: &mut Map<String, Value>,
    pod: &PodView,
    notes: &mut Vec<String>,
) -> Result<Vec<(String, String)>, ContainerError> {
    let mut vm_sysctls = Vec::new();
    if let Some(linux) = spec.get_mut("linux").and_then(Value::as_object_mut) {
        rewrite_namespaces(linux, pod, notes)?;
        vm_sysctls = split_sysctls(linux, notes)?;
    }
    for key in ["hostname", "domainname"] {
        if spec.remove(key).is_some() {
            notes.push(format!("{key} comes from the VM (SetupSandbox), shared by the pod"));
        }
    }
    if let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) {
        rewrite_mounts(mounts, pod, notes)?;
    }
    Ok(vm_sysctls)
}

fn rewrite_namespaces(
    linux: &mut Map<String, Value>,
    pod: &PodView,
    notes: &mut Vec<String>,
) -> Result<(), ContainerError> {
    let Some(nss) = linux.get_mut("namespaces").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    let mut out = Vec::with_capacity(nss.len());
    for ns in nss.drain(..) {
        let Some(mut o) = ns.as_object().cloned() else {
            return Err(ContainerError::Spec("linux.namespaces entries must be objects".into()));
        };
        let typ = o.get("type").and_then(Value::as_str).unwrap_or("").to_string();
        let had_path = o.remove("path").is_some_and(|p| p.as_str().is_some_and(|s| !s.is_empty()));
        match typ.as_str() {
            // The VM's: eth0 and the pod hostname live there.
            "network" | "uts" => {
                notes.push(format!("{typ} namespace: the VM's, shared by the pod"));
                continue;
            }
            "ipc" | "pid" if had_path && !pod.is_sandbox() => {
                let pid = pod.sandbox_pid.ok_or_else(|| {
                    ContainerError::Spec(format!(
                        "the spec joins the pod's {typ} namespace, but sandbox container {} is not running in this VM",
                        pod.sandbox_id
                    ))
                })?;
                o.insert("path".into(), Value::String(format!("/proc/{pid}/ns/{typ}")));
            }
            _ if had_path => notes.push(format!("{typ} namespace path is a host path: using a new namespace")),
            _ => {}
        }
        out.push(Value::Object(o));
    }
    // The guest is pure cgroup v2: give every container its own cgroup namespace, as
    // containerd does on a cgroup v2 node, so /sys/fs/cgroup shows the container's limits.
    if !out.iter().any(|n| n.get("type").and_then(Value::as_str) == Some("cgroup")) {
        out.push(serde_json::json!({"type": "cgroup"}));
    }
    *nss = out;
    Ok(())
}

/// A sysctl name as the kernel spells it under /proc/sys (dots for slashes).
fn valid_sysctl_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .split('.')
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')))
}

/// Takes `net.*` sysctls out of the spec (they apply to the VM's network namespace, which the
/// containers share) and drops `kernel.hostname`/`kernel.domainname` (the VM's UTS).
fn split_sysctls(
    linux: &mut Map<String, Value>,
    notes: &mut Vec<String>,
) -> Result<Vec<(String, String)>, ContainerError> {
    let Some(sysctls) = linux.get_mut("sysctl").and_then(Value::as_object_mut) else {
        return Ok(Vec::new());
    };
    let mut vm = Vec::new();
    let names: Vec<String> = sysctls.keys().cloned().collect();
    for name in names {
        if name.starts_with("net.") {
            let value = sysctls.remove(&name).and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            if !valid_sysctl_name(&name) || value.len() > 256 || value.contains('\n') {
                return Err(ContainerError::Spec(format!("invalid sysctl {name:?}")));
            }
            vm.push((name, value));
        } else if name == "kernel.hostname" || name == "kernel.domainname" {
            sysctls.remove(&name);
            notes.push(format!("dropped sysctl {name}: the pod shares the VM's UTS namespace"));
        }
    }
    Ok(vm)
}

/// Writes network sysctls into the VM's /proc/sys.
pub fn apply_sysctls(sysctls: &[(String, String)]) -> Result<(), ContainerError> {
    for (name, value) in sysctls {
        let path = Path::new("/proc/sys").join(name.replace('.', "/"));
        std::fs::write(&path, value.as_bytes()).map_err(|source| ContainerError::Io {
            what: "writing sysctl",
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

fn is_bind(m: &Value) -> bool {
    m.get("type").and_then(Value::as_str) == Some("bind")
        || m.get("options")
            .and_then(Value::as_array)
            .is_some_and(|o| o.iter().any(|x| matches!(x.as_str(), Some("bind") | Some("rbind"))))
}

fn rewrite_mounts(mounts: &mut [Value], pod: &PodView, notes: &mut Vec<String>) -> Result<(), ContainerError> {
    for (index, rel) in pod.shared_mounts {
        let m = mounts
            .get_mut(*index as usize)
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ContainerError::Spec(format!("shared mount index {index} is not in the spec's mounts")))?;
        if !is_bind(&Value::Object(m.clone())) {
            return Err(ContainerError::Spec(format!("shared mount index {index} is not a bind mount")));
        }
        let source = (pod.resolve_shared)(rel)?;
        m.insert("source".into(), Value::String(source.to_string_lossy().into_owned()));
    }
    for m in mounts.iter_mut() {
        if m.get("destination").and_then(Value::as_str) == Some("/dev/shm") && is_bind(m) {
            if let Some(o) = m.as_object_mut() {
                o.insert("source".into(), Value::String(pod.shm_dir.to_string_lossy().into_owned()));
                notes.push("/dev/shm: the pod's tmpfs in the VM".into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::bundle::resolve_in_share;
    use serde_json::json;

    fn cri_container_spec() -> Value {
        json!({
            "hostname": "pod-a",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/kubelet/pods/x/etc-hosts", "options": ["rbind", "rw"]},
                {"destination": "/dev/shm", "type": "bind", "source": "/run/containerd/sandboxes/p/shm", "options": ["rbind", "rw"]}
            ],
            "linux": {
                "sysctl": {"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shmmax": "1000", "kernel.hostname": "x"},
                "namespaces": [
                    {"type": "pid"},
                    {"type": "ipc", "path": "/proc/4242/ns/ipc"},
                    {"type": "uts", "path": "/proc/4242/ns/uts"},
                    {"type": "mount"},
                    {"type": "network", "path": "/proc/4242/ns/net"}
                ]
            }
        })
    }

    fn view<'a>(cid: &'a str, pid: Option<i32>, share: &'a Path, shared: &'a [(u32, String)]) -> PodView<'a> {
        PodView {
            container_id: cid,
            sandbox_id: "pod",
            sandbox_pid: pid,
            resolve_shared: Box::new(move |rel: &str| resolve_in_share(share, rel)),
            shared_mounts: shared,
            shm_dir: Path::new("/run/bulwark/pods/pod/shm"),
        }
    }

    fn share_with_file(test: &str) -> PathBuf {
        let share = std::env::temp_dir().join(format!("bwk-pod-test-{}-{test}", std::process::id()));
        std::fs::create_dir_all(share.join("c1/mounts")).expect("mkdir");
        std::fs::write(share.join("c1/mounts/1"), b"127.0.0.1 localhost\n").expect("write");
        share
    }

    #[test]
    fn container_joins_the_sandbox_and_the_vm() {
        let share = share_with_file("join");
        let shared = [(1, "c1/mounts/1".to_string())];
        let mut spec = cri_container_spec();
        let mut notes = Vec::new();
        let obj = spec.as_object_mut().expect("object");
        let sysctls = rewrite(obj, &view("c1", Some(77), &share, &shared), &mut notes).expect("rewrite");
        assert_eq!(sysctls, [("net.ipv4.ip_unprivileged_port_start".to_string(), "0".to_string())]);
        let nss = spec["linux"]["namespaces"].as_array().expect("nss");
        let types: Vec<&str> = nss.iter().filter_map(|n| n["type"].as_str()).collect();
        assert_eq!(types, ["pid", "ipc", "mount", "cgroup"]);
        assert_eq!(nss[1]["path"], "/proc/77/ns/ipc");
        assert!(nss[0].get("path").is_none());
        assert!(spec.get("hostname").is_none());
        assert_eq!(spec["linux"]["sysctl"], json!({"kernel.shmmax": "1000"}));
        let src = spec["mounts"][1]["source"].as_str().expect("source");
        assert!(src.ends_with("c1/mounts/1") && src.starts_with(share.to_str().expect("utf8")), "{src}");
        assert_eq!(spec["mounts"][2]["source"], "/run/bulwark/pods/pod/shm");
        let _ = std::fs::remove_dir_all(&share);
    }

    #[test]
    fn sandbox_gets_new_ipc_and_a_container_without_a_sandbox_fails() {
        let share = Path::new("/nonexistent");
        let mut spec = cri_container_spec();
        spec["mounts"] = json!([]);
        let obj = spec.as_object_mut().expect("object");
        let mut notes = Vec::new();
        rewrite(obj, &view("pod", None, share, &[]), &mut notes).expect("sandbox");
        assert!(spec["linux"]["namespaces"][1].get("path").is_none());

        let mut spec = cri_container_spec();
        spec["mounts"] = json!([]);
        let e = rewrite(spec.as_object_mut().expect("object"), &view("c1", None, share, &[]), &mut notes).unwrap_err();
        assert!(e.to_string().contains("sandbox container pod"), "{e}");
    }

    #[test]
    fn hostile_shared_mounts_are_refused() {
        let share = share_with_file("hostile");
        for (idx, rel) in
            [(0, "c1/mounts/1"), (9, "c1/mounts/1"), (1, "../etc"), (1, "/etc/passwd"), (1, "c1/mounts/none")]
        {
            let mut spec = cri_container_spec();
            let shared = [(idx, rel.to_string())];
            let r =
                rewrite(spec.as_object_mut().expect("object"), &view("c1", Some(1), &share, &shared), &mut Vec::new());
            assert!(r.is_err(), "{idx} {rel}");
        }
        std::os::unix::fs::symlink("/etc", share.join("c1/mounts/esc")).expect("symlink");
        let mut spec = cri_container_spec();
        let shared = [(1, "c1/mounts/esc".to_string())];
        assert!(rewrite(spec.as_object_mut().expect("object"), &view("c1", Some(1), &share, &shared), &mut Vec::new())
            .is_err());
        let _ = std::fs::remove_dir_all(&share);
    }

    #[test]
    fn sysctl_names() {
        assert!(valid_sysctl_name("net.ipv4.ping_group_range"));
        for bad in ["", "net..x", "net/../../etc", "net.a b", ".net"] {
            assert!(!valid_sysctl_name(bad), "{bad}");
        }
        let mut linux = json!({"sysctl": {"net.a/../../x": "1"}});
        assert!(split_sysctls(linux.as_object_mut().expect("o"), &mut Vec::new()).is_err());
    }
}
