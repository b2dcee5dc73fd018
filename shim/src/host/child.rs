//! A supervised helper process (QEMU, virtiofsd, vhost-device-vsock): spawned with
//! `tokio::process`, reaped by its own task, its exit status published on a watch channel.
//!
//! The library's reaper is off (`no_reaper`), so only these tasks reap our children.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// A running (or exited) child process of the shim.
#[derive(Debug)]
pub struct Child {
    /// What it is, for logs and the pid file ("qemu", "virtiofsd", ...).
    pub name: &'static str,
    /// Its host pid.
    pub pid: u32,
    /// The program it runs (checked against /proc/<pid>/exe before killing leftovers).
    pub exe: PathBuf,
    exited: watch::Receiver<Option<ExitStatus>>,
}

impl Child {
    /// Starts `exe args...` with stdin from /dev/null and stdout+stderr appended to `log`.
    /// The child gets SIGKILL if the shim dies (PR_SET_PDEATHSIG), so a crashed shim does not
    /// leave VMs running; `delete` cleans up whatever survives.
    pub fn spawn(name: &'static str, exe: &Path, args: &[String], log: &Path) -> Result<Child> {
        Self::spawn_with_fds(name, exe, args, log, &[])
    }

    /// Like [`Child::spawn`], and the child inherits exactly the fds `keep` (same numbers):
    /// their close-on-exec flag is cleared in the child only. The caller keeps them open
    /// until this returns.
    pub fn spawn_with_fds(
        name: &'static str,
        exe: &Path,
        args: &[String],
        log: &Path,
        keep: &[std::os::fd::RawFd],
    ) -> Result<Child> {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io(format!("creating log file {}", log.display()), e))?;
        let logf2 = logf.try_clone().map_err(|e| Error::io(format!("duplicating log file {}", log.display()), e))?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::from(logf)).stderr(Stdio::from(logf2)).kill_on_drop(false);
        let keep = keep.to_vec();
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2)
        // and fcntl(2), which are async-signal-safe; it reads `keep` (allocated before the
        // fork) and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for &fd in &keep {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| Error::Spawn { what: name, path: exe.to_path_buf(), source })?;
        let pid = child.id().ok_or_else(|| Error::Boot(format!("{name} exited before its pid was known")))?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("waiting for {name} (pid {pid}): {e}");
                    ExitStatus::from_raw(255 << 8)
                }
            };
            tracing::info!(
                "{name} (pid {pid}) exited: {status} (status {})",
                crate::container::process::shell_status(status)
            );
            let _ = tx.send(Some(status));
        });
        tracing::info!("started {name} (pid {pid}): {} {}", exe.display(), args.join(" "));
        Ok(Child { name, pid, exe: exe.to_path_buf(), exited: rx })
    }

    /// The exit status, if it has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exited.borrow()
    }

    /// A receiver that sees the exit status once the process has been reaped.
    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.exited.clone()
    }

    /// Waits until the process has exited.
    pub async fn wait(&self) -> ExitStatus {
        wait_exit(self.exited.clone()).await
    }

    /// Stops the process: `SIGTERM`, then `SIGKILL` after `grace`; waits (bounded) for the reap.
    pub async fn stop(&self, grace: Duration) {
        if self.exit_status().is_some() {
            return;
        }
        // The pid cannot have been reused: our waiter task has not reaped it yet (exit_status
        // is None), and only that task reaps it.
        let pid = Pid::from_raw(self.pid as i32);
        if !grace.is_zero() {
            let _ = kill(pid, Signal::SIGTERM);
            if tokio::time::timeout(grace, self.wait()).await.is_ok() {
                return;
            }
        }
        let _ = kill(pid, Signal::SIGKILL);
        if tokio::time::timeout(Duration::from_secs(5), self.wait()).await.is_err() {
            tracing::warn!("{} (pid {}) not reaped 5s after SIGKILL", self.name, self.pid);
        }
    }
}

/// Waits on an exit-status channel. A closed channel (waiter gone) counts as status 255.
pub async fn wait_exit(mut rx: watch::Receiver<Option<ExitStatus>>) -> ExitStatus {
    match rx.wait_for(|s| s.is_some()).await {
        Ok(s) => s.unwrap_or_else(|| ExitStatus::from_raw(255 << 8)),
        Err(_) => ExitStatus::from_raw(255 << 8),
    }
}
