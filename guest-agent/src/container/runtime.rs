//! The only module that calls libcontainer: create, start, kill, delete, exec (the tenant
//! builder with [`ExecExecutor`], which installs the container's seccomp profile), the
//! container's stored cgroup path, pause/resume. Every call blocks: run it off the async
//! runtime. The real runtime runs each libcontainer call in a helper process forked for it,
//! with a deadline (init/helper.rs: libcontainer's raw clone3 must not run in the
//! multi-threaded agent, and a call blocked on a tenant, e.g. a child joining a frozen cgroup,
//! is killed instead of blocking the agent). No agent lock is held across these calls.
//!
//! The calls the RPC layer and exec.rs make go through the small [`Runtime`] trait, so the logic
//! around them can be unit-tested with a fake (the model: libcontainer's own `Syscall` trait);
//! [`Libcontainer`] is the real one.
use std::path::{Path, PathBuf};
use std::time::Duration;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::error::LibcontainerError;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::{LinuxSeccomp, Spec};

use crate::container::{ContainerError, ExecError};
use crate::init::helper;
use crate::init::reaper::{ExitReceiver, Reaper};
use crate::process::ChildStdio;

/// libcontainer's state directory.
pub const STATE_DIR: &str = "/run/bulwark/containers";

/// Deadline of one libcontainer call (its helper is killed after it). Below the shim's 30 s
/// call timeout, so the agent answers first.
pub const CALL_LIMIT: Duration = Duration::from_secs(25);

/// The runtime calls made on behalf of the RPCs. Every method blocks: call it off the async
/// runtime. No agent lock may be held around them (they can take up to [`CALL_LIMIT`]).
pub trait Runtime: Send + Sync {
    /// Creates (does not start) the container. Returns the init pid and its exit, registered
    /// with `reaper` before the process can be reaped.
    fn create(
        &self,
        id: &str,
        bundle: &Path,
        stdio: ChildStdio,
        no_pivot: bool,
        reaper: &Reaper,
    ) -> Result<(i32, ExitReceiver), ContainerError>;
    /// Starts a created container.
    fn start(&self, id: &str) -> Result<(), ContainerError>;
    /// Signals every process of the container (through its cgroup).
    fn kill_all(&self, id: &str, signal: i32) -> Result<(), ContainerError>;
    /// Deletes the container's state and cgroup (force: kills what is left).
    fn delete(&self, id: &str) -> Result<(), ContainerError>;
    /// Creates and starts an exec process in the running container. Returns the pid and its
    /// exit, registered with `reaper` before the process can be reaped.
    fn exec(
        &self,
        id: &str,
        process_json: &Path,
        stdio: ChildStdio,
        seccomp: Option<LinuxSeccomp>,
        reaper: &Reaper,
    ) -> Result<(i32, ExitReceiver), ContainerError>;
    /// Freezes (`pause`) or thaws the container.
    fn set_paused(&self, id: &str, pause: bool) -> Result<(), ContainerError>;
    /// kill(2) of one process the agent started (not yet reaped: the caller holds the reaper
    /// lock so the pid cannot be reused meanwhile; kill(2) does not block).
    fn signal(&self, pid: i32, signo: i32) -> std::io::Result<()>;
}

/// The real runtime: youki's libcontainer, each call in a helper process.
pub struct Libcontainer;

/// Runs one libcontainer call in a helper process (init/helper.rs).
fn in_helper(op: &'static str, id: &str, work: impl FnOnce() -> Result<i32, String>) -> Result<i32, ContainerError> {
    in_helper_then(op, id, work, |_| {})
}

fn in_helper_then(
    op: &'static str,
    id: &str,
    work: impl FnOnce() -> Result<i32, String>,
    on_value: impl FnOnce(i32),
) -> Result<i32, ContainerError> {
    helper::run(&format!("libcontainer {op} of {id}"), CALL_LIMIT, work, on_value).map_err(|e| match e {
        helper::HelperError::Failed(msg) => ContainerError::Helper(msg),
        other => ContainerError::Helper(other.to_string()),
    })
}

/// Creates a process in a helper and registers its exit watch before the helper exits (until
/// then the process is the helper's child, so the agent cannot reap it early).
fn spawn_in_helper(
    op: &'static str,
    id: &str,
    reaper: &Reaper,
    work: impl FnOnce() -> Result<i32, String>,
) -> Result<(i32, ExitReceiver), ContainerError> {
    let mut exit = None;
    let pid = in_helper_then(op, id, work, |pid| {
        let guard = reaper.lock();
        exit = Some(reaper.watch(&guard, pid));
    })?;
    let exit = exit.ok_or_else(|| ContainerError::Helper(format!("{op} of {id}: no exit watch for pid {pid}")))?;
    Ok((pid, exit))
}

