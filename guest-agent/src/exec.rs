//! Exec processes (ExecProcess): an extra process in a running container.
//!
//! The OCI `process` JSON from the host is checked and cleaned like the container spec (no LSM
//! labels; `terminal` follows the request), written next to the container's bundle, and run
//! with libcontainer's tenant builder (container.rs), which joins the init process's
//! namespaces and the container's cgroup. The tenant builder does not apply the container's
//! seccomp profile, so [`ExecExecutor`] installs it in the new process right before execve.
//! The kernel only lets a process without CAP_SYS_ADMIN install a filter under no_new_privs;
//! when the first attempt fails for that reason the executor sets no_new_privs and retries,
//! so an exec never runs without the container's profile (runc installs it before dropping
//! capabilities instead; the difference: setuid binaries run from such an exec do not gain
//! privileges).
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libcontainer::oci_spec::runtime::{LinuxSeccomp, Process as OciProcess, Spec};
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use serde_json::Value;

use crate::container::{self, ContainerError, BUNDLE_DIR};
use crate::process::{Process, ProcessIoError, StdioSetup};
use crate::reaper::Reaper;

/// Largest process JSON accepted from the host.
pub const MAX_PROCESS_JSON: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("invalid exec process: {0}")]
    InvalidProcess(String),
    #[error("container {0:?} is not running (its init process has exited): cannot exec in it")]
    NotRunning(String),
    #[error("the seccomp profile of container {0:?} uses SCMP_ACT_NOTIFY, which the agent does not support for exec processes")]
    NotifySeccomp(String),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("exec stdio: {0}")]
    Io(#[from] ProcessIoError),
    #[error("{what} {path}: {source}")]
    File { what: &'static str, path: String, source: std::io::Error },
    #[error("internal task failed: {0}")]
    Join(String),
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

/// The seccomp profile in a container's bundle (the spec the container was created with).
pub fn container_seccomp(id: &str, config_json: &Path) -> Result<Option<LinuxSeccomp>, ExecError> {
    let spec =
        Spec::load(config_json).map_err(|e| ExecError::InvalidProcess(format!("{}: {e}", config_json.display())))?;
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    if seccomp.as_ref().is_some_and(libcontainer::seccomp::is_notify) {
        return Err(ExecError::NotifySeccomp(id.to_string()));
    }
    Ok(seccomp)
}

/// libcontainer executor for exec processes: the container's seccomp profile, then execve.
#[derive(Clone)]
pub struct ExecExecutor {
    seccomp: Option<LinuxSeccomp>,
}

impl ExecExecutor {
    pub fn new(seccomp: Option<LinuxSeccomp>) -> Self {
        Self { seccomp }
    }
}

impl Executor for ExecExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if let Some(profile) = &self.seccomp {
            if libcontainer::seccomp::initialize_seccomp(profile).is_err() {
                // No CAP_SYS_ADMIN: the kernel requires no_new_privs for a filter.
                // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) only sets a flag on this process.
                let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                if r != 0 {
                    return Err(ExecutorError::Other(format!(
                        "setting no_new_privs for the seccomp profile: {}",
                        std::io::Error::last_os_error()
                    )));
                }
                libcontainer::seccomp::initialize_seccomp(profile)
                    .map_err(|e| ExecutorError::Other(format!("installing the container's seccomp profile: {e}")))?;
            }
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

/// Where the process JSON of exec `exec_id` of container `id` is written while it starts.
fn process_path(id: &str, exec_id: &str) -> PathBuf {
    Path::new(BUNDLE_DIR).join(id).join(format!("exec-{exec_id}.json"))
}

/// Creates and starts the exec. `init` is the container's init process (it must still run).
pub async fn start(
    reaper: Arc<Reaper>,
    init: &Process,
    id: &str,
    exec_id: &str,
    process_json: &[u8],
    with_stdin: bool,
    terminal: bool,
) -> Result<Process, ExecError> {
    container::validate_id(id)?;
    container::validate_id(exec_id).map_err(|_| {
        ExecError::InvalidProcess(format!("exec id {exec_id:?}: use 1-128 characters from [A-Za-z0-9_.-]"))
    })?;
    if init.has_exited() {
        return Err(ExecError::NotRunning(id.to_string()));
    }
    let (process, notes) = prepare_process(process_json, terminal)?;
    for n in notes {
        tracing::warn!(container = %id, exec = %exec_id, "process: {n}");
    }
    let bundle = Path::new(BUNDLE_DIR).join(id);
    let seccomp = container_seccomp(id, &bundle.join("config.json"))?;
    let path = process_path(id, exec_id);
    let bytes = serde_json::to_vec(&process).map_err(|e| ExecError::InvalidProcess(e.to_string()))?;
    std::fs::write(&path, bytes).map_err(|source| ExecError::File {
        what: "writing",
        path: path.display().to_string(),
        source,
    })?;

    let res = async {
        let (setup, child) = StdioSetup::new(terminal, with_stdin)?;
        let (cid, ppath) = (id.to_string(), path.clone());
        tokio::task::spawn_blocking(move || -> Result<_, ExecError> {
            let guard = reaper.lock();
            let pid = container::exec(&cid, &ppath, child, seccomp)?;
            let exit = reaper.watch(&guard, pid);
            drop(guard);
            match setup.receive() {
                Ok(io) => Ok((pid, exit, io)),
                Err(e) => {
                    // No terminal to talk to: do not leave the process running.
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                    Err(e.into())
                }
            }
        })
        .await
        .map_err(|e| ExecError::Join(e.to_string()))?
    }
    .await;
    let _ = std::fs::remove_file(&path);
    let (pid, exit, io) = res?;
    Ok(io.into_process(&format!("{id}/{exec_id}"), pid, exit, with_stdin))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn seccomp_is_read_from_the_bundle_and_notify_is_refused() {
        let dir = std::env::temp_dir().join(format!("bwk-exec-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let cfg = dir.join("config.json");
        let spec = |seccomp: Value| {
            serde_json::json!({"ociVersion": "1.0.2", "root": {"path": "/r"},
                "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
                "linux": {"seccomp": seccomp}})
        };
        let errno = serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]});
        std::fs::write(&cfg, serde_json::to_vec(&spec(errno)).expect("json")).expect("write");
        assert!(container_seccomp("c", &cfg).expect("read").is_some());
        let notify = serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]});
        std::fs::write(&cfg, serde_json::to_vec(&spec(notify)).expect("json")).expect("write");
        assert!(matches!(container_seccomp("c", &cfg), Err(ExecError::NotifySeccomp(_))));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
