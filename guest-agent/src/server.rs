//! The `Agent` ttrpc service: maps each RPC onto container.rs / exec.rs / process.rs /
//! reaper.rs. Processes are found by (container id, exec id): the init process under an empty
//! exec id, execs in their own table. Blocking libcontainer calls run on the blocking pool,
//! under the reaper lock.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use protocol::agent::*;
use protocol::agent_ttrpc::Agent;
use ttrpc::r#async::TtrpcContext;
use ttrpc::Code;

use crate::cgroups::{CgroupError, Cgroups};
use crate::container::{self, ContainerError};
use crate::exec::ExecError;
use crate::pod;
use crate::process::{Process as Entry, StdioSetup};
use crate::reaper::Reaper;
use crate::share::Share;

/// How long RemoveContainer waits for a SIGKILLed container to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(10);

fn status(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn container_err(e: ContainerError) -> ttrpc::Error {
    let code = match &e {
        ContainerError::InvalidId(_) | ContainerError::InvalidRootfsPath(_) | ContainerError::Spec(_) => {
            Code::INVALID_ARGUMENT
        }
        ContainerError::Rootfs { .. } => Code::FAILED_PRECONDITION,
        _ => Code::INTERNAL,
    };
    tracing::error!("{e}");
    status(code, e.to_string())
}

fn cgroup_err(e: CgroupError) -> ttrpc::Error {
    let code = match &e {
        CgroupError::NotFound(_) => Code::NOT_FOUND,
        CgroupError::InvalidResources(_) => Code::INVALID_ARGUMENT,
        CgroupError::Libcontainer { .. } => Code::FAILED_PRECONDITION,
        _ => Code::INTERNAL,
    };
    tracing::error!("{e}");
    status(code, e.to_string())
}

fn network_err(e: crate::network::NetworkError) -> ttrpc::Error {
    use crate::network::NetworkError as N;
    let code = match &e {
        N::Invalid(_) => Code::INVALID_ARGUMENT,
        N::AlreadyDone => Code::FAILED_PRECONDITION,
        N::NoSuchNic(_) => Code::NOT_FOUND,
        _ => Code::INTERNAL,
    };
    tracing::error!("{e}");
    status(code, e.to_string())
}

fn join_err(e: tokio::task::JoinError) -> ttrpc::Error {
    tracing::error!("blocking task failed: {e}");
    status(Code::INTERNAL, format!("internal task failed: {e}"))
}

fn exec_err(e: ExecError) -> ttrpc::Error {
    if let ExecError::Container(c) = e {
        return container_err(c);
    }
    let code = match &e {
        ExecError::InvalidProcess(_) | ExecError::NotifySeccomp(_) => Code::INVALID_ARGUMENT,
        ExecError::NotRunning(_) => Code::FAILED_PRECONDITION,
        _ => Code::INTERNAL,
    };
    tracing::error!("{e}");
    status(code, e.to_string())
}

pub struct AgentService {
    reaper: Arc<Reaper>,
    share: Share,
    no_pivot: bool,
    containers: tokio::sync::Mutex<HashMap<String, Arc<Entry>>>,
    cgroups: Arc<Cgroups>,
    /// Exec processes by (container id, exec id).
    execs: tokio::sync::Mutex<HashMap<(String, String), Arc<Entry>>>,
}

impl AgentService {
    pub fn new(reaper: Arc<Reaper>, share: Share, no_pivot: bool) -> Self {
        Self {
            reaper,
            share,
            no_pivot,
            containers: Default::default(),
            cgroups: Cgroups::new(),
            execs: Default::default(),
        }
    }

    async fn entry(&self, id: &str, exec_id: &str) -> ttrpc::Result<Arc<Entry>> {
        if !exec_id.is_empty() {
            return self
                .execs
                .lock()
                .await
                .get(&(id.to_string(), exec_id.to_string()))
                .cloned()
                .ok_or_else(|| status(Code::NOT_FOUND, format!("exec {exec_id:?} of container {id:?} not found")));
        }
        self.containers
            .lock()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| status(Code::NOT_FOUND, format!("container {id:?} not found")))
    }

    /// Drops every exec of container `id` (their processes died with the container).
    async fn forget_execs_of(&self, id: &str) {
        let gone: Vec<Arc<Entry>> = {
            let mut execs = self.execs.lock().await;
            let keys: Vec<_> = execs.keys().filter(|(c, _)| c == id).cloned().collect();
            keys.iter().filter_map(|k| execs.remove(k)).collect()
        };
        for e in gone {
            e.close().await;
        }
    }

    async fn read(&self, req: ReadStreamRequest, stderr: bool) -> ttrpc::Result<ReadStreamResponse> {
        let e = self.entry(&req.container_id, &req.exec_id).await?;
        let max = match req.max_len {
            0 => protocol::MAX_READ_CHUNK,
            n => n.min(protocol::MAX_READ_CHUNK),
        } as usize;
        let stream = if stderr { &e.stderr } else { &e.stdout };
        let data = stream.read(max).await;
        Ok(ReadStreamResponse { data, ..Default::default() })
    }

    /// Rewrites the spec for the guest and the pod (pod.rs) and sets up what the pod shares.
    async fn pod_spec(
        &self,
        req: &CreateContainerRequest,
        share: &Path,
        rootfs: &Path,
    ) -> ttrpc::Result<serde_json::Value> {
        let id = &req.container_id;
        let sandbox_id = if req.sandbox_id.is_empty() { id.as_str() } else { req.sandbox_id.as_str() };
        container::validate_id(sandbox_id).map_err(container_err)?;
        let sandbox_pid = if sandbox_id == id {
            None
        } else {
            self.containers.lock().await.get(sandbox_id).filter(|e| !e.has_exited()).map(|e| e.pid)
        };
        let shm_dir = pod::ensure_shm(sandbox_id).map_err(container_err)?;
        let shared: Vec<(u32, String)> =
            req.shared_mounts.iter().map(|m| (m.mount_index, m.share_path.clone())).collect();
        let view = pod::PodView {
            container_id: id,
            sandbox_id,
            sandbox_pid,
            share,
            shared_mounts: &shared,
            shm_dir: &shm_dir,
        };
        let guest = container::rewrite_spec(id, &req.oci_spec_json, rootfs, &view, &|p: &Path| p.exists())
            .map_err(container_err)?;
        for n in guest.notes {
            tracing::info!(container = %id, "spec: {n}");
        }
        pod::apply_sysctls(&guest.vm_sysctls).map_err(container_err)?;
        Ok(guest.spec)
    }

    async fn do_create(&self, req: &CreateContainerRequest) -> ttrpc::Result<u32> {
        let id = req.container_id.clone();
        container::validate_id(&id).map_err(container_err)?;
        if self.containers.lock().await.contains_key(&id) {
            return Err(status(Code::ALREADY_EXISTS, format!("container {id:?} already exists")));
        }
        let share = self.share.ensure_mounted().await.map_err(|e| {
            tracing::error!("{e}");
            status(Code::FAILED_PRECONDITION, e.to_string())
        })?;
        let rootfs = container::resolve_rootfs(share, &req.rootfs_path).map_err(container_err)?;
        let spec = self.pod_spec(req, share, &rootfs).await?;
        // libcontainer wants a console socket exactly when the spec asks for a terminal.
        let terminal = spec.pointer("/process/terminal").and_then(serde_json::Value::as_bool).unwrap_or(false);
        if terminal != req.terminal {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!("terminal={} in the request but process.terminal={terminal} in the spec", req.terminal),
            ));
        }
        let bundle = container::write_bundle(&id, &spec).map_err(container_err)?;
        let (setup, child_stdio) =
            StdioSetup::new(terminal, req.stdin).map_err(|e| status(Code::INTERNAL, e.to_string()))?;

        let reaper = self.reaper.clone();
        let no_pivot = self.no_pivot;
        let (cid, cbundle) = (id.clone(), bundle.clone());
        let created = tokio::task::spawn_blocking(move || {
            let guard = reaper.lock();
            let pid = container::create(&cid, &cbundle, child_stdio, no_pivot)?;
            let exit = reaper.watch(&guard, pid);
            drop(guard);
            let io = setup.receive().map_err(|e| ContainerError::Spec(format!("container terminal: {e}")))?;
            Ok::<_, ContainerError>((pid, exit, io))
        })
        .await
        .map_err(join_err)?;
        let (pid, exit, io) = match created {
            Ok(v) => v,
            Err(e) => {
                let reaper = self.reaper.clone();
                let cid = id.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let _g = reaper.lock();
                    if let Err(e) = container::delete(&cid) {
                        tracing::warn!("cleaning up after the failed create: {e}");
                    }
                })
                .await;
                container::remove_bundle(&id);
                return Err(container_err(e));
            }
        };

        let entry = Arc::new(io.into_process(&id, pid, exit, req.stdin));
        self.containers.lock().await.insert(id.clone(), entry);
        self.cgroups.track(&id);
        tracing::info!(container = %id, pid, "container created");
        Ok(pid as u32)
    }
}

