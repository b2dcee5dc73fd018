//! One process of a container — its init process or an exec — as one state machine:
//! created → running (⇄ paused) → stopped, then deleted by its container. It holds the
//! process's stdio paths, its status and exit, the tasks working for it (stdio copiers, exit
//! watcher) and the gate that orders its start and exit events. The few ways an init process
//! and an exec differ are its [`Kind`]; the verbs are the container's (lifecycle.rs).
//! Also: the mapping of exits to shell-style statuses. It depends on nothing else in the
//! crate (host/child.rs uses `shell_status`).

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;

/// The stdio paths containerd gave for a process (empty: none).
#[derive(Debug, Clone, Default)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Frees a stdin copier blocked opening containerd's FIFO (stdio.rs's `StdinFifo::unblock`).
type Unblock = Box<dyn Fn() + Send + Sync>;

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

/// What kind of process: the container's init process (created with the container, its
/// stdio connected at Create) or an exec (created in the guest at Start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Init,
    /// `process_json`: the OCI runtime-spec `process` object (JSON) from containerd.
    Exec {
        process_json: Vec<u8>,
    },
}

/// One process (init or exec).
pub struct Process {
    /// The exec id; empty for the init process (how the agent names processes too).
    pub exec_id: String,
    pub kind: Kind,
    pub stdio: Stdio,
    state: Mutex<ProcState>,
    exit_tx: watch::Sender<Option<Exit>>,
    /// Tasks working for this process (exit watcher, stdio copiers), aborted on Delete.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Tells the stdin copier to finish (CloseIO).
    pub stdin_close: Arc<tokio::sync::Notify>,
    /// Frees the stdin copier's blocked open of containerd's FIFO, if there is one (Delete).
    stdin_unblock: Mutex<Option<Unblock>>,
    /// Held by Start across the agent call + the start event, by Pause/Resume, and by the exit
    /// watcher before it records the exit, so the exit event never precedes the start event.
    pub start_gate: tokio::sync::Mutex<()>,
    /// Whether the guest (or the VM's death) has answered the exit watcher: the exit is on
    /// its way, even if not recorded yet (output still draining).
    exit_seen: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Process {
    /// The init process of a container, existing in the guest as `guest_pid`.
    pub fn init(stdio: Stdio, guest_pid: u32) -> Self {
        Process::new(String::new(), Kind::Init, stdio, guest_pid)
    }

    /// An exec, recorded but not created in the guest yet.
    pub fn exec(exec_id: String, stdio: Stdio, process_json: Vec<u8>) -> Self {
        Process::new(exec_id, Kind::Exec { process_json }, stdio, 0)
    }

    fn new(exec_id: String, kind: Kind, stdio: Stdio, guest_pid: u32) -> Self {
        Process {
            exec_id,
            kind,
            stdio,
            state: Mutex::new(ProcState { status: Status::Created, guest_pid, exit: None }),
            exit_tx: watch::channel(None).0,
            tasks: Mutex::new(Vec::new()),
            stdin_close: Arc::new(tokio::sync::Notify::new()),
            stdin_unblock: Mutex::new(None),
            start_gate: tokio::sync::Mutex::new(()),
            exit_seen: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The exit watcher heard the process's end (see the field).
    pub fn set_exit_seen(&self) {
        self.exit_seen.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the process's end was heard of, recorded or not yet.
    pub fn exit_seen(&self) -> bool {
        self.exit_seen.load(std::sync::atomic::Ordering::SeqCst) || self.state().status == Status::Stopped
    }

    pub fn is_init(&self) -> bool {
        self.kind == Kind::Init
    }

    fn st(&self) -> std::sync::MutexGuard<'_, ProcState> {
        lock(&self.state)
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

    /// Records the exit without an event (Delete of a process that never reported one).
    /// Returns it if this call made the transition.
    pub fn mark_exited(&self, status: u32) -> Option<Exit> {
        self.finish(status, |_| {})
    }

    /// Records the exit; if this call made the transition, runs `report` (which sends the
    /// exit event) before anyone waiting for the exit wakes up, and returns the exit.
    pub fn finish(&self, status: u32, report: impl FnOnce(&Exit)) -> Option<Exit> {
        let mut s = self.st();
        if s.status == Status::Stopped {
            return None;
        }
        let exit = Exit { status, at: now() };
        s.status = Status::Stopped;
        s.exit = Some(exit.clone());
        report(&exit);
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

    /// Keeps the handles of tasks working for the process (aborted by [`Process::abort_tasks`]).
    pub fn add_tasks(&self, handles: impl IntoIterator<Item = tokio::task::AbortHandle>) {
        lock(&self.tasks).extend(handles);
    }

    /// How to free the stdin copier if it is blocked opening containerd's FIFO on Delete.
    pub fn set_stdin_unblock(&self, unblock: impl Fn() + Send + Sync + 'static) {
        *lock(&self.stdin_unblock) = Some(Box::new(unblock));
    }

    /// Aborts the tasks and frees a stdin copier blocked in open(2).
    pub fn abort_tasks(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        if let Some(unblock) = lock(&self.stdin_unblock).take() {
            unblock();
        }
    }
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
