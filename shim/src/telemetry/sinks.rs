//! Where a sandbox's enriched events go, each through its own queue bounded in bytes so that
//! a slow or absent consumer never makes the shim hold more than the configured bytes:
//! - the node socket (the Falco plugin): one connection per shim, reconnected with backoff;
//!   while it is down frames wait in the queue (`node_buffer_bytes`), then are dropped;
//! - the sandbox's own `telemetry.frames` (state directory; what `bulwark events` reads),
//!   capped, the previous one kept as `.1`;
//! - optionally a JSON-lines file shared by the node's shims (appends of whole lines; not
//!   written past its cap: the operator rotates it).
//!
//! Every refused or lost event is counted in the sandbox's [`Counters`].

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bulwark_protocol::telemetry::{encode_frame, Enriched};
use bulwark_protocol::telemetry_json::enriched_to_json;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

use super::counters::Counters;
use super::queue::BoundedQueue;
use crate::agent::ratelimit::RateLimit;
use crate::config;

/// Bytes the file writer may have queued (frames + JSON).
const FILES_QUEUE_BYTES: usize = 4 << 20;
/// Most bytes written to a sink in one go.
const BATCH_BYTES: usize = 256 << 10;
/// Reconnect backoff to the node socket.
const NODE_BACKOFF_MIN: Duration = Duration::from_millis(100);
const NODE_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One event for the file writer.
struct FileItem {
    frame: Arc<Vec<u8>>,
    json: Option<String>,
}

/// The sinks of one sandbox.
pub struct Sinks {
    files: Arc<BoundedQueue<FileItem>>,
    node: Option<Arc<BoundedQueue<Arc<Vec<u8>>>>>,
    json: bool,
    counters: Arc<Counters>,
}

impl Sinks {
    /// The sinks for `cfg`, with their writer tasks (aborted by the relay on stop).
    pub fn start(
        cfg: &config::Telemetry,
        sandbox_id: &str,
        frames: &FramesPaths,
        counters: Arc<Counters>,
    ) -> (Arc<Sinks>, Vec<JoinHandle<()>>) {
        let files = Arc::new(BoundedQueue::new(FILES_QUEUE_BYTES));
        let json_path = (!cfg.json_file.as_os_str().is_empty()).then(|| cfg.json_file.clone());
        let mut tasks = vec![tokio::spawn(write_files(
            files.clone(),
            FramesFile::new(frames, cfg.frames_file_max_bytes),
            json_path.clone().map(|p| JsonFile { path: p, max: cfg.json_file_max_bytes, file: None }),
            sandbox_id.to_string(),
            counters.clone(),
        ))];
        let node = (!cfg.node_socket.as_os_str().is_empty()).then(|| {
            let q = Arc::new(BoundedQueue::new(cfg.node_buffer_bytes));
            tasks.push(tokio::spawn(write_node(
                q.clone(),
                cfg.node_socket.clone(),
                sandbox_id.to_string(),
                counters.clone(),
            )));
            q
        });
        (Arc::new(Sinks { files, node, json: json_path.is_some(), counters }), tasks)
    }

