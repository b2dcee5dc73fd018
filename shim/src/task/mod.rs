//! The containerd Task service (task API v2 over ttrpc). Create boots the sandbox VM on the
//! first container (sandbox.rs) and creates the container through the agent; Start, Kill,
//! Wait, State, Delete follow one container; events go to containerd in order:
//! /tasks/create, /tasks/start, /tasks/exit (after stdout/stderr drained), /tasks/delete.
//! The task pid containerd sees is the QEMU process's host pid. Requests naming an exec
//! process go to exec.rs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::api;
use containerd_shim::protos::events::task::{TaskCreate, TaskExit, TaskIO, TaskStart};
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Context, ExitSignal, Task, TtrpcContext, TtrpcResult};

use crate::agent::{AgentApi, NewContainer, Stream};
use crate::config::Config;
use crate::container::process::{guest_status, vm_death_status, Status};
use crate::container::{self, Container, Stdio};
use crate::error::{unimplemented, Error, Result};
use crate::resources::rootfs;
use crate::sandbox::sizing::{self, VmSize};
use crate::sandbox::Sandbox;

mod resources;
mod stats;

/// How long TaskExit waits for the container's output to reach containerd's FIFOs.
const IO_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The task service; cheap to clone.
#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
    sandboxes: Mutex<HashMap<String, Arc<Sandbox>>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Serialises Create and Delete (sandbox boot/teardown decisions).
    lifecycle: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TaskService {
    pub fn new(namespace: String, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Self {
        TaskService {
            inner: Arc::new(Inner {
                namespace,
                publisher,
                exit,
                sandboxes: Mutex::new(HashMap::new()),
                containers: Mutex::new(HashMap::new()),
                lifecycle: tokio::sync::Mutex::new(()),
            }),
        }
    }
}

#[async_trait]
impl crate::container::exec::Publish for Inner {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        Inner::publish(self, topic, event).await
    }
}

