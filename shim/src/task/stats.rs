//! Container metrics for containerd's Stats: the guest's raw cgroup v2 files (untrusted:
//! bounded, malformed lines skipped, never a panic) parsed into
//! `io.containerd.cgroups.v2.Metrics` (containerd-shim-protos' cgroups_v2 types) and packed
//! as a protobuf Any with that type URL, as runc's shim does.

use std::collections::HashMap;

use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::MessageField;

use crate::error::{Error, Result};

/// Bytes of one file looked at (the agent caps at the same size; the host does not trust it).
pub const MAX_FILE: usize = bulwark_protocol::MAX_CGROUP_FILE;
/// Lines of one file looked at.
pub(crate) const MAX_LINES: usize = 4096;
/// io.stat devices kept.
pub(crate) const MAX_IO_DEVICES: usize = 256;

/// The text of one file: at most MAX_FILE bytes, lossy UTF-8 (pure).
fn text(files: &HashMap<String, Vec<u8>>, name: &str) -> Option<String> {
    files.get(name).map(|b| String::from_utf8_lossy(&b[..b.len().min(MAX_FILE)]).into_owned())
}

/// A single-value file ("1234\n" or "max"); "max" is u64::MAX as in containerd (pure).
pub fn single_value(s: &str) -> Option<u64> {
    let v = s.lines().next()?.trim();
    if v == "max" {
        return Some(u64::MAX);
    }
    v.parse().ok()
}

/// A flat keyed file ("key value" per line); malformed lines are skipped (pure).
pub fn flat_keyed(s: &str) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for line in s.lines().take(MAX_LINES) {
        let mut it = line.split_whitespace();
        if let (Some(k), Some(v), None) = (it.next(), it.next(), it.next()) {
            if let Ok(v) = v.parse::<u64>() {
                if k.len() <= 64 {
                    m.insert(k.to_string(), v);
                }
            }
        }
    }
    m
}

/// io.stat: "MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ..." per device (pure).
pub fn io_entries(s: &str) -> Vec<IOEntry> {
    let mut out = Vec::new();
    for line in s.lines().take(MAX_LINES) {
        if out.len() >= MAX_IO_DEVICES {
            break;
        }
        let mut it = line.split_whitespace();
        let Some((maj, min)) = it.next().and_then(|d| d.split_once(':')) else { continue };
        let (Ok(major), Ok(minor)) = (maj.parse::<u64>(), min.parse::<u64>()) else { continue };
        let mut e = IOEntry { major, minor, ..Default::default() };
        for kv in it {
            let Some((k, v)) = kv.split_once('=') else { continue };
            let Ok(v) = v.parse::<u64>() else { continue };
            match k {
                "rbytes" => e.rbytes = v,
                "wbytes" => e.wbytes = v,
                "rios" => e.rios = v,
                "wios" => e.wios = v,
                _ => {}
            }
        }
        out.push(e);
    }
    out
}

fn memory_stat(files: &HashMap<String, Vec<u8>>) -> MemoryStat {
    let st = text(files, "memory.stat").map(|s| flat_keyed(&s)).unwrap_or_default();
    let g = |k: &str| st.get(k).copied().unwrap_or(0);
    let single = |name: &str| text(files, name).and_then(|s| single_value(&s)).unwrap_or(0);
    let workingset_refault = st
        .get("workingset_refault")
        .copied()
        .unwrap_or_else(|| g("workingset_refault_anon").saturating_add(g("workingset_refault_file")));
    let workingset_activate = st
        .get("workingset_activate")
        .copied()
        .unwrap_or_else(|| g("workingset_activate_anon").saturating_add(g("workingset_activate_file")));
    MemoryStat {
        anon: g("anon"),
        file: g("file"),
        kernel_stack: g("kernel_stack"),
        slab: g("slab"),
        sock: g("sock"),
        shmem: g("shmem"),
        file_mapped: g("file_mapped"),
        file_dirty: g("file_dirty"),
        file_writeback: g("file_writeback"),
        anon_thp: g("anon_thp"),
        inactive_anon: g("inactive_anon"),
        active_anon: g("active_anon"),
        inactive_file: g("inactive_file"),
        active_file: g("active_file"),
        unevictable: g("unevictable"),
        slab_reclaimable: g("slab_reclaimable"),
        slab_unreclaimable: g("slab_unreclaimable"),
        pgfault: g("pgfault"),
        pgmajfault: g("pgmajfault"),
        workingset_refault,
        workingset_activate,
        workingset_nodereclaim: g("workingset_nodereclaim"),
        pgrefill: g("pgrefill"),
        pgscan: g("pgscan"),
        pgsteal: g("pgsteal"),
        pgactivate: g("pgactivate"),
        pgdeactivate: g("pgdeactivate"),
        pglazyfree: g("pglazyfree"),
        pglazyfreed: g("pglazyfreed"),
        thp_fault_alloc: g("thp_fault_alloc"),
        thp_collapse_alloc: g("thp_collapse_alloc"),
        usage: single("memory.current"),
        usage_limit: single("memory.max"),
        swap_usage: single("memory.swap.current"),
        swap_limit: single("memory.swap.max"),
        max_usage: single("memory.peak"),
        ..Default::default()
    }
}

