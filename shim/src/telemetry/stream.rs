//! The guest's telemetry stream (guest port TELEMETRY_PORT, arriving on the hybrid-vsock
//! socket `<uds>_<TELEMETRY_PORT>`): hostile input, read bounded. Anything in the guest that
//! can open a vsock socket can connect here (a container is denied AF_VSOCK by its default
//! seccomp profile, but a tenant may be allowed unconfined), so a connection is served only
//! once its first frame, within HELLO_TIMEOUT and at most MAX_HELLO_FRAME bytes, is a `Hello`
//! of our version carrying this boot's token (sent to the agent in SetupSandbox, never to a
//! container). Up to MAX_PENDING connections wait for their Hello at once (more are closed at
//! once); one proven connection is served at a time, a newer proven one (the collector
//! reconnecting) replaces it. Frames are at most MAX_TELEMETRY_FRAME (a larger declared
//! length ends the connection before anything is allocated for it); events pass a
//! per-sandbox token bucket, then get the shim's identity (enrich.rs) and go to the sinks.
//! Everything refused is counted; nothing here panics on what the guest sends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulwark_protocol::limits::MAX_TELEMETRY_FRAME;
use bulwark_protocol::telemetry::{decode_guest_frame, FrameDecoder, GuestFrame, GuestFrameKind, TELEMETRY_VERSION};
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore};

use super::counters::Counters;
use super::enrich::Identity;
use super::sinks::Sinks;
use crate::agent::ratelimit::RateLimit;

/// How long a new connection has to send its Hello.
pub(super) const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections waiting for their Hello at once; more are closed when they arrive.
pub(super) const MAX_PENDING: usize = 8;
/// The largest first frame read: a Hello is a version, a sandbox id and a 32-byte token.
pub(crate) const MAX_HELLO_FRAME: usize = 1024;

/// What one frame leads to.
#[derive(Debug, PartialEq)]
pub(crate) enum Step {
    /// An event to enrich and forward.
    Forward(Box<bulwark_protocol::telemetry::Event>),
    /// Nothing to forward (a Drops report, a refused frame).
    Skip,
}

/// Compares two byte strings in time that depends on their lengths only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a connection's first frame is a Hello of our version with `token` (pure); the
/// error says why not (it is logged: it never contains the token).
pub(crate) fn check_hello(frame: &[u8], token: &[u8]) -> Result<(), String> {
    match decode_guest_frame(frame) {
        Ok(GuestFrame { kind: Some(GuestFrameKind::Hello(h)), .. }) => {
            if h.version != TELEMETRY_VERSION {
                Err(format!("telemetry version {} (this shim speaks {TELEMETRY_VERSION})", h.version))
            } else if !same_secret(&h.token, token) {
                Err("the Hello does not carry this boot's token (not the agent's collector)".into())
            } else {
                Ok(())
            }
        }
        Ok(_) => Err("the first frame is not a Hello".into()),
        Err(_) => Err("the first frame is not a valid Hello".into()),
    }
}

/// The frames of a connection after its Hello (pure but for the counters).
#[derive(Default)]
pub(crate) struct Connection {
    /// The guest's drop count as last reported on this connection.
    reported_drops: u64,
}

impl Connection {
    /// One frame's message bytes.
    pub fn on_frame(&mut self, frame: &[u8], limit: &mut RateLimit, c: &Counters) -> Step {
        let msg = match decode_guest_frame(frame) {
            Ok(GuestFrame { kind: Some(k), .. }) => k,
            Ok(_) | Err(_) => {
                c.garbage.fetch_add(1, Ordering::Relaxed);
                return Step::Skip;
            }
        };
        match msg {
            GuestFrameKind::Drops(d) => {
                // A running total per connection: only growth counts, a smaller number is a lie.
                if d.count > self.reported_drops {
                    c.guest_drops.fetch_add(d.count - self.reported_drops, Ordering::Relaxed);
                    self.reported_drops = d.count;
                }
                Step::Skip
            }
            GuestFrameKind::Event(e) => {
                c.received.fetch_add(1, Ordering::Relaxed);
                if limit.allow() {
                    Step::Forward(Box::new(e))
                } else {
                    c.rate_dropped.fetch_add(1, Ordering::Relaxed);
                    Step::Skip
                }
            }
            // A second Hello, or a kind this shim does not know (a newer collector): skipped,
            // counted.
            _ => {
                c.garbage.fetch_add(1, Ordering::Relaxed);
                Step::Skip
            }
        }
    }
}

