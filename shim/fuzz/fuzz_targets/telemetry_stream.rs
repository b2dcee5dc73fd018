//! The telemetry relay's reading of a guest stream (`telemetry_stream`: the frame decoders,
//! the Hello check with the boot's token, the per-frame checks, the rate limit and the
//! enrichment). The input's first byte chooses the read sizes and whether a valid Hello with
//! the token goes first (so the fuzzer spends its time past the Hello too). Invariants: the
//! outcome does not depend on how the stream was cut into reads; a decoder never holds more
//! than its frame limit plus the header; the first frame is at most MAX_HELLO_FRAME bytes and
//! any later one at most MAX_TELEMETRY_FRAME; the Hello is accepted exactly when it is a Hello
//! of our version carrying the token, and a refusal never shows the token; nothing is
//! forwarded without an accepted Hello; every event read is either forwarded or counted as
//! over the rate; every forwarded event passes the protocol's limits, names our sandbox, and
//! names a container only when it is one of the sandbox's.
#![no_main]

use bulwark_protocol::limits::MAX_TELEMETRY_FRAME;
use bulwark_protocol::telemetry::{
    check_enriched, decode_guest_frame, encode_frame, GuestFrame, GuestFrameKind, Hello, FRAME_HEADER,
    TELEMETRY_VERSION,
};
use bulwark_shim::fuzzing::{telemetry_stream, TelemetryOutcome, TELEMETRY_MAX_HELLO_FRAME};
use libfuzzer_sys::fuzz_target;

const TOKEN: &[u8] = b"fuzz-token-0123456789abcdef-0123";
const CONTAINERS: [&str; 2] = ["c1", "c2"];
/// No rate limit in the way (the outcome must not depend on time).
const UNLIMITED: u32 = u32::MAX / 2;

fn valid_hello() -> Vec<u8> {
    let mut h = Hello::new();
    h.version = TELEMETRY_VERSION;
    h.token = TOKEN.to_vec();
    let mut f = GuestFrame::new();
    f.kind = Some(GuestFrameKind::Hello(h));
    encode_frame(&f).expect("a Hello encodes")
}

/// `stream` cut into reads of the sizes `sizes` cycles through (0 counts as 1).
fn cut<'a>(stream: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    let mut reads = vec![];
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        let n = (sizes[i % sizes.len()] as usize).max(1).min(rest.len());
        reads.push(&rest[..n]);
        rest = &rest[n..];
        i += 1;
    }
    reads
}

fn check(out: &TelemetryOutcome) {
    assert!(out.max_buffered <= FRAME_HEADER + MAX_TELEMETRY_FRAME, "held {} bytes", out.max_buffered);
    if let Some(first) = out.frames.first() {
        assert!(first.len() <= TELEMETRY_MAX_HELLO_FRAME, "a first frame of {} bytes", first.len());
    }
    assert!(out.frames.iter().all(|f| f.len() <= MAX_TELEMETRY_FRAME));
    match &out.hello {
        Some(Ok(())) => {
            let first = decode_guest_frame(&out.frames[0]).expect("an accepted Hello decodes");
            match first.kind {
                Some(GuestFrameKind::Hello(h)) => {
                    assert_eq!(h.version, TELEMETRY_VERSION);
                    assert_eq!(h.token, TOKEN);
                }
                other => panic!("accepted as Hello: {other:?}"),
            }
        }
        Some(Err(why)) => {
            assert!(!why.contains("fuzz-token"), "a refusal shows the token: {why}");
            assert_eq!(out.frames.len(), 1, "frames read after a refused Hello");
        }
        None => {}
    }
    if !matches!(out.hello, Some(Ok(()))) {
        assert!(out.forwarded.is_empty() && out.received == 0, "events without an accepted Hello");
    }
    assert_eq!(out.received, out.forwarded.len() as u64 + out.rate_dropped);
    for m in &out.forwarded {
        check_enriched(m).expect("a forwarded event within the limits");
        assert_eq!(m.sandbox_id, "sb");
        let guest_named = &m.event.container_id;
        if !m.container_id.is_empty() {
            assert!(CONTAINERS.contains(&m.container_id.as_str()), "container {:?}", m.container_id);
            assert_eq!(&m.container_id, guest_named);
        } else {
            assert!(!CONTAINERS.contains(&guest_named.as_str()), "a sandbox container's event lost its id");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut stream = if mode & 1 == 1 { valid_hello() } else { vec![] };
    stream.extend_from_slice(rest);
    let sizes: Vec<u8> = vec![mode >> 1, mode.wrapping_mul(7) | 1, 255, 3];
    let whole = telemetry_stream(&[&stream], TOKEN, &CONTAINERS, UNLIMITED, UNLIMITED);
    let pieces = telemetry_stream(&cut(&stream, &sizes), TOKEN, &CONTAINERS, UNLIMITED, UNLIMITED);
    check(&whole);
    check(&pieces);
    assert_eq!(whole.hello, pieces.hello);
    assert_eq!(whole.frames, pieces.frames, "the frames depend on the reads");
    assert_eq!(whole.forwarded, pieces.forwarded);
    assert_eq!(
        (whole.received, whole.garbage, whole.guest_drops),
        (pieces.received, pieces.garbage, pieces.guest_drops)
    );
    assert_eq!(whole.ended.is_some(), pieces.ended.is_some());
    // A tight rate limit: every event read is still forwarded or counted.
    let limited = telemetry_stream(&[&stream], TOKEN, &CONTAINERS, 2, 1);
    check(&limited);
    assert_eq!(limited.received, whole.received);
});
