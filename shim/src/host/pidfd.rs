//! A process pinned by a pidfd (`pidfd_open(2)`): signals go to that very process, never to
//! whatever later reuses its pid (`pidfd_send_signal(2)` fails with ESRCH once it is gone),
//! and whether it has exited is known before anyone reaps it (the fd polls readable).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A pinned process.
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl Pidfd {
    /// Pins `pid`. The caller must know the pid is the process it means at this moment (its
    /// own unreaped child, or a pid checked again after the pin).
    pub fn open(pid: u32) -> io::Result<Pidfd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pidfd_open returned a new fd that nothing else owns.
        Ok(Pidfd(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Sends `signal` (a no-op to an exited, unreaped process); ESRCH once it is reaped.
    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the process has exited (reaped or not).
    pub fn exited(&self) -> bool {
        let mut p = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd on this stack, no timeout.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_child_is_signalled_and_seen_to_exit_before_its_reap() {
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let p = Pidfd::open(child.id()).unwrap();
        assert!(!p.exited());
        p.signal(libc::SIGKILL).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !p.exited() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(p.exited(), "exited, not reaped yet");
        child.wait().unwrap();
        assert_eq!(p.signal(libc::SIGTERM).unwrap_err().raw_os_error(), Some(libc::ESRCH), "reaped: no signal");
    }
}