#[async_trait]
impl Agent for AgentService {
    async fn check(&self, _ctx: &TtrpcContext, req: CheckRequest) -> ttrpc::Result<CheckResponse> {
        if req.shim_protocol_version != protocol::PROTOCOL_VERSION {
            tracing::warn!("shim speaks protocol {}, agent {}", req.shim_protocol_version, protocol::PROTOCOL_VERSION);
        }
        let kernel_release =
            nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
        Ok(CheckResponse {
            agent_protocol_version: protocol::PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_release,
            ..Default::default()
        })
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        let pid = self.do_create(&req).await?;
        Ok(CreateContainerResponse { pid, ..Default::default() })
    }

    async fn start_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        let id = req.container_id;
        self.entry(&id, "").await?;
        let reaper = self.reaper.clone();
        let cid = id.clone();
        tokio::task::spawn_blocking(move || {
            let _g = reaper.lock();
            container::start(&cid)
        })
        .await
        .map_err(join_err)?
        .map_err(container_err)?;
        tracing::info!(container = %id, "container started");
        Ok(Empty::default())
    }

    async fn wait_process(&self, _ctx: &TtrpcContext, req: ProcessRequest) -> ttrpc::Result<WaitProcessResponse> {
        let e = self.entry(&req.container_id, &req.exec_id).await?;
        let mut exit = e.exit.clone();
        let code = exit
            .wait_for(|s| s.is_some())
            .await
            .map(|s| s.unwrap_or(-1))
            .map_err(|_| status(Code::INTERNAL, "exit status channel closed"))?;
        self.cgroups.check_oom(&req.container_id);
        Ok(WaitProcessResponse { exit_status: code, ..Default::default() })
    }

    async fn signal_process(&self, _ctx: &TtrpcContext, req: SignalProcessRequest) -> ttrpc::Result<Empty> {
        let e = self.entry(&req.container_id, &req.exec_id).await?;
        let signo = i32::try_from(req.signal).map_err(|_| status(Code::INVALID_ARGUMENT, "signal out of range"))?;
        if signo != 0 {
            Signal::try_from(signo).map_err(|_| status(Code::INVALID_ARGUMENT, format!("invalid signal {signo}")))?;
        }
        let reaper = self.reaper.clone();
        let id = req.container_id.clone();
        let all = req.all;
        let res = tokio::task::spawn_blocking(move || -> ttrpc::Result<()> {
            // Under the reaper lock the pid cannot be reaped (and reused) while we signal it.
            let _g = reaper.lock();
            if all {
                return container::kill_all(&id, signo).map_err(container_err);
            }
            if e.exit.borrow().is_some() {
                return Err(status(Code::NOT_FOUND, format!("process of container {id:?} has already exited")));
            }
            // SAFETY: plain kill(2) on a pid we own (our child, not yet reaped).
            let r = unsafe { libc::kill(e.pid, signo) };
            if r != 0 {
                let err = std::io::Error::last_os_error();
                return Err(status(Code::INTERNAL, format!("kill({}, {signo}): {err}", e.pid)));
            }
            Ok(())
        })
        .await
        .map_err(join_err)?;
        if res.is_ok() {
            tracing::info!(container = %req.container_id, exec = %req.exec_id, signal = signo, all, "signalled");
        }
        res.map(|_| Empty::default())
    }

    async fn remove_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        let id = req.container_id;
        let e = self.entry(&id, "").await?;
        if e.exit.borrow().is_none() {
            let reaper = self.reaper.clone();
            let (cid, pid) = (id.clone(), e.pid);
            let _ = tokio::task::spawn_blocking(move || {
                let _g = reaper.lock();
                if let Err(err) = container::kill_all(&cid, libc::SIGKILL) {
                    tracing::warn!("{err}; killing the init process only");
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            })
            .await;
            let mut exit = e.exit.clone();
            if tokio::time::timeout(KILL_WAIT, exit.wait_for(|s| s.is_some())).await.is_err() {
                tracing::warn!(container = %id, "init process still not reaped {KILL_WAIT:?} after SIGKILL");
            }
        }
        self.cgroups.untrack(&id);
        let reaper = self.reaper.clone();
        let cid = id.clone();
        let deleted = tokio::task::spawn_blocking(move || {
            let _g = reaper.lock();
            container::delete(&cid)
        })
        .await
        .map_err(join_err)?;
        // Forget the container even if libcontainer failed, so the id can be reused; report it.
        e.close().await;
        self.forget_execs_of(&id).await;
        self.containers.lock().await.remove(&id);
        container::remove_bundle(&id);
        // The pod's guest state goes with its sandbox container (the last one CRI removes).
        pod::release(&id);
        deleted.map_err(container_err)?;
        tracing::info!(container = %id, "container removed");
        Ok(Empty::default())
    }

    async fn read_stdout(&self, _ctx: &TtrpcContext, req: ReadStreamRequest) -> ttrpc::Result<ReadStreamResponse> {
        self.read(req, false).await
    }

    async fn read_stderr(&self, _ctx: &TtrpcContext, req: ReadStreamRequest) -> ttrpc::Result<ReadStreamResponse> {
        self.read(req, true).await
    }

    async fn write_stdin(&self, _ctx: &TtrpcContext, req: WriteStreamRequest) -> ttrpc::Result<WriteStreamResponse> {
        let e = self.entry(&req.container_id, &req.exec_id).await?;
        let len = e.stdin.write(&req.data).await.map_err(|err| status(Code::FAILED_PRECONDITION, err.to_string()))?;
        Ok(WriteStreamResponse { len: len as u32, ..Default::default() })
    }

    async fn setup_sandbox(&self, _ctx: &TtrpcContext, req: SetupSandboxRequest) -> ttrpc::Result<Empty> {
        let plan = crate::network::plan(&req).map_err(network_err)?;
        tokio::task::spawn_blocking(move || crate::network::apply(&plan))
            .await
            .map_err(join_err)?
            .map_err(network_err)?;
        Ok(Empty::default())
    }

    async fn close_stdin(&self, _ctx: &TtrpcContext, req: ProcessRequest) -> ttrpc::Result<Empty> {
        let e = self.entry(&req.container_id, &req.exec_id).await?;
        e.stdin.close().await;
        Ok(Empty::default())
    }

    async fn stats_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<StatsResponse> {
        let cgroup_files = self.cgroups.stats(&req.container_id).map_err(cgroup_err)?;
        Ok(StatsResponse { cgroup_files, ..Default::default() })
    }

    async fn update_container(&self, _ctx: &TtrpcContext, req: UpdateContainerRequest) -> ttrpc::Result<Empty> {
        self.cgroups.update(&req.container_id, &req.resources_json).await.map_err(cgroup_err).map(|_| Empty::default())
    }

    async fn pause_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        self.cgroups.freeze(&self.reaper, &req.container_id, true).await.map_err(cgroup_err).map(|_| Empty::default())
    }

    async fn resume_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        self.cgroups.freeze(&self.reaper, &req.container_id, false).await.map_err(cgroup_err).map(|_| Empty::default())
    }

    async fn list_processes(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<ListProcessesResponse> {
        let pids = self.cgroups.processes(&req.container_id).map_err(cgroup_err)?;
        Ok(ListProcessesResponse { pids, ..Default::default() })
    }

    async fn wait_oom_event(&self, _ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<OomEvent> {
        Ok(OomEvent { container_id: self.cgroups.next_oom().await, ..Default::default() })
    }

    async fn exec_process(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<ExecProcessResponse> {
        let (id, exec_id) = (req.container_id.clone(), req.exec_id.clone());
        let init = self.entry(&id, "").await?;
        if self.execs.lock().await.contains_key(&(id.clone(), exec_id.clone())) {
            return Err(status(Code::ALREADY_EXISTS, format!("exec {exec_id:?} of container {id:?} already exists")));
        }
        let process =
            crate::exec::start(self.reaper.clone(), &init, &id, &exec_id, &req.process_json, req.stdin, req.terminal)
                .await
                .map_err(exec_err)?;
        let pid = process.pid;
        let entry = Arc::new(process);
        let previous = self.execs.lock().await.insert((id.clone(), exec_id.clone()), entry);
        if let Some(p) = previous {
            // A concurrent ExecProcess with the same ids won the race; both run, keep the last.
            p.close().await;
        }
        tracing::info!(container = %id, exec = %exec_id, pid, terminal = req.terminal, "exec started");
        Ok(ExecProcessResponse { pid: pid as u32, ..Default::default() })
    }

    async fn remove_process(&self, _ctx: &TtrpcContext, req: ProcessRequest) -> ttrpc::Result<Empty> {
        if req.exec_id.is_empty() {
            return Err(status(
                Code::INVALID_ARGUMENT,
                "RemoveProcess takes an exec id; use RemoveContainer for the init process",
            ));
        }
        let e = self.entry(&req.container_id, &req.exec_id).await?;
        if !e.has_exited() {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("exec {:?} of container {:?} is still running: signal it first", req.exec_id, req.container_id),
            ));
        }
        e.close().await;
        self.execs.lock().await.remove(&(req.container_id.clone(), req.exec_id.clone()));
        tracing::info!(container = %req.container_id, exec = %req.exec_id, "exec removed");
        Ok(Empty::default())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        let e = self.entry(&req.container_id, &req.exec_id).await?;
        match &e.pty {
            Some(master) => crate::pty::set_window_size(master, req.width, req.height)
                .map_err(|err| status(Code::INTERNAL, err.to_string()))?,
            None => {
                tracing::debug!(container = %req.container_id, exec = %req.exec_id, "ResizePty without a terminal: ignored")
            }
        }
        Ok(Empty::default())
    }
}