/// The metrics of one container from its raw cgroup files (pure; missing files give zeros).
pub fn parse_metrics(files: &HashMap<String, Vec<u8>>) -> Metrics {
    let mut m = Metrics::new();
    if let Some(cpu) = text(files, "cpu.stat").map(|s| flat_keyed(&s)) {
        let g = |k: &str| cpu.get(k).copied().unwrap_or(0);
        m.cpu = MessageField::some(CPUStat {
            usage_usec: g("usage_usec"),
            user_usec: g("user_usec"),
            system_usec: g("system_usec"),
            nr_periods: g("nr_periods"),
            nr_throttled: g("nr_throttled"),
            throttled_usec: g("throttled_usec"),
            nr_bursts: g("nr_bursts"),
            burst_usec: g("burst_usec"),
            ..Default::default()
        });
    }
    if files.keys().any(|k| k.starts_with("memory.")) {
        m.memory = MessageField::some(memory_stat(files));
    }
    if let Some(ev) = text(files, "memory.events").map(|s| flat_keyed(&s)) {
        let g = |k: &str| ev.get(k).copied().unwrap_or(0);
        m.memory_events = MessageField::some(MemoryEvents {
            low: g("low"),
            high: g("high"),
            max: g("max"),
            oom: g("oom"),
            oom_kill: g("oom_kill"),
            oom_group_kill: g("oom_group_kill"),
            ..Default::default()
        });
    }
    let current = text(files, "pids.current").and_then(|s| single_value(&s));
    let limit = text(files, "pids.max").and_then(|s| single_value(&s));
    if current.is_some() || limit.is_some() {
        m.pids = MessageField::some(PidsStat {
            current: current.unwrap_or(0),
            limit: limit.unwrap_or(0),
            ..Default::default()
        });
    }
    if let Some(io) = text(files, "io.stat") {
        m.io = MessageField::some(IOStat { usage: io_entries(&io), ..Default::default() });
    }
    m
}

