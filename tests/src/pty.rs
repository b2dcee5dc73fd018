//! Running a program on a pseudo-terminal of a chosen size: `ctr run -t` / `ctr task exec -t`
//! need a terminal on their side, and take the container's terminal size from it. A test can
//! drive the program like a user: wait for text, type, resize the terminal (SIGWINCH).

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::process::wait_bounded;

/// Most output kept from the terminal.
const MAX_OUTPUT: usize = 1024 * 1024;

/// How a program run on a terminal ended, and everything it wrote to the terminal.
#[derive(Debug)]
pub struct PtyOutput {
    pub status: ExitStatus,
    pub output: String,
}

impl PtyOutput {
    /// The exit code, or `128 + signal` when it was killed.
    pub fn code(&self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        self.status.code().unwrap_or_else(|| 128 + self.status.signal().unwrap_or(0))
    }
}

/// One thing a test does on the terminal, in order.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    /// Wait until the output so far contains this text.
    WaitFor(&'a str),
    /// Type this.
    Write(&'a [u8]),
    /// Resize the terminal to rows x cols (the kernel sends SIGWINCH to the program).
    Resize(u16, u16),
}

fn set_size(fd: i32, rows: u16, cols: u16) -> Result<(), String> {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize through the valid pointer.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(format!("TIOCSWINSZ: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs `cmd` with a new pty of `rows` x `cols` as its controlling terminal and stdio;
/// returns what it wrote. Killed (and an error) past `limit`.
pub fn run_on_pty(cmd: &mut Command, rows: u16, cols: u16, limit: Duration) -> Result<PtyOutput, String> {
    run_steps_on_pty(cmd, rows, cols, &[], limit)
}

/// Like [`run_on_pty`], doing `steps` while the program runs (each bounded by `limit`).
pub fn run_steps_on_pty(
    cmd: &mut Command,
    rows: u16,
    cols: u16,
    steps: &[Step<'_>],
    limit: Duration,
) -> Result<PtyOutput, String> {
    let (mut master_fd, mut slave_fd) = (-1, -1);
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: openpty writes two fds through valid pointers and reads one winsize.
    let r = unsafe { libc::openpty(&mut master_fd, &mut slave_fd, std::ptr::null_mut(), std::ptr::null(), &ws) };
    if r != 0 {
        return Err(format!("openpty: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: openpty just returned these two open fds; nothing else owns them.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master_fd), OwnedFd::from_raw_fd(slave_fd)) };
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| format!("dup of the pty slave: {e}"));
    cmd.stdin(Stdio::from(dup(&slave)?)).stdout(Stdio::from(dup(&slave)?)).stderr(Stdio::from(dup(&slave)?));
    // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let desc = format!("{cmd:?}");
    let mut child = cmd.spawn().map_err(|e| format!("starting {desc}: {e}"))?;
    drop(slave);
    // Drop the Command's copies of the slave too, or the master never reads EOF.
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());

    let stop = Arc::new(AtomicBool::new(false));
    let reader_stop = stop.clone();
    let mut writer = std::fs::File::from(master.try_clone().map_err(|e| format!("dup of the pty master: {e}"))?);
    let mut file = std::fs::File::from(master);
    let shared = Arc::new(Mutex::new(Vec::new()));
    let reader_out = shared.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while !reader_stop.load(Ordering::SeqCst) {
            let mut pfd = libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd for the call.
            if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
                continue;
            }
            match file.read(&mut buf) {
                Ok(0) | Err(_) => break, // EIO: every slave fd is closed
                Ok(n) => {
                    let mut out = reader_out.lock().unwrap_or_else(|p| p.into_inner());
                    if out.len() < MAX_OUTPUT {
                        out.extend_from_slice(&buf[..n]);
                    }
                }
            }
        }
    });
    let output_now = || String::from_utf8_lossy(&shared.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    let mut failed = None;
    for step in steps {
        let r = match *step {
            Step::WaitFor(text) => {
                let start = Instant::now();
                loop {
                    if output_now().contains(text) {
                        break Ok(());
                    }
                    if start.elapsed() > limit || matches!(child.try_wait(), Ok(Some(_))) {
                        break Err(format!("{text:?} never appeared"));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Step::Write(bytes) => {
                use std::io::Write;
                writer.write_all(bytes).map_err(|e| format!("typing {bytes:?}: {e}"))
            }
            Step::Resize(r, c) => set_size(writer.as_raw_fd(), r, c),
        };
        if let Err(e) = r {
            failed = Some(format!("step {step:?}: {e}"));
            let _ = child.kill();
            break;
        }
    }
    let status = wait_bounded(&mut child, limit).map_err(|e| format!("{desc}: {e}"));
    // Whatever is still in flight arrives within a moment of the exit.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let _ = reader.join();
    let output = output_now();
    if let Some(e) = failed {
        return Err(format!("{desc}: {e}; terminal output: {output:?}"));
    }
    Ok(PtyOutput { status: status.map_err(|e| format!("{e}; terminal output so far: {output:?}"))?, output })
}
