//! Terminals for container processes (`terminal: true`).
//!
//! libcontainer creates the pty inside the container (from the container's own devpts, so the
//! slave belongs to the container) and sends the master over a unix "console socket" the agent
//! listens on. The agent keeps the master: reading it is the process's stdout stream (a tty has
//! no separate stderr), writing it is stdin, and TIOCSWINSZ on it is ResizePty.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Directory of the console sockets (short paths: sun_path holds 107 bytes).
pub const CONSOLE_DIR: &str = "/run/bulwark/console";
/// How long to wait for libcontainer's process to send the pty master.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    #[error("console socket {path}: {source}")]
    Socket { path: String, source: io::Error },
    #[error("receiving the pty master on {path}: {reason}")]
    Receive { path: String, reason: String },
    #[error("registering the pty master with the runtime: {0}")]
    Register(io::Error),
    #[error("setting the window size to {rows}x{cols}: {source}")]
    Resize { rows: u16, cols: u16, source: nix::Error },
}

/// A listening console socket; removed from the filesystem when dropped.
pub struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

static NEXT_SOCKET: AtomicU64 = AtomicU64::new(0);

impl ConsoleSocket {
    /// Binds a new socket under [`CONSOLE_DIR`].
    pub fn bind() -> Result<ConsoleSocket, PtyError> {
        Self::bind_in(Path::new(CONSOLE_DIR))
    }

    fn bind_in(dir: &Path) -> Result<ConsoleSocket, PtyError> {
        let err = |path: &Path| {
            let path = path.display().to_string();
            move |source| PtyError::Socket { path, source }
        };
        std::fs::create_dir_all(dir).map_err(err(dir))?;
        let n = NEXT_SOCKET.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{n}.sock"));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(err(&path))?;
        listener.set_nonblocking(true).map_err(err(&path))?;
        Ok(ConsoleSocket { path, listener })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts libcontainer's connection and receives the one pty master fd it sends.
    /// Blocking (bounded by [`RECEIVE_TIMEOUT`]); call off the async runtime.
    pub fn receive_master(&self) -> Result<OwnedFd, PtyError> {
        let fail = |reason: String| PtyError::Receive { path: self.path.display().to_string(), reason };
        let ready = |fd: RawFd| -> Result<(), PtyError> {
            let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            let ms = i32::try_from(RECEIVE_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
            loop {
                // SAFETY: one valid pollfd for the call; `fd` stays open (owned by self or `conn`).
                let r = unsafe { libc::poll(&mut pfd, 1, ms) };
                match r {
                    0 => return Err(fail(format!("nothing arrived within {RECEIVE_TIMEOUT:?}"))),
                    n if n > 0 => return Ok(()),
                    _ => {
                        let e = io::Error::last_os_error();
                        if e.kind() != io::ErrorKind::Interrupted {
                            return Err(fail(format!("poll: {e}")));
                        }
                    }
                }
            }
        };
        ready(self.listener.as_raw_fd())?;
        let (conn, _) = self.listener.accept().map_err(|e| fail(format!("accept: {e}")))?;
        ready(conn.as_raw_fd())?;
        let mut buf = [0u8; 64];
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(|e| fail(format!("recvmsg: {e}")))?;
        let mut received: Vec<OwnedFd> = Vec::new();
        for c in msg.cmsgs().map_err(|e| fail(format!("control messages: {e}")))? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    // SAFETY: SCM_RIGHTS just installed `fd` in this process; nothing else owns it.
                    received.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        if received.len() != 1 {
            return Err(fail(format!("expected one file descriptor, got {}", received.len())));
        }
        Ok(received.remove(0))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sets the terminal size on a pty master (TIOCSWINSZ).
pub fn set_window_size(master: &OwnedFd, cols: u32, rows: u32) -> Result<(), PtyError> {
    nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);
    let rows = u16::try_from(rows).unwrap_or(u16::MAX);
    let cols = u16::try_from(cols).unwrap_or(u16::MAX);
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is valid for the call.
    unsafe { tiocswinsz(master.as_raw_fd(), &ws) }.map_err(|source| PtyError::Resize { rows, cols, source })?;
    Ok(())
}

/// One end of a pty master for async reads or writes (each end owns its own dup of the fd).
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

impl PtyMaster {
    /// Duplicates `master` (non-blocking) and registers the copy with the runtime.
    pub fn new(master: &OwnedFd) -> Result<PtyMaster, PtyError> {
        let dup = master.try_clone().map_err(PtyError::Register)?;
        let flags =
            nix::fcntl::fcntl(dup.as_raw_fd(), nix::fcntl::F_GETFL).map_err(|e| PtyError::Register(e.into()))?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(dup.as_raw_fd(), nix::fcntl::F_SETFL(flags)).map_err(|e| PtyError::Register(e.into()))?;
        // SAFETY: `dup` is an open fd owned by the AsyncFd for its whole lifetime.
        let fd = unsafe { AsyncFd::register(dup) }.map_err(|e| PtyError::Register(e.into_parts().1))?;
        Ok(PtyMaster { fd })
    }
}

impl AsyncRead for PtyMaster {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| nix::unistd::read(fd.as_raw_fd(), unfilled).map_err(io::Error::from)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Every slave fd is closed (the process and its children are gone): EOF.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyMaster {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn master_reads_slave_output_writes_its_input_and_sees_eof() {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let mut reader = PtyMaster::new(&pty.master).expect("reader");
        let mut writer = PtyMaster::new(&pty.master).expect("writer");
        set_window_size(&pty.master, 101, 33).expect("resize");
        let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes one winsize through the valid pointer.
        assert_eq!(unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) }, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (33, 101));

        nix::unistd::write(&pty.slave, b"out").expect("slave write");
        let mut buf = [0u8; 16];
        let n = reader.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"out");

        writer.write_all(b"in\n").await.expect("write");
        let mut got = [0u8; 16];
        let n = nix::unistd::read(pty.slave.as_raw_fd(), &mut got).expect("slave read");
        assert_eq!(&got[..n], b"in\n");

        drop(pty.slave);
        // The line discipline echoed the input; after it, closing the slave reads as EOF.
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut rest))
            .await
            .expect("eof in time")
            .expect("read");
        assert_eq!(rest, b"in\r\n");
    }

    #[test]
    fn console_socket_receives_one_fd_and_cleans_up() {
        let sock = ConsoleSocket::bind_in(&std::env::temp_dir().join(format!("bwk-pty-{}", std::process::id())))
            .expect("bind");
        let path = sock.path().to_path_buf();
        let client = std::os::unix::net::UnixStream::connect(&path).expect("connect");
        let file = std::fs::File::open("/dev/null").expect("open");
        let fds = [file.as_raw_fd()];
        let iov = [io::IoSlice::new(b"/dev/ptmx")];
        nix::sys::socket::sendmsg::<()>(
            client.as_raw_fd(),
            &iov,
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .expect("sendmsg");
        let fd = sock.receive_master().expect("receive");
        assert!(fd.as_raw_fd() >= 0);
        drop(sock);
        assert!(!path.exists(), "socket file removed on drop");
        let _ = std::fs::remove_dir(path.parent().expect("parent"));
    }
}