/// The metrics packed for StatsResponse (type URL `io.containerd.cgroups.v2.Metrics`).
pub fn metrics_any(files: &HashMap<String, Vec<u8>>) -> Result<Any> {
    containerd_shim::util::convert_to_any(Box::new(parse_metrics(files)))
        .map_err(|e| Error::Agent(format!("encoding the container metrics: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::Message;

    // Real files of a container's cgroup in the guest (Linux 6.1, busybox sh under ctr run;
    // only the workingset_{refault,activate}_* values were made non-zero, to check their sums).
    // memory.events and io.stat follow the kernel format with made-up counts (the sample
    // container had no OOM and no block I/O).
    const CPU_STAT: &str = "usage_usec 749027\nuser_usec 115235\nsystem_usec 633792\nnr_periods 0\n\
        nr_throttled 0\nthrottled_usec 0\nnr_bursts 0\nburst_usec 0\n";
    const MEMORY_STAT: &str = "anon 114688\nfile 1548288\nkernel 348160\nkernel_stack 32768\n\
        pagetables 40960\nsec_pagetables 0\npercpu 888\nsock 0\nvmalloc 0\nshmem 0\nfile_mapped 1294336\n\
        file_dirty 0\nfile_writeback 0\nswapcached 0\nanon_thp 0\nfile_thp 0\nshmem_thp 0\n\
        inactive_anon 106496\nactive_anon 8192\ninactive_file 1507328\nactive_file 0\nunevictable 0\n\
        slab_reclaimable 79592\nslab_unreclaimable 148080\nslab 227672\nworkingset_refault_anon 3\n\
        workingset_refault_file 4\nworkingset_activate_anon 0\nworkingset_activate_file 1\n\
        workingset_restore_anon 0\nworkingset_restore_file 0\nworkingset_nodereclaim 0\npgscan 0\n\
        pgsteal 0\npgscan_kswapd 0\npgscan_direct 0\npgsteal_kswapd 0\npgsteal_direct 0\npgfault 910\n\
        pgmajfault 107\npgrefill 0\npgactivate 1354\npgdeactivate 0\npglazyfree 0\npglazyfreed 0\n\
        thp_fault_alloc 0\nthp_collapse_alloc 0\n";
    const MEMORY_EVENTS: &str = "low 0\nhigh 0\nmax 31\noom 1\noom_kill 1\noom_group_kill 0\n";
    const IO_STAT: &str = "254:0 rbytes=1458176 wbytes=0 rios=61 wios=0 dbytes=0 dios=0\n\
        8:16 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n";

    fn files(pairs: &[(&str, &str)]) -> HashMap<String, Vec<u8>> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
    }

    fn sample() -> HashMap<String, Vec<u8>> {
        files(&[
            ("cpu.stat", CPU_STAT),
            ("memory.current", "2011136\n"),
            ("memory.max", "16777216\n"),
            ("memory.peak", "2490368\n"),
            ("memory.stat", MEMORY_STAT),
            ("memory.events", MEMORY_EVENTS),
            ("memory.swap.current", "0\n"),
            ("memory.swap.max", "max\n"),
            ("pids.current", "2\n"),
            ("pids.max", "max\n"),
            ("io.stat", IO_STAT),
        ])
    }

    #[test]
    fn real_files_parse() {
        let m = parse_metrics(&sample());
        assert_eq!(m.cpu.usage_usec, 749027);
        assert_eq!(m.cpu.user_usec, 115235);
        assert_eq!(m.cpu.system_usec, 633792);
        assert_eq!((m.cpu.nr_periods, m.cpu.nr_throttled, m.cpu.throttled_usec), (0, 0, 0));
        assert_eq!(m.memory.usage, 2011136);
        assert_eq!(m.memory.usage_limit, 16777216);
        assert_eq!(m.memory.max_usage, 2490368);
        assert_eq!(m.memory.swap_limit, u64::MAX);
        assert_eq!(m.memory.anon, 114688);
        assert_eq!(m.memory.file_mapped, 1294336);
        assert_eq!(m.memory.slab, 227672);
        assert_eq!(m.memory.inactive_file, 1507328);
        assert_eq!((m.memory.pgfault, m.memory.pgmajfault, m.memory.pgactivate), (910, 107, 1354));
        assert_eq!(m.memory.workingset_refault, 7);
        assert_eq!(m.memory.workingset_activate, 1);
        assert_eq!(m.memory_events.oom_kill, 1);
        assert_eq!(m.memory_events.max, 31);
        assert_eq!(m.pids.current, 2);
        assert_eq!(m.pids.limit, u64::MAX);
        assert_eq!(m.io.usage.len(), 2);
        assert_eq!(
            (m.io.usage[1].major, m.io.usage[1].minor, m.io.usage[1].wbytes, m.io.usage[1].wios),
            (8, 16, 8192, 2)
        );
    }

    #[test]
    fn any_carries_the_v2_type_url_and_round_trips() {
        let any = metrics_any(&sample()).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let back = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(back.memory.usage, 2011136);
        assert_eq!(back.cpu.usage_usec, 749027);
    }

    #[test]
    fn garbage_is_ignored_without_panics() {
        let junk: Vec<u8> = (0..=255u8).cycle().take(3 * MAX_FILE).collect();
        let mut f = files(&[
            (
                "cpu.stat",
                "usage_usec\nusage_usec -5\nusage_usec 1 2\nuser_usec 99999999999999999999999\nsystem_usec 4\n",
            ),
            ("memory.current", "lots\n"),
            ("memory.max", ""),
            ("memory.events", "oom_kill=3\n\n\n"),
            ("pids.current", "-1"),
            ("io.stat", "8:x rbytes=1\n:1 rbytes=2\n9:1 rbytes=abc wbytes=5 junk\n1:2:3 rios=1\n"),
        ]);
        f.insert("memory.stat".into(), junk.clone());
        f.insert("io.stat-junk".into(), junk);
        let m = parse_metrics(&f);
        assert_eq!(m.cpu.usage_usec, 0);
        assert_eq!(m.cpu.user_usec, 0);
        assert_eq!(m.cpu.system_usec, 4);
        assert_eq!(m.memory.usage, 0);
        assert_eq!(m.memory.usage_limit, 0);
        assert_eq!(m.memory_events.oom_kill, 0);
        assert_eq!(m.pids.current, 0);
        assert_eq!(m.io.usage.len(), 1);
        assert_eq!((m.io.usage[0].major, m.io.usage[0].wbytes, m.io.usage[0].rbytes), (9, 5, 0));
        let many: String = (0..10_000).map(|i| format!("{i}:0 rbytes=1\n")).collect();
        assert_eq!(io_entries(&many).len(), MAX_IO_DEVICES);
        let m = parse_metrics(&HashMap::new());
        assert!(m.cpu.is_none() && m.memory.is_none() && m.pids.is_none() && m.io.is_none());
    }
}
