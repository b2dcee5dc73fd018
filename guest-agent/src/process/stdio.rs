//! Container stdio: pipes, and bounded per-stream output buffers (fed from a pipe or a pty
//! master, see pty.rs).
//!
//! A pump task reads a container's stdout/stderr pipe into a buffer of at most `cap` bytes.
//! When the buffer is full the pump stops reading, the pipe fills, and the container blocks on
//! write: memory stays bounded whatever the container prints. End of stream is reported only
//! after the pipe reached EOF, the process exited, and the buffer drained.
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::OFlag;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Notify;

use crate::init::reaper::ExitReceiver;
use crate::init::watchdog;

/// Default buffer size per output stream.
pub const OUTPUT_BUFFER_CAP: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("creating a pipe: {0}")]
    Pipe(nix::Error),
    #[error("opening /dev/null: {0}")]
    DevNull(std::io::Error),
    #[error("registering a pipe with the runtime: {0}")]
    Register(std::io::Error),
    #[error("stdin is closed or was not requested")]
    StdinClosed,
    #[error("writing to stdin: {0}")]
    Write(std::io::Error),
}

/// The pure state of one buffered stream.
#[derive(Debug)]
pub struct BufState {
    data: VecDeque<u8>,
    cap: usize,
    eof: bool,
}

impl BufState {
    pub fn new(cap: usize) -> Self {
        Self { data: VecDeque::new(), cap, eof: false }
    }
    /// Free space in bytes.
    pub fn free(&self) -> usize {
        self.cap.saturating_sub(self.data.len())
    }
    /// Appends as much of `bytes` as fits; returns how many bytes were taken.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.free());
        self.data.extend(&bytes[..n]);
        n
    }
    /// Takes up to `max` bytes. `Some(empty)` means end of stream; `None` means "wait".
    pub fn take(&mut self, max: usize) -> Option<Vec<u8>> {
        if !self.data.is_empty() && max > 0 {
            let n = self.data.len().min(max);
            return Some(self.data.drain(..n).collect());
        }
        if self.eof && self.data.is_empty() {
            return Some(Vec::new());
        }
        None
    }
    pub fn set_eof(&mut self) {
        self.eof = true;
    }
}

/// One container output stream (stdout or stderr).
pub struct OutputStream {
    state: Mutex<BufState>,
    /// Signalled when data or EOF arrives.
    readable: Notify,
    /// Signalled when a reader frees space.
    writable: Notify,
}

impl OutputStream {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self { state: Mutex::new(BufState::new(cap)), readable: Notify::new(), writable: Notify::new() })
    }

    fn st(&self) -> std::sync::MutexGuard<'_, BufState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks until data or EOF; returns at most `max` bytes (empty = EOF).
    pub async fn read(&self, max: usize) -> Vec<u8> {
        loop {
            let notified = self.readable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let taken = self.st().take(max);
            if let Some(data) = taken {
                if !data.is_empty() {
                    self.writable.notify_waiters();
                }
                return data;
            }
            notified.await;
        }
    }

    /// Marks the stream finished (e.g. the container was removed) and wakes readers.
    pub fn close(&self) {
        self.st().set_eof();
        self.readable.notify_waiters();
    }

    /// Reads `pipe` (a pipe or a pty master) into the buffer until EOF, then waits for the
    /// process to exit before reporting EOF to readers.
    pub async fn pump<R: AsyncRead + Unpin>(self: Arc<Self>, mut pipe: R, mut exited: ExitReceiver, name: String) {
        let mut tmp = vec![0u8; 64 * 1024];
        loop {
            // Wait for free space.
            let free = loop {
                let notified = self.writable.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let free = self.st().free();
                if free > 0 {
                    break free;
                }
                notified.await;
            };
            let want = free.min(tmp.len());
            match pipe.read(&mut tmp[..want]).await {
                Ok(0) => break,
                Ok(n) => {
                    self.st().push(&tmp[..n]);
                    self.readable.notify_waiters();
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(stream = %name, "reading container output failed: {e}");
                    break;
                }
            }
        }
        let _ = exited.wait_for(|s| s.is_some()).await;
        self.close();
    }
}

/// Where stdin data goes: a pipe write end or a pty master.
pub type StdinSink = Box<dyn AsyncWrite + Send + Unpin>;

/// How long one WriteStdin waits for the process to take data (then it answers with what was
/// written, maybe 0, and the host tries again): a process that does not read its stdin must
/// not hold the stdin lock, or an RPC, for longer.
pub const STDIN_WRITE_LIMIT: Duration = Duration::from_secs(5);

/// A process's stdin: a pipe write end, a pty master, or nothing.
pub struct Stdin {
    sender: tokio::sync::Mutex<Option<StdinSink>>,
}

impl Stdin {
    pub fn new(sender: Option<StdinSink>) -> Self {
        Self { sender: tokio::sync::Mutex::new(sender) }
    }

    /// Writes what the process takes within [`STDIN_WRITE_LIMIT`]; returns how many bytes.
    pub async fn write(&self, data: &[u8]) -> Result<usize, StdioError> {
        self.write_within(data, STDIN_WRITE_LIMIT).await
    }