impl Inner {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self.publisher.publish(Context::default(), topic, &self.namespace, event).await {
            tracing::warn!("publishing {topic}: {e}");
        }
    }

    fn container(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found in this shim")))
    }

    fn sandbox(&self, id: &str) -> Option<Arc<Sandbox>> {
        lock(&self.sandboxes).get(id).cloned()
    }

    fn pid_of(&self, c: &Container) -> u32 {
        self.sandbox(&c.sandbox_id).map(|s| s.pid()).unwrap_or(0)
    }

    fn agent_of(&self, c: &Container) -> Result<Arc<dyn AgentApi>> {
        self.sandbox(&c.sandbox_id)
            .and_then(|s| s.agent())
            .ok_or_else(|| Error::FailedPrecondition(format!("the VM of container {} is gone", c.id)))
    }

    async fn create(self: &Arc<Self>, req: api::CreateTaskRequest) -> Result<api::CreateTaskResponse> {
        container::validate_id(&req.id)?;
        container::validate_id(&self.namespace)?;
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(Error::InvalidArgument("checkpoint/restore is not supported by the bulwark runtime".into()));
        }
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.is_absolute() || !bundle.is_dir() {
            return Err(Error::InvalidArgument(format!("bundle {:?} is not an absolute directory path", req.bundle)));
        }
        let _g = self.lifecycle.lock().await;
        if lock(&self.containers).contains_key(&req.id) {
            return Err(Error::AlreadyExists(format!("container {} already exists", req.id)));
        }
        let cfg = Config::load()?;
        let (spec, raw_spec) = container::load_spec(&bundle)?;
        let sid = container::sandbox_id_of(&spec, &req.id)?;

        let (sandbox, new_sandbox) = match self.sandbox(&sid) {
            Some(s) => (s, false),
            None => (Arc::new(Sandbox::prepare(&cfg, &self.namespace, &sid)?), true),
        };
        let undo_sandbox = |sb: Arc<Sandbox>| async move {
            if new_sandbox {
                sb.teardown().await;
            }
        };
        if new_sandbox {
            if let Err(e) = sandbox.set_pod_config(&spec) {
                undo_sandbox(sandbox).await;
                return Err(e);
            }
        }

        // The VM is sized once, by the container that boots it.
        let boot =
            new_sandbox.then(|| sizing::size_vm(&cfg.vm, spec.annotations().as_ref().unwrap_or(&Default::default())));
        let mounts = {
            let (id, b, share, rootfs) = (req.id.clone(), bundle.clone(), sandbox.share.clone(), req.rootfs.clone());
            match tokio::task::spawn_blocking(move || rootfs::mount_rootfs(&id, &b, &spec, &rootfs, &share)).await {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => {
                    undo_sandbox(sandbox).await;
                    return Err(e);
                }
                Err(e) => {
                    undo_sandbox(sandbox).await;
                    return Err(Error::Mount(format!("rootfs mount task failed: {e}")));
                }
            }
        };

        let res = self.create_in_vm(&cfg, &req, raw_spec, &sandbox, boot, &mounts.shared).await;
        let (agent, guest_pid, stdout, stderr) = match res {
            Ok(x) => x,
            Err(e) => {
                tracing::error!("creating container {}: {e}", req.id);
                // VM first (virtiofsd lets go of the rootfs), then the mounts.
                undo_sandbox(sandbox).await;
                let m = mounts.clone();
                let _ = tokio::task::spawn_blocking(move || rootfs::unmount_rootfs(&m)).await;
                return Err(e);
            }
        };
        if new_sandbox {
            lock(&self.sandboxes).insert(sid.clone(), sandbox.clone());
            self.watch_oom(&sandbox, agent.clone());
        }

        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let c = Arc::new(Container::new(req.id.clone(), req.bundle.clone(), sid, stdio, mounts, guest_pid));
        let outputs = vec![
            crate::container::stdio::spawn_output(agent.clone(), req.id.clone(), String::new(), Stream::Stdout, stdout),
            crate::container::stdio::spawn_output(agent.clone(), req.id.clone(), String::new(), Stream::Stderr, stderr),
        ];
        let mut handles: Vec<tokio::task::AbortHandle> = outputs.iter().map(|h| h.abort_handle()).collect();
        if !req.stdin.is_empty() {
            match crate::container::stdio::StdinFifo::open(&req.stdin) {
                Ok(fifo) => {
                    let fifo = Arc::new(fifo);
                    *lock(&c.stdin_fifo) = Some(fifo.clone());
                    let h = crate::container::stdio::spawn_stdin(
                        agent.clone(),
                        req.id.clone(),
                        String::new(),
                        fifo,
                        c.stdin_close.clone(),
                    );
                    handles.push(h.abort_handle());
                }
                Err(e) => tracing::warn!("container {}: {e}; stdin not connected", req.id),
            }
        }
        let watcher = tokio::spawn(watch_exit(Arc::clone(self), c.clone(), sandbox.clone(), agent, outputs));
        handles.push(watcher.abort_handle());
        lock(&c.tasks).extend(handles);
        lock(&self.containers).insert(req.id.clone(), c.clone());

        let pid = sandbox.pid();
        tracing::info!(
            "container {} created in sandbox {} (QEMU pid {pid}, guest pid {guest_pid})",
            req.id,
            sandbox.id
        );
        self.publish(
            "/tasks/create",
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(api::CreateTaskResponse { pid, ..Default::default() })
    }

    /// Boots the VM if new, opens the output FIFOs and creates the container in the guest.
    async fn create_in_vm(
        &self,
        cfg: &Config,
        req: &api::CreateTaskRequest,
        raw_spec: Vec<u8>,
        sandbox: &Arc<Sandbox>,
        boot: Option<(VmSize, String)>,
        shared_mounts: &[crate::resources::volumes::SharedMount],
    ) -> Result<(Arc<dyn AgentApi>, u32, Option<tokio::net::unix::pipe::Sender>, Option<tokio::net::unix::pipe::Sender>)>
    {
        if let Some((size, why)) = boot {
            tracing::info!("sandbox {}: {why}", sandbox.id);
            let accel = crate::sandbox::resolve_accel(cfg).await;
            sandbox.boot(accel, size, Duration::from_secs(cfg.vm.boot_timeout_secs)).await?;
        }
        let agent =
            sandbox.agent().ok_or_else(|| Error::FailedPrecondition(format!("sandbox {} has no agent", sandbox.id)))?;
        let stdout = crate::container::stdio::open_output(&req.stdout).await?;
        let stderr = crate::container::stdio::open_output(&req.stderr).await?;
        let guest_pid = agent
            .create_container(NewContainer {
                id: req.id.clone(),
                sandbox_id: sandbox.id.clone(),
                spec_json: raw_spec,
                rootfs_path: rootfs::guest_rootfs_path(&req.id),
                stdin: !req.stdin.is_empty(),
                terminal: req.terminal,
                shared_mounts: shared_mounts
                    .iter()
                    .map(|m| bulwark_protocol::agent::SharedMount {
                        mount_index: m.index,
                        share_path: m.share_path.clone(),
                        ..Default::default()
                    })
                    .collect(),
            })
            .await?;
        Ok((agent, guest_pid, stdout, stderr))
    }

    async fn start(self: &Arc<Self>, req: api::StartRequest) -> Result<api::StartResponse> {
        let c = self.container(&req.id)?;
        if !req.exec_id.is_empty() {
            let pid =
                crate::container::exec::start(self.clone(), &c, &req.exec_id, self.agent_of(&c)?, self.pid_of(&c))
                    .await?;
            return Ok(api::StartResponse { pid, ..Default::default() });
        }
        let _gate = c.start_gate.lock().await;
        if c.state().status != Status::Created {
            return Err(Error::FailedPrecondition(format!("container {} is not in the created state", req.id)));
        }
        let agent = self.agent_of(&c)?;
        agent.start_container(&req.id).await?;
        c.set_running();
        let pid = self.pid_of(&c);
        self.publish("/tasks/start", Box::new(TaskStart { container_id: req.id.clone(), pid, ..Default::default() }))
            .await;
        Ok(api::StartResponse { pid, ..Default::default() })
    }

    async fn kill(&self, req: api::KillRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        if !req.exec_id.is_empty() {
            return crate::container::exec::kill(&c, &req.exec_id, req.signal, req.all, self.agent_of(&c)).await;
        }
        if c.state().status == Status::Stopped {
            return Err(Error::NotFound(format!("process of container {} already finished", req.id)));
        }
        let agent = self.agent_of(&c)?;
        tracing::debug!("signal {} to container {} (guest pid {})", req.signal, req.id, c.state().guest_pid);
        match agent.signal_process(&req.id, "", req.signal, req.all).await {
            // StopPodSandbox must be able to end a pod whose guest no longer answers: a SIGKILL
            // for the sandbox container that cannot reach the agent kills the VM instead (every
            // container of the pod then exits with 137).
            Err(e @ Error::AgentUnreachable(_)) if req.signal == libc::SIGKILL as u32 && c.id == c.sandbox_id => {
                tracing::error!("SIGKILL for sandbox container {}: {e}; killing its VM", c.id);
                if let Some(sb) = self.sandbox(&c.sandbox_id) {
                    sb.kill_vm().await;
                }
                Ok(())
            }
            r => r,
        }
    }

    async fn delete(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse> {
        if !req.exec_id.is_empty() {
            let c = self.container(&req.id)?;
            return crate::container::exec::delete(self, &c, &req.exec_id, self.agent_of(&c), self.pid_of(&c)).await;
        }
        let _g = self.lifecycle.lock().await;
        let c = self.container(&req.id)?;
        if matches!(c.state().status, Status::Running | Status::Paused) {
            return Err(Error::FailedPrecondition(format!("container {} is still running: kill it first", req.id)));
        }
        let pid = self.pid_of(&c);
        if let Ok(agent) = self.agent_of(&c) {
            if let Err(e) = agent.remove_container(&req.id).await {
                tracing::warn!("removing container {} in the guest: {e}", req.id);
            }
        }
        // A container deleted before it ran counts as killed.
        c.mark_exited(137);
        c.abort_tasks();
        lock(&self.containers).remove(&req.id);
        let last = !lock(&self.containers).values().any(|o| o.sandbox_id == c.sandbox_id);
        if last {
            let sb = lock(&self.sandboxes).remove(&c.sandbox_id);
            if let Some(sb) = sb {
                sb.teardown().await;
            }
        }
        let m = c.mounts.clone();
        let _ = tokio::task::spawn_blocking(move || rootfs::unmount_rootfs(&m)).await;

        let exit = c.state().exit;
        let (status, at) = match exit {
            Some(e) => (e.status, MessageField::some(e.at)),
            None => (137, MessageField::some(crate::container::process::now())),
        };
        self.publish(
            "/tasks/delete",
            crate::container::process::delete_event(&req.id, &req.id, pid, status, at.clone()),
        )
        .await;
        tracing::info!("container {} deleted (exit status {status})", req.id);
        Ok(api::DeleteResponse { pid, exit_status: status, exited_at: at, ..Default::default() })
    }

    fn state(&self, req: api::StateRequest) -> Result<api::StateResponse> {
        let c = self.container(&req.id)?;
        if !req.exec_id.is_empty() {
            return crate::container::exec::state(&c, &req.exec_id, self.pid_of(&c));
        }
        let st = c.state();
        let status = st.status.to_api();
        let mut r = api::StateResponse {
            id: c.id.clone(),
            bundle: c.bundle.clone(),
            pid: self.pid_of(&c),
            status: status.into(),
            stdin: c.stdio.stdin.clone(),
            stdout: c.stdio.stdout.clone(),
            stderr: c.stdio.stderr.clone(),
            terminal: c.stdio.terminal,
            ..Default::default()
        };
        if let Some(e) = st.exit {
            r.exit_status = e.status;
            r.exited_at = MessageField::some(e.at);
        }
        Ok(r)
    }
}

