//! Exec processes of a container (containerd's Exec and every Task RPC with an exec id), with
//! runc-shim semantics: Exec records the process (its OCI process JSON, stdio FIFOs, terminal)
//! and publishes /tasks/exec-added; Start creates it in the guest (agent ExecProcess), copies
//! its stdio like the init process's (io.rs) and publishes /tasks/exec-started; its exit
//! publishes /tasks/exit with `id` = the exec id; Delete (only once it stopped) forgets it in
//! the guest and publishes /tasks/delete. Kill of an exec not started is FAILED_PRECONDITION,
//! of an exited one NOT_FOUND.
//!
//! Pids: containerd gets the same host pid for an exec as for the init process, the QEMU
//! process of the sandbox. Guest pids mean nothing on the host (another process may own that
//! number), and everything a host tool can do to "the process" (signal it, read its cgroup,
//! account it) lands on the VM that runs it; the guest pid is kept for logs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::api;
use containerd_shim::protos::events::task::{TaskExecAdded, TaskExecStarted, TaskExit};
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};

use crate::agent::{AgentApi, Stream};
use crate::container::process::{guest_status, Process, Status};
use crate::container::{self, Container, Stdio};
use crate::error::{Error, Result};

/// Largest OCI process JSON accepted in an Exec request.
pub const MAX_PROCESS_JSON: usize = 1024 * 1024;
/// Most execs one container may have at a time (containerd deletes them after use).
pub const MAX_EXECS: usize = 1024;
/// How long an exec's exit event waits for its output to reach containerd's FIFOs.
const IO_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes events to containerd (implemented by the task service).
#[async_trait]
pub trait Publish: Send + Sync + 'static {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>);
}

/// One exec process.
pub struct ExecProcess {
    pub exec_id: String,
    pub stdio: Stdio,
    /// The OCI runtime-spec `process` object (JSON) from containerd.
    process_json: Vec<u8>,
    pub process: Process,
}

/// The execs of one container, by exec id.
#[derive(Default)]
pub struct Execs {
    map: Mutex<HashMap<String, Arc<ExecProcess>>>,
}

impl Execs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ExecProcess>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, container_id: &str, exec_id: &str) -> Result<Arc<ExecProcess>> {
        self.lock()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id:?} of container {container_id:?} not found")))
    }

    /// Aborts the tasks of every exec (the container is being deleted); execs still running
    /// died with it (SIGKILL), which frees their waiters.
    pub fn abort_all(&self) {
        for e in self.lock().values() {
            e.process.abort_tasks();
            if e.process.state().status == Status::Running {
                e.process.mark_exited(137);
            }
        }
    }
}

/// Waits (at most `limit`) until no exec of the container runs. The init process's exit event
/// waits for this, like containerd's runc shim, so containerd sees the execs' exits first (they
/// die with the container's PID namespace).
pub async fn wait_execs_stopped(c: &Container, limit: Duration) {
    let running: Vec<Arc<ExecProcess>> =
        c.execs.lock().values().filter(|e| e.process.state().status == Status::Running).cloned().collect();
    let all = async {
        for e in running {
            e.process.wait().await;
        }
    };
    if tokio::time::timeout(limit, all).await.is_err() {
        tracing::warn!("container {}: execs still running {limit:?} after its init process exited", c.id);
    }
}

/// Checks the OCI process JSON of an Exec request (pure): size, JSON, a `process` object with
/// arguments. The guest agent checks it again.
pub fn check_process_json(json: &[u8]) -> Result<()> {
    if json.len() > MAX_PROCESS_JSON {
        return Err(Error::InvalidArgument(format!(
            "exec process spec is {} bytes, more than the {MAX_PROCESS_JSON} accepted",
            json.len()
        )));
    }
    let p: oci_spec::runtime::Process = serde_json::from_slice(json)
        .map_err(|e| Error::InvalidArgument(format!("exec process spec is not an OCI process: {e}")))?;
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::InvalidArgument("exec process spec has no args: nothing to run".into()));
    }
    Ok(())
}

