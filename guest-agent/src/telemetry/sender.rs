//! The guest→host telemetry stream: a std thread that connects to the host (vsock CID 2,
//! `TELEMETRY_PORT`), writes a `Hello`, then the queued events as `GuestFrame` frames, and a
//! `Drops` frame whenever the drop counter grew (at most once a second). A failed connect or a
//! broken stream is retried with bounded exponential backoff; meanwhile the queue stays bounded
//! (the reader drops and counts what does not fit). Generic over the connection so the unit
//! tests drive it over a UNIX socket.
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::telemetry::{encode_frame, Drops, Event, GuestFrame, Hello, TELEMETRY_VERSION};

use super::queue::{Counters, DropReport, EventQueue};

/// How long a write may block before the connection counts as broken.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two connection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long the sender waits for an event before it looks at the drop counter again.
const POLL: Duration = Duration::from_millis(250);

/// Wait before connection attempt `attempt` (0 = the first retry): 100 ms doubling, capped.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1u64 << attempt.min(10))).min(MAX_BACKOFF)
}

fn frame(kind: impl FnOnce(&mut GuestFrame)) -> Vec<u8> {
    let mut g = GuestFrame::new();
    kind(&mut g);
    // Events are cut to the protocol's limits when decoded (raw.rs), so they always fit; a
    // message that did not would be empty here, and the sender counts it as dropped.
    encode_frame(&g).unwrap_or_default()
}

pub fn hello_frame(sandbox_id: &str, token: &[u8]) -> Vec<u8> {
    frame(|g| {
        g.set_hello(Hello {
            version: TELEMETRY_VERSION,
            sandbox_id: sandbox_id.to_string(),
            token: token.to_vec(),
            ..Default::default()
        })
    })
}

pub fn event_frame(e: Event) -> Vec<u8> {
    frame(|g| g.set_event(e))
}

pub fn drops_frame(count: u64) -> Vec<u8> {
    frame(|g| g.set_drops(Drops { count, ..Default::default() }))
}

/// What the sender needs: the queue it drains, the counters, the Hello's sandbox id and token,
/// and a flag that ends it (tests; the agent's collector runs for the VM's life).
pub struct Sender {
    pub queue: Arc<EventQueue>,
    pub counters: Arc<Counters>,
    pub sandbox_id: String,
    /// The host's secret for this boot (`TelemetryConfig.stream_token`); never logged.
    pub token: Vec<u8>,
    pub stop: Arc<AtomicBool>,
}

impl Sender {
    /// Connects with `connect` and streams until `stop` is set.
    pub fn run<S: Write>(self, mut connect: impl FnMut() -> std::io::Result<S>) {
        let mut attempt = 0u32;
        let mut drops = DropReport::default();
        let mut logged_refusal = false;
        while !self.stop.load(Ordering::Relaxed) {
            let mut stream = match connect() {
                Ok(s) => s,
                Err(e) => {
                    if !logged_refusal {
                        tracing::info!(
                            "telemetry: host not reachable on vsock port {} ({e}); retrying",
                            protocol::TELEMETRY_PORT
                        );
                        logged_refusal = true;
                    }
                    std::thread::sleep(backoff(attempt));
                    attempt = attempt.saturating_add(1);
                    continue;
                }
            };
            attempt = 0;
            logged_refusal = false;
            tracing::info!("telemetry: streaming to the host on vsock port {}", protocol::TELEMETRY_PORT);
            if let Err(e) = stream.write_all(&hello_frame(&self.sandbox_id, &self.token)) {
                tracing::warn!("telemetry: writing Hello failed: {e}; reconnecting");
                continue;
            }
            if let Err(e) = self.stream(&mut stream, &mut drops) {
                tracing::warn!("telemetry: the stream to the host broke: {e}; reconnecting");
                std::thread::sleep(backoff(0));
            }
        }
    }

