//! The shim's decoders of guest data, exposed for the fuzz targets in `shim/fuzz` (not an
//! API: hidden from the docs, used by nothing in the shim). Everything here is a thin,
//! synchronous door onto the real code: the cgroup stats parsers, the log stream splitter,
//! the handshake lines and their bounded reader, `memory.events`' OOM count and the OOM
//! counter, exit statuses, the cleaning of guest text, the bounding of agent replies, and the
//! telemetry relay's reading of a guest stream.
//! Nothing in the shim imports this module.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

pub use crate::agent::check_version;
pub use crate::agent::ratelimit::{sanitize, unsafe_in_text};
pub use crate::agent::streams::LineSplitter;
pub use crate::container::process::guest_status;
pub use crate::sandbox::oom::{OomCount, MAX_EVENTS_AT_EXIT};
pub use crate::task::stats::{flat_keyed, io_entries, metrics_any, parse_metrics, single_value, MAX_FILE};
pub use bulwark_protocol::{parse_ready_line, MAX_CGROUP_FILE, MAX_LOG_LINE, MAX_READ_CHUNK};

/// Lines of one cgroup file looked at by the stats parsers.
pub const STATS_MAX_LINES: usize = crate::task::stats::MAX_LINES;
/// io.stat devices kept by the stats parser.
pub const STATS_MAX_IO_DEVICES: usize = crate::task::stats::MAX_IO_DEVICES;
/// Bytes of memory.events the OOM count reads.
pub const MAX_MEMORY_EVENTS: usize = crate::container::lifecycle::MAX_MEMORY_EVENTS;
/// Longest READY / OK line the handshake accepts.
pub const MAX_HANDSHAKE_LINE: usize = crate::agent::handshake::MAX_HANDSHAKE_LINE;
/// Files kept from a StatsContainer reply.
pub const MAX_STATS_FILES: usize = crate::agent::client::MAX_STATS_FILES;
/// Pids kept from a ListProcesses reply.
pub const MAX_PIDS: usize = crate::agent::client::MAX_PIDS;
/// Characters of a guest's error message kept in the error (then " [truncated]").
pub const MAX_STATUS_MESSAGE: usize = crate::agent::client::MAX_STATUS_MESSAGE;
/// The largest first frame (the Hello) the telemetry relay reads.
pub const TELEMETRY_MAX_HELLO_FRAME: usize = crate::telemetry::stream::MAX_HELLO_FRAME;
/// Longest container id accepted in an OOM event.
pub const MAX_OOM_ID_LEN: usize = crate::agent::client::MAX_ID_LEN;

/// The `oom_kill` count of a container's raw cgroup files (the exit check's reading).
pub fn oom_kills(files: &HashMap<String, Vec<u8>>) -> u64 {
    crate::container::lifecycle::oom_kills(files)
}

/// The backend's `OK <port>` reply to CONNECT.
pub fn parse_ok_line(line: &[u8]) -> Option<u32> {
    crate::agent::handshake::parse_ok_line(line)
}

/// The handshake's bounded line reader over `input`: the line read (or `None`) and how many
/// bytes of `input` it consumed.
pub fn read_line_bounded(input: &[u8], max: usize) -> (Option<Vec<u8>>, usize) {
    let mut rest = input;
    let line = {
        let mut fut = pin!(crate::agent::handshake::read_line_bounded(&mut rest, max));
        let mut cx = Context::from_waker(Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(line) => line,
            // A byte slice is always ready: a harness bug, not an input's doing.
            Poll::Pending => unreachable!("reading from a byte slice never waits"),
        }
    };
    (line, input.len() - rest.len())
}

/// A StatsContainer reply's files as the client keeps them.
pub fn bound_stats_files(files: HashMap<String, Vec<u8>>) -> HashMap<String, Vec<u8>> {
    crate::agent::client::bound_stats_files(files)
}

/// A ListProcesses reply's pids as the client keeps them.
pub fn bound_pids(pids: Vec<u32>) -> Vec<u32> {
    crate::agent::client::bound_pids(pids)
}

