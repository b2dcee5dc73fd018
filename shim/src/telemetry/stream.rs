//! The guest's telemetry stream (guest port TELEMETRY_PORT, arriving on the hybrid-vsock
//! socket `<uds>_<TELEMETRY_PORT>`): hostile input, read bounded. One connection at a time;
//! frames are at most MAX_TELEMETRY_FRAME (a larger declared length ends the connection
//! before anything is allocated for it); the first frame must be a `Hello` of our version;
//! events pass a per-sandbox token bucket, then get the shim's identity (enrich.rs) and go to
//! the sinks. Everything refused is counted; nothing here panics on what the guest sends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulwark_protocol::limits::MAX_TELEMETRY_FRAME;
use bulwark_protocol::telemetry::{decode_guest_frame, FrameDecoder, GuestFrame, GuestFrameKind, TELEMETRY_VERSION};
use tokio::io::AsyncReadExt;
use tokio::net::UnixListener;

use super::counters::Counters;
use super::enrich::Identity;
use super::sinks::Sinks;
use crate::agent::ratelimit::RateLimit;

/// What one frame leads to.
#[derive(Debug, PartialEq)]
pub(super) enum Step {
    /// An event to enrich and forward.
    Forward(Box<bulwark_protocol::telemetry::Event>),
    /// Nothing to forward (a Hello, a Drops report, a refused frame).
    Skip,
    /// The connection must end (bad or missing Hello).
    Close(String),
}

/// The state of one connection's frames (pure but for the counters).
pub(super) struct Connection {
    hello: bool,
    /// The guest's drop count as last reported on this connection.
    reported_drops: u64,
}

impl Connection {
    pub fn new() -> Self {
        Connection { hello: false, reported_drops: 0 }
    }

    /// One frame's message bytes.
    pub fn on_frame(&mut self, frame: &[u8], limit: &mut RateLimit, c: &Counters) -> Step {
        let msg = match decode_guest_frame(frame) {
            Ok(GuestFrame { kind: Some(k), .. }) => k,
            Ok(_) | Err(_) if !self.hello => return Step::Close("the first frame is not a valid Hello".into()),
            Ok(_) | Err(_) => {
                c.garbage.fetch_add(1, Ordering::Relaxed);
                return Step::Skip;
            }
        };
        match (self.hello, msg) {
            (false, GuestFrameKind::Hello(h)) if h.version == TELEMETRY_VERSION => {
                self.hello = true;
                Step::Skip
            }
            (false, GuestFrameKind::Hello(h)) => {
                Step::Close(format!("telemetry version {} (this shim speaks {TELEMETRY_VERSION})", h.version))
            }
            (false, _) => Step::Close("the first frame is not a Hello".into()),
            (true, GuestFrameKind::Hello(_)) => {
                c.garbage.fetch_add(1, Ordering::Relaxed);
                Step::Skip
            }
            (true, GuestFrameKind::Drops(d)) => {
                // A running total per connection: only growth counts, a smaller number is a lie.
                if d.count > self.reported_drops {
                    c.guest_drops.fetch_add(d.count - self.reported_drops, Ordering::Relaxed);
                    self.reported_drops = d.count;
                }
                Step::Skip
            }
            (true, GuestFrameKind::Event(e)) => {
                c.received.fetch_add(1, Ordering::Relaxed);
                if limit.allow() {
                    Step::Forward(Box::new(e))
                } else {
                    c.rate_dropped.fetch_add(1, Ordering::Relaxed);
                    Step::Skip
                }
            }
            // A kind this shim does not know (a newer collector): skipped, counted.
            (true, _) => {
                c.garbage.fetch_add(1, Ordering::Relaxed);
                Step::Skip
            }
        }
    }
}

/// Serves the guest's connections on `listener` until aborted.
pub(super) async fn serve(
    listener: UnixListener,
    sandbox_id: String,
    mut limit: RateLimit,
    identity: Identity,
    counters: Arc<Counters>,
    sinks: Arc<Sinks>,
) {
    let mut complaints = RateLimit::new(5, 1);
    loop {
        let mut stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("sandbox {sandbox_id}: accepting the guest's telemetry connection: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let mut conn = Connection::new();
        let mut decoder = FrameDecoder::new(MAX_TELEMETRY_FRAME);
        let mut buf = vec![0u8; 64 * 1024];
        let ended = loop {
            let n = match stream.read(&mut buf).await {
                Ok(0) => break decoder.finish().err().map(|e| format!("{e}")),
                Ok(n) => n,
                Err(e) => break Some(format!("read: {e}")),
            };
            let mut input = &buf[..n];
            let mut close = None;
            loop {
                match decoder.decode(&mut input) {
                    Ok(Some(frame)) => match conn.on_frame(&frame, &mut limit, &counters) {
                        Step::Forward(event) => {
                            let m = identity.enrich(*event, counters.lost(), now_ns());
                            if sinks.publish(&m) {
                                counters.forwarded.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Step::Skip => {}
                        Step::Close(why) => {
                            close = Some(why);
                            break;
                        }
                    },
                    Ok(None) => break,
                    Err(e) => {
                        close = Some(e.to_string());
                        break;
                    }
                }
            }
            if close.is_some() {
                break close;
            }
        };
        if let Some(why) = ended {
            counters.bad_streams.fetch_add(1, Ordering::Relaxed);
            if complaints.allow() {
                tracing::warn!("sandbox {sandbox_id}: guest telemetry connection dropped: {why}");
            }
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

    fn hello(version: u32) -> Vec<u8> {
        let mut h = Hello::new();
        h.version = version;
        frame(GuestFrameKind::Hello(h))
    }

    fn event(pid: u32) -> Vec<u8> {
        let mut e = Event::new();
        e.pid = pid;
        frame(GuestFrameKind::Event(e))
    }

    #[test]
    fn hello_first_then_events_drops_and_garbage() {
        let c = Counters::default();
        let mut limit = RateLimit::new(100, 100);
        let mut conn = Connection::new();
        assert!(matches!(conn.on_frame(&event(1), &mut limit, &c), Step::Close(_)), "no Hello first");
        let mut conn = Connection::new();
        assert!(matches!(conn.on_frame(b"\xff\xff garbage", &mut limit, &c), Step::Close(_)));
        let mut conn = Connection::new();
        assert!(matches!(conn.on_frame(&hello(TELEMETRY_VERSION + 1), &mut limit, &c), Step::Close(_)));

        let mut conn = Connection::new();
        assert_eq!(conn.on_frame(&hello(TELEMETRY_VERSION), &mut limit, &c), Step::Skip);
        match conn.on_frame(&event(7), &mut limit, &c) {
            Step::Forward(e) => assert_eq!(e.pid, 7),
            other => panic!("{other:?}"),
        }
        assert_eq!(conn.on_frame(b"\x0a\xff\xff\xff\xff\xff garbage", &mut limit, &c), Step::Skip);
        assert_eq!(conn.on_frame(&hello(TELEMETRY_VERSION), &mut limit, &c), Step::Skip, "a second Hello is garbage");
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
        let mut conn = Connection::new();
        conn.on_frame(&hello(TELEMETRY_VERSION), &mut limit, &c);
        let forwarded =
            (0..1000).filter(|i| matches!(conn.on_frame(&event(*i), &mut limit, &c), Step::Forward(_))).count();
        assert!((10..=11).contains(&forwarded), "{forwarded}");
        assert_eq!(c.received.load(Ordering::Relaxed), 1000);
        assert_eq!(c.rate_dropped.load(Ordering::Relaxed), 1000 - forwarded as u64);
    }
}
