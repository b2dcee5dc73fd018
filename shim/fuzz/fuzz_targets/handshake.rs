//! The boot handshake's guest lines: the bounded line reader, then `READY <version>`
//! (`parse_ready_line`, on the lossy text as the shim reads it) and `OK <port>`
//! (`parse_ok_line`). Invariants: the reader never consumes past the line's `\n` (the rest
//! belongs to the log forwarder) nor more than `max` bytes; it returns a line exactly when a
//! `\n` comes within `max` bytes, and that line is the input's prefix up to that `\n`. An
//! accepted READY/OK line has its prefix and round-trips from its value; OK ports are plain
//! decimal digits.
#![no_main]

use bulwark_shim::fuzzing::{parse_ok_line, parse_ready_line, read_line_bounded, MAX_HANDSHAKE_LINE};
use libfuzzer_sys::fuzz_target;

fn reader(data: &[u8], max: usize) -> Option<Vec<u8>> {
    let (line, consumed) = read_line_bounded(data, max);
    let limit = max.max(1);
    assert!(consumed <= limit && consumed <= data.len(), "consumed {consumed} of {} (max {max})", data.len());
    let first_nl = data.iter().position(|&b| b == b'\n');
    match &line {
        Some(l) => {
            assert_eq!(first_nl, Some(l.len() - 1));
            assert!(l.len() <= limit);
            assert_eq!(consumed, l.len(), "consumed past the line");
            assert_eq!(&data[..consumed], &l[..]);
        }
        None => {
            assert!(first_nl.is_none_or(|i| i >= limit), "a line within max was refused");
            assert_eq!(consumed, data.len().min(limit));
        }
    }
    line
}

fn ok_line(line: &[u8]) {
    if let Some(n) = parse_ok_line(line) {
        let digits = line.strip_prefix(b"OK ").and_then(|l| l.strip_suffix(b"\n")).expect("accepted without OK/\\n");
        assert!(!digits.is_empty() && digits.iter().all(u8::is_ascii_digit), "{line:?}");
        assert_eq!(std::str::from_utf8(digits).ok().and_then(|d| d.parse::<u64>().ok()), Some(n as u64));
        assert_eq!(parse_ok_line(format!("OK {n}\n").as_bytes()), Some(n));
    }
}

fn ready_line(text: &str) {
    if let Some(v) = parse_ready_line(text) {
        assert!(text.starts_with("READY "), "{text:?}");
        assert_eq!(parse_ready_line(&format!("READY {v}\n")), Some(v));
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(line) = reader(data, MAX_HANDSHAKE_LINE) {
        ready_line(&String::from_utf8_lossy(&line));
        ok_line(&line);
    }
    if let Some((&m, rest)) = data.split_first() {
        reader(rest, m as usize % 80);
    }
    ok_line(data);
    ready_line(&String::from_utf8_lossy(data));
});