    /// Hands one event to every sink; `false` if no sink took it. Each refusal is counted.
    pub fn publish(&self, m: &Enriched) -> bool {
        let frame = match encode_frame(m) {
            Ok(f) => Arc::new(f),
            Err(_) => return false,
        };
        let json = self.json.then(|| {
            let mut line = enriched_to_json(m).to_string();
            line.push('\n');
            line
        });
        let weight = frame.len() + json.as_ref().map_or(0, String::len);
        let mut took = self.files.push(FileItem { frame: frame.clone(), json }, weight);
        if !took {
            self.counters.sink_dropped.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(node) = &self.node {
            let len = frame.len();
            if node.push(frame, len) {
                took = true;
            } else {
                self.counters.sink_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        took
    }

    /// Events queued and not yet written, in bytes (files, node socket).
    #[cfg(test)]
    pub fn queued_bytes(&self) -> (usize, usize) {
        (self.files.bytes(), self.node.as_ref().map_or(0, |q| q.bytes()))
    }

    /// Events the node socket's queue refused (full while the plugin is down or slow).
    pub fn node_dropped(&self) -> u64 {
        self.node.as_ref().map_or(0, |q| q.dropped())
    }
}

/// Where the sandbox's frames file is, and where it goes when full.
#[derive(Debug, Clone)]
pub struct FramesPaths {
    pub current: PathBuf,
    pub old: PathBuf,
}

/// The sandbox's `telemetry.frames`, capped: when full it becomes `telemetry.frames.1`.
struct FramesFile {
    path: PathBuf,
    old: PathBuf,
    max: u64,
    file: Option<(File, u64)>,
}

impl FramesFile {
    fn new(paths: &FramesPaths, max: u64) -> Self {
        FramesFile { path: paths.current.clone(), old: paths.old.clone(), max, file: None }
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if let Some((_, len)) = &self.file {
            if len + bytes.len() as u64 > self.max {
                self.file = None;
                std::fs::rename(&self.path, &self.old)?;
            }
        }
        if self.file.is_none() {
            let f = open_append(&self.path, true)?;
            let len = f.metadata()?.len();
            self.file = Some((f, len));
        }
        let Some((f, len)) = self.file.as_mut() else { return Ok(()) };
        f.write_all(bytes)?;
        *len += bytes.len() as u64;
        Ok(())
    }
}

/// The node's JSON-lines file: appended to while under its cap.
struct JsonFile {
    path: PathBuf,
    max: u64,
    file: Option<File>,
}

impl JsonFile {
    /// Appends whole lines; `Ok(false)` when the file is at its cap (nothing written).
    fn write(&mut self, lines: &[u8]) -> std::io::Result<bool> {
        if self.file.is_none() {
            self.file = Some(open_append(&self.path, false)?);
        }
        let Some(f) = self.file.as_mut() else { return Ok(false) };
        let len = f.metadata()?.len();
        if len + lines.len() as u64 > self.max {
            // Rotated away by the operator? Start a new one at the next write.
            self.file = None;
            return Ok(false);
        }
        f.write_all(lines)?;
        Ok(true)
    }
}

/// Opens `path` to append, never through a symlink; `private`: mode 0600 (else 0640).
fn open_append(path: &Path, private: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(if private { 0o600 } else { 0o640 })
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

async fn write_files(
    q: Arc<BoundedQueue<FileItem>>,
    mut frames: FramesFile,
    mut json: Option<JsonFile>,
    sandbox_id: String,
    counters: Arc<Counters>,
) {
    let mut complaints = RateLimit::new(3, 1);
    let (mut fbuf, mut jbuf) = (Vec::new(), Vec::new());
    loop {
        let first = q.pop().await;
        let mut n = 0u64;
        let mut next = Some(first);
        while let Some(item) = next {
            n += 1;
            fbuf.extend_from_slice(&item.frame);
            if let Some(line) = item.json {
                jbuf.extend_from_slice(line.as_bytes());
            }
            next = if fbuf.len() < BATCH_BYTES { q.try_pop() } else { None };
        }
        if let Err(e) = frames.write(&fbuf) {
            frames.file = None;
            if complaints.allow() {
                tracing::warn!("sandbox {sandbox_id}: writing {}: {e}", frames.path.display());
            }
        }
        if let Some(j) = json.as_mut() {
            if !jbuf.is_empty() {
                match j.write(&jbuf) {
                    Ok(true) => {}
                    Ok(false) => {
                        counters.sink_dropped.fetch_add(n, Ordering::Relaxed);
                        if complaints.allow() {
                            tracing::warn!(
                                "sandbox {sandbox_id}: {} is at its cap ({} bytes): events not written (rotate it)",
                                j.path.display(),
                                j.max
                            );
                        }
                    }
                    Err(e) => {
                        j.file = None;
                        counters.sink_dropped.fetch_add(n, Ordering::Relaxed);
                        if complaints.allow() {
                            tracing::warn!("sandbox {sandbox_id}: writing {}: {e}", j.path.display());
                        }
                    }
                }
            }
        }
        fbuf.clear();
        jbuf.clear();
    }
}

async fn write_node(q: Arc<BoundedQueue<Arc<Vec<u8>>>>, path: PathBuf, sandbox_id: String, counters: Arc<Counters>) {
    let mut backoff = NODE_BACKOFF_MIN;
    let mut said_down = false;
    let mut buf = Vec::new();
    loop {
        let mut stream = match UnixStream::connect(&path).await {
            Ok(s) => {
                backoff = NODE_BACKOFF_MIN;
                if std::mem::take(&mut said_down) {
                    tracing::info!("sandbox {sandbox_id}: telemetry node socket {} is back", path.display());
                }
                s
            }
            Err(e) => {
                if !said_down {
                    tracing::warn!(
                        "sandbox {sandbox_id}: telemetry node socket {}: {e}; events wait (bounded) and are retried",
                        path.display()
                    );
                    said_down = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(NODE_BACKOFF_MAX);
                continue;
            }
        };
        loop {
            let first = q.pop().await;
            let mut n = 0u64;
            let mut next = Some(first);
            while let Some(frame) = next {
                n += 1;
                buf.extend_from_slice(&frame);
                next = if buf.len() < BATCH_BYTES { q.try_pop() } else { None };
            }
            let res = stream.write_all(&buf).await;
            buf.clear();
            if let Err(e) = res {
                counters.sink_dropped.fetch_add(n, Ordering::Relaxed);
                tracing::warn!("sandbox {sandbox_id}: telemetry node socket {}: {e}; reconnecting", path.display());
                said_down = true;
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_protocol::telemetry::{decode_enriched, Event, FrameDecoder};

    /// A temp dir removed when the test ends (also on failure).
    struct Dir(PathBuf);
    impl Dir {
        fn new(what: &str) -> Self {
            Dir(crate::host::fake::temp_dir(what))
        }
        fn as_path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn paths(dir: &Path) -> FramesPaths {
        FramesPaths { current: dir.join("telemetry.frames"), old: dir.join("telemetry.frames.1") }
    }

    fn frames_in(path: &Path) -> Vec<Enriched> {
        let bytes = std::fs::read(path).unwrap_or_default();
        let mut d = FrameDecoder::new(bulwark_protocol::limits::MAX_TELEMETRY_FRAME);
        let mut input = &bytes[..];
        let mut out = vec![];
        while let Some(f) = d.decode(&mut input).unwrap() {
            out.push(decode_enriched(&f).unwrap());
        }
        d.finish().unwrap();
        out
    }

    fn enriched(pid: u32) -> Enriched {
        let mut e = Event::new();
        e.pid = pid;
        let mut m = Enriched::new();
        m.event = Some(e).into();
        m.pod_name = "p".into();
        m
    }

    #[test]
    fn the_frames_file_is_capped_and_rotated() {
        let dir = Dir::new("frames");
        let mut f = FramesFile::new(&paths(dir.as_path()), 200);
        let one = encode_frame(&enriched(1)).unwrap();
        for _ in 0..40 {
            f.write(&one).unwrap();
        }
        let cur = std::fs::metadata(dir.as_path().join("telemetry.frames")).unwrap().len();
        let old = std::fs::metadata(dir.as_path().join("telemetry.frames.1")).unwrap().len();
        assert!(cur <= 200 && old <= 200, "{cur} {old}");
        assert!(!frames_in(&dir.as_path().join("telemetry.frames")).is_empty());
        assert_eq!(frames_in(&dir.as_path().join("telemetry.frames.1"))[0].pod_name, "p");
    }

    #[test]
    fn a_symlink_in_place_of_a_sink_file_is_not_followed() {
        let dir = Dir::new("frames-link");
        let target = dir.as_path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.as_path().join("telemetry.frames")).unwrap();
        let mut f = FramesFile::new(&paths(dir.as_path()), 1 << 20);
        assert!(f.write(b"x").is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }

    #[test]
    fn the_json_file_is_not_written_past_its_cap() {
        let dir = Dir::new("json");
        let mut j = JsonFile { path: dir.as_path().join("events.jsonl"), max: 10, file: None };
        assert!(j.write(b"{\"a\":1}\n").unwrap());
        assert!(!j.write(b"{\"b\":2}\n").unwrap());
        assert_eq!(std::fs::read(dir.as_path().join("events.jsonl")).unwrap(), b"{\"a\":1}\n");
    }

    #[tokio::test]
    async fn events_reach_the_node_socket_files_and_json_and_wait_while_it_is_down() {
        let dir = Dir::new("sinks");
        let sock = dir.as_path().join("node.sock");
        let cfg = config::Telemetry {
            node_socket: sock.clone(),
            json_file: dir.as_path().join("events.jsonl"),
            node_buffer_bytes: 64 << 10,
            ..Default::default()
        };
        let counters = Arc::new(Counters::default());
        let (sinks, tasks) = Sinks::start(&cfg, "sb", &paths(dir.as_path()), counters.clone());
        // The plugin is not there yet: the first events wait in the bounded queue.
        for pid in 0..3 {
            assert!(sinks.publish(&enriched(pid)));
        }
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let (mut conn, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.unwrap().unwrap();
        for pid in 3..5 {
            assert!(sinks.publish(&enriched(pid)));
        }
        let mut d = FrameDecoder::new(bulwark_protocol::limits::MAX_TELEMETRY_FRAME);
        let mut got = vec![];
        let mut buf = [0u8; 4096];
        while got.len() < 5 {
            let n = tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read(&mut conn, &mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "node socket closed after {} frames", got.len());
            let mut input = &buf[..n];
            while let Some(f) = d.decode(&mut input).unwrap() {
                got.push(decode_enriched(&f).unwrap().event.pid);
            }
        }
        assert_eq!(got, vec![0, 1, 2, 3, 4], "in order, none lost while the socket was down");
        // The files got them too.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while frames_in(&dir.as_path().join("telemetry.frames")).len() < 5 {
            assert!(std::time::Instant::now() < deadline, "frames file incomplete");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let text = std::fs::read_to_string(dir.as_path().join("events.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 5);
        assert!(text.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["pod"] == "p"));
        assert_eq!(counters.lost(), 0);
        for t in tasks {
            t.abort();
        }
    }

    #[tokio::test]
    async fn a_node_socket_that_never_comes_holds_at_most_its_buffer() {
        let dir = Dir::new("sinks-down");
        let cfg = config::Telemetry {
            node_socket: dir.as_path().join("absent.sock"),
            node_buffer_bytes: 64 << 10,
            frames_file_max_bytes: 64 << 10,
            ..Default::default()
        };
        let (sinks, tasks) = Sinks::start(&cfg, "sb", &paths(dir.as_path()), Arc::new(Counters::default()));
        for pid in 0..10_000 {
            sinks.publish(&enriched(pid));
        }
        assert!(sinks.queued_bytes().1 <= 64 << 10);
        assert!(sinks.node_dropped() > 0, "the rest was dropped and counted");
        for t in tasks {
            t.abort();
        }
    }
}
