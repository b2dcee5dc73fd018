//! Process lists: a ListProcesses reply (protobuf, possibly many merged encodings) → the
//! client's bounding. Invariants: at most MAX_PIDS pids kept, and they are the reply's first
//! ones in order.
#![no_main]

use arbitrary::Arbitrary;
use bulwark_protocol::agent::ListProcessesResponse;
use bulwark_shim::fuzzing::{bound_pids, MAX_PIDS};
use bulwark_shim_fuzz::repeated;
use libfuzzer_sys::fuzz_target;
use protobuf::Message;

#[derive(Arbitrary, Debug)]
struct Input {
    times: u8,
    reply: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let bytes = repeated(&input.reply, input.times, 1 << 20);
    let Ok(r) = ListProcessesResponse::parse_from_bytes(&bytes) else { return };
    let all = r.pids.clone();
    let kept = bound_pids(r.pids);
    assert!(kept.len() <= MAX_PIDS, "{} pids kept", kept.len());
    assert_eq!(kept.len(), all.len().min(MAX_PIDS));
    assert_eq!(&kept[..], &all[..kept.len()]);
});
