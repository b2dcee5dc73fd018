//! The agent's log stream (guest → host after READY): `LineSplitter` fed in arbitrary chunks.
//! Invariants: the lines are exactly those of a whole-stream model (independent of how the
//! stream was cut into reads): every complete line of at most `max` bytes, cleaned; every
//! longer line (complete or not) cut to `max` bytes, cleaned, with the marker; nothing else.
//! So no line exceeds `max` characters plus the marker, and none holds a control character,
//! a Unicode line separator or a bidi override (`unsafe_in_text`).
#![no_main]

use arbitrary::Arbitrary;
use bulwark_shim::fuzzing::{unsafe_in_text, LineSplitter, MAX_LOG_LINE};
use bulwark_shim_fuzz::{has_controls, TRUNCATED};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    /// `None`: the shim's own MAX_LOG_LINE; else a small max, to reach it often.
    small_max: Option<u8>,
    /// Sizes of the successive reads (cycled; 0 is taken as 1).
    cuts: Vec<u16>,
    data: Vec<u8>,
}

fn model(data: &[u8], max: usize) -> Vec<String> {
    let clean = |b: &[u8]| -> String {
        String::from_utf8_lossy(b).chars().map(|c| if unsafe_in_text(c) { '?' } else { c }).collect()
    };
    let mut out = Vec::new();
    let segments: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        if seg.len() > max {
            out.push(clean(&seg[..max]) + TRUNCATED);
        } else if i < last {
            out.push(clean(seg));
        }
    }
    out
}

fuzz_target!(|input: Input| {
    let max = match input.small_max {
        Some(m) => m as usize,
        None => MAX_LOG_LINE,
    };
    let mut split = LineSplitter::new(max);
    let mut lines = Vec::new();
    let mut rest = &input.data[..];
    let mut cuts = input.cuts.iter().cycle();
    while !rest.is_empty() {
        let n = cuts.next().map_or(rest.len(), |&c| (c as usize).max(1)).min(rest.len());
        lines.extend(split.push(&rest[..n]));
        rest = &rest[n..];
    }
    for line in &lines {
        assert!(!has_controls(line) && !line.chars().any(unsafe_in_text), "unsafe character in {line:?}");
        assert!(line.chars().count() <= max + TRUNCATED.len(), "line over max {max}: {line:?}");
        // lossy decoding makes at most one char per byte, each at most 3 bytes (U+FFFD)
        assert!(line.len() <= 4 * max + TRUNCATED.len());
    }
    assert_eq!(lines, model(&input.data, max), "max {max}");
});
