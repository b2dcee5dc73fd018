//! Hybrid vsock: the vhost-device-vsock backend, the host listener for the agent's
//! READY + log connection (port LOG_PORT), and connecting to the agent (port AGENT_PORT).
//!
//! Order matters (shared/PLATFORM.md): the log listener exists before QEMU starts, the
//! guest connects out when ready, and only then does the host send `CONNECT`.
//! Every byte from the guest is untrusted: lengths and times are bounded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulwark_protocol::{parse_ready_line, MAX_LOG_LINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::child::Child;
use crate::config::Config;
use crate::error::{Error, Result};

/// Longest READY / OK line accepted.
const MAX_HANDSHAKE_LINE: usize = 64;
/// Lines of guest log forwarded per sandbox before the rest is dropped (counted).
const MAX_LOG_LINES: u64 = 100_000;

/// vhost-device-vsock's vhost-user socket (QEMU connects to it).
pub fn backend_socket(dir: &Path) -> PathBuf {
    dir.join("vhost-vsock.sock")
}

/// The hybrid-vsock socket the host connects to (`CONNECT <port>`).
pub fn uds_path(dir: &Path) -> PathBuf {
    dir.join("vsock.sock")
}

/// Where guest connections to the host's `port` arrive.
pub fn host_port_path(dir: &Path, port: u32) -> PathBuf {
    dir.join(format!("vsock.sock_{port}"))
}

/// Starts vhost-device-vsock for the sandbox in `dir` (guest CID 3).
pub fn spawn_backend(cfg: &Config, dir: &Path) -> Result<Child> {
    let exe = &cfg.paths.vhost_device_vsock;
    if !exe.exists() {
        return Err(Error::Missing {
            what: "vhost-device-vsock binary",
            path: exe.clone(),
            hint: "install it (cargo install vhost-device-vsock) or set paths.vhost_device_vsock \
                   in the bulwark config"
                .into(),
        });
    }
    let args = vec![
        "--guest-cid".to_string(),
        bulwark_protocol::GUEST_CID.to_string(),
        "--socket".to_string(),
        backend_socket(dir).to_string_lossy().into_owned(),
        "--uds-path".to_string(),
        uds_path(dir).to_string_lossy().into_owned(),
    ];
    Child::spawn("vhost-device-vsock", exe, &args, &dir.join("vsock.log"))
}

/// Binds the listener for the agent's log connection (before QEMU starts).
pub fn bind_log_listener(dir: &Path) -> Result<UnixListener> {
    let path = host_port_path(dir, bulwark_protocol::LOG_PORT);
    let _ = std::fs::remove_file(&path);
    UnixListener::bind(&path).map_err(|e| Error::io(format!("listening on {}", path.display()), e))
}

/// Reads one `\n`-terminated line byte by byte (so nothing after it is consumed), at most
/// `max` bytes. `None` on EOF, overlong line or I/O error.
async fn read_line_bounded<R: AsyncReadExt + Unpin>(r: &mut R, max: usize) -> Option<Vec<u8>> {
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

/// Connects to guest `port` through the hybrid-vsock socket in `dir`.
pub async fn connect(dir: &Path, port: u32, timeout: Duration) -> Result<UnixStream> {
    let path = uds_path(dir);
    let fut = async {
        let mut s =
            UnixStream::connect(&path).await.map_err(|e| Error::io(format!("connecting to {}", path.display()), e))?;
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

/// Splits a byte stream into lines of at most `max` bytes; longer lines are cut (the rest up
/// to the next `\n` dropped). Pure, so garbage input can be tested.
pub struct LineSplitter {
    max: usize,
    buf: Vec<u8>,
    skipping: bool,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        LineSplitter { max, buf: Vec::new(), skipping: false }
    }

    /// Feeds bytes; returns complete lines (without `\n`, lossily decoded, control
    /// characters replaced).
    pub fn push(&mut self, data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in data {
            if b == b'\n' {
                if !self.skipping {
                    out.push(clean(&self.buf));
                }
                self.buf.clear();
                self.skipping = false;
            } else if !self.skipping {
                self.buf.push(b);
                if self.buf.len() > self.max {
                    self.buf.truncate(self.max);
                    out.push(clean(&self.buf) + " [truncated]");
                    self.buf.clear();
                    self.skipping = true;
                }
            }
        }
        out
    }
}

fn clean(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().map(|c| if c.is_control() && c != '\t' { '?' } else { c }).collect()
}

/// Forwards the agent's log lines into the shim log (target "bulwark_agent") until EOF.
pub fn spawn_log_forwarder(mut stream: UnixStream, sandbox: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut split = LineSplitter::new(MAX_LOG_LINE);
        let mut buf = vec![0u8; 16 * 1024];
        let mut lines: u64 = 0;
        loop {
            let n = match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for line in split.push(&buf[..n]) {
                lines += 1;
                if lines <= MAX_LOG_LINES {
                    tracing::info!(target: "bulwark_agent", "[{sandbox}] {line}");
                } else if lines == MAX_LOG_LINES + 1 {
                    tracing::warn!(target: "bulwark_agent", "[{sandbox}] log line limit reached; dropping further agent logs");
                }
            }
        }
        tracing::info!("agent log connection of sandbox {sandbox} closed after {lines} lines");
    })
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

    #[test]
    fn splitter_bounds_lines() {
        let mut s = LineSplitter::new(8);
        assert_eq!(s.push(b"ab"), Vec::<String>::new());
        assert_eq!(s.push(b"c\nd\n"), vec!["abc".to_string(), "d".to_string()]);
        let out = s.push(b"0123456789abcdef\nok\n");
        assert_eq!(out, vec!["01234567 [truncated]".to_string(), "ok".to_string()]);
        assert_eq!(s.push(b"\x1b[31mred\n"), vec!["?[31mred".to_string()]);
        assert_eq!(s.push(b"\xff\n"), vec!["\u{fffd}".to_string()]);
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
