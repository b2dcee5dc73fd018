//! Logging: `tracing` events go to /dev/console (the serial console the host captures) and
//! into a bounded queue that the crate's `vsock.rs` forwards to the host after the READY
//! line. Lines are cut to fit protocol::MAX_LOG_LINE; when the queue is full, lines are dropped
//! (the console still has them) rather than growing memory.
//!
//! Fork safety: libcontainer logs from the helper processes the agent forks for its calls
//! (init/helper.rs) and from the processes libcontainer clones from those. In a helper a mutex
//! or the async runtime's queues may be held by an agent thread that does not exist there, so
//! the writer takes no lock: the console is a raw fd written with one write(2) per line, and
//! only the agent process itself (checked by pid) queues lines for the host. (With a global
//! default dispatcher, `tracing` takes no lock on an event either.)
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How many log lines may wait for the host connection.
const QUEUE_LINES: usize = 2048;

pub type LogReceiver = mpsc::Receiver<String>;

struct Sink {
    /// Raw fd of /dev/console (-1: none). Never closed.
    console: i32,
    /// The agent's pid: other pids are libcontainer's forked children.
    pid: u32,
    queue: mpsc::Sender<String>,
    forwarding: AtomicBool,
    dropped: AtomicU64,
}

static SINK: OnceLock<Arc<Sink>> = OnceLock::new();

/// Cuts `line` (without its newline) to at most `max - 1` bytes on a char boundary and
/// appends `\n`.
pub fn cap_line(line: &str, max: usize) -> String {
    let limit = max.saturating_sub(1);
    let mut end = line.len().min(limit);
    while end > 0 && !line.is_char_boundary(end) {
        end -= 1;
    }
    let mut s = line[..end].replace('\n', " ");
    s.push('\n');
    s
}

/// Stops queueing lines for the host (the connection failed for good).
pub fn stop_forwarding() {
    if let Some(s) = SINK.get() {
        s.forwarding.store(false, Ordering::Relaxed);
    }
}

/// Lines dropped because the host queue was full.
pub fn dropped_lines() -> u64 {
    SINK.get().map(|s| s.dropped.load(Ordering::Relaxed)).unwrap_or(0)
}

/// One formatted event; emitted on drop.
pub struct EventWriter {
    buf: Vec<u8>,
}

impl Write for EventWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() < protocol::MAX_LOG_LINE * 2 {
            self.buf.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let Some(sink) = SINK.get() else { return };
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.trim_end_matches('\n');
        if text.is_empty() {
            return;
        }
        let line = cap_line(text, protocol::MAX_LOG_LINE);
        if sink.console >= 0 {
            // SAFETY: write(2) of a valid buffer to an fd we opened and never close.
            unsafe { libc::write(sink.console, line.as_ptr().cast(), line.len()) };
        }
        if std::process::id() != sink.pid {
            return; // a forked child: console only
        }
        if sink.forwarding.load(Ordering::Relaxed) && sink.queue.try_send(line).is_err() {
            sink.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Make;
impl<'a> MakeWriter<'a> for Make {
    type Writer = EventWriter;
    fn make_writer(&'a self) -> EventWriter {
        EventWriter { buf: Vec::with_capacity(256) }
    }
}

/// Log level from the kernel command line: `bulwark.log=debug|info|warn|error|trace`.
pub fn level_from_cmdline(cmdline: &str) -> Level {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bulwark.log="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(Level::INFO)
}

/// Installs the global subscriber. Returns the queue the vsock forwarder drains.
pub fn init() -> LogReceiver {
    let (tx, rx) = mpsc::channel(QUEUE_LINES);
    let console = std::fs::OpenOptions::new().write(true).open("/dev/console").map(|f| f.into_raw_fd()).unwrap_or(-1);
    let sink = Arc::new(Sink {
        console,
        pid: std::process::id(),
        queue: tx,
        forwarding: AtomicBool::new(true),
        dropped: AtomicU64::new(0),
    });
    let _ = SINK.set(sink);
    let level = level_from_cmdline(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    // libcgroups warns about every controller it does not implement (rdma, misc) on each create.
    let filter = Targets::new()
        .with_default(level)
        .with_target("libcgroups::v2::util", if level >= Level::DEBUG { level } else { Level::ERROR });
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_writer(Make);
    let _ = tracing_subscriber::registry().with(filter).with(fmt).try_init();
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_capped_on_char_boundaries() {
        assert_eq!(cap_line("hello", 100), "hello\n");
        assert_eq!(cap_line("hello", 4), "hel\n");
        let s = "aé"; // 'é' is 2 bytes: cutting at 2 would split it
        assert_eq!(cap_line(s, 3), "a\n");
        assert_eq!(cap_line("a\nb", 10), "a b\n");
        assert!(cap_line(&"x".repeat(100_000), protocol::MAX_LOG_LINE).len() <= protocol::MAX_LOG_LINE);
    }

    #[test]
    fn level_parsing() {
        assert_eq!(level_from_cmdline("quiet bulwark.log=debug x"), Level::DEBUG);
        assert_eq!(level_from_cmdline("quiet"), Level::INFO);
        assert_eq!(level_from_cmdline("bulwark.log=bogus"), Level::INFO);
    }
}
