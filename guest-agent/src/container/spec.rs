//! Pure rewriting of what the host sends for the guest: the container's OCI spec (root path,
//! hooks, LSM labels, cgroupsPath, bind mounts the guest lacks, and the pod's share of it
//! through pod.rs) and an exec's OCI process JSON. No libcontainer call and no I/O here: what
//! the rewrite needs to know about the guest's filesystem is passed in.
use std::path::{Component, Path};

use oci_spec::runtime::Process as OciProcess;
use serde_json::Value;

use crate::container::pod::PodView;
use crate::container::{ContainerError, ExecError};

/// Largest process JSON accepted from the host.
pub const MAX_PROCESS_JSON: usize = 1024 * 1024;

/// A spec rewritten for the guest.
pub struct GuestSpec {
    pub spec: Value,
    /// Network sysctls to apply to the VM (the pod's network namespace).
    pub vm_sysctls: Vec<(String, String)>,
    /// What was changed, to log.
    pub notes: Vec<String>,
}

/// Rewrites the host's OCI spec for the guest and the pod (pod.rs). `exists` tells whether a
/// path exists in the guest (for bind sources the shim did not share). `allow_unconfined` is
/// the host's `allow_unconfined_seccomp`: without it a spec with no seccomp profile gets the
/// default one (seccomp.rs).
pub fn rewrite_spec(
    id: &str,
    spec_json: &[u8],
    rootfs: &Path,
    pod: &PodView,
    exists: &dyn Fn(&Path) -> bool,
    allow_unconfined: bool,
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
    let vm_sysctls = crate::container::pod::rewrite(obj, pod, &mut notes)?;

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

    crate::container::seccomp::apply(obj, allow_unconfined, &mut notes)?;

    // Fail here, with a clear message, on what libcontainer could not parse.
    serde_json::from_value::<oci_spec::runtime::Spec>(spec.clone()).map_err(|e| ContainerError::Spec(e.to_string()))?;
    Ok(GuestSpec { spec, vm_sysctls, notes })
}

/// Checks and cleans the host's OCI process JSON. Returns it and notes on what changed.
pub fn prepare_process(json: &[u8], terminal: bool) -> Result<(Value, Vec<String>), ExecError> {
    let bad = |m: String| ExecError::InvalidProcess(m);
    if json.len() > MAX_PROCESS_JSON {
        return Err(bad(format!("{} bytes, more than the {MAX_PROCESS_JSON} accepted", json.len())));
    }
    let mut v: Value = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    let obj = v.as_object_mut().ok_or_else(|| bad("not a JSON object".into()))?;
    let mut notes = Vec::new();
    for key in ["apparmorProfile", "selinuxLabel"] {
        if obj.remove(key).is_some() {
            notes.push(format!("dropped process.{key} (no LSM profiles in the guest)"));
        }
    }
    obj.insert("terminal".into(), Value::Bool(terminal));
    let p: OciProcess = serde_json::from_value(v.clone()).map_err(|e| bad(e.to_string()))?;
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(bad("process.args is empty: nothing to run".into()));
    }
    if !p.cwd().is_absolute() {
        return Err(bad(format!("process.cwd {:?} is not an absolute path", p.cwd())));
    }
    Ok((v, notes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::bundle::resolve_in_share;

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

    fn lone_pod() -> PodView<'static> {
        PodView {
            container_id: "c1",
            sandbox_id: "c1",
            sandbox_pid: None,
            resolve_shared: Box::new(|rel: &str| resolve_in_share(Path::new("/nonexistent"), rel)),
            shared_mounts: &[],
            shm_dir: Path::new("/run/bulwark/pods/c1/shm"),
        }
    }

    fn rewrite(
        input: &[u8],
        rootfs: &str,
        exists: &dyn Fn(&Path) -> bool,
    ) -> Result<(Value, Vec<String>), ContainerError> {
        rewrite_spec("c1", input, Path::new(rootfs), &lone_pod(), exists, false).map(|g| (g.spec, g.notes))
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

    fn ctr_exec_process() -> Value {
        serde_json::json!({
            "terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["sh", "-c", "echo hi"],
            "env": ["PATH=/bin"], "cwd": "/", "apparmorProfile": "cri-containerd.apparmor.d",
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
            "noNewPrivileges": true
        })
    }

    #[test]
    fn process_is_cleaned_and_terminal_follows_the_request() {
        let json = serde_json::to_vec(&ctr_exec_process()).expect("json");
        let (v, notes) = prepare_process(&json, true).expect("prepare");
        assert!(v.get("apparmorProfile").is_none());
        assert_eq!(v["terminal"], true);
        assert_eq!(v["args"][0], "sh");
        assert_eq!(notes.len(), 1, "{notes:?}");
        let (v, _) = prepare_process(&json, false).expect("prepare");
        assert_eq!(v["terminal"], false);
    }

    #[test]
    fn bad_processes_are_refused() {
        let mut no_args = ctr_exec_process();
        no_args["args"] = serde_json::json!([]);
        let mut rel_cwd = ctr_exec_process();
        rel_cwd["cwd"] = "tmp".into();
        for bad in [serde_json::to_vec(&no_args).expect("json"), serde_json::to_vec(&rel_cwd).expect("json")] {
            assert!(matches!(prepare_process(&bad, false), Err(ExecError::InvalidProcess(_))));
        }
        for bad in [&b"not json"[..], b"[1]", b"{\"args\": 3}"] {
            assert!(prepare_process(bad, false).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let huge = vec![b' '; MAX_PROCESS_JSON + 1];
        assert!(prepare_process(&huge, false).is_err());
    }

    #[test]
    fn oversized_specs_are_refused_before_parsing() {
        let huge = vec![b' '; protocol::MAX_SPEC_JSON + 1];
        let e = rewrite(&huge, "/r", &|_| true).expect_err("too big");
        assert!(matches!(&e, ContainerError::Spec(m) if m.contains("over")), "{e}");
    }
}
