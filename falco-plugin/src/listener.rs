//! The node socket: accepts the shims' connections and reads their `Enriched` frames, bounded.
//! Each connection has its own thread and [`FrameDecoder`]; checked frames go into one bounded
//! queue the source drains. A full queue drops (counted), a message that does not decode is
//! counted and skipped, an oversize frame ends its connection.

use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use bulwark_protocol::limits::MAX_TELEMETRY_FRAME;
use bulwark_protocol::telemetry::{decode_enriched, FrameDecoder, FrameError};

/// How often blocked accept/read loops look at the stop flag.
const POLL: Duration = Duration::from_millis(100);

/// What the listener counts (the plugin's metrics).
#[derive(Debug, Default)]
pub struct Counters {
    pub frames: AtomicU64,
    pub garbage: AtomicU64,
    pub queue_drops: AtomicU64,
    pub oversize: AtomicU64,
    pub truncated: AtomicU64,
    pub connections: AtomicU64,
    pub refused_connections: AtomicU64,
    pub open_connections: AtomicUsize,
}

/// One checked frame: the host timestamp and the message bytes (decoded again by parse/extract).
pub type Queued = (u64, Vec<u8>);

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{0} exists and is not a socket: refusing to replace it")]
    NotASocket(PathBuf),
    #[error("preparing {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
}

/// Binds the socket at `path` (a stale socket there is replaced; anything else is refused),
/// mode 0600: only the node's root (the shims) may connect.
pub fn bind(path: &Path) -> Result<UnixListener, ListenError> {
    let io = |err| ListenError::Io { path: path.to_path_buf(), err };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => std::fs::remove_file(path).map_err(io)?,
        Ok(_) => return Err(ListenError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    listener.set_nonblocking(true).map_err(io)?;
    Ok(listener)
}

/// Accepts connections until `stop`; at most `max_conns` at once (more are closed at once).
pub fn spawn_acceptor(
    listener: UnixListener,
    queue: SyncSender<Queued>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    max_conns: usize,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("bulwark-accept".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    if counters.open_connections.load(Ordering::Relaxed) >= max_conns {
                        counters.refused_connections.fetch_add(1, Ordering::Relaxed);
                        log::warn!("bulwark: refusing a shim connection: {max_conns} already open");
                        continue;
                    }
                    counters.connections.fetch_add(1, Ordering::Relaxed);
                    counters.open_connections.fetch_add(1, Ordering::Relaxed);
                    let (q, c, s) = (queue.clone(), counters.clone(), stop.clone());
                    let spawned = std::thread::Builder::new().name("bulwark-conn".into()).spawn(move || {
                        read_connection(stream, &q, &c, &s);
                        c.open_connections.fetch_sub(1, Ordering::Relaxed);
                    });
                    if let Err(e) = spawned {
                        counters.open_connections.fetch_sub(1, Ordering::Relaxed);
                        log::error!("bulwark: cannot start a connection reader: {e}");
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
                Err(e) => {
                    log::warn!("bulwark: accept failed: {e}");
                    std::thread::sleep(POLL);
                }
            }
        }
    })
}

/// Reads one shim connection until EOF, an oversize frame, or `stop`.
pub fn read_connection(mut stream: UnixStream, queue: &SyncSender<Queued>, counters: &Counters, stop: &AtomicBool) {
    if stream.set_nonblocking(false).and_then(|_| stream.set_read_timeout(Some(POLL))).is_err() {
        return;
    }
    let mut decoder = FrameDecoder::new(MAX_TELEMETRY_FRAME);
    let mut buf = vec![0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                continue
            }
            Err(_) => break,
        };
        let mut input = &buf[..n];
        loop {
            match decoder.decode(&mut input) {
                Ok(Some(frame)) => handle_frame(frame, queue, counters),
                Ok(None) => break,
                Err(e) => {
                    counters.oversize.fetch_add(1, Ordering::Relaxed);
                    log::warn!("bulwark: dropping a shim connection: {e}");
                    return;
                }
            }
        }
    }
    if let Err(FrameError::Truncated { .. }) = decoder.finish() {
        counters.truncated.fetch_add(1, Ordering::Relaxed);
    }
}

/// Checks one frame and queues it (pure but for the queue and the counters).
pub fn handle_frame(frame: Vec<u8>, queue: &SyncSender<Queued>, counters: &Counters) {
    match decode_enriched(&frame) {
        Ok(m) => {
            counters.frames.fetch_add(1, Ordering::Relaxed);
            let ts = if m.host_ts_ns != 0 { m.host_ts_ns } else { now_ns() };
            match queue.try_send((ts, frame)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    counters.queue_drops.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Err(e) => {
            let n = counters.garbage.fetch_add(1, Ordering::Relaxed);
            if n < 10 || n.is_power_of_two() {
                log::warn!("bulwark: skipping a frame ({} so far): {e}", n + 1);
            }
        }
    }
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}
