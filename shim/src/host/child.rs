//! A supervised helper process (QEMU, virtiofsd, vhost-device-vsock): spawned with
//! `tokio::process`, reaped by its own task, its exit status published on a watch channel;
//! stopping it, waiting for the socket it serves, and the tail of its log for error messages.
//! Its stdout and stderr go through a pipe into its log, capped (capped_log.rs).
//!
//! The library's reaper is off (`no_reaper`), so only these tasks reap our children.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::host::capped_log;
use crate::host::pidfd::Pidfd;
use crate::jail::process::Confinement;

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
    /// The process, pinned at spawn (None: simulated): signals never reach a process that
    /// reused the pid, even while its exit is reaped but not yet published.
    pidfd: Option<Pidfd>,
    /// Set for a simulated child (tests): `stop` publishes a SIGKILL status here instead of
    /// signalling a pid that is not ours.
    simulated: Option<Arc<watch::Sender<Option<ExitStatus>>>>,
}

impl Child {
    /// Starts `exe args...` with stdin from /dev/null and stdout+stderr appended to `log`
    /// (at most [`capped_log::HELPER_LOG_CAP`] bytes, and as much in `<log>.1`).
    /// The child gets SIGKILL if the shim dies (PR_SET_PDEATHSIG), so a crashed shim does not
    /// leave VMs running; `delete` cleans up whatever survives.
    pub fn spawn(name: &'static str, exe: &Path, args: &[String], log: &Path) -> Result<Child> {
        Self::spawn_with_fds(name, exe, args, log, &[], None)
    }