/// What the relay of one sandbox works with.
pub(super) struct Relaying {
    pub sandbox_id: String,
    /// This boot's token (`TelemetryConfig.stream_token`).
    pub token: Arc<[u8]>,
    pub limit: RateLimit,
    pub identity: Identity,
    pub counters: Arc<Counters>,
    pub sinks: Arc<Sinks>,
}

/// A connection that sent a valid Hello, with the bytes it sent after it.
struct Proven {
    stream: UnixStream,
    rest: Vec<u8>,
}

/// The connection being served.
struct Served {
    stream: UnixStream,
    conn: Connection,
    decoder: FrameDecoder,
}

/// Complaints about the guest's connections, logged at most 5 a second.
#[derive(Clone)]
struct Complaints {
    sandbox_id: String,
    counters: Arc<Counters>,
    limit: Arc<std::sync::Mutex<RateLimit>>,
}

impl Complaints {
    /// Counts a refused or broken connection and logs why (rate-limited).
    fn bad(&self, why: &str) {
        self.counters.bad_streams.fetch_add(1, Ordering::Relaxed);
        let allowed = self.limit.lock().map(|mut l| l.allow()).unwrap_or(false);
        if allowed {
            tracing::warn!("sandbox {}: guest telemetry connection dropped: {why}", self.sandbox_id);
        }
    }
}

/// Aborts a task when dropped (the relay's tasks end with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves the guest's connections on `listener` until aborted: new connections prove
/// themselves in their own tasks (accept), the newest proven one is served here.
pub(super) async fn serve(listener: UnixListener, mut r: Relaying) {
    let complaints = Complaints {
        sandbox_id: r.sandbox_id.clone(),
        counters: r.counters.clone(),
        limit: Arc::new(std::sync::Mutex::new(RateLimit::new(5, 1))),
    };
    let (proven_tx, mut proven_rx) = mpsc::channel::<Proven>(1);
    let _acceptor =
        AbortOnDrop(tokio::spawn(accept(listener, r.token.clone(), r.counters.clone(), complaints.clone(), proven_tx)));
    enum Next {
        Newer(Option<Proven>),
        Read(std::io::Result<usize>),
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut current: Option<Served> = None;
    loop {
        let next = match current.as_mut() {
            None => Next::Newer(proven_rx.recv().await),
            Some(s) => tokio::select! {
                newer = proven_rx.recv() => Next::Newer(newer),
                n = s.stream.read(&mut buf) => Next::Read(n),
            },
        };
        match next {
            Next::Newer(None) => return,
            Next::Newer(Some(p)) => {
                if current.take().is_some() {
                    tracing::info!(
                        "sandbox {}: the guest's collector connected anew; its older stream is closed",
                        r.sandbox_id
                    );
                }
                let mut s = Served { stream: p.stream, conn: Connection::default(), decoder: decoder() };
                match feed(&p.rest, &mut s, &mut r) {
                    None => current = Some(s),
                    Some(why) => complaints.bad(&why),
                }
            }
            Next::Read(Ok(0)) => {
                if let Some(Err(e)) = current.take().map(|s| s.decoder.finish()) {
                    complaints.bad(&e.to_string());
                }
            }
            Next::Read(Ok(n)) => {
                if let Some(why) = current.as_mut().and_then(|s| feed(&buf[..n], s, &mut r)) {
                    current = None;
                    complaints.bad(&why);
                }
            }
            Next::Read(Err(e)) => {
                current = None;
                complaints.bad(&format!("read: {e}"));
            }
        }
    }
}

fn decoder() -> FrameDecoder {
    FrameDecoder::new(MAX_TELEMETRY_FRAME)
}

/// Runs `input` through a served connection's frames; Some(why) if the stream must end.
fn feed(mut input: &[u8], s: &mut Served, r: &mut Relaying) -> Option<String> {
    loop {
        match s.decoder.decode(&mut input) {
            Ok(Some(frame)) => {
                if let Step::Forward(event) = s.conn.on_frame(&frame, &mut r.limit, &r.counters) {
                    let m = r.identity.enrich(*event, r.counters.lost(), now_ns());
                    if r.sinks.publish(&m) {
                        r.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(None) => return None,
            Err(e) => return Some(e.to_string()),
        }
    }
}

/// Accepts the guest's connections; each gets HELLO_TIMEOUT to prove itself (at most
/// MAX_PENDING at once: more are closed on arrival), a proven one goes to `proven`.
async fn accept(
    listener: UnixListener,
    token: Arc<[u8]>,
    counters: Arc<Counters>,
    complaints: Complaints,
    proven: mpsc::Sender<Proven>,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("sandbox {}: accepting a guest telemetry connection: {e}", complaints.sandbox_id);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            complaints.bad(&format!("{MAX_PENDING} connections already wait for their Hello"));
            continue;
        };
        let (token, complaints, proven) = (token.clone(), complaints.clone(), proven.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HELLO_TIMEOUT, hello(stream, &token)).await {
                Ok(Ok(p)) => {
                    let _ = proven.send(p).await;
                }
                Ok(Err(why)) => complaints.bad(&why),
                Err(_) => complaints.bad(&format!("no Hello within {HELLO_TIMEOUT:?}")),
            }
        });
    }
}