/// A WaitOomEvent reply's container id as the client takes it (`None`: refused).
pub fn bound_oom_id(id: String) -> Option<String> {
    crate::agent::client::bound_oom_id(id).ok()
}

/// A ReadStdout/ReadStderr reply's data as the client keeps it.
pub fn bound_read_chunk(data: Vec<u8>) -> Vec<u8> {
    crate::agent::client::bound_read_chunk(data)
}

/// How much of `sent` bytes the client believes a WriteStdin reply of `reply_len`.
pub fn bound_written(reply_len: u32, sent: usize) -> usize {
    crate::agent::client::bound_written(reply_len, sent)
}

/// The error (as containerd would show it) the client makes of a guest's ttrpc error status.
pub fn rpc_status_error(status: ttrpc::proto::Status) -> String {
    crate::agent::client::rpc_err("Call", ttrpc::Error::RpcStatus(status)).to_string()
}

/// What the telemetry relay made of one guest connection ([`telemetry_stream`]).
#[derive(Debug, Default)]
pub struct TelemetryOutcome {
    /// The first frame's verdict (None: no whole first frame came).
    pub hello: Option<Result<(), String>>,
    /// Every frame the decoders returned, the Hello first.
    pub frames: Vec<Vec<u8>>,
    /// The events the relay passed on, enriched.
    pub forwarded: Vec<bulwark_protocol::telemetry::Enriched>,
    pub received: u64,
    pub rate_dropped: u64,
    pub garbage: u64,
    pub guest_drops: u64,
    /// Why the stream was ended (a frame over its limit), if it was.
    pub ended: Option<String>,
    /// The most bytes a decoder held at once.
    pub max_buffered: usize,
}