    /// Like [`Child::spawn`], and the child inherits exactly the fds `keep` (same numbers):
    /// their close-on-exec flag is cleared in the child only. The caller keeps them open
    /// until this returns. With `jail`, the child is confined as it says before it execs
    /// the program (`jail::process::Prepared::enter`).
    pub fn spawn_with_fds(
        name: &'static str,
        exe: &Path,
        args: &[String],
        log: &Path,
        keep: &[std::os::fd::RawFd],
        jail: Option<&Confinement>,
    ) -> Result<Child> {
        let jail = jail.map(|j| j.prepare(exe, args)).transpose().map_err(|source| Error::Spawn {
            what: name,
            path: exe.to_path_buf(),
            source,
        })?;
        let parent = std::process::id() as libc::pid_t;
        let (out, copier) = capped_log::pipe_into(log, capped_log::HELPER_LOG_CAP)
            .map_err(|e| Error::io(format!("creating log file {}", log.display()), e))?;
        let out2 = out.try_clone().map_err(|e| Error::io(format!("duplicating the pipe of {}", log.display()), e))?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::from(out)).stderr(Stdio::from(out2)).kill_on_drop(false);
        let keep = keep.to_vec();
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2)
        // and fcntl(2), which are async-signal-safe, and `Prepared::enter` (system calls
        // only, see there); it reads `keep` and `jail` (allocated before the fork) and
        // allocates nothing.
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
                match &jail {
                    // execs the program itself; returns only on error
                    Some(j) => j.enter(parent),
                    None => Ok(()),
                }
            });
        }
        let spawned = cmd.spawn();
        drop(cmd); // its copies of the pipe's write end: the copier ends with the child's
        let mut child = spawned.map_err(|source| Error::Spawn { what: name, path: exe.to_path_buf(), source })?;
        let pid = child.id().ok_or_else(|| Error::Boot(format!("{name} exited before its pid was known")))?;
        // Pinned before the waiter task exists: nothing has reaped it, the pid is this child.
        let pidfd = match Pidfd::open(pid) {
            Ok(p) => p,
            Err(e) => {
                let _ = child.start_kill();
                return Err(Error::io(format!("pinning {name} (pid {pid})"), e));
            }
        };
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("waiting for {name} (pid {pid}): {e}");
                    ExitStatus::from_raw(255 << 8)
                }
            };
            tracing::info!("{name} (pid {pid}) exited: {status} (status {})", shell_status(status));
            // Its last words are in its log before anyone reads the log for the exit (bounded:
            // a process it left behind may hold the pipe and keep writing).
            let _ = tokio::time::timeout(Duration::from_secs(1), copier.drain()).await;
            let _ = tx.send(Some(status));
        });
        tracing::info!("started {name} (pid {pid}): {} {}", exe.display(), args.join(" "));
        Ok(Child { name, pid, exe: exe.to_path_buf(), exited: rx, pidfd: Some(pidfd), simulated: None })
    }

    /// A child that is no process (for fakes in tests): the returned sender publishes its exit.
    #[cfg(test)]
    pub fn simulated(name: &'static str, pid: u32, exe: &Path) -> (Child, Arc<watch::Sender<Option<ExitStatus>>>) {
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        (Child { name, pid, exe: exe.to_path_buf(), exited: rx, pidfd: None, simulated: Some(tx.clone()) }, tx)
    }

    /// Whether this is no process but a test fake's ([`Child::simulated`]): it has no
    /// children to find in /proc.
    pub fn is_simulated(&self) -> bool {
        self.simulated.is_some()
    }

    /// Whether the process has exited, published or not (its exit status may still be on
    /// its way: the log is drained first).
    pub fn has_exited(&self) -> bool {
        self.exit_status().is_some() || self.pidfd.as_ref().is_some_and(Pidfd::exited)
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
        if let Some(tx) = &self.simulated {
            tx.send_replace(Some(ExitStatus::from_raw(libc::SIGKILL)));
            return;
        }
        let Some(pidfd) = &self.pidfd else { return };
        // Through the pidfd: a pid reaped meanwhile and reused is never signalled.
        if !grace.is_zero() {
            let _ = pidfd.signal(libc::SIGTERM);
            if tokio::time::timeout(grace, self.wait()).await.is_ok() {
                return;
            }
        }
        let _ = pidfd.signal(libc::SIGKILL);
        if tokio::time::timeout(Duration::from_secs(5), self.wait()).await.is_err() {
            tracing::warn!("{} (pid {}) not reaped 5s after SIGKILL", self.name, self.pid);
        }
    }

    /// Waits until the child has created `path` (its socket), failing if it exits first or
    /// `limit` passes. `log` is the child's log, quoted in the error.
    pub async fn wait_for_path(&self, path: &Path, log: &Path, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if path.exists() {
                return Ok(());
            }
            if let Some(st) = self.exit_status() {
                return Err(Error::Boot(format!(
                    "{} exited ({st}) at start. Its log {}: {}",
                    self.name,
                    log.display(),
                    log_tail(log)
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!(
                    "{} did not create {} within {}s",
                    self.name,
                    path.display(),
                    limit.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Shell-style status of a host process exit: the code, or 128 + signal number.
pub fn shell_status(st: ExitStatus) -> u32 {
    if let Some(code) = st.code() {
        return (code & 0xff) as u32;
    }
    if let Some(sig) = st.signal() {
        return 128 + sig as u32;
    }
    255
}

/// The last ~1.5 KiB of a log file, one line, control characters replaced.
pub fn log_tail(path: &Path) -> String {
    // Only the end is read (the file may be large): seek to its last 1.5 KiB.
    let data = match read_tail(path, 1536) {
        Ok(d) => d,
        Err(e) => return format!("(unreadable: {e})"),
    };
    let s: String = String::from_utf8_lossy(&data)
        .chars()
        .map(|c| {
            if c == '\n' {
                '|'
            } else if c.is_control() {
                ' '
            } else {
                c
            }
        })
        .collect();
    if s.trim().is_empty() {
        "(empty)".into()
    } else {
        s
    }
}

/// The last `max` bytes of a file, read without reading the rest.
fn read_tail(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut data = Vec::with_capacity(max as usize);
    f.take(max).read_to_end(&mut data)?;
    Ok(data)
}

/// Waits on an exit-status channel. A closed channel (waiter gone) counts as status 255.
pub async fn wait_exit(mut rx: watch::Receiver<Option<ExitStatus>>) -> ExitStatus {
    match rx.wait_for(|s| s.is_some()).await {
        Ok(s) => s.unwrap_or_else(|| ExitStatus::from_raw(255 << 8)),
        Err(_) => ExitStatus::from_raw(255 << 8),
    }
}
