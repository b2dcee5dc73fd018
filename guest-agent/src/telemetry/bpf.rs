//! The BPF side, in one std thread that owns it: load the embedded object
//! (`bpf/collector.bpf.c`, built by build.rs) with libbpf, write the config map, hand the
//! `containers` map to the agent (a duplicated fd: the agent updates it directly when a
//! container is created or removed, so nothing waits for this thread), attach the raw
//! tracepoints, then poll the ring buffer (libbpf's poll blocks), turning each record into an
//! event for the queue, and add the records the ring buffer had no room for (the `lost` map)
//! to the drop counter.
use std::sync::Arc;
use std::time::{Duration, Instant};

use libbpf_rs::{MapCore, MapFlags, MapHandle, ObjectBuilder, PrintLevel, RingBufferBuilder};

use super::config::Settings;
use super::queue::{Counters, EventQueue, RateLimit};
use super::raw::{self, Context};
use super::watch::{Ready, Watched};

/// The collector's BPF object, compiled by build.rs.
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/collector.bpf.o"));

/// The programs and the tracepoints they attach to.
const PROGRAMS: &[(&str, &str)] = &[
    ("sys_enter", "sys_enter"),
    ("sys_exit", "sys_exit"),
    ("sched_process_exec", "sched_process_exec"),
    ("sched_process_fork", "sched_process_fork"),
    ("sched_process_exit", "sched_process_exit"),
];

/// How long one ring-buffer poll may block (the lost counter is read between polls).
const POLL: Duration = Duration::from_millis(200);
/// How often the counters are logged.
const STATS_INTERVAL: Duration = Duration::from_secs(60);
/// Longest libbpf message logged (verifier logs can be long; their end says why).
const MAX_LIBBPF_MESSAGE: usize = 4000;

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("{what}: {source}")]
    Libbpf { what: String, source: libbpf_rs::Error },
    #[error("the BPF object has no {0}")]
    Missing(&'static str),
    #[error("cannot read the agent's own executable: {0}")]
    SelfExe(std::io::Error),
}

