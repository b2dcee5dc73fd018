//! Exec processes (ExecProcess): an extra process in a running container.
//!
//! The OCI `process` JSON from the host is checked and cleaned like the container spec
//! (spec.rs: no LSM labels; `terminal` follows the request), written next to the container's
//! bundle (bundle.rs), and run through the runtime (runtime.rs: libcontainer's tenant builder,
//! which joins the init process's namespaces and the container's cgroup, with the container's
//! seccomp profile installed right before execve), in a helper process with a deadline. The
//! caller holds the container's lifecycle lock (locks.rs) and has checked it is not paused.
use std::path::Path;
use std::sync::Arc;

use crate::container::bundle::{process_path, BUNDLE_DIR};
use crate::container::runtime::{container_seccomp, Runtime};
use crate::container::spec::prepare_process;
use crate::container::{validate_id, ExecError};
use crate::init::reaper::Reaper;
use crate::process::{Process, StdioSetup};

/// What ExecProcess asks for.
pub struct ExecArgs<'a> {
    /// The container.
    pub id: &'a str,
    pub exec_id: &'a str,
    /// The host's OCI process JSON.
    pub process_json: &'a [u8],
    pub with_stdin: bool,
    pub terminal: bool,
}

/// Creates and starts the exec. `init` is the container's init process (it must still run).
pub async fn start(
    runtime: Arc<dyn Runtime>,
    reaper: Arc<Reaper>,
    init: &Process,
    args: ExecArgs<'_>,
) -> Result<Process, ExecError> {
    let ExecArgs { id, exec_id, process_json, with_stdin, terminal } = args;
    validate_id(id)?;
    bulwark_protocol::validate_id(exec_id).map_err(|e| ExecError::InvalidProcess(format!("exec id: {e}")))?;
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
            let (pid, exit) = runtime.exec(&cid, &ppath, child, seccomp, &reaper)?;
            match setup.receive() {
                Ok(io) => Ok((pid, exit, io)),
                Err(e) => {
                    // No terminal to talk to: do not leave the process running (under the
                    // reaper lock, and only if not reaped yet: the pid cannot be reused).
                    let _guard = reaper.lock();
                    if exit.borrow().is_none() {
                        let _ = runtime.signal(pid, libc::SIGKILL);
                    }
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