    pub async fn write_within(&self, data: &[u8], limit: Duration) -> Result<usize, StdioError> {
        let deadline = tokio::time::Instant::now() + limit;
        let Ok(mut guard) = tokio::time::timeout_at(deadline, self.sender.lock()).await else {
            return Ok(0);
        };
        let _held = watchdog::hold("stdin", "", limit * 2);
        let s = guard.as_mut().ok_or(StdioError::StdinClosed)?;
        let mut written = 0;
        while written < data.len() {
            match tokio::time::timeout_at(deadline, s.write(&data[written..])).await {
                Err(_) => break,
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => written += n,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(e)) if written == 0 => return Err(StdioError::Write(e)),
                Ok(Err(_)) => break,
            }
        }
        if written > 0 {
            // Pipes and the pty master need no flush; bounded all the same.
            let _ = tokio::time::timeout_at(deadline, s.flush()).await;
        }
        Ok(written)
    }

    /// Closes stdin (waits at most [`STDIN_WRITE_LIMIT`] for a write in progress).
    pub async fn close(&self) {
        self.sender.lock().await.take();
    }
}

/// The fds handed to libcontainer plus our ends of the pipes.
pub struct ContainerPipes {
    pub child_stdin: OwnedFd,
    pub child_stdout: OwnedFd,
    pub child_stderr: OwnedFd,
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Creates the pipes (close-on-exec: libcontainer dup2()s the child ends onto 0/1/2).
pub fn make_pipes(with_stdin: bool) -> Result<ContainerPipes, StdioError> {
    let p = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(StdioError::Pipe);
    let (out_r, out_w) = p()?;
    let (err_r, err_w) = p()?;
    let (child_stdin, stdin) = if with_stdin {
        let (r, w) = p()?;
        (r, Some(w))
    } else {
        let null = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags_cloexec()
            .open("/dev/null")
            .map_err(StdioError::DevNull)?;
        (OwnedFd::from(null), None)
    };
    Ok(ContainerPipes { child_stdin, child_stdout: out_w, child_stderr: err_w, stdin, stdout: out_r, stderr: err_r })
}

trait CloexecExt {
    fn custom_flags_cloexec(&mut self) -> &mut Self;
}
impl CloexecExt for std::fs::OpenOptions {
    fn custom_flags_cloexec(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_CLOEXEC)
    }
}

pub fn receiver(fd: OwnedFd) -> Result<pipe::Receiver, StdioError> {
    pipe::Receiver::from_owned_fd(fd).map_err(StdioError::Register)
}

pub fn sender(fd: OwnedFd) -> Result<pipe::Sender, StdioError> {
    pipe::Sender::from_owned_fd(fd).map_err(StdioError::Register)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_is_bounded() {
        let mut b = BufState::new(10);
        assert_eq!(b.push(b"0123456"), 7);
        assert_eq!(b.push(b"789abc"), 3);
        assert_eq!(b.free(), 0);
        assert_eq!(b.push(b"x"), 0);
        assert_eq!(b.take(4).as_deref(), Some(&b"0123"[..]));
        assert_eq!(b.free(), 4);
        assert_eq!(b.take(100).as_deref(), Some(&b"456789"[..]));
    }

    #[test]
    fn eof_only_after_drain() {
        let mut b = BufState::new(10);
        assert_eq!(b.take(5), None, "empty and open: wait");
        b.push(b"abc");
        b.set_eof();
        assert_eq!(b.take(2).as_deref(), Some(&b"ab"[..]));
        assert_eq!(b.take(2).as_deref(), Some(&b"c"[..]));
        assert_eq!(b.take(2).as_deref(), Some(&b""[..]));
    }

    #[test]
    fn zero_max_does_not_report_eof_with_data() {
        let mut b = BufState::new(10);
        b.push(b"a");
        b.set_eof();
        assert_eq!(b.take(0), None);
    }

    #[tokio::test]
    async fn pump_blocks_when_full_and_reports_eof_after_exit() {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe");
        let stream = OutputStream::new(4);
        let (exit_tx, exit_rx) = tokio::sync::watch::channel(None);
        let task = tokio::spawn(stream.clone().pump(receiver(r).expect("recv"), exit_rx, "t".into()));
        let mut w = sender(w).expect("send");
        w.write_all(b"hello world").await.expect("write");
        drop(w);
        let mut got = Vec::new();
        got.extend(stream.read(100).await);
        assert!(got.len() <= 4, "buffer cap respected: {got:?}");
        while got.len() < 11 {
            got.extend(stream.read(3).await);
        }
        assert_eq!(got, b"hello world");
        // Pipe at EOF but the process has not exited: no EOF yet.
        let early = tokio::time::timeout(std::time::Duration::from_millis(100), stream.read(10)).await;
        assert!(early.is_err(), "EOF must wait for process exit");
        exit_tx.send(Some(0)).expect("send exit");
        assert!(stream.read(10).await.is_empty());
        task.await.expect("pump");
    }

    #[tokio::test]
    async fn stdin_to_a_process_that_does_not_read_is_bounded() {
        let p = make_pipes(true).expect("pipes");
        let w = sender(p.stdin.expect("stdin")).expect("sender");
        let stdin = Stdin::new(Some(Box::new(w)));
        let data = vec![b'x'; 1024 * 1024];
        let t = std::time::Instant::now();
        let n = stdin.write_within(&data, Duration::from_millis(200)).await.expect("write");
        assert!(n > 0 && n < data.len(), "a full pipe takes part of it: {n}");
        let n = stdin.write_within(&data, Duration::from_millis(200)).await.expect("write");
        assert_eq!(n, 0, "nothing more fits");
        assert!(t.elapsed() < Duration::from_secs(2));
        tokio::time::timeout(Duration::from_secs(1), stdin.close()).await.expect("close is not blocked");
        assert!(matches!(stdin.write(b"x").await, Err(StdioError::StdinClosed)));
        drop(p.child_stdin);
    }
}