fn libbpf(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> BpfError {
    let what = what.into();
    move |source| BpfError::Libbpf { what, source }
}

/// libbpf's messages (verifier logs included) into the agent's log, cut to their end.
fn print(level: PrintLevel, msg: String) {
    let msg = msg.trim_end();
    let start = msg.len().saturating_sub(MAX_LIBBPF_MESSAGE);
    let start = (start..msg.len()).find(|&i| msg.is_char_boundary(i)).unwrap_or(msg.len());
    match level {
        PrintLevel::Warn => tracing::warn!("libbpf: {}", &msg[start..]),
        PrintLevel::Info => tracing::debug!("libbpf: {}", &msg[start..]),
        PrintLevel::Debug => {}
    }
}

/// The config map's value (collector.h `struct collector_config`).
fn config_value(types: u64, agent_ino: u64, agent_dev: u32) -> [u8; 24] {
    let mut v = [0u8; 24];
    v[0..8].copy_from_slice(&types.to_le_bytes());
    v[8..16].copy_from_slice(&agent_ino.to_le_bytes());
    v[16..20].copy_from_slice(&agent_dev.to_le_bytes());
    v
}

/// The kernel's internal encoding of a device number (MAJOR << 20 | MINOR).
fn kernel_dev(dev: u64) -> u32 {
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    ((major << 20) | (minor & 0xfffff)) as u32
}

/// CLOCK_REALTIME - CLOCK_BOOTTIME in ns.
fn realtime_offset_ns() -> i128 {
    let ns = |clock| {
        let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `t`.
        if unsafe { libc::clock_gettime(clock, &mut t) } != 0 {
            return 0;
        }
        t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128
    };
    ns(libc::CLOCK_REALTIME) - ns(libc::CLOCK_BOOTTIME)
}

/// What the reader thread shares with the rest of the collector.
pub struct Reader {
    pub settings: Settings,
    pub queue: Arc<EventQueue>,
    pub counters: Arc<Counters>,
    /// The watched containers: gets the `containers` map once loaded, names the events'
    /// containers.
    pub watched: Arc<Watched>,
    /// Set once the programs are attached.
    pub ready: Arc<Ready>,
}

impl Reader {
    /// Loads, attaches and reads for the VM's life. Returns the reason it could not start.
    pub fn run(self) -> Result<(), BpfError> {
        libbpf_rs::set_print(Some((PrintLevel::Info, print)));
        let exe = std::fs::metadata("/proc/self/exe").map_err(BpfError::SelfExe)?;
        let (agent_ino, agent_dev) = {
            use std::os::unix::fs::MetadataExt;
            (exe.ino(), kernel_dev(exe.dev()))
        };
        let open = ObjectBuilder::default().open_memory(OBJECT).map_err(libbpf("opening the BPF object"))?;
        let started = Instant::now();
        let object = open.load().map_err(libbpf("loading the BPF programs (verifier)"))?;
        let map = |name: &'static str| object.maps().find(|m| m.name() == name).ok_or(BpfError::Missing(name));
        let config = map("config")?;
        let containers = map("containers")?;
        let lost = map("lost")?;
        let events = map("events")?;
        config
            .update(&0u32.to_le_bytes(), &config_value(self.settings.types, agent_ino, agent_dev), MapFlags::ANY)
            .map_err(libbpf("writing the config map"))?;
        let handle = MapHandle::try_from(&containers).map_err(libbpf("duplicating the containers map"))?;
        self.watched.publish(Arc::new(handle));
        let mut links = Vec::new();
        for (prog_name, tracepoint) in PROGRAMS {
            let prog = object.progs_mut().find(|p| p.name() == *prog_name).ok_or(BpfError::Missing(prog_name))?;
            links.push(
                prog.attach_raw_tracepoint(tracepoint)
                    .map_err(libbpf(format!("attaching {prog_name} to {tracepoint}")))?,
            );
        }
        self.ready.set(true);
        tracing::info!(
            types = format!("{:#x}", self.settings.types),
            max_events_per_sec = self.settings.max_events_per_sec,
            "telemetry: syscall collector loaded and attached in {:?}",
            started.elapsed()
        );

        let mut rate = RateLimit::new(self.settings.max_events_per_sec);
        let offset = realtime_offset_ns();
        let watched = self.watched.clone();
        let container_of = move |id: u64| watched.container_of(id);
        let (queue, counters) = (self.queue.clone(), self.counters.clone());
        let mut bad_records = 0u64;
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&events, move |data: &[u8]| {
                counters.saw();
                if !rate.allow(Instant::now()) {
                    counters.drop_n(1);
                    return 0;
                }
                let ctx = Context { realtime_offset_ns: offset, container_of: &container_of };
                match raw::decode(data, &ctx) {
                    Ok(e) => {
                        if !queue.push(e) {
                            counters.drop_n(1);
                        }
                    }
                    Err(err) => {
                        counters.drop_n(1);
                        bad_records += 1;
                        if bad_records.is_power_of_two() {
                            tracing::warn!("telemetry: unreadable ring buffer record ({err}); {bad_records} so far");
                        }
                    }
                }
                0
            })
            .map_err(libbpf("adding the ring buffer"))?;
        let ring = builder.build().map_err(libbpf("building the ring buffer reader"))?;

        let mut lost_seen = 0u64;
        let mut last_stats = Instant::now();
        loop {
            if let Err(e) = ring.poll(POLL) {
                // EINTR and the like: log, pause, go on.
                tracing::debug!("telemetry: ring buffer poll: {e}");
                std::thread::sleep(POLL);
            }
            let lost_now = sum_lost(&lost);
            if lost_now > lost_seen {
                self.counters.drop_n(lost_now - lost_seen);
                lost_seen = lost_now;
            }
            if last_stats.elapsed() >= STATS_INTERVAL {
                last_stats = Instant::now();
                let (seen, sent, dropped) = self.counters.get();
                let (queued, bytes) = self.queue.len();
                tracing::info!(seen, sent, dropped, queued, bytes, "telemetry: collector counters");
            }
        }
    }
}

/// The per-CPU `lost` counters, summed.
fn sum_lost(lost: &libbpf_rs::Map<'_>) -> u64 {
    match lost.lookup_percpu(&0u32.to_le_bytes(), MapFlags::ANY) {
        Ok(Some(values)) => values
            .iter()
            .filter_map(|v| v.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes))
            .fold(0u64, u64::saturating_add),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_value_layout() {
        let v = config_value(0x1234, 99, (8 << 20) | 1);
        assert_eq!(u64::from_le_bytes(v[0..8].try_into().unwrap()), 0x1234);
        assert_eq!(u64::from_le_bytes(v[8..16].try_into().unwrap()), 99);
        assert_eq!(u32::from_le_bytes(v[16..20].try_into().unwrap()), (8 << 20) | 1);
        assert_eq!(&v[20..], &[0; 4]);
    }

    #[test]
    fn device_numbers_use_the_kernel_encoding() {
        assert_eq!(kernel_dev(nix::sys::stat::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(nix::sys::stat::makedev(0, 300)), 300);
    }

    #[test]
    fn the_object_is_embedded() {
        assert!(OBJECT.starts_with(b"\x7fELF"), "collector.bpf.o is an ELF object");
        let object = ObjectBuilder::default().open_memory(OBJECT).expect("libbpf opens the object");
        for (name, _) in PROGRAMS {
            assert!(object.progs().any(|p| p.name() == *name), "program {name}");
        }
        for name in ["events", "containers", "config", "lost", "pending", "tracked"] {
            assert!(object.maps().any(|m| m.name() == name), "map {name}");
        }
    }
}