/// Exec: records the process and publishes /tasks/exec-added.
pub async fn add(events: &dyn Publish, c: &Container, req: api::ExecProcessRequest) -> Result<()> {
    container::validate_id(&req.exec_id)?;
    if c.state().status == Status::Stopped {
        return Err(Error::FailedPrecondition(format!("container {} has stopped: cannot exec in it", c.id)));
    }
    let json = req.spec.as_ref().map(|a| a.value.clone()).unwrap_or_default();
    check_process_json(&json)?;
    let exec = Arc::new(ExecProcess {
        exec_id: req.exec_id.clone(),
        stdio: Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        },
        process_json: json,
        process: Process::new(0),
    });
    {
        let mut map = c.execs.lock();
        if map.contains_key(&req.exec_id) {
            return Err(Error::AlreadyExists(format!("exec {} of container {} already exists", req.exec_id, c.id)));
        }
        if map.len() >= MAX_EXECS {
            return Err(Error::FailedPrecondition(format!(
                "container {} has {MAX_EXECS} exec processes already: delete finished ones first",
                c.id
            )));
        }
        map.insert(req.exec_id.clone(), exec);
    }
    events
        .publish(
            "/tasks/exec-added",
            Box::new(TaskExecAdded { container_id: c.id.clone(), exec_id: req.exec_id.clone(), ..Default::default() }),
        )
        .await;
    Ok(())
}

/// Start of an exec: creates it in the guest, connects its stdio, watches its exit, publishes
/// /tasks/exec-started. `pid` is the task pid containerd sees (the QEMU pid).
pub async fn start(
    events: Arc<dyn Publish>,
    c: &Container,
    exec_id: &str,
    agent: Arc<dyn AgentApi>,
    pid: u32,
) -> Result<u32> {
    let e = c.execs.get(&c.id, exec_id)?;
    let _gate = e.process.start_gate.lock().await;
    if e.process.state().status != Status::Created {
        return Err(Error::FailedPrecondition(format!("exec {exec_id} of container {} was already started", c.id)));
    }
    if c.state().status != Status::Running {
        return Err(Error::FailedPrecondition(format!(
            "container {} is not running: cannot start an exec in it",
            c.id
        )));
    }
    let stdout = crate::container::stdio::open_output(&e.stdio.stdout).await?;
    let stderr = crate::container::stdio::open_output(&e.stdio.stderr).await?;
    let guest_pid =
        agent.exec_process(&c.id, exec_id, e.process_json.clone(), !e.stdio.stdin.is_empty(), e.stdio.terminal).await?;
    e.process.set_guest_pid(guest_pid);

    let outputs = vec![
        crate::container::stdio::spawn_output(agent.clone(), c.id.clone(), exec_id.to_string(), Stream::Stdout, stdout),
        crate::container::stdio::spawn_output(agent.clone(), c.id.clone(), exec_id.to_string(), Stream::Stderr, stderr),
    ];
    let mut handles: Vec<tokio::task::AbortHandle> = outputs.iter().map(|h| h.abort_handle()).collect();
    if !e.stdio.stdin.is_empty() {
        match crate::container::stdio::StdinFifo::open(&e.stdio.stdin) {
            Ok(fifo) => {
                let fifo = Arc::new(fifo);
                *e.process.stdin_fifo.lock().unwrap_or_else(|p| p.into_inner()) = Some(fifo.clone());
                let h = crate::container::stdio::spawn_stdin(
                    agent.clone(),
                    c.id.clone(),
                    exec_id.to_string(),
                    fifo,
                    e.process.stdin_close.clone(),
                );
                handles.push(h.abort_handle());
            }
            Err(err) => tracing::warn!("exec {exec_id} of container {}: {err}; stdin not connected", c.id),
        }
    }
    let watcher = tokio::spawn(watch_exit(events.clone(), c.id.clone(), e.clone(), agent, pid, outputs));
    handles.push(watcher.abort_handle());
    e.process.tasks.lock().unwrap_or_else(|p| p.into_inner()).extend(handles);
    e.process.set_running();
    tracing::info!("exec {exec_id} of container {} started (guest pid {guest_pid})", c.id);
    events
        .publish(
            "/tasks/exec-started",
            Box::new(TaskExecStarted {
                container_id: c.id.clone(),
                exec_id: exec_id.to_string(),
                pid,
                ..Default::default()
            }),
        )
        .await;
    Ok(pid)
}

