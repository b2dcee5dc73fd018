//! The agent's ttrpc replies as bytes from the guest: each reply message of
//! bulwark_protocol::agent (and ttrpc's Response/Status envelope) decoded with protobuf's
//! `parse_from_bytes`, then what the client keeps of it. Invariants: decoding never panics;
//! read chunks ≤ MAX_READ_CHUNK and a prefix of the data; a write never counts more than was
//! sent; stats replies keep ≤ MAX_STATS_FILES files, names ≤ 64 bytes, each value a prefix of
//! at most MAX_CGROUP_FILE bytes, then parse; Check accepts exactly PROTOCOL_VERSION; a guest
//! error status becomes an error text with no control characters and at most
//! MAX_STATUS_MESSAGE characters of guest text.
#![no_main]

use arbitrary::Arbitrary;
use bulwark_protocol::agent::{
    CheckResponse, CreateContainerResponse, Empty, ExecProcessResponse, ReadStreamResponse, StatsResponse,
    WriteStreamResponse,
};
use bulwark_protocol::PROTOCOL_VERSION;
use bulwark_shim::fuzzing::{
    bound_read_chunk, bound_stats_files, bound_written, check_version, parse_metrics, rpc_status_error,
    MAX_CGROUP_FILE, MAX_READ_CHUNK, MAX_STATS_FILES, MAX_STATUS_MESSAGE,
};
use bulwark_shim_fuzz::{has_controls, repeated, TRUNCATED};
use libfuzzer_sys::fuzz_target;
use protobuf::Message;

#[derive(Arbitrary, Debug)]
enum Reply {
    Check,
    CreateContainer,
    ExecProcess,
    ReadStream,
    WriteStream { sent: u32 },
    Stats,
    Empty,
    TtrpcResponse,
    TtrpcStatus,
}

#[derive(Arbitrary, Debug)]
struct Input {
    reply: Reply,
    times: u8,
    bytes: Vec<u8>,
}

fn status(s: ttrpc::proto::Status) {
    let guest_chars = s.message.chars().count();
    let e = rpc_status_error(s);
    assert!(!has_controls(&e), "control character in {e:?}");
    // the error's own words ("Call: ...: ") are short; the guest's are bounded
    assert!(e.chars().count() <= MAX_STATUS_MESSAGE + TRUNCATED.len() + 64, "{} chars", e.chars().count());
    if guest_chars > MAX_STATUS_MESSAGE {
        assert!(e.ends_with(TRUNCATED), "{e:?}");
    }
}

fuzz_target!(|input: Input| {
    let bytes = repeated(&input.bytes, input.times, 1 << 20);
    let b = &bytes[..];
    match input.reply {
        Reply::Check => {
            if let Ok(r) = CheckResponse::parse_from_bytes(b) {
                assert_eq!(
                    check_version(r.agent_protocol_version).is_ok(),
                    r.agent_protocol_version == PROTOCOL_VERSION
                );
            }
        }
        Reply::CreateContainer => {
            let _ = CreateContainerResponse::parse_from_bytes(b);
        }
        Reply::ExecProcess => {
            let _ = ExecProcessResponse::parse_from_bytes(b);
        }
        Reply::ReadStream => {
            if let Ok(r) = ReadStreamResponse::parse_from_bytes(b) {
                let all = r.data.clone();
                let kept = bound_read_chunk(r.data);
                assert!(kept.len() <= MAX_READ_CHUNK as usize);
                assert_eq!(kept.len(), all.len().min(MAX_READ_CHUNK as usize));
                assert_eq!(&kept[..], &all[..kept.len()]);
            }
        }
        Reply::WriteStream { sent } => {
            if let Ok(r) = WriteStreamResponse::parse_from_bytes(b) {
                let sent = sent as usize;
                let n = bound_written(r.len, sent);
                assert!(n <= sent && n <= r.len as usize);
            }
        }
        Reply::Stats => {
            if let Ok(r) = StatsResponse::parse_from_bytes(b) {
                let all = r.cgroup_files.clone();
                let kept = bound_stats_files(r.cgroup_files);
                assert!(kept.len() <= MAX_STATS_FILES, "{} files kept", kept.len());
                for (k, v) in &kept {
                    assert!(k.len() <= 64 && v.len() <= MAX_CGROUP_FILE);
                    let orig = &all[k];
                    assert_eq!(&orig[..v.len()], &v[..]);
                    assert_eq!(v.len(), orig.len().min(MAX_CGROUP_FILE));
                }
                let eligible = all.keys().filter(|k| k.len() <= 64).count();
                assert_eq!(kept.len(), eligible.min(MAX_STATS_FILES));
                let _ = parse_metrics(&kept);
            }
        }
        Reply::Empty => {
            let _ = Empty::parse_from_bytes(b);
        }
        Reply::TtrpcResponse => {
            if let Ok(r) = ttrpc::proto::Response::parse_from_bytes(b) {
                if let Some(s) = r.status.into_option() {
                    status(s);
                }
            }
        }
        Reply::TtrpcStatus => {
            if let Ok(s) = ttrpc::proto::Status::parse_from_bytes(b) {
                status(s);
            }
        }
    }
});