impl Runtime for Libcontainer {
    fn create(
        &self,
        id: &str,
        bundle: &Path,
        stdio: ChildStdio,
        no_pivot: bool,
        reaper: &Reaper,
    ) -> Result<(i32, ExitReceiver), ContainerError> {
        spawn_in_helper("create", id, reaper, || create(id, bundle, stdio, no_pivot).map_err(|e| e.to_string()))
    }
    fn start(&self, id: &str) -> Result<(), ContainerError> {
        in_helper("start", id, || start(id).map(|_| 0).map_err(|e| e.to_string())).map(|_| ())
    }
    fn kill_all(&self, id: &str, signal: i32) -> Result<(), ContainerError> {
        in_helper("kill", id, || kill_all(id, signal).map(|_| 0).map_err(|e| e.to_string())).map(|_| ())
    }
    fn delete(&self, id: &str) -> Result<(), ContainerError> {
        in_helper("delete", id, || delete(id).map(|_| 0).map_err(|e| e.to_string())).map(|_| ())
    }
    fn exec(
        &self,
        id: &str,
        process_json: &Path,
        stdio: ChildStdio,
        seccomp: Option<LinuxSeccomp>,
        reaper: &Reaper,
    ) -> Result<(i32, ExitReceiver), ContainerError> {
        spawn_in_helper("exec", id, reaper, || exec(id, process_json, stdio, seccomp).map_err(|e| e.to_string()))
    }
    fn set_paused(&self, id: &str, pause: bool) -> Result<(), ContainerError> {
        let op = if pause { "pause" } else { "resume" };
        in_helper(op, id, || set_paused(id, pause).map(|_| 0).map_err(|e| e.to_string())).map(|_| ())
    }
    fn signal(&self, pid: i32, signo: i32) -> std::io::Result<()> {
        // SAFETY: plain kill(2) on a pid we own (our child, not yet reaped).
        let r = unsafe { libc::kill(pid, signo) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

fn lc(op: &'static str, id: &str) -> impl FnOnce(LibcontainerError) -> ContainerError {
    let id = id.to_string();
    move |source| ContainerError::Libcontainer { op, id, source: Box::new(source) }
}

fn with_stdio(builder: ContainerBuilder, stdio: ChildStdio) -> ContainerBuilder {
    match stdio {
        ChildStdio::Pipes { stdin, stdout, stderr } => {
            builder.with_stdin(stdin).with_stdout(stdout).with_stderr(stderr)
        }
        ChildStdio::Console(path) => builder.with_console_socket(Some(path)),
    }
}

/// Creates (does not start) the container. Blocking; runs in a helper process.
/// Returns the init pid.
fn create(id: &str, bundle: &Path, stdio: ChildStdio, no_pivot: bool) -> Result<i32, ContainerError> {
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
/// in `process_json`. `seccomp` is the container's profile ([`ExecExecutor`] installs it, since
/// the tenant builder does not). Blocking; runs in a helper process. Returns the pid.
fn exec(
    id: &str,
    process_json: &Path,
    stdio: ChildStdio,
    seccomp: Option<LinuxSeccomp>,
) -> Result<i32, ContainerError> {
    let builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(STATE_DIR)
        .map_err(lc("exec", id))?
        .with_executor(ExecExecutor::new(seccomp));
    let built = with_stdio(builder, stdio).as_tenant().with_detach(true).with_process(Some(process_json)).build();
    remove_tenant_leftovers(&Path::new(STATE_DIR).join(id));
    Ok(built.map_err(lc("exec", id))?.as_raw())
}

/// libcontainer leaves each exec's notify socket and console-socket symlink
/// (`tenant-notify-*`, `tenant-tty-*`) in the container's state directory. They are only used
/// while the exec starts, and the execs of one container start one at a time (under its
/// lifecycle lock, container/locks.rs), so every one found after a start is stale: remove
/// them, or a container probed by exec for days would pile them up.
fn remove_tenant_leftovers(container_dir: &Path) {
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

fn start(id: &str) -> Result<(), ContainerError> {
    load(id)?.start().map_err(lc("start", id))
}

/// Signals every process of the container (through its cgroup).
fn kill_all(id: &str, signal: i32) -> Result<(), ContainerError> {
    let sig = Signal::try_from(signal).map_err(|e| ContainerError::Spec(format!("signal {signal}: {e}")))?;
    load(id)?.kill(sig, true).map_err(lc("kill", id))
}

/// Deletes the container's state and cgroup (force: kills what is left).
fn delete(id: &str) -> Result<(), ContainerError> {
    let dir = Path::new(STATE_DIR).join(id);
    if !dir.exists() {
        return Ok(());
    }
    load(id)?.delete(true).map_err(lc("delete", id))
}

/// The cgroupsPath libcontainer stored for the container (from the spec it was created with).
pub fn stored_cgroup_path(id: &str) -> Result<PathBuf, LibcontainerError> {
    Container::load(Path::new(STATE_DIR).join(id)).and_then(|c| c.spec()).map(|spec| spec.cgroup_path)
}

/// Freezes (`pause`) or thaws the container (libcontainer rewrites its stored state).
fn set_paused(id: &str, pause: bool) -> Result<(), LibcontainerError> {
    let mut c = Container::load(Path::new(STATE_DIR).join(id))?;
    if pause {
        c.pause()
    } else {
        c.resume()
    }
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
/// The tenant builder does not apply the container's seccomp profile, so this installs it in
/// the new process right before execve. The kernel only lets a process without CAP_SYS_ADMIN
/// install a filter under no_new_privs; when the first attempt fails for that reason the
/// executor sets no_new_privs and retries, so an exec never runs without the container's
/// profile (runc installs it before dropping capabilities instead; the difference: setuid
/// binaries run from such an exec do not gain privileges).
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

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
