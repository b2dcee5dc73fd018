//! The verbs on one process of a container, the same for the init process and an exec, with
//! runc-shim's semantics; where the two differ, the branch is on [`Kind`] and says why:
//! - Start: the init process exists in the guest since Create (StartContainer starts it); an
//!   exec is created in the guest only now (ExecProcess), and only in a running container.
//!   Events: /tasks/start, or /tasks/exec-started.
//! - Kill: of an exited process NOT_FOUND; of an exec not started FAILED_PRECONDITION; a SIGKILL
//!   for a sandbox container's init process whose agent cannot be reached kills the VM. The
//!   host owns the lifecycle: a SIGKILL not carried out by the guest within the grace period
//!   kills the VM (sandbox container) or is reported by the host as exit 137 (others).
//! - Delete: refused while the process runs; the init process is forgotten in the guest with
//!   its container (and counts as killed, 137, if it never exited), an exec by itself.
//! - the exit watcher: waits for the guest's exit (init: a dead VM means 137 if it was
//!   SIGKILLed, else 255; exec: 255), lets the output drain, then (init only) publishes OOM
//!   kills not yet published and waits for the execs to stop, then records the exit and sends
//!   /tasks/exit (`id` = the container id, or the exec id).
//! - State (an exec not started has pid 0), Wait, CloseIO, ResizePty.
//!
//! Pids: containerd gets the same host pid for every process, the QEMU process of the sandbox.
//! Guest pids mean nothing on the host (another process may own that number), and whatever a
//! host tool does to "the process" (signal it, read its cgroup, account it) lands on the VM
//! that runs it; the guest pid is kept for logs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::api;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use tokio::net::unix::pipe;

use crate::agent::Stream;
use crate::container::process::{guest_status, now, vm_death_status, Exit, Kind, Process, Status};
use crate::container::stdio::{self, StdinFifo};
use crate::container::Container;
use crate::error::{Error, Result};

/// How long an exit event waits for the process's output to reach containerd's FIFOs.
const IO_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the init process's exit waits for the VM's exit status when the agent is gone.
const VM_EXIT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the exit path waits for the cgroup's OOM count.
const OOM_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes of memory.events looked at by the OOM check (the reply is untrusted), as Stats does.
pub(crate) const MAX_MEMORY_EVENTS: usize = bulwark_protocol::MAX_CGROUP_FILE;

/// What Delete reports of a process.
#[derive(Debug, Clone)]
pub struct Deleted {
    pub pid: u32,
    pub status: u32,
    pub at: MessageField<Timestamp>,
}

impl Container {
    /// How logs and errors name a process.
    fn name(&self, p: &Process) -> String {
        match p.kind {
            Kind::Init => format!("container {}", self.id),
            Kind::Exec { .. } => format!("exec {} of container {}", p.exec_id, self.id),
        }
    }

    /// The id containerd names a process by in events and State.
    fn event_id<'a>(&'a self, p: &'a Process) -> &'a str {
        if p.is_init() {
            &self.id
        } else {
            &p.exec_id
        }
    }

    /// The init process exists in the guest: sends /tasks/create, then connects its stdio and
    /// starts its exit watcher (so its exit, whatever happens, comes after the create event).
    pub fn init_created(
        self: &Arc<Self>,
        rootfs: &[containerd_shim::protos::types::mount::Mount],
        stdout: Option<pipe::Sender>,
        stderr: Option<pipe::Sender>,
    ) {
        self.events.created(&self.id, &self.bundle, rootfs, &self.init.stdio, self.pid());
        self.attach(&self.init, stdout, stderr);
    }

    /// Connects a process's stdio (output FIFOs opened by the caller) and starts its exit
    /// watcher; the tasks are the process's, aborted on Delete.
    fn attach(self: &Arc<Self>, p: &Arc<Process>, stdout: Option<pipe::Sender>, stderr: Option<pipe::Sender>) {
        let outputs = vec![
            stdio::spawn_output(self.agent.clone(), self.id.clone(), p.exec_id.clone(), Stream::Stdout, stdout),
            stdio::spawn_output(self.agent.clone(), self.id.clone(), p.exec_id.clone(), Stream::Stderr, stderr),
        ];
        let mut handles: Vec<tokio::task::AbortHandle> = outputs.iter().map(|h| h.abort_handle()).collect();
        if !p.stdio.stdin.is_empty() {
            match StdinFifo::open(&p.stdio.stdin) {
                Ok(fifo) => {
                    let fifo = Arc::new(fifo);
                    let f = fifo.clone();
                    p.set_stdin_unblock(move || f.unblock());
                    let h = stdio::spawn_stdin(
                        self.agent.clone(),
                        self.id.clone(),
                        p.exec_id.clone(),
                        fifo,
                        p.stdin_close.clone(),
                    );
                    handles.push(h.abort_handle());
                }
                Err(e) => tracing::warn!("{}: {e}; stdin not connected", self.name(p)),
            }
        }
        let watcher = tokio::spawn(watch_exit(self.clone(), p.clone(), outputs));
        handles.push(watcher.abort_handle());
        p.add_tasks(handles);
    }

