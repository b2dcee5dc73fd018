//! Guest→host streams: byte streams the guest opens towards the host, read as hostile input
//! (bounded lines, bounded counts). Today the agent's log lines, forwarded into the shim log;
//! the syscall telemetry stream goes here next.

use bulwark_protocol::MAX_LOG_LINE;

use super::ratelimit::{unsafe_in_text, RateLimit};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

/// Guest log lines forwarded per sandbox: a burst, then a steady rate; the rest is dropped
/// and counted (one summary line per interval).
const LOG_BURST: u32 = 1000;
const LOG_LINES_PER_SEC: u32 = 200;

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
    String::from_utf8_lossy(bytes).chars().map(|c| if unsafe_in_text(c) { '?' } else { c }).collect()
}

/// Forwards the agent's log lines into the shim log (target "bulwark_agent") until EOF.
pub fn spawn_log_forwarder(mut stream: UnixStream, sandbox: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut split = LineSplitter::new(MAX_LOG_LINE);
        let mut buf = vec![0u8; 16 * 1024];
        let mut lines: u64 = 0;
        let mut limit = RateLimit::new(LOG_BURST, LOG_LINES_PER_SEC);
        let mut reported = std::time::Instant::now();
        loop {
            let n = match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for line in split.push(&buf[..n]) {
                lines += 1;
                if limit.allow() {
                    tracing::info!(target: "bulwark_agent", "[{sandbox}] {line}");
                }
            }
            if reported.elapsed() >= std::time::Duration::from_secs(10) {
                reported = std::time::Instant::now();
                let dropped = limit.take_dropped();
                if dropped > 0 {
                    tracing::warn!(target: "bulwark_agent", "[{sandbox}] {dropped} agent log lines dropped (more than {LOG_LINES_PER_SEC}/s)");
                }
            }
        }
        let dropped = limit.take_dropped();
        tracing::info!("agent log connection of sandbox {sandbox} closed after {lines} lines ({dropped} more dropped)");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
