//! The state of one process as containerd sees it (a container's init process or an exec):
//! status, exit status, exit time, the tasks copying its stdio and watching its exit; and the
//! mapping of exits to shell-style statuses.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;

/// Lifecycle of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    /// Frozen in the guest (Pause); Resume makes it Running again.
    Paused,
    Stopped,
}

impl Status {
    /// The status as the task API reports it.
    pub fn to_api(self) -> containerd_shim::api::Status {
        use containerd_shim::api::Status as Api;
        match self {
            Status::Created => Api::CREATED,
            Status::Running => Api::RUNNING,
            Status::Paused => Api::PAUSED,
            Status::Stopped => Api::STOPPED,
        }
    }
}

/// How the process ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    /// Shell-style status: exit code, or 128 + signal.
    pub status: u32,
    pub at: Timestamp,
}

/// Status + exit, guarded by the process's mutex.
#[derive(Debug, Clone)]
pub struct ProcState {
    pub status: Status,
    /// PID in the guest (informational; the task pid containerd sees is QEMU's host pid).
    pub guest_pid: u32,
    pub exit: Option<Exit>,
}

/// One process (init or exec) as the task service tracks it.
pub struct Process {
    state: Mutex<ProcState>,
    exit_tx: watch::Sender<Option<Exit>>,
    /// Tasks working for this process (exit watcher, stdio copiers), aborted on Delete.
    pub tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Tells the stdin copier to finish (CloseIO).
    pub stdin_close: Arc<tokio::sync::Notify>,
    /// containerd's stdin FIFO, if any (kept to free a blocked open on Delete).
    pub stdin_fifo: Mutex<Option<Arc<crate::container::stdio::StdinFifo>>>,
    /// Held by Start across the agent call + the start event, and by the exit watcher before
    /// it records the exit, so the exit event never precedes the start event.
    pub start_gate: tokio::sync::Mutex<()>,
}

impl Process {
    pub fn new(guest_pid: u32) -> Self {
        Process {
            state: Mutex::new(ProcState { status: Status::Created, guest_pid, exit: None }),
            exit_tx: watch::channel(None).0,
            tasks: Mutex::new(Vec::new()),
            stdin_close: Arc::new(tokio::sync::Notify::new()),
            stdin_fifo: Mutex::new(None),
            start_gate: tokio::sync::Mutex::new(()),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, ProcState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> ProcState {
        self.st().clone()
    }

    /// Created → Running (no-op otherwise).
    pub fn set_running(&self) {
        let mut s = self.st();
        if s.status == Status::Created {
            s.status = Status::Running;
        }
    }

    /// Running → Paused (`paused`) or Paused → Running; returns whether it changed.
    pub fn set_paused(&self, paused: bool) -> bool {
        let mut s = self.st();
        let (from, to) = if paused { (Status::Running, Status::Paused) } else { (Status::Paused, Status::Running) };
        if s.status != from {
            return false;
        }
        s.status = to;
        true
    }

    /// Records the guest pid once the process exists (execs get it at start).
    pub fn set_guest_pid(&self, pid: u32) {
        self.st().guest_pid = pid;
    }

    /// Records the exit. Returns it if this call made the transition (so only one caller
    /// publishes the exit event).
    pub fn mark_exited(&self, status: u32) -> Option<Exit> {
        let mut s = self.st();
        if s.status == Status::Stopped {
            return None;
        }
        let exit = Exit { status, at: now() };
        s.status = Status::Stopped;
        s.exit = Some(exit.clone());
        drop(s);
        self.exit_tx.send_replace(Some(exit.clone()));
        Some(exit)
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit_tx.subscribe();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                // Sender lives in self: cannot happen while we hold &self.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Aborts the tasks and frees a stdin copier blocked in open(2).
    pub fn abort_tasks(&self) {
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
        if let Some(f) = self.stdin_fifo.lock().unwrap_or_else(|p| p.into_inner()).take() {
            f.unblock();
        }
    }
}

/// The /tasks/delete event of a process (`id` = container id for the init process, else the
/// exec id).
pub fn delete_event(
    container_id: &str,
    id: &str,
    pid: u32,
    exit_status: u32,
    exited_at: containerd_shim::protos::protobuf::MessageField<Timestamp>,
) -> Box<containerd_shim::protos::events::task::TaskDelete> {
    Box::new(containerd_shim::protos::events::task::TaskDelete {
        container_id: container_id.to_string(),
        id: id.to_string(),
        pid,
        exit_status,
        exited_at,
        ..Default::default()
    })
}

/// Now, as a protobuf timestamp.
pub fn now() -> Timestamp {
    Timestamp::now()
}

/// Shell-style status of a host process exit (it lives with the child processes, host/).
#[allow(unused_imports)] // used from here by tests only, today
pub use crate::host::child::shell_status;

/// Status reported for containers of a VM that died under them: 137 when the VM was killed
/// with SIGKILL (as if the container had been), otherwise 255.
pub fn vm_death_status(st: ExitStatus) -> u32 {
    if st.signal() == Some(libc::SIGKILL) {
        137
    } else {
        255
    }
}

/// Guest exit status (untrusted i32 from the agent) to containerd's u32: values outside
/// 0..=255 become 255.
pub fn guest_status(code: i32) -> u32 {
    if (0..=255).contains(&code) {
        code as u32
    } else {
        255
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(shell_status(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(shell_status(ExitStatus::from_raw(libc::SIGKILL)), 137);
        assert_eq!(shell_status(ExitStatus::from_raw(libc::SIGTERM)), 143);
        assert_eq!(vm_death_status(ExitStatus::from_raw(libc::SIGKILL)), 137);
        assert_eq!(vm_death_status(ExitStatus::from_raw(libc::SIGSEGV)), 255);
        assert_eq!(vm_death_status(ExitStatus::from_raw(0)), 255);
        assert_eq!(vm_death_status(ExitStatus::from_raw(1 << 8)), 255);
        assert_eq!(guest_status(0), 0);
        assert_eq!(guest_status(137), 137);
        assert_eq!(guest_status(-1), 255);
        assert_eq!(guest_status(100_000), 255);
    }
}