/// Reads a connection's first frame (at most MAX_HELLO_FRAME bytes) and checks it.
async fn hello(mut stream: UnixStream, token: &[u8]) -> Result<Proven, String> {
    let mut decoder = FrameDecoder::new(MAX_HELLO_FRAME);
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before its Hello".into());
        }
        let mut input = &buf[..n];
        if let Some(frame) = decoder.decode(&mut input).map_err(|e| format!("first frame: {e}"))? {
            check_hello(&frame, token)?;
            return Ok(Proven { stream, rest: input.to_vec() });
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_protocol::telemetry::{Drops, Event, Hello};
    use protobuf::Message;

    fn frame(kind: GuestFrameKind) -> Vec<u8> {
        let mut f = GuestFrame::new();
        f.kind = Some(kind);
        f.write_to_bytes().unwrap()
    }

    fn hello(version: u32, token: &[u8]) -> Vec<u8> {
        let mut h = Hello::new();
        h.version = version;
        h.token = token.to_vec();
        frame(GuestFrameKind::Hello(h))
    }

    fn event(pid: u32) -> Vec<u8> {
        let mut e = Event::new();
        e.pid = pid;
        frame(GuestFrameKind::Event(e))
    }

    #[test]
    fn only_a_hello_of_our_version_with_the_token_opens_a_stream() {
        let token = b"0123456789abcdef0123456789abcdef";
        assert_eq!(check_hello(&hello(TELEMETRY_VERSION, token), token), Ok(()));
        for (what, first) in [
            ("an event first", event(1)),
            ("garbage", b"\xff\xff garbage".to_vec()),
            ("another version", hello(TELEMETRY_VERSION + 1, token)),
            ("no token", hello(TELEMETRY_VERSION, b"")),
            ("a wrong token", hello(TELEMETRY_VERSION, b"0123456789abcdef0123456789abcdeX")),
            ("a prefix of the token", hello(TELEMETRY_VERSION, &token[..16])),
            ("the token and more", hello(TELEMETRY_VERSION, b"0123456789abcdef0123456789abcdef!")),
        ] {
            let refused = check_hello(&first, token);
            assert!(refused.is_err(), "{what} was accepted");
            assert!(!refused.unwrap_err().contains("0123"), "the reason must not show the token");
        }
    }

    #[test]
    fn events_drops_and_garbage_after_the_hello() {
        let c = Counters::default();
        let mut limit = RateLimit::new(100, 100);
        let mut conn = Connection::default();
        match conn.on_frame(&event(7), &mut limit, &c) {
            Step::Forward(e) => assert_eq!(e.pid, 7),
            other => panic!("{other:?}"),
        }
        assert_eq!(conn.on_frame(b"\x0a\xff\xff\xff\xff\xff garbage", &mut limit, &c), Step::Skip);
        assert_eq!(
            conn.on_frame(&hello(TELEMETRY_VERSION, b"t"), &mut limit, &c),
            Step::Skip,
            "a second Hello is garbage"
        );
        assert_eq!(c.garbage.load(Ordering::Relaxed), 2);

        let drops = |n| {
            let mut d = Drops::new();
            d.count = n;
            frame(GuestFrameKind::Drops(d))
        };
        conn.on_frame(&drops(10), &mut limit, &c);
        conn.on_frame(&drops(4), &mut limit, &c);
        conn.on_frame(&drops(15), &mut limit, &c);
        assert_eq!(c.guest_drops.load(Ordering::Relaxed), 15, "a running total; a smaller number is ignored");
        assert_eq!(c.lost(), 17);
    }

    #[test]
    fn events_over_the_rate_are_dropped_and_counted() {
        let c = Counters::default();
        let mut limit = RateLimit::new(10, 1);
        let mut conn = Connection::default();
        let forwarded =
            (0..1000).filter(|i| matches!(conn.on_frame(&event(*i), &mut limit, &c), Step::Forward(_))).count();
        assert!((10..=11).contains(&forwarded), "{forwarded}");
        assert_eq!(c.received.load(Ordering::Relaxed), 1000);
        assert_eq!(c.rate_dropped.load(Ordering::Relaxed), 1000 - forwarded as u64);
    }
}
