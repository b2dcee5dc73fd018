//! OOM events from the guest: `memory.events` read at a container's exit (`oom_kills`), the
//! counter that turns the guest's totals and watcher events into published events
//! (`OomCount`), and a WaitOomEvent reply's container id (protobuf → the client's bound).
//! Invariants: only the first MAX_MEMORY_EVENTS bytes matter; a count > 0 comes from an
//! `oom_kill` line, and agrees with the stats' memory_events.oom_kill when that line is the
//! only one; published events never exceed the larger of the events seen and the highest
//! total, at most MAX_EVENTS_AT_EXIT per total, none for a total not above the last; ids kept
//! are at most MAX_OOM_ID_LEN bytes and refused only when longer.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use bulwark_protocol::agent::OomEvent;
use bulwark_shim::fuzzing::{
    bound_oom_id, oom_kills, parse_metrics, OomCount, MAX_EVENTS_AT_EXIT, MAX_MEMORY_EVENTS, STATS_MAX_LINES,
};
use libfuzzer_sys::fuzz_target;
use protobuf::Message;

#[derive(Arbitrary, Debug)]
enum Op {
    Event,
    Total(u64),
    /// The total read from `memory.events` of the input.
    FileTotal,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Bytes appended to memory.events (a pattern), to cross the bound (1 value in 16).
    grow: Option<u32>,
    ops: Vec<Op>,
    reply: Vec<u8>,
    events: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let mut events = input.events;
    if let Some(g) = input.grow.filter(|g| g % 16 == 0) {
        let extra = g as usize % (2 * MAX_MEMORY_EVENTS);
        let pattern: &[u8] = if events.is_empty() { b"oom_kill 7\n" } else { &events.clone() };
        events.extend(pattern.iter().cycle().take(extra));
    }
    let files = HashMap::from([("memory.events".to_string(), events.clone())]);
    let total = oom_kills(&files);
    assert_eq!(oom_kills(&HashMap::new()), 0);
    let head = &events[..events.len().min(MAX_MEMORY_EVENTS)];
    let cut = HashMap::from([("memory.events".to_string(), head.to_vec())]);
    assert_eq!(oom_kills(&cut), total, "bytes past {MAX_MEMORY_EVENTS} changed the count");
    let text = String::from_utf8_lossy(head);
    let well_formed: Vec<(usize, u64)> = text
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let t: Vec<&str> = l.split_whitespace().collect();
            match t[..] {
                ["oom_kill", v] => v.parse::<u64>().ok().map(|v| (i, v)),
                _ => None,
            }
        })
        .collect();
    assert_eq!(total, well_formed.first().map_or(0, |&(_, v)| v));
    if let [(line, v)] = well_formed[..] {
        if line < STATS_MAX_LINES {
            assert_eq!(parse_metrics(&files).memory_events.oom_kill, v, "stats and the OOM check disagree");
        }
    }

    let count = OomCount::default();
    let (mut seen, mut highest, mut published, mut last) = (0u64, 0u64, 0u64, 0u64);
    for op in input.ops.iter().take(256) {
        match op {
            Op::Event => {
                seen += 1;
                published += u64::from(count.on_event());
            }
            Op::Total(_) | Op::FileTotal => {
                let t = if let Op::Total(t) = op { *t } else { total };
                let n = count.on_total(t);
                assert!(n <= MAX_EVENTS_AT_EXIT, "{n} events at once");
                if t <= last {
                    assert_eq!(n, 0, "total {t} not above {last} published {n}");
                }
                last = last.max(t);
                highest = highest.max(t);
                published += n;
            }
        }
        assert!(published <= seen.max(highest), "published {published}, seen {seen}, highest total {highest}");
    }

    if let Ok(r) = OomEvent::parse_from_bytes(&input.reply) {
        let len = r.container_id.len();
        match bound_oom_id(r.container_id) {
            Some(id) => assert!(id.len() <= bulwark_shim::fuzzing::MAX_OOM_ID_LEN && id.len() == len),
            None => assert!(len > bulwark_shim::fuzzing::MAX_OOM_ID_LEN),
        }
    }
});
