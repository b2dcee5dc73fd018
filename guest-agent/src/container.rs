//! Containers via youki's libcontainer: spec rewriting for the guest, id and rootfs path
//! validation, and the create/start/kill/delete calls (blocking: run them off the runtime).
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use serde_json::Value;

/// libcontainer's state directory.
pub const STATE_DIR: &str = "/run/bulwark/containers";
/// Where bundles (config.json) are written.
pub const BUNDLE_DIR: &str = "/run/bulwark/bundles";

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("invalid container id {0:?}: use 1-128 characters from [A-Za-z0-9_.-], not starting with '.'")]
    InvalidId(String),
    #[error("invalid rootfs_path {0:?}: must be a non-empty relative path without '..'")]
    InvalidRootfsPath(String),
    #[error("rootfs {path} is not usable: {reason}")]
    Rootfs { path: String, reason: String },
    #[error("invalid OCI spec: {0}")]
    Spec(String),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: String, source: std::io::Error },
    #[error("libcontainer {op} of {id} failed: {source}")]
    Libcontainer { op: &'static str, id: String, source: Box<libcontainer::error::LibcontainerError> },
}

/// Container and exec ids become directory names: the rule both sides enforce (protocol/).
pub fn validate_id(id: &str) -> Result<(), ContainerError> {
    bulwark_protocol::validate_id(id).map_err(|_| ContainerError::InvalidId(id.to_string()))
}

/// `rootfs_path` must be a plain relative path (normal components and "." only).
pub fn validate_rootfs_path(p: &str) -> Result<&Path, ContainerError> {
    let path = Path::new(p);
    let bad = || ContainerError::InvalidRootfsPath(p.to_string());
    if p.is_empty() || p.contains('\0') {
        return Err(bad());
    }
    let mut normal = 0;
    for c in path.components() {
        match c {
            Component::Normal(_) => normal += 1,
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return Err(bad()),
        }
    }
    if normal == 0 {
        return Err(bad());
    }
    Ok(path)
}

/// Resolves a relative path (rootfs_path rules) inside the share; it must exist and stay
/// inside (symlinks included).
pub fn resolve_in_share(share: &Path, rel: &str) -> Result<PathBuf, ContainerError> {
    let joined = share.join(validate_rootfs_path(rel)?);
    let err = |reason: String| ContainerError::Rootfs { path: joined.display().to_string(), reason };
    let canon = joined.canonicalize().map_err(|e| err(e.to_string()))?;
    let share_canon = share.canonicalize().map_err(|e| err(format!("share: {e}")))?;
    if !canon.starts_with(&share_canon) {
        return Err(err(format!("resolves to {} outside the share", canon.display())));
    }
    Ok(canon)
}

/// Resolves the rootfs inside the share: a directory that stays inside it.
pub fn resolve_rootfs(share: &Path, rootfs_path: &str) -> Result<PathBuf, ContainerError> {
    let canon = resolve_in_share(share, rootfs_path)?;
    if !canon.is_dir() {
        return Err(ContainerError::Rootfs { path: canon.display().to_string(), reason: "not a directory".into() });
    }
    Ok(canon)
}

/// A spec rewritten for the guest.
pub struct GuestSpec {
    pub spec: Value,
    /// Network sysctls to apply to the VM (the pod's network namespace).
    pub vm_sysctls: Vec<(String, String)>,
    /// What was changed, to log.
    pub notes: Vec<String>,
}