    /// Start: returns the task pid containerd sees.
    pub async fn start(self: &Arc<Self>, p: &Arc<Process>) -> Result<u32> {
        let _gate = p.start_gate.lock().await;
        if p.state().status != Status::Created {
            return Err(Error::FailedPrecondition(format!("{} is not in the created state", self.name(p))));
        }
        let pid = self.pid();
        match &p.kind {
            Kind::Init => {
                self.agent.start_container(&self.id).await?;
                p.set_running();
                tracing::info!("container {} started", self.id);
                self.events.started(&self.id, pid);
            }
            Kind::Exec { process_json } => {
                if self.init.state().status != Status::Running {
                    return Err(Error::FailedPrecondition(format!(
                        "container {} is not running: cannot start an exec in it",
                        self.id
                    )));
                }
                let stdout = stdio::open_output(&p.stdio.stdout).await?;
                let stderr = stdio::open_output(&p.stdio.stderr).await?;
                let guest_pid = self
                    .agent
                    .exec_process(
                        &self.id,
                        &p.exec_id,
                        process_json.clone(),
                        !p.stdio.stdin.is_empty(),
                        p.stdio.terminal,
                    )
                    .await?;
                p.set_guest_pid(guest_pid);
                self.attach(p, stdout, stderr);
                p.set_running();
                tracing::info!("{} started (guest pid {guest_pid})", self.name(p));
                self.events.exec_started(&self.id, &p.exec_id, pid);
            }
        }
        Ok(pid)
    }

    /// Kill: sends `signal` to the process (`all`: every process of the container). The host
    /// owns the lifecycle: a SIGKILL is carried out whatever the guest answers. If the
    /// process has not exited `kill_grace` later (a guest that lies, stalls or cannot be
    /// reached), a sandbox container's VM is killed (every container of the pod then exits),
    /// and any other process is reported killed (137) by the host.
    pub async fn kill(self: &Arc<Self>, p: &Arc<Process>, signal: u32, all: bool) -> Result<()> {
        let st = p.state();
        match (st.status, &p.kind) {
            (Status::Stopped, _) => return Err(Error::NotFound(format!("{} already finished", self.name(p)))),
            (Status::Created, Kind::Exec { .. }) => {
                return Err(Error::FailedPrecondition(format!("{} was not started", self.name(p))))
            }
            _ => {}
        }
        tracing::debug!("signal {signal} to {} (guest pid {})", self.name(p), st.guest_pid);
        let sigkill = signal == libc::SIGKILL as u32;
        let sandbox_init = p.is_init() && self.id == self.sandbox_id;
        match self.agent.signal_process(&self.id, &p.exec_id, signal, all).await {
            // StopPodSandbox must be able to end a pod whose guest no longer answers: a SIGKILL
            // for the sandbox container that cannot reach the agent kills the VM at once (every
            // container of the pod then exits with 137).
            Err(e @ Error::AgentUnreachable(_)) if sigkill && sandbox_init => {
                tracing::error!("SIGKILL for sandbox container {}: {e}; killing its VM", self.id);
                self.vm.kill().await;
                Ok(())
            }
            Err(e @ (Error::AgentUnreachable(_) | Error::Agent(_))) if sigkill => {
                tracing::error!("SIGKILL for {}: {e}; the host ends it after {:?}", self.name(p), self.kill_grace);
                self.enforce_kill(p.clone());
                Ok(())
            }
            Ok(()) if sigkill => {
                self.enforce_kill(p.clone());
                Ok(())
            }
            r => r,
        }
    }

    /// After a SIGKILL: if the process is still there `kill_grace` later, the host ends it
    /// (see [`Container::kill`]).
    fn enforce_kill(self: &Arc<Self>, p: Arc<Process>) {
        let c = self.clone();
        let grace = self.kill_grace;
        let keep = p.clone();
        let task = tokio::spawn(async move {
            if tokio::time::timeout(grace, p.wait()).await.is_ok() || p.exit_seen() {
                return;
            }
            if p.is_init() && c.id == c.sandbox_id {
                tracing::error!("sandbox container {}: SIGKILL not carried out within {grace:?}; killing its VM", c.id);
                c.vm.kill().await;
                return;
            }
            tracing::error!("{}: SIGKILL not carried out within {grace:?}; reporting it killed (137)", c.name(&p));
            if p.is_init() {
                // Its execs die with it (its PID namespace), and their exits come first.
                let execs: Vec<Arc<Process>> = c.execs().values().cloned().collect();
                for e in execs {
                    c.host_exit(&e, 137).await;
                }
            }
            c.host_exit(&p, 137).await;
        });
        keep.add_tasks([task.abort_handle()]);
    }

