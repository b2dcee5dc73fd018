//! The boot handshake with the agent over hybrid vsock (the protocol crate documents it): the
//! host listener for the agent's READY + log connection (port LOG_PORT), the READY line, and
//! connecting to the agent's ttrpc port (`CONNECT <port>` / `OK <n>`) on the VMM's hybrid-vsock
//! socket. Order matters: the log listener exists before the VM starts, the guest connects out
//! when ready, and only then does the host send `CONNECT` (vhost-device-vsock 0.3 can wedge
//! for good on a CONNECT sent before the guest's vsock driver is up).
//! Every byte from the guest is untrusted: lengths and times are bounded.

use std::path::Path;
use std::time::Duration;

use bulwark_protocol::parse_ready_line;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::error::{Error, Result};

/// Longest READY / OK line accepted.
pub(crate) const MAX_HANDSHAKE_LINE: usize = 64;

/// Binds a listener for the guest's connections to one host port at `path` (the VMM's
/// socket for it: LOG_PORT for the agent's READY + logs, TELEMETRY_PORT for its syscall
/// events), before the VM starts.
pub fn bind_port_listener(path: &Path) -> Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).map_err(|e| Error::io(format!("listening on {}", path.display()), e))
}

/// Reads one `\n`-terminated line byte by byte (so nothing after it is consumed), at most
/// `max` bytes. `None` on EOF, overlong line or I/O error.
pub(crate) async fn read_line_bounded<R: AsyncReadExt + Unpin>(r: &mut R, max: usize) -> Option<Vec<u8>> {
    let mut line = Vec::with_capacity(16);
    loop {
        let b = r.read_u8().await.ok()?;
        line.push(b);
        if b == b'\n' {
            return Some(line);
        }
        if line.len() >= max {
            return None;
        }
    }
}

/// Waits for the agent's log connection and its `READY <version>` line. Returns the
/// version and the connection (which then carries log lines).
pub async fn accept_ready(listener: &UnixListener, timeout: Duration) -> Result<(u32, UnixStream)> {
    let fut = async {
        let (mut stream, _) =
            listener.accept().await.map_err(|e| Error::io("accepting the agent's log connection", e))?;
        let line = read_line_bounded(&mut stream, MAX_HANDSHAKE_LINE)
            .await
            .ok_or_else(|| Error::Agent("the agent's log connection closed or sent an overlong first line".into()))?;
        let text = String::from_utf8_lossy(&line);
        let version = parse_ready_line(&text).ok_or_else(|| {
            Error::Agent(format!("expected READY <version> from the agent, got {:?}", text.trim_end()))
        })?;
        Ok((version, stream))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| Error::Timeout(format!("no READY line from the guest agent within {timeout:?}")))?
}

/// Parses the backend's reply to `CONNECT`: `OK <port>\n` (pure).
pub fn parse_ok_line(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let n = s.strip_suffix('\n')?.strip_prefix("OK ")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Connects to guest `port` through the hybrid-vsock socket `path`.
pub async fn connect(path: &Path, port: u32, timeout: Duration) -> Result<UnixStream> {
    let s = UnixStream::connect(&path).await.map_err(|e| Error::io(format!("connecting to {}", path.display()), e))?;
    connect_over(s, path, port, timeout).await
}

/// Sends `CONNECT <port>` on `s`, a connection to the hybrid-vsock socket `path` (named in
/// errors), and waits for `OK <n>`.
pub async fn connect_over(mut s: UnixStream, path: &Path, port: u32, timeout: Duration) -> Result<UnixStream> {
    let fut = async {
        s.write_all(format!("CONNECT {port}\n").as_bytes())
            .await
            .map_err(|e| Error::io(format!("writing CONNECT to {}", path.display()), e))?;
        let line = read_line_bounded(&mut s, MAX_HANDSHAKE_LINE)
            .await
            .ok_or_else(|| Error::Agent(format!("vsock port {port}: connection refused or closed during CONNECT")))?;
        parse_ok_line(&line).ok_or_else(|| {
            Error::Agent(format!(
                "vsock port {port}: expected OK <n>, got {:?}",
                String::from_utf8_lossy(&line).trim_end()
            ))
        })?;
        Ok(s)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| Error::Timeout(format!("connecting to vsock port {port} ({timeout:?})")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_lines() {
        assert_eq!(parse_ok_line(b"OK 1024\n"), Some(1024));
        assert_eq!(parse_ok_line(b"OK 1\n"), Some(1));
        for bad in [
            &b""[..],
            b"OK\n",
            b"OK 1024",
            b"OK -1\n",
            b"OK 1x\n",
            b"NO 1\n",
            b"OK 99999999999\n",
            b"\xff\xfe\n",
            b"OK  1\n",
        ] {
            assert_eq!(parse_ok_line(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn bounded_line_reader() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(b"READY 1\nlog line\n").await.unwrap();
        assert_eq!(read_line_bounded(&mut b, 64).await.unwrap(), b"READY 1\n");
        // the rest is left for the log forwarder
        assert_eq!(read_line_bounded(&mut b, 64).await.unwrap(), b"log line\n");
        a.write_all(&[b'x'; 100]).await.unwrap();
        assert_eq!(read_line_bounded(&mut b, 64).await, None);
        drop(a);
        let (a, mut b) = UnixStream::pair().unwrap();
        drop(a);
        assert_eq!(read_line_bounded(&mut b, 64).await, None);
    }
}