/// Rewrites the host's OCI spec for the guest and the pod (pod.rs). `exists` tells whether a
/// path exists in the guest (for bind sources the shim did not share).
pub fn rewrite_spec(
    id: &str,
    spec_json: &[u8],
    rootfs: &Path,
    pod: &crate::pod::PodView,
    exists: &dyn Fn(&Path) -> bool,
) -> Result<GuestSpec, ContainerError> {
    if spec_json.len() > protocol::MAX_SPEC_JSON {
        return Err(ContainerError::Spec(format!(
            "spec is {} bytes, over {}",
            spec_json.len(),
            protocol::MAX_SPEC_JSON
        )));
    }
    let mut spec: Value = serde_json::from_slice(spec_json).map_err(|e| ContainerError::Spec(e.to_string()))?;
    let mut notes = Vec::new();
    let obj = spec.as_object_mut().ok_or_else(|| ContainerError::Spec("not a JSON object".into()))?;
    let vm_sysctls = crate::pod::rewrite(obj, pod, &mut notes)?;

    let readonly = obj.get("root").and_then(|r| r.get("readonly")).and_then(Value::as_bool).unwrap_or(false);
    obj.insert("root".into(), serde_json::json!({ "path": rootfs.to_string_lossy(), "readonly": readonly }));

    if obj.remove("hooks").is_some() {
        notes.push("dropped hooks (host binaries do not exist in the guest)".into());
    }

    if let Some(process) = obj.get_mut("process").and_then(Value::as_object_mut) {
        for key in ["apparmorProfile", "selinuxLabel"] {
            if process.remove(key).is_some() {
                notes.push(format!("dropped process.{key} (no LSM profiles in the guest)"));
            }
        }
    }

    if let Some(linux) = obj.get_mut("linux").and_then(Value::as_object_mut) {
        if linux.remove("mountLabel").is_some() {
            notes.push("dropped linux.mountLabel".into());
        }
        let cg = linux.get("cgroupsPath").and_then(Value::as_str).unwrap_or("");
        let valid = !cg.is_empty()
            && !cg.contains(':')
            && Path::new(cg).components().all(|c| !matches!(c, Component::ParentDir));
        if !valid {
            let new = format!("/bulwark/{id}");
            if !cg.is_empty() {
                notes.push(format!("cgroupsPath {cg:?} is not a plain cgroupfs path: using {new}"));
            }
            linux.insert("cgroupsPath".into(), Value::String(new));
        }
    }

    if let Some(mounts) = obj.get_mut("mounts").and_then(Value::as_array_mut) {
        mounts.retain(|m| {
            let is_bind = m.get("type").and_then(Value::as_str) == Some("bind")
                || m.get("options")
                    .and_then(Value::as_array)
                    .is_some_and(|o| o.iter().any(|x| matches!(x.as_str(), Some("bind") | Some("rbind"))));
            let source = m.get("source").and_then(Value::as_str).unwrap_or("");
            if is_bind && !exists(Path::new(source)) {
                notes.push(format!(
                    "dropped bind mount of {source} on {} (source does not exist in the guest)",
                    m.get("destination").and_then(Value::as_str).unwrap_or("?")
                ));
                return false;
            }
            true
        });
    }

    // Fail here, with a clear message, on what libcontainer could not parse.
    serde_json::from_value::<oci_spec::runtime::Spec>(spec.clone()).map_err(|e| ContainerError::Spec(e.to_string()))?;
    Ok(GuestSpec { spec, vm_sysctls, notes })
}