/// Waits for the exec to exit, lets its output drain, records the exit, publishes /tasks/exit.
async fn watch_exit(
    events: Arc<dyn Publish>,
    container_id: String,
    e: Arc<ExecProcess>,
    agent: Arc<dyn AgentApi>,
    pid: u32,
    outputs: Vec<tokio::task::JoinHandle<()>>,
) {
    let status = match agent.wait_process(&container_id, &e.exec_id).await {
        Ok(code) => guest_status(code),
        Err(err) => {
            tracing::error!("exec {} of container {container_id}: {err}; reporting exit status 255", e.exec_id);
            255
        }
    };
    let drain = async {
        for h in outputs {
            let _ = h.await;
        }
    };
    if tokio::time::timeout(IO_DRAIN_TIMEOUT, drain).await.is_err() {
        tracing::warn!(
            "exec {} of container {container_id}: output not drained within {IO_DRAIN_TIMEOUT:?}",
            e.exec_id
        );
    }
    let _gate = e.process.start_gate.lock().await;
    if let Some(exit) = e.process.mark_exited(status) {
        tracing::info!("exec {} of container {container_id} exited with status {status}", e.exec_id);
        events
            .publish(
                "/tasks/exit",
                Box::new(TaskExit {
                    container_id,
                    id: e.exec_id.clone(),
                    pid,
                    exit_status: exit.status,
                    exited_at: MessageField::some(exit.at),
                    ..Default::default()
                }),
            )
            .await;
    }
}

/// Kill of an exec (runc-shim: not started is a precondition failure, exited is not found).
pub async fn kill(
    c: &Container,
    exec_id: &str,
    signal: u32,
    all: bool,
    agent: Result<Arc<dyn AgentApi>>,
) -> Result<()> {
    let e = c.execs.get(&c.id, exec_id)?;
    match e.process.state().status {
        Status::Created => {
            Err(Error::FailedPrecondition(format!("exec {exec_id} of container {} was not started", c.id)))
        }
        Status::Stopped => Err(Error::NotFound(format!("exec {exec_id} of container {} already finished", c.id))),
        Status::Running | Status::Paused => agent?.signal_process(&c.id, exec_id, signal, all).await,
    }
}

/// Wait for an exec's exit.
pub async fn wait(c: &Container, exec_id: &str) -> Result<api::WaitResponse> {
    let e = c.execs.get(&c.id, exec_id)?;
    let exit = e.process.wait().await;
    Ok(api::WaitResponse { exit_status: exit.status, exited_at: MessageField::some(exit.at), ..Default::default() })
}

/// State of an exec.
pub fn state(c: &Container, exec_id: &str, pid: u32) -> Result<api::StateResponse> {
    let e = c.execs.get(&c.id, exec_id)?;
    let st = e.process.state();
    let status = st.status.to_api();
    let mut r = api::StateResponse {
        id: exec_id.to_string(),
        bundle: c.bundle.clone(),
        pid: if st.status == Status::Created { 0 } else { pid },
        status: status.into(),
        stdin: e.stdio.stdin.clone(),
        stdout: e.stdio.stdout.clone(),
        stderr: e.stdio.stderr.clone(),
        terminal: e.stdio.terminal,
        exec_id: exec_id.to_string(),
        ..Default::default()
    };
    if let Some(x) = st.exit {
        r.exit_status = x.status;
        r.exited_at = MessageField::some(x.at);
    }
    Ok(r)
}

/// Delete of an exec: refused while it runs; forgets it here and in the guest; publishes
/// /tasks/delete (as runc-shim does for execs too).
pub async fn delete(
    events: &dyn Publish,
    c: &Container,
    exec_id: &str,
    agent: Result<Arc<dyn AgentApi>>,
    pid: u32,
) -> Result<api::DeleteResponse> {
    let e = c.execs.get(&c.id, exec_id)?;
    let st = e.process.state();
    if st.status == Status::Running {
        return Err(Error::FailedPrecondition(format!(
            "exec {exec_id} of container {} is still running: kill it first",
            c.id
        )));
    }
    if st.status == Status::Stopped {
        match agent {
            Ok(agent) => {
                if let Err(err) = agent.remove_process(&c.id, exec_id).await {
                    tracing::warn!("removing exec {exec_id} of container {} in the guest: {err}", c.id);
                }
            }
            Err(err) => tracing::debug!("exec {exec_id} of container {}: {err}", c.id),
        }
    }
    e.process.abort_tasks();
    c.execs.lock().remove(exec_id);
    let (status, at) = match st.exit {
        Some(x) => (x.status, MessageField::some(x.at)),
        None => (0, MessageField::none()),
    };
    events
        .publish("/tasks/delete", crate::container::process::delete_event(&c.id, exec_id, pid, status, at.clone()))
        .await;
    tracing::info!("exec {exec_id} of container {} deleted (exit status {status})", c.id);
    Ok(api::DeleteResponse { pid, exit_status: status, exited_at: at, ..Default::default() })
}

