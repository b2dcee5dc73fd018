//! Guest text on its way to a log or to containerd (agent error messages): `sanitize`.
//! Invariants: no character `unsafe_in_text` names (controls but tab, Unicode line/paragraph
//! separators, bidi overrides and isolates); at most `max` characters plus the marker; the
//! marker exactly when the text had more than `max` characters; otherwise the same text with
//! only those characters replaced by '?' (same character count, every other character kept).
#![no_main]

use arbitrary::Arbitrary;
use bulwark_shim::fuzzing::{sanitize, unsafe_in_text};
use bulwark_shim_fuzz::{has_controls, TRUNCATED};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    max: u16,
    text: String,
}

fuzz_target!(|input: Input| {
    let max = (input.max % 2048) as usize;
    let text = &input.text;
    let out = sanitize(text, max);
    assert!(!has_controls(&out) && !out.chars().any(unsafe_in_text), "unsafe character in {out:?}");
    let n = text.chars().count();
    let body = if n > max {
        assert!(out.ends_with(TRUNCATED), "{out:?}");
        &out[..out.len() - TRUNCATED.len()]
    } else {
        &out[..]
    };
    assert_eq!(body.chars().count(), n.min(max));
    for (a, b) in text.chars().zip(body.chars()) {
        if unsafe_in_text(a) {
            assert_eq!(b, '?');
        } else {
            assert_eq!(a, b);
        }
    }
});