/// The relay's reading of one guest telemetry connection (telemetry/stream.rs), synchronously:
/// `reads` are the chunks its reads returned. The first frame (at most MAX_HELLO_FRAME) must
/// be a Hello with `token`; then frames (at most MAX_TELEMETRY_FRAME) go through the
/// connection's checks and a rate limit of `burst`/`per_sec`, and events through the
/// enrichment of a sandbox `sb` whose only containers are `containers`.
pub fn telemetry_stream(
    reads: &[&[u8]],
    token: &[u8],
    containers: &[&str],
    burst: u32,
    per_sec: u32,
) -> TelemetryOutcome {
    use crate::telemetry::stream::{check_hello, Connection, Step, MAX_HELLO_FRAME};
    use bulwark_protocol::limits::MAX_TELEMETRY_FRAME;
    use bulwark_protocol::telemetry::FrameDecoder;
    use std::sync::atomic::Ordering;

    let identity = crate::telemetry::Identity::default();
    identity.set_pod("node", "sb", &HashMap::new());
    for c in containers {
        identity.add_container(c, &HashMap::new());
    }
    let counters = crate::telemetry::Counters::default();
    let mut limit = crate::agent::ratelimit::RateLimit::new(burst, per_sec);
    let mut conn = Connection::default();
    let mut out = TelemetryOutcome::default();
    let mut decoder = FrameDecoder::new(MAX_HELLO_FRAME);
    'reads: for read in reads {
        let mut input = *read;
        loop {
            let decoded = decoder.decode(&mut input);
            out.max_buffered = out.max_buffered.max(decoder.buffered());
            match decoded {
                Ok(Some(frame)) => {
                    match out.hello {
                        None => {
                            let verdict = check_hello(&frame, token);
                            let refused = verdict.is_err();
                            out.hello = Some(verdict);
                            out.frames.push(frame);
                            if refused {
                                break 'reads;
                            }
                            decoder = FrameDecoder::new(MAX_TELEMETRY_FRAME);
                            continue;
                        }
                        Some(_) => {
                            if let Step::Forward(e) = conn.on_frame(&frame, &mut limit, &counters) {
                                out.forwarded.push(identity.enrich(*e, counters.lost(), 1));
                            }
                        }
                    }
                    out.frames.push(frame);
                }
                Ok(None) => break,
                Err(e) => {
                    out.ended = Some(e.to_string());
                    break 'reads;
                }
            }
        }
    }
    out.received = counters.received.load(Ordering::Relaxed);
    out.rate_dropped = counters.rate_dropped.load(Ordering::Relaxed);
    out.garbage = counters.garbage.load(Ordering::Relaxed);
    out.guest_drops = counters.guest_drops.load(Ordering::Relaxed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_reader_stops_at_the_line() {
        assert_eq!(read_line_bounded(b"READY 2\nlog line\n", 64), (Some(b"READY 2\n".to_vec()), 8));
        assert_eq!(read_line_bounded(&[b'x'; 100], 64), (None, 64));
        assert_eq!(read_line_bounded(b"OK 1", 64), (None, 4));
    }

    #[test]
    fn replies_are_bounded() {
        assert_eq!(bound_pids((0..70_000).collect()).len(), MAX_PIDS);
        assert_eq!(bound_pids(vec![3, 1, 2]), vec![3, 1, 2]);
        assert_eq!(bound_oom_id("c".repeat(MAX_OOM_ID_LEN)).map(|s| s.len()), Some(MAX_OOM_ID_LEN));
        assert_eq!(bound_oom_id("c".repeat(MAX_OOM_ID_LEN + 1)), None);
        assert_eq!(bound_read_chunk(vec![7; MAX_READ_CHUNK as usize + 1]).len(), MAX_READ_CHUNK as usize);
        assert_eq!((bound_written(10, 4), bound_written(3, 4), bound_written(u32::MAX, 0)), (4, 3, 0));
        let mut files: HashMap<String, Vec<u8>> =
            (0..40).map(|i| (format!("f{i}"), vec![b'1'; MAX_CGROUP_FILE + 5])).collect();
        files.insert("n".repeat(65), b"1".to_vec());
        let kept = bound_stats_files(files);
        assert_eq!(kept.len(), MAX_STATS_FILES);
        assert!(kept.iter().all(|(k, v)| k.len() <= 64 && v.len() == MAX_CGROUP_FILE));
    }

    #[test]
    fn guest_error_statuses_are_cleaned_and_cut() {
        let mut s = ttrpc::proto::Status::new();
        s.set_code(ttrpc::Code::NOT_FOUND);
        s.message = format!("gone\x1b[2J\n{}", "y".repeat(2 * MAX_STATUS_MESSAGE));
        let e = rpc_status_error(s);
        assert!(e.starts_with("Call: gone?[2J?yyy") && e.ends_with(" [truncated]"), "{e}");
        assert!(e.chars().count() < MAX_STATUS_MESSAGE + 40);
    }

    #[test]
    fn a_telemetry_stream_needs_the_token_and_keeps_its_containers() {
        use bulwark_protocol::telemetry::{encode_frame, Event, GuestFrame, GuestFrameKind, Hello, TELEMETRY_VERSION};
        let frame = |k: GuestFrameKind| {
            let mut f = GuestFrame::new();
            f.kind = Some(k);
            encode_frame(&f).unwrap()
        };
        let hello = |token: &[u8]| {
            let mut h = Hello::new();
            h.version = TELEMETRY_VERSION;
            h.token = token.to_vec();
            frame(GuestFrameKind::Hello(h))
        };
        let event = |c: &str| {
            let mut e = Event::new();
            e.container_id = c.into();
            frame(GuestFrameKind::Event(e))
        };
        let stream = [hello(b"t0k3n"), event("c1"), event("elsewhere")].concat();
        let out = telemetry_stream(&[&stream[..7], &stream[7..]], b"t0k3n", &["c1"], 100, 100);
        assert_eq!(out.hello, Some(Ok(())));
        let ids: Vec<&str> = out.forwarded.iter().map(|m| m.container_id.as_str()).collect();
        assert_eq!(ids, ["c1", ""]);
        let out = telemetry_stream(&[&stream], b"other", &["c1"], 100, 100);
        assert!(matches!(out.hello, Some(Err(_))) && out.forwarded.is_empty() && out.frames.len() == 1);
    }
}