/// Writes `<BUNDLE_DIR>/<id>/config.json`; returns the bundle directory.
pub fn write_bundle(id: &str, spec: &Value) -> Result<PathBuf, ContainerError> {
    let dir = Path::new(BUNDLE_DIR).join(id);
    let io = |what, path: &Path| {
        let path = path.display().to_string();
        move |source| ContainerError::Io { what, path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let file = dir.join("config.json");
    let bytes = serde_json::to_vec_pretty(spec).map_err(|e| ContainerError::Spec(e.to_string()))?;
    std::fs::write(&file, bytes).map_err(io("writing", &file))?;
    Ok(dir)
}

pub fn remove_bundle(id: &str) {
    let _ = std::fs::remove_dir_all(Path::new(BUNDLE_DIR).join(id));
}

fn lc(op: &'static str, id: &str) -> impl FnOnce(libcontainer::error::LibcontainerError) -> ContainerError {
    let id = id.to_string();
    move |source| ContainerError::Libcontainer { op, id, source: Box::new(source) }
}

/// The child's side of a process's stdio: pipe ends, or a console socket libcontainer sends
/// the pty master to (process.rs).
pub enum ChildStdio {
    Pipes { stdin: OwnedFd, stdout: OwnedFd, stderr: OwnedFd },
    Console(PathBuf),
}

fn with_stdio(builder: ContainerBuilder, stdio: ChildStdio) -> ContainerBuilder {
    match stdio {
        ChildStdio::Pipes { stdin, stdout, stderr } => {
            builder.with_stdin(stdin).with_stdout(stdout).with_stderr(stderr)
        }
        ChildStdio::Console(path) => builder.with_console_socket(Some(path)),
    }
}

/// Creates (does not start) the container. Blocking; hold the reaper lock around it.
/// Returns the init pid.
pub fn create(id: &str, bundle: &Path, stdio: ChildStdio, no_pivot: bool) -> Result<i32, ContainerError> {
    std::fs::create_dir_all(STATE_DIR).map_err(|source| ContainerError::Io {
        what: "creating",
        path: STATE_DIR.into(),
        source,
    })?;
    let builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(STATE_DIR)
        .map_err(lc("create", id))?;
    let container = with_stdio(builder, stdio)
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .with_no_pivot(no_pivot)
        .build()
        .map_err(lc("create", id))?;
    container
        .pid()
        .map(|p| p.as_raw())
        .ok_or_else(|| ContainerError::Spec(format!("libcontainer created {id} but reported no pid")))
}

/// Creates and starts an exec process in the running container `id` (libcontainer's tenant
/// builder: the init process's namespaces, the container's cgroup), running the OCI process
/// in `process_json`. `seccomp` is the container's profile (exec.rs installs it, since the
/// tenant builder does not). Blocking; hold the reaper lock around it. Returns the pid.
pub fn exec(
    id: &str,
    process_json: &Path,
    stdio: ChildStdio,
    seccomp: Option<libcontainer::oci_spec::runtime::LinuxSeccomp>,
) -> Result<i32, ContainerError> {
    let builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(STATE_DIR)
        .map_err(lc("exec", id))?
        .with_executor(crate::exec::ExecExecutor::new(seccomp));
    let built = with_stdio(builder, stdio).as_tenant().with_detach(true).with_process(Some(process_json)).build();
    remove_tenant_leftovers(&Path::new(STATE_DIR).join(id));
    Ok(built.map_err(lc("exec", id))?.as_raw())
}

/// libcontainer leaves each exec's notify socket and console-socket symlink
/// (`tenant-notify-*`, `tenant-tty-*`) in the container's state directory. They are only used
/// while the exec starts, and execs start one at a time (under the reaper lock), so every one
/// found after a start is stale: remove them, or a container probed by exec for days would
/// pile them up.
pub fn remove_tenant_leftovers(container_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(container_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("tenant-notify-") || name.starts_with("tenant-tty-") {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!("removing {}: {e}", entry.path().display());
            }
        }
    }
}

fn load(id: &str) -> Result<Container, ContainerError> {
    Container::load(Path::new(STATE_DIR).join(id)).map_err(lc("load", id))
}

pub fn start(id: &str) -> Result<(), ContainerError> {
    load(id)?.start().map_err(lc("start", id))
}

/// Signals every process of the container (through its cgroup).
pub fn kill_all(id: &str, signal: i32) -> Result<(), ContainerError> {
    let sig = Signal::try_from(signal).map_err(|e| ContainerError::Spec(format!("signal {signal}: {e}")))?;
    load(id)?.kill(sig, true).map_err(lc("kill", id))
}

/// Deletes the container's state and cgroup (force: kills what is left).
pub fn delete(id: &str) -> Result<(), ContainerError> {
    let dir = Path::new(STATE_DIR).join(id);
    if !dir.exists() {
        return Ok(());
    }
    load(id)?.delete(true).map_err(lc("delete", id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_path_validation() {
        for good in ["rootfs", "c1/rootfs", "./c1/rootfs", "a/./b"] {
            assert!(validate_rootfs_path(good).is_ok(), "{good}");
        }
        for bad in ["", "/abs", "..", "../x", "a/../../b", "a/..", ".", "./", "a\0b"] {
            assert!(validate_rootfs_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tenant_leftovers_are_removed_and_state_is_kept() {
        let dir = std::env::temp_dir().join(format!("bwk-tenant-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in ["state.json", "notify.sock", "tenant-notify-1a2b.sock", "tenant-tty-ff.sock"] {
            std::fs::write(dir.join(f), b"").expect("write");
        }
        remove_tenant_leftovers(&dir);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["notify.sock", "state.json"]);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn id_validation() {
        assert!(validate_id("abc-1_2.3").is_ok());
        for bad in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(129)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    fn ctr_like_spec() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2-dev",
            "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/",
                        "apparmorProfile": "cri-containerd.apparmor.d"},
            "root": {"path": "/host/rootfs", "readonly": true},
            "hooks": {"createRuntime": [{"path": "/usr/bin/nvidia-hook"}]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/host/hosts", "options": ["rbind"]},
                {"destination": "/data", "type": "none", "source": "/exists", "options": ["rbind", "ro"]}
            ],
            "linux": {
                "cgroupsPath": "kubepods-besteffort.slice:cri-containerd:abc",
                "namespaces": [{"type": "pid"}, {"type": "network", "path": "/proc/123/ns/net"}]
            }
        })
    }

    fn lone_pod() -> crate::pod::PodView<'static> {
        crate::pod::PodView {
            container_id: "c1",
            sandbox_id: "c1",
            sandbox_pid: None,
            share: Path::new("/nonexistent"),
            shared_mounts: &[],
            shm_dir: Path::new("/run/bulwark/pods/c1/shm"),
        }
    }

    fn rewrite(
        input: &[u8],
        rootfs: &str,
        exists: &dyn Fn(&Path) -> bool,
    ) -> Result<(Value, Vec<String>), ContainerError> {
        rewrite_spec("c1", input, Path::new(rootfs), &lone_pod(), exists).map(|g| (g.spec, g.notes))
    }

    #[test]
    fn spec_rewrite() {
        let input = serde_json::to_vec(&ctr_like_spec()).expect("json");
        let exists = |p: &Path| p == Path::new("/exists");
        let (out, notes) = rewrite(&input, "/run/bulwark/share/c1/rootfs", &exists).expect("rewrite");
        assert_eq!(out["root"]["path"], "/run/bulwark/share/c1/rootfs");
        assert_eq!(out["root"]["readonly"], true);
        assert!(out.get("hooks").is_none());
        assert!(out["process"].get("apparmorProfile").is_none());
        assert_eq!(out["linux"]["cgroupsPath"], "/bulwark/c1");
        let types: Vec<&str> =
            out["linux"]["namespaces"].as_array().expect("nss").iter().filter_map(|n| n["type"].as_str()).collect();
        assert_eq!(types, ["pid", "cgroup"], "the network namespace is the VM's");
        let dests: Vec<&str> =
            out["mounts"].as_array().expect("mounts").iter().filter_map(|m| m["destination"].as_str()).collect();
        assert_eq!(dests, ["/proc", "/data"]);
        assert!(notes.len() >= 5, "{notes:?}");
    }

    #[test]
    fn plain_cgroups_path_is_kept() {
        let mut s = ctr_like_spec();
        s["linux"]["cgroupsPath"] = "/default/c1".into();
        let (out, _) = rewrite(&serde_json::to_vec(&s).expect("json"), "/r", &|_| true).expect("rewrite");
        assert_eq!(out["linux"]["cgroupsPath"], "/default/c1");
    }

    #[test]
    fn terminal_is_kept_and_garbage_is_rejected() {
        let mut s = ctr_like_spec();
        s["process"]["terminal"] = true.into();
        let (out, _) = rewrite(&serde_json::to_vec(&s).expect("json"), "/r", &|_| true).expect("rewrite");
        assert_eq!(out["process"]["terminal"], true);
        assert!(rewrite(b"not json", "/r", &|_| true).is_err());
        assert!(rewrite(b"[1]", "/r", &|_| true).is_err());
    }
}