    /// Records an exit the host decided (the guest never reported one) and sends /tasks/exit.
    async fn host_exit(&self, p: &Process, status: u32) {
        let _gate = p.start_gate.lock().await;
        let pid = self.pid();
        p.finish(status, |exit| self.events.exited(&self.id, self.event_id(p), pid, exit.status, exit.at.clone()));
    }

    /// Delete of a process, refused while it runs. The init process: the container is removed
    /// in the guest, its exit recorded (137 if it never exited: a container deleted before it
    /// ran counts as killed) and every task of the container stopped. An exec: forgotten here
    /// and in the guest. The caller sends /tasks/delete ([`Container::report_deleted`]) once
    /// everything else that goes with the delete is done.
    pub async fn delete(&self, p: &Process) -> Result<Deleted> {
        let st = p.state();
        if matches!(st.status, Status::Running | Status::Paused) {
            return Err(Error::FailedPrecondition(format!("{} is still running: kill it first", self.name(p))));
        }
        let pid = self.pid();
        let exit = match p.kind {
            Kind::Init => {
                if let Err(e) = self.agent.remove_container(&self.id).await {
                    tracing::warn!("removing container {} in the guest: {e}", self.id);
                }
                p.mark_exited(137);
                self.abort_tasks();
                p.state().exit
            }
            Kind::Exec { .. } => {
                if st.status == Status::Stopped {
                    if let Err(e) = self.agent.remove_process(&self.id, &p.exec_id).await {
                        tracing::warn!("removing {} in the guest: {e}", self.name(p));
                    }
                }
                p.abort_tasks();
                self.execs().remove(&p.exec_id);
                st.exit
            }
        };
        let (status, at) = match exit {
            Some(x) => (x.status, MessageField::some(x.at)),
            None if p.is_init() => (137, MessageField::some(now())),
            None => (0, MessageField::none()),
        };
        Ok(Deleted { pid, status, at })
    }

    /// Sends /tasks/delete for a process [`Container::delete`] deleted.
    pub fn report_deleted(&self, p: &Process, d: &Deleted) {
        tracing::info!("{} deleted (exit status {})", self.name(p), d.status);
        self.events.deleted(&self.id, self.event_id(p), d.pid, d.status, d.at.clone());
    }

    /// State of a process.
    pub fn state(&self, p: &Process) -> api::StateResponse {
        let st = p.state();
        // runc-shim: an exec not started has no pid yet.
        let pid = if !p.is_init() && st.status == Status::Created { 0 } else { self.pid() };
        let mut r = api::StateResponse {
            id: self.event_id(p).to_string(),
            bundle: self.bundle.clone(),
            pid,
            status: st.status.to_api().into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exec_id: p.exec_id.clone(),
            ..Default::default()
        };
        if let Some(e) = st.exit {
            r.exit_status = e.status;
            r.exited_at = MessageField::some(e.at);
        }
        r
    }

    /// Wait: the process's exit, once it happened.
    pub async fn wait(&self, p: &Process) -> Exit {
        p.wait().await
    }

    /// CloseIO (stdin): the stdin copier drains the FIFO, then closes the process's stdin;
    /// without a FIFO the guest's stdin is closed at once. An exec not started ignores it.
    pub async fn close_io(&self, p: &Process) -> Result<()> {
        if !p.is_init() && p.state().status == Status::Created {
            return Ok(());
        }
        if p.stdio.stdin.is_empty() {
            let _ = self.agent.close_stdin(&self.id, &p.exec_id).await;
        } else {
            p.stdin_close.notify_one();
        }
        Ok(())
    }

    /// ResizePty. A process without a terminal (or an exec not running) ignores it, like
    /// runc-shim.
    pub async fn resize_pty(&self, p: &Process, width: u32, height: u32) -> Result<()> {
        let terminal = p.stdio.terminal && (p.is_init() || p.state().status == Status::Running);
        if !terminal {
            return Ok(());
        }
        self.agent.resize_pty(&self.id, &p.exec_id, width, height).await
    }

    /// Pause (`pause`) or resume the container (its init process's state), then sends
    /// /tasks/paused or /tasks/resumed.
    pub async fn pause(&self, pause: bool) -> Result<()> {
        self.live()?;
        let _gate = self.init.start_gate.lock().await;
        let (from, what) = if pause { (Status::Running, "running") } else { (Status::Paused, "paused") };
        if self.init.state().status != from {
            return Err(Error::FailedPrecondition(format!("container {} is not {what}", self.id)));
        }
        if pause {
            self.agent.pause_container(&self.id).await?;
        } else {
            self.agent.resume_container(&self.id).await?;
        }
        self.init.set_paused(pause);
        self.events.paused(&self.id, pause);
        tracing::info!("container {} {}", self.id, if pause { "paused" } else { "resumed" });
        Ok(())
    }

