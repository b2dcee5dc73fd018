//! The guest's raw cgroup v2 files (a StatsContainer reply's map) → containerd's Metrics:
//! `parse_metrics`, `metrics_any`, and the line parsers `single_value`, `flat_keyed`,
//! `io_entries`. Invariants: only the first MAX_FILE bytes of a file matter; each section is
//! present exactly when its files are; at most STATS_MAX_IO_DEVICES io entries; the Any
//! encodes and decodes back to the same Metrics; flat_keyed keeps at most STATS_MAX_LINES
//! keys, each 1..=64 bytes, no whitespace, found in the text.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use bulwark_shim::fuzzing::{
    flat_keyed, io_entries, metrics_any, parse_metrics, single_value, MAX_FILE, STATS_MAX_IO_DEVICES, STATS_MAX_LINES,
};
use containerd_shim::protos::cgroups_v2::metrics::Metrics;
use libfuzzer_sys::fuzz_target;
use protobuf::Message;

#[derive(Arbitrary, Debug)]
enum Name {
    CpuStat,
    MemoryCurrent,
    MemoryMax,
    MemoryPeak,
    MemoryStat,
    MemoryEvents,
    SwapCurrent,
    SwapMax,
    PidsCurrent,
    PidsMax,
    IoStat,
    Other(String),
}

impl Name {
    fn name(&self) -> String {
        match self {
            Name::CpuStat => "cpu.stat",
            Name::MemoryCurrent => "memory.current",
            Name::MemoryMax => "memory.max",
            Name::MemoryPeak => "memory.peak",
            Name::MemoryStat => "memory.stat",
            Name::MemoryEvents => "memory.events",
            Name::SwapCurrent => "memory.swap.current",
            Name::SwapMax => "memory.swap.max",
            Name::PidsCurrent => "pids.current",
            Name::PidsMax => "pids.max",
            Name::IoStat => "io.stat",
            Name::Other(s) => s,
        }
        .to_string()
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// (file index, bytes): that file grown with a repetition of itself (1 value in 16), to
    /// cross MAX_FILE.
    grow: Option<(u8, u32)>,
    files: Vec<(Name, Vec<u8>)>,
}

fn check_lines(s: &str) {
    let _ = single_value(s);
    let kv = flat_keyed(s);
    assert!(kv.len() <= STATS_MAX_LINES);
    for k in kv.keys() {
        assert!(!k.is_empty() && k.len() <= 64 && !k.contains(char::is_whitespace), "key {k:?}");
        assert!(s.contains(k.as_str()));
    }
    let io = io_entries(s);
    assert!(io.len() <= STATS_MAX_IO_DEVICES && io.len() <= s.lines().count());
}

fuzz_target!(|input: Input| {
    let mut files: HashMap<String, Vec<u8>> = input.files.into_iter().map(|(n, v)| (n.name(), v)).collect();
    if let Some((i, extra)) = input.grow.filter(|(_, e)| e % 16 == 0) {
        let len = files.len();
        if let Some(v) = files.values_mut().nth(i as usize % len.max(1)) {
            let extra = extra as usize % (2 * MAX_FILE);
            let pattern = if v.is_empty() { b"1 2\n".to_vec() } else { v.clone() };
            v.extend(pattern.iter().cycle().take(extra));
        }
    }
    let m = parse_metrics(&files);

    let cut: HashMap<String, Vec<u8>> =
        files.iter().map(|(k, v)| (k.clone(), v[..v.len().min(MAX_FILE)].to_vec())).collect();
    assert_eq!(parse_metrics(&cut), m, "bytes past MAX_FILE changed the metrics");

    assert_eq!(m.cpu.is_some(), files.contains_key("cpu.stat"));
    assert_eq!(m.memory.is_some(), files.keys().any(|k| k.starts_with("memory.")));
    assert_eq!(m.memory_events.is_some(), files.contains_key("memory.events"));
    assert_eq!(m.io.is_some(), files.contains_key("io.stat"));
    if m.pids.is_some() {
        assert!(files.contains_key("pids.current") || files.contains_key("pids.max"));
    }
    assert!(m.io.usage.len() <= STATS_MAX_IO_DEVICES);

    let any = metrics_any(&files).expect("Metrics always encode");
    assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
    let back = Metrics::parse_from_bytes(&any.value).expect("the encoded Metrics decode");
    assert_eq!(back, m);

    for v in cut.values() {
        check_lines(&String::from_utf8_lossy(v));
    }
});