/// Waits for the container's process to exit (or its VM to die), lets its output drain,
/// records the exit and publishes TaskExit.
async fn watch_exit(
    inner: Arc<Inner>,
    c: Arc<Container>,
    sandbox: Arc<Sandbox>,
    agent: Arc<dyn AgentApi>,
    outputs: Vec<tokio::task::JoinHandle<()>>,
) {
    let status = match agent.wait_process(&c.id, "").await {
        Ok(code) => guest_status(code),
        Err(e) => {
            let vm = match sandbox.vm_exit() {
                Some(rx) => tokio::time::timeout(Duration::from_secs(2), crate::host::child::wait_exit(rx)).await.ok(),
                None => None,
            };
            let status = vm.map(vm_death_status).unwrap_or(255);
            tracing::error!("container {}: {e}; reporting exit status {status}", c.id);
            status
        }
    };
    let drain = async {
        for h in outputs {
            let _ = h.await;
        }
    };
    if tokio::time::timeout(IO_DRAIN_TIMEOUT, drain).await.is_err() {
        tracing::warn!("container {}: output not drained within {IO_DRAIN_TIMEOUT:?}", c.id);
    }
    inner.publish_oom_before_exit(&c, agent.as_ref()).await;
    crate::container::exec::wait_execs_stopped(&c, IO_DRAIN_TIMEOUT).await;
    let _gate = c.start_gate.lock().await;
    if let Some(exit) = c.mark_exited(status) {
        tracing::info!("container {} exited with status {status}", c.id);
        inner
            .publish(
                "/tasks/exit",
                Box::new(TaskExit {
                    container_id: c.id.clone(),
                    id: c.id.clone(),
                    pid: sandbox.pid(),
                    exit_status: exit.status,
                    exited_at: MessageField::some(exit.at),
                    ..Default::default()
                }),
            )
            .await;
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(&self, _ctx: &TtrpcContext, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        tracing::info!("Create {} (bundle {})", req.id, req.bundle);
        Ok(self.inner.create(req).await?)
    }

    async fn start(&self, _ctx: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        tracing::info!("Start {}", req.id);
        Ok(self.inner.start(req).await?)
    }

    async fn state(&self, _ctx: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        Ok(self.inner.state(req)?)
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let c = self.inner.container(&req.id)?;
        if !req.exec_id.is_empty() {
            return Ok(crate::container::exec::wait(&c, &req.exec_id).await?);
        }
        let exit = c.wait().await;
        Ok(api::WaitResponse { exit_status: exit.status, exited_at: MessageField::some(exit.at), ..Default::default() })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        tracing::info!("Kill {} signal {} all {}", req.id, req.signal, req.all);
        self.inner.kill(req).await?;
        Ok(api::Empty::default())
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        tracing::info!("Delete {}", req.id);
        Ok(self.inner.delete(req).await?)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        Ok(self.inner.pids(req).await?)
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        tracing::info!("CloseIO {} {} stdin {}", req.id, req.exec_id, req.stdin);
        let c = self.inner.container(&req.id)?;
        if req.stdin {
            crate::container::exec::close_io(&c, &req.exec_id, self.inner.agent_of(&c)).await?;
        }
        Ok(api::Empty::default())
    }

    async fn connect(&self, _ctx: &TtrpcContext, req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.inner.container(&req.id).map(|c| self.inner.pid_of(&c)).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: format!("bulwark {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if !lock(&self.inner.containers).is_empty() {
            tracing::info!("Shutdown: containers remain, staying up");
            return Ok(api::Empty::default());
        }
        let sandboxes: Vec<_> = lock(&self.inner.sandboxes).drain().map(|(_, s)| s).collect();
        for s in sandboxes {
            s.teardown().await;
        }
        tracing::info!("Shutdown: no containers left, exiting");
        self.inner.exit.signal();
        Ok(api::Empty::default())
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        tracing::info!("Pause {}", req.id);
        self.inner.pause_resume(&req.id, true).await?;
        Ok(api::Empty::default())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        tracing::info!("Resume {}", req.id);
        self.inner.pause_resume(&req.id, false).await?;
        Ok(api::Empty::default())
    }

    async fn checkpoint(&self, _ctx: &TtrpcContext, _req: api::CheckpointTaskRequest) -> TtrpcResult<api::Empty> {
        Err(unimplemented("Checkpoint"))
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        tracing::info!("Exec {} {} (terminal {})", req.id, req.exec_id, req.terminal);
        let c = self.inner.container(&req.id)?;
        crate::container::exec::add(&*self.inner, &c, req).await?;
        Ok(api::Empty::default())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<api::Empty> {
        tracing::debug!("ResizePty {} {} {}x{}", req.id, req.exec_id, req.width, req.height);
        let c = self.inner.container(&req.id)?;
        crate::container::exec::resize_pty(&c, &req.exec_id, req.width, req.height, self.inner.agent_of(&c)).await?;
        Ok(api::Empty::default())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        tracing::info!("Update {}", req.id);
        self.inner.update(req).await?;
        Ok(api::Empty::default())
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        Ok(self.inner.stats(req).await?)
    }
}
