//! Exit statuses from the guest: a WaitProcess reply (protobuf) → `guest_status`, the value
//! containerd gets. Invariants: always in 0..=255; a status already in 0..=255 is kept.
#![no_main]

use bulwark_protocol::agent::WaitProcessResponse;
use bulwark_shim::fuzzing::guest_status;
use libfuzzer_sys::fuzz_target;
use protobuf::Message;

fn check(code: i32) {
    let s = guest_status(code);
    assert!(s <= 255, "{code} -> {s}");
    if (0..=255).contains(&code) {
        assert_eq!(s, code as u32);
    } else {
        assert_eq!(s, 255, "{code}");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = WaitProcessResponse::parse_from_bytes(data) {
        check(r.exit_status);
    }
    if let Some(b) = data.get(..4) {
        check(i32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    }
});