    /// Writes events and Drops frames until a write fails or `stop` is set.
    fn stream<S: Write>(&self, stream: &mut S, drops: &mut DropReport) -> std::io::Result<()> {
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if let Some(n) = drops.due(self.counters.dropped(), now) {
                stream.write_all(&drops_frame(n))?;
                drops.sent(n, now);
            }
            let Some(e) = self.queue.pop(POLL) else { continue };
            let frame = event_frame(e);
            if frame.is_empty() {
                // Cannot happen for an event raw.rs made (it fits the frame limit); counted.
                self.counters.drop_n(1);
                continue;
            }
            if let Err(err) = stream.write_all(&frame) {
                self.counters.drop_n(1);
                return Err(err);
            }
            self.counters.sent_one();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::limits::MAX_TELEMETRY_FRAME;
    use protocol::telemetry::{decode_guest_frame, FrameDecoder, GuestFrameKind};
    use std::io::Read;
    use std::os::unix::net::{UnixListener, UnixStream};

    fn frames_of(stream: &mut UnixStream, want: usize) -> Vec<GuestFrame> {
        let mut d = FrameDecoder::new(MAX_TELEMETRY_FRAME);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while out.len() < want {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "stream ended after {} frames", out.len());
            let mut input = &buf[..n];
            while let Some(f) = d.decode(&mut input).unwrap() {
                out.push(decode_guest_frame(&f).unwrap());
            }
        }
        out
    }

    fn ev(pid: u32) -> Event {
        let mut e = Event::new();
        e.pid = pid;
        e
    }

    #[test]
    fn backoff_doubles_and_is_bounded() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(5), Duration::from_millis(3200));
        assert_eq!(backoff(6), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn hello_then_events_and_drops_and_reconnects_after_a_break() {
        let dir = std::env::temp_dir().join(format!("bulwark-sender-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.sock");
        let queue = Arc::new(EventQueue::new(16, 1 << 20));
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let sender = Sender {
            queue: queue.clone(),
            counters: counters.clone(),
            sandbox_id: "sb".into(),
            token: b"secret".to_vec(),
            stop: stop.clone(),
        };
        let p = path.clone();
        let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let a = attempts.clone();
        // Nobody listens at first: the sender retries.
        let h = std::thread::spawn(move || {
            sender.run(|| {
                a.fetch_add(1, Ordering::Relaxed);
                UnixStream::connect(&p)
            })
        });
        std::thread::sleep(Duration::from_millis(350));
        assert!(attempts.load(Ordering::Relaxed) >= 2, "retried while the host was away");
        counters.drop_n(4);
        assert!(queue.push(ev(1)));
        assert!(queue.push(ev(2)));
        let listener = UnixListener::bind(&path).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        let frames = frames_of(&mut conn, 4);
        match &frames[0].kind {
            Some(GuestFrameKind::Hello(hello)) => {
                assert_eq!(
                    (hello.version, hello.sandbox_id.as_str(), &hello.token[..]),
                    (TELEMETRY_VERSION, "sb", &b"secret"[..])
                )
            }
            other => panic!("first frame {other:?}"),
        }
        assert!(matches!(&frames[1].kind, Some(GuestFrameKind::Drops(d)) if d.count == 4));
        let pids: Vec<u32> = frames[2..]
            .iter()
            .map(|f| match &f.kind {
                Some(GuestFrameKind::Event(e)) => e.pid,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(pids, [1, 2]);
        // The sender counts an event as sent once its write returned, which may be just after
        // the reader here got it: wait (bounded) for the count.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while counters.get().1 < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(counters.get().1, 2, "sent");

        // The host goes away; the sender reconnects and starts again with a Hello.
        drop(conn);
        for i in 0..20 {
            // Writes into a closed peer fail after a moment; keep feeding until one does.
            let _ = queue.push(ev(100 + i));
            std::thread::sleep(Duration::from_millis(20));
        }
        let (mut conn, _) = listener.accept().unwrap();
        let first = frames_of(&mut conn, 1);
        assert!(matches!(first[0].kind, Some(GuestFrameKind::Hello(_))));
        stop.store(true, Ordering::Relaxed);
        drop(conn);
        drop(listener);
        h.join().unwrap();
        let (seen, sent, dropped) = counters.get();
        assert_eq!(seen, 0);
        assert!(dropped > 4, "4 reported drops and the event lost with the broken stream: {dropped}");
        assert!(sent >= 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
