//! PID 1 zombie reaping; exit statuses by pid.
//!
//! libcontainer's calls run in helper processes (init/helper.rs), so the processes it forks and
//! waitpid()s are the helper's children, never the agent's: the agent's waitpid(-1) cannot steal
//! them, and reaping never pauses for libcontainer. [`Reaper::lock`] only makes short,
//! non-blocking steps atomic with respect to reaping: registering a pid's exit watch (so none is
//! missed) and kill(2) of a pid not yet reaped (so it cannot have been reused). It is never held
//! across a call that can block on a tenant; a watchdog (init/watchdog.rs) logs if it is held
//! longer than [`LOCK_LIMIT`]. Exit statuses are delivered only for registered pids, through a
//! watch channel; other children (helpers, orphans) are reaped and forgotten.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::init::watchdog::{self, Held};

/// How long the reaper lock may be held before the watchdog logs it (it guards only
/// waitpid(WNOHANG), kill(2) and map updates).
pub const LOCK_LIMIT: Duration = Duration::from_secs(1);

/// Exit status as a shell reports it: the exit code, or 128 + signal number.
pub fn exit_status(status: &WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(*code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + *sig as i32),
        _ => None,
    }
}

/// Receives `Some(exit_status)` once the process has been reaped.
pub type ExitReceiver = watch::Receiver<Option<i32>>;

#[derive(Default)]
pub struct Reaper {
    lock: Mutex<()>,
    watched: Mutex<HashMap<i32, watch::Sender<Option<i32>>>>,
}

/// Proof that the reaper is paused (no waitpid(-1) can run while this lives). Drop it quickly:
/// the watchdog reports it after [`LOCK_LIMIT`].
pub struct ReaperGuard<'a>(#[allow(dead_code)] MutexGuard<'a, ()>, #[allow(dead_code)] Held);

impl Reaper {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Pauses reaping, for a non-blocking step only (a watch registration, a kill(2)).
    pub fn lock(&self) -> ReaperGuard<'_> {
        let g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        ReaperGuard(g, watchdog::hold("reaper", "", LOCK_LIMIT))
    }

    /// Registers a child whose exit status someone wants. Requires the guard, so the child
    /// cannot have been reaped between its creation and this call.
    pub fn watch(&self, _guard: &ReaperGuard<'_>, pid: i32) -> ExitReceiver {
        let (tx, rx) = watch::channel(None);
        self.watched.lock().unwrap_or_else(|p| p.into_inner()).insert(pid, tx);
        rx
    }

    /// Reaps every exited child now. Returns how many were reaped.
    pub fn reap_all(&self) -> usize {
        let _guard = self.lock();
        let mut n = 0;
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("waitpid(-1) failed: {e}");
                    break;
                }
                Ok(status) => {
                    let Some(code) = exit_status(&status) else { continue };
                    n += 1;
                    let Some(pid) = status.pid() else { continue };
                    let tx = self.watched.lock().unwrap_or_else(|p| p.into_inner()).remove(&pid.as_raw());
                    match tx {
                        Some(tx) => {
                            tracing::info!(pid = pid.as_raw(), exit_status = code, "watched process exited");
                            let _ = tx.send(Some(code));
                        }
                        None => tracing::debug!(pid = pid.as_raw(), exit_status = code, "reaped"),
                    }
                }
            }
        }
        n
    }

    /// Runs forever: reaps on every SIGCHLD, and once a second in case a signal was merged
    /// or arrived while reaping was paused.
    pub async fn run(self: Arc<Self>) {
        let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("cannot watch SIGCHLD ({e}); reaping by polling only");
                None
            }
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            match sigchld.as_mut() {
                Some(s) => {
                    tokio::select! {
                        _ = s.recv() => {}
                        _ = tick.tick() => {}
                    }
                }
                None => {
                    tick.tick().await;
                }
            }
            let me = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || me.reap_all()).await {
                tracing::error!("reaper task failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn exit_status_mapping() {
        let p = Pid::from_raw(42);
        assert_eq!(exit_status(&WaitStatus::Exited(p, 7)), Some(7));
        assert_eq!(exit_status(&WaitStatus::Exited(p, 0)), Some(0));
        assert_eq!(exit_status(&WaitStatus::Signaled(p, Signal::SIGTERM, false)), Some(143));
        assert_eq!(exit_status(&WaitStatus::Signaled(p, Signal::SIGKILL, true)), Some(137));
        assert_eq!(exit_status(&WaitStatus::Stopped(p, Signal::SIGSTOP)), None);
        assert_eq!(exit_status(&WaitStatus::StillAlive), None);
    }

    #[test]
    #[allow(clippy::zombie_processes)] // the reaper under test reaps it
    fn registered_child_gets_its_status() {
        let reaper = Reaper::new();
        let guard = reaper.lock();
        let child = std::process::Command::new("sh").args(["-c", "exit 5"]).spawn().expect("spawn sh");
        let rx = reaper.watch(&guard, child.id() as i32);
        drop(guard);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while rx.borrow().is_none() && std::time::Instant::now() < deadline {
            reaper.reap_all();
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(*rx.borrow(), Some(5));
    }
}
