//! The hostile streams of the test modes, each on its own thread at the lowest priority (so
//! the agent keeps answering while the guest floods): the log connection after the first
//! container started (`flood-logs`, `garbage-frames`, `oversize`), the serial console
//! (`flood-logs`), the telemetry port (`garbage-frames`, `oversize`), and vsock traffic to the
//! guest's own CID and to a sibling CID (`vsock-flood`, with rawvsock.rs). Writes block while the host does not
//! read: the guest pushes exactly as fast as the host takes.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, VsockAddr};
use protocol::telemetry::{GuestFrame, Hello, TELEMETRY_VERSION};
use tokio::io::AsyncWriteExt;

use super::mode::{first_start, Mode};
use super::rawvsock;
use crate::init::logging::{self, LogReceiver};
use crate::vsock;

/// One write's worth of flood.
const CHUNK: usize = 64 * 1024;
/// A CID no VM of this helper has (one vhost-device-vsock serves one VM).
const SIBLING_CID: u32 = 4;

/// `flood-logs`, `garbage-frames`, `oversize`: READY and normal log forwarding until the first
/// container started, then the mode's bytes on the same connection (normal logs then stay on
/// the console), and its companions (console flood, telemetry port).
pub async fn log_connection(mode: Mode, mut lines: LogReceiver) {
    let Some(mut stream) = vsock::announce().await else { return };
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some(line) => {
                    if AsyncWriteExt::write_all(&mut stream, line.as_bytes()).await.is_err() {
                        logging::stop_forwarding();
                        return;
                    }
                }
                None => return,
            },
            _ = first_start::wait() => break,
        }
    }
    logging::stop_forwarding();
    tracing::warn!("test mode {}: the log connection now carries the mode's bytes", mode.name());
    let fd = match nix::unistd::dup(stream.as_raw_fd()) {
        // SAFETY: `dup` just returned this fd; nothing else owns it.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
        Err(e) => {
            tracing::error!("test mode {}: dup of the log connection: {e}", mode.name());
            return;
        }
    };
    drop(stream);
    let _ = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()));
    let log = std::fs::File::from(fd);
    match mode {
        Mode::FloodLogs => {
            spawn("flood-logs log", move || flood(log, log_lines));
            spawn("flood-logs console", || {
                if let Ok(console) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
                    flood(console, console_lines);
                }
            });
        }
        Mode::GarbageFrames => {
            spawn("garbage-frames log", move || flood(log, garbage));
            spawn("garbage-frames telemetry", || telemetry(garbage_frames));
        }
        Mode::Oversize => {
            spawn("oversize log", move || flood(log, endless_line));
            spawn("oversize telemetry", || telemetry(oversize_frames));
        }
        _ => {}
    }
    // The rest of the log lines go nowhere but the console.
    while lines.recv().await.is_some() {}
}

/// `vsock-flood`: for 10 s, connection requests through Linux to the guest's own CID (Linux
/// refuses them: ENODEV) and to a sibling CID (they reach the host's vsock device); then the
/// device is taken from Linux and packets to both CIDs go onto it directly (rawvsock.rs).
pub fn vsock_flood() {
    tracing::warn!("test mode vsock-flood: flooding CID {} and CID {SIBLING_CID}", protocol::GUEST_CID);
    spawn("vsock-flood", || {
        let mut rng = Rng::new();
        let mut n: u64 = 0;
        // What the guest kernel answered, per CID: (connects, errno of the last refusal).
        let mut outcome: [(u64, Option<nix::errno::Errno>); 2] = [(0, None); 2];
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let which = (n % 2) as usize;
            let cid = if which == 0 { protocol::GUEST_CID } else { SIBLING_CID };
            let port = 20_000 + (rng.next() % 20_000) as u32;
            if let Ok(s) = vsock_socket(SockFlag::SOCK_NONBLOCK) {
                outcome[which].0 += 1;
                match socket::connect(s.as_raw_fd(), &VsockAddr::new(cid, port)) {
                    Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
                    Err(e) => outcome[which].1 = Some(e),
                }
            }
            n += 1;
        }
        tracing::warn!(
            "test mode vsock-flood: through Linux, connects to CID {}: {:?}; to CID {SIBLING_CID}: {:?}",
            protocol::GUEST_CID,
            outcome[0],
            outcome[1]
        );
        if let Err(e) = rawvsock::flood() {
            tracing::error!("test mode vsock-flood: driving the vsock device: {e}");
        }
    });
}

/// The boot's telemetry stream token, from SetupSandbox (agent.rs).
static STREAM_TOKEN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

pub fn remember_stream_token(token: &[u8]) {
    let _ = STREAM_TOKEN.set(token.to_vec());
}