/// CloseIO for the init process (`exec_id` empty) or an exec: the stdin copier drains the
/// FIFO, then closes the process's stdin; without a FIFO the guest's stdin is closed at once.
pub async fn close_io(c: &Container, exec_id: &str, agent: Result<Arc<dyn AgentApi>>) -> Result<()> {
    let (stdin_path, notify) = if exec_id.is_empty() {
        (c.stdio.stdin.clone(), c.stdin_close.clone())
    } else {
        let e = c.execs.get(&c.id, exec_id)?;
        if e.process.state().status == Status::Created {
            return Ok(());
        }
        (e.stdio.stdin.clone(), e.process.stdin_close.clone())
    };
    if stdin_path.is_empty() {
        if let Ok(agent) = agent {
            let _ = agent.close_stdin(&c.id, exec_id).await;
        }
    } else {
        notify.notify_one();
    }
    Ok(())
}

/// ResizePty for the init process (`exec_id` empty) or an exec. A process without a terminal
/// (or an exec not started yet) ignores it, like runc-shim.
pub async fn resize_pty(
    c: &Container,
    exec_id: &str,
    width: u32,
    height: u32,
    agent: Result<Arc<dyn AgentApi>>,
) -> Result<()> {
    let terminal = if exec_id.is_empty() {
        c.stdio.terminal
    } else {
        let e = c.execs.get(&c.id, exec_id)?;
        e.stdio.terminal && e.process.state().status == Status::Running
    };
    if !terminal {
        return Ok(());
    }
    agent?.resize_pty(&c.id, exec_id, width, height).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_json_checks() {
        assert!(check_process_json(br#"{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}"#).is_ok());
        for bad in [&br#"{"args":[],"cwd":"/","user":{"uid":0,"gid":0}}"#[..], b"", b"nope", b"[1]"] {
            let e = check_process_json(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        }
        let huge = vec![b' '; MAX_PROCESS_JSON + 1];
        assert!(check_process_json(&huge).unwrap_err().to_string().contains("more than"));
    }

    #[tokio::test]
    async fn exec_lifecycle_and_lookup() {
        struct NoEvents;
        #[async_trait]
        impl Publish for NoEvents {
            async fn publish(&self, _topic: &str, _event: Box<dyn MessageDyn>) {}
        }
        let c = Container::new(
            "c".into(),
            "/b".into(),
            "c".into(),
            Stdio::default(),
            crate::resources::rootfs::RootfsMounts {
                bundle_rootfs: None,
                share_dir: "/nonexistent".into(),
                shared: Vec::new(),
            },
            1,
        );
        let mut req = api::ExecProcessRequest { id: "c".into(), exec_id: "e1".into(), ..Default::default() };
        req.spec = MessageField::some(containerd_shim::protos::protobuf::well_known_types::any::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: br#"{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}"#.to_vec(),
            ..Default::default()
        });
        c.set_running();
        add(&NoEvents, &c, req.clone()).await.expect("add");
        assert!(matches!(add(&NoEvents, &c, req.clone()).await, Err(Error::AlreadyExists(_))));
        let st = state(&c, "e1", 42).expect("state");
        assert_eq!(st.status.enum_value_or_default(), api::Status::CREATED);
        assert_eq!(st.pid, 0, "no pid before start");
        let agent_gone = || Err(Error::FailedPrecondition("no VM".into()));
        assert!(matches!(kill(&c, "e1", 9, false, agent_gone()).await, Err(Error::FailedPrecondition(_))));
        assert!(matches!(kill(&c, "nope", 9, false, agent_gone()).await, Err(Error::NotFound(_))));
        let e = c.execs.get("c", "e1").expect("get");
        e.process.set_running();
        assert!(matches!(delete(&NoEvents, &c, "e1", agent_gone(), 42).await, Err(Error::FailedPrecondition(_))));
        e.process.mark_exited(3);
        assert!(matches!(kill(&c, "e1", 9, false, agent_gone()).await, Err(Error::NotFound(_))));
        assert_eq!(wait(&c, "e1").await.expect("wait").exit_status, 3);
        let d = delete(&NoEvents, &c, "e1", agent_gone(), 42).await.expect("delete");
        assert_eq!((d.exit_status, d.pid), (3, 42));
        assert!(c.execs.get("c", "e1").is_err());
        req.exec_id = "e3".into();
        add(&NoEvents, &c, req.clone()).await.expect("add e3");
        let e3 = c.execs.get("c", "e3").expect("get");
        e3.process.set_running();
        c.abort_tasks();
        assert_eq!(wait(&c, "e3").await.expect("wait").exit_status, 137, "deleting the container frees exec waiters");
        c.mark_exited(0);
        req.exec_id = "e2".into();
        assert!(
            matches!(add(&NoEvents, &c, req).await, Err(Error::FailedPrecondition(_))),
            "no exec into a stopped container"
        );
    }
}