    /// Before the init process's exit: /tasks/oom for OOM kills in the container's cgroup
    /// that the sandbox's watcher has not delivered yet (it races with the exit). Bounded by
    /// OOM_CHECK_TIMEOUT; a VM that died or an agent that does not answer skips the check.
    async fn report_oom_before_exit(&self) {
        let files = match tokio::time::timeout(OOM_CHECK_TIMEOUT, self.agent.stats_container(&self.id)).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                tracing::debug!("container {}: no OOM check at exit: {e}", self.id);
                return;
            }
            Err(_) => {
                tracing::warn!("container {}: OOM check at exit timed out after {OOM_CHECK_TIMEOUT:?}", self.id);
                return;
            }
        };
        for _ in 0..self.oom.on_total(oom_kills(&files)) {
            self.events.oom(&self.id);
        }
    }

    /// Waits (at most `limit`) until no exec of the container runs. The init process's exit
    /// event waits for this, like containerd's runc shim, so containerd sees the execs' exits
    /// first (they die with the container's PID namespace).
    async fn wait_execs_stopped(&self, limit: Duration) {
        let running: Vec<Arc<Process>> =
            self.execs().values().filter(|e| e.state().status == Status::Running).cloned().collect();
        let all = async {
            for e in running {
                e.wait().await;
            }
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!("container {}: execs still running {limit:?} after its init process exited", self.id);
        }
    }
}

/// The cgroup's `oom_kill` count from its `memory.events` (untrusted: bounded, malformed
/// lines skipped; absent: 0).
pub(crate) fn oom_kills(files: &HashMap<String, Vec<u8>>) -> u64 {
    let Some(raw) = files.get("memory.events") else { return 0 };
    let text = String::from_utf8_lossy(&raw[..raw.len().min(MAX_MEMORY_EVENTS)]);
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            match (it.next(), it.next(), it.next()) {
                (Some("oom_kill"), Some(v), None) => v.parse::<u64>().ok(),
                _ => None,
            }
        })
        .next()
        .unwrap_or(0)
}

/// Waits for the process to exit (or its VM to die), lets its output drain, then records the
/// exit and sends /tasks/exit (see the module header for the init process's extra steps).
async fn watch_exit(c: Arc<Container>, p: Arc<Process>, outputs: Vec<tokio::task::JoinHandle<()>>) {
    let answer = c.agent.wait_process(&c.id, &p.exec_id).await;
    p.set_exit_seen();
    let status = match answer {
        Ok(code) => guest_status(code),
        Err(e) => {
            let status = match p.kind {
                Kind::Init => c.vm.exit_status(VM_EXIT_TIMEOUT).await.map(vm_death_status).unwrap_or(255),
                Kind::Exec { .. } => 255,
            };
            tracing::error!("{}: {e}; reporting exit status {status}", c.name(&p));
            status
        }
    };
    let drain = async {
        for h in outputs {
            let _ = h.await;
        }
    };
    if tokio::time::timeout(IO_DRAIN_TIMEOUT, drain).await.is_err() {
        tracing::warn!("{}: output not drained within {IO_DRAIN_TIMEOUT:?}", c.name(&p));
    }
    if p.is_init() {
        c.report_oom_before_exit().await;
        c.wait_execs_stopped(IO_DRAIN_TIMEOUT).await;
    }
    let _gate = p.start_gate.lock().await;
    let pid = c.pid();
    let recorded = p.finish(status, |exit| c.events.exited(&c.id, c.event_id(&p), pid, exit.status, exit.at.clone()));
    if recorded.is_some() {
        tracing::info!("{} exited with status {status}", c.name(&p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kills_are_read_from_untrusted_memory_events() {
        let f = |s: &[u8]| HashMap::from([("memory.events".to_string(), s.to_vec())]);
        assert_eq!(oom_kills(&f(b"low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n")), 2);
        assert_eq!(oom_kills(&HashMap::new()), 0);
        assert_eq!(oom_kills(&f(b"oom_kill\noom_kill x\noom_kill 1 2\n")), 0);
        assert_eq!(oom_kills(&f(&[0xff; 100_000])), 0);
        let mut late = vec![b' '; MAX_MEMORY_EVENTS];
        late.extend_from_slice(b"\noom_kill 5\n");
        assert_eq!(oom_kills(&f(&late)), 0, "only the first {MAX_MEMORY_EVENTS} bytes are read");
    }
}