/// Connects to the host's telemetry port (again and again: the host may drop a hostile
/// stream) and writes a Hello with the boot's token (as a guest that owns its agent can),
/// then the frames `next` makes until the connection breaks.
fn telemetry(next: fn(&mut Rng) -> Vec<u8>) {
    let mut rng = Rng::new();
    let mut refused: u64 = 0;
    loop {
        let conn = vsock_socket(SockFlag::empty()).and_then(|s| {
            socket::connect(s.as_raw_fd(), &VsockAddr::new(protocol::HOST_CID, protocol::TELEMETRY_PORT))?;
            Ok(std::fs::File::from(s))
        });
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                refused += 1;
                if refused == 1 || refused.is_multiple_of(60) {
                    tracing::warn!("test mode: telemetry port {}: {e} ({refused} tries)", protocol::TELEMETRY_PORT);
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let hello = GuestFrame {
            kind: Some(protocol::telemetry::GuestFrameKind::Hello(Hello {
                version: TELEMETRY_VERSION,
                sandbox_id: "hostile".into(),
                token: STREAM_TOKEN.get().cloned().unwrap_or_default(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let first = protocol::telemetry::encode_frame(&hello).unwrap_or_default();
        if conn.write_all(&first).is_err() {
            continue;
        }
        while conn.write_all(&next(&mut rng)).is_ok() {}
    }
}

/// Writes what `next` makes to `out` until a write fails.
fn flood(mut out: std::fs::File, next: fn(&mut Rng, u64) -> Vec<u8>) {
    let mut rng = Rng::new();
    let mut n: u64 = 0;
    while out.write_all(&next(&mut rng, n)).is_ok() {
        n += 1;
    }
    tracing::warn!("test mode: a flood ended after {n} chunks (the host closed the stream)");
}

/// Log-looking lines, CHUNK bytes at a time.
fn log_lines(_: &mut Rng, n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHUNK + 256);
    let mut i = 0u64;
    while out.len() < CHUNK {
        let _ = writeln!(out, "flood-logs chunk {n} line {i}: {}", "x".repeat(120));
        i += 1;
    }
    out
}

/// Console lines: short ones (the serial console is slow).
fn console_lines(_: &mut Rng, n: u64) -> Vec<u8> {
    format!("flood-logs console {n} {}\n", "y".repeat(100)).into_bytes()
}

/// Random bytes with a newline now and then, NULs, escapes, bidi overrides and invalid UTF-8.
fn garbage(rng: &mut Rng, _: u64) -> Vec<u8> {
    let mut out: Vec<u8> = (0..CHUNK).map(|_| rng.next() as u8).collect();
    for _ in 0..64 {
        let at = (rng.next() as usize) % (CHUNK - 8);
        let spice: &[u8] = match rng.next() % 5 {
            0 => b"\n",
            1 => b"\x1b[2J\x1b[H",
            2 => "\u{202e}".as_bytes(),
            3 => b"\xff\xfe\xc0\x80",
            _ => b"\0\r\n",
        };
        out[at..at + spice.len()].copy_from_slice(spice);
    }
    out
}

/// One line that never ends: no newline, ever.
fn endless_line(_: &mut Rng, _: u64) -> Vec<u8> {
    vec![b'A'; CHUNK]
}

/// Frames with random lengths within the cap and random bodies (most do not parse).
fn garbage_frames(rng: &mut Rng) -> Vec<u8> {
    let len = (rng.next() as usize) % (protocol::limits::MAX_TELEMETRY_FRAME + 1);
    let mut out = (len as u32).to_be_bytes().to_vec();
    out.extend((0..len).map(|_| rng.next() as u8));
    out
}

/// A frame length over the cap (up to u32::MAX), then an endless body.
fn oversize_frames(rng: &mut Rng) -> Vec<u8> {
    let len = (protocol::limits::MAX_TELEMETRY_FRAME as u32 + 1).saturating_add(rng.next() as u32 % u32::MAX);
    let mut out = len.to_be_bytes().to_vec();
    out.extend(std::iter::repeat_n(0x42, CHUNK * 16));
    out
}

fn vsock_socket(flags: SockFlag) -> nix::Result<OwnedFd> {
    socket::socket(AddressFamily::Vsock, SockType::Stream, flags | SockFlag::SOCK_CLOEXEC, None)
}

/// Starts `f` on a named thread at the lowest priority.
pub(super) fn spawn(name: &str, f: impl FnOnce() + Send + 'static) {
    let r = std::thread::Builder::new().name(name.to_string()).spawn(move || {
        // SAFETY: setpriority(2) on the calling thread (who = 0: on Linux the nice value is
        // per thread); no memory is passed.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
        f()
    });
    if let Err(e) = r {
        tracing::error!("test mode: cannot start thread {name}: {e}");
    }
}

/// xorshift64*: garbage, not secrets.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64);
        Rng(seed.unwrap_or(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_as_hostile_as_intended() {
        let mut rng = Rng::new();
        for _ in 0..50 {
            let f = garbage_frames(&mut rng);
            let len = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize;
            assert!(len <= protocol::limits::MAX_TELEMETRY_FRAME && f.len() == len + 4);
            let f = oversize_frames(&mut rng);
            assert!(u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize > protocol::limits::MAX_TELEMETRY_FRAME);
        }
        assert!(!endless_line(&mut rng, 0).contains(&b'\n'));
        assert!(log_lines(&mut rng, 7).len() >= CHUNK);
        assert_eq!(garbage(&mut rng, 0).len(), CHUNK);
    }
}
