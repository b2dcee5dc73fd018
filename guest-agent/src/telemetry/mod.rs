//! The guest syscall collector (docs/telemetry.md): eBPF programs observe the tenant
//! containers' syscalls in the guest kernel and the agent streams them to the host.
//!
//! Started by SetupSandbox when `telemetry.enabled`; a container is watched from its creation
//! to its removal: its cgroup's id goes straight into the BPF `containers` map (one map update,
//! no lock held), so its first syscalls are seen. Two std threads, never waited on by the agent
//! (SetupSandbox waits, bounded, for the programs to attach):
//! - `bpf.rs`: loads and attaches the BPF programs, reads the ring buffer; records become
//!   events (`raw.rs`) under the rate limit into the bounded queue;
//! - `sender.rs`: the vsock stream to the host (Hello, events, Drops; reconnects).
//!
//! `config.rs` parses the request, `queue.rs` holds the queue, rate limit and counters. If the
//! BPF side cannot load (no BTF, verifier refusal...), a loud error is logged and the pod runs
//! without telemetry.
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

mod bpf;
mod config;
mod queue;
mod raw;
mod sender;

pub use config::{parse, Settings};

use queue::{Counters, EventQueue, QUEUE_BYTES, QUEUE_EVENTS};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether the BPF programs are attached: None while loading, then true (attached) or false
/// (could not start).
#[derive(Default)]
pub struct Ready {
    state: Mutex<Option<bool>>,
    changed: Condvar,
}

impl Ready {
    pub fn set(&self, attached: bool) {
        *lock(&self.state) = Some(attached);
        self.changed.notify_all();
    }

    /// The outcome, waiting at most `limit` for it (None: still loading).
    pub fn wait(&self, limit: Duration) -> Option<bool> {
        let st = lock(&self.state);
        let (st, _) = self.changed.wait_timeout_while(st, limit, |s| s.is_none()).unwrap_or_else(|p| p.into_inner());
        *st
    }
}

#[derive(Default)]
pub struct State {
    /// Set once the collector was started.
    started: bool,
    /// Container id -> its cgroup's id (kernfs id = the directory's inode number).
    watched: HashMap<String, u64>,
    /// The BPF `containers` map, once loaded (a duplicated fd, updated without any lock).
    map: Option<Arc<MapHandle>>,
}

/// The collector as the agent's RPCs see it: start once, watch and unwatch containers. Every
/// call returns at once: a short lock around in-memory maps, then at most one BPF map update
/// (a syscall that does not block) with no lock held.
#[derive(Default)]
pub struct Telemetry {
    state: Arc<Mutex<State>>,
    /// cgroup id -> container id, read by the BPF thread for each event.
    names: Arc<Mutex<HashMap<u64, String>>>,
    ready: Arc<Ready>,
}

impl Telemetry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Starts the collector (once; a second call is logged and ignored). `sandbox_id` goes
    /// into the stream's Hello (informational).
    pub fn start(&self, settings: Settings, sandbox_id: &str) {
        {
            let mut st = lock(&self.state);
            if st.started {
                tracing::warn!("telemetry: the collector already runs; the new configuration is ignored");
                return;
            }
            st.started = true;
        }
        let queue = Arc::new(EventQueue::new(QUEUE_EVENTS, QUEUE_BYTES));
        let counters = Arc::new(Counters::default());
        let reader = bpf::Reader {
            settings,
            queue: queue.clone(),
            counters: counters.clone(),
            names: self.names.clone(),
            watched: self.state.clone(),
            ready: self.ready.clone(),
        };
        let ready = self.ready.clone();
        let spawned = std::thread::Builder::new().name("telemetry-bpf".into()).spawn(move || {
            if let Err(e) = reader.run() {
                ready.set(false);
                tracing::error!(
                    "TELEMETRY DISABLED: the guest syscall collector could not start: {e}. The pod runs \
                     without syscall telemetry."
                );
            }
        });
        if let Err(e) = spawned {
            tracing::error!("TELEMETRY DISABLED: cannot start the collector thread: {e}");
            self.ready.set(false);
            return;
        }
        let sender = sender::Sender {
            queue,
            counters,
            sandbox_id: sandbox_id.to_string(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let spawned = std::thread::Builder::new().name("telemetry-send".into()).spawn(move || {
            sender.run(|| {
                let s = vsock::VsockStream::connect_with_cid_port(protocol::HOST_CID, protocol::TELEMETRY_PORT)?;
                s.set_write_timeout(Some(sender::WRITE_TIMEOUT))?;
                Ok(s)
            })
        });
        if let Err(e) = spawned {
            tracing::error!("TELEMETRY DISABLED: cannot start the telemetry sender thread: {e}");
        }
    }

    /// Whether the collector is attached, waiting at most `limit` (None: still loading; false:
    /// it could not start or was never started).
    pub fn wait_attached(&self, limit: Duration) -> Option<bool> {
        if !lock(&self.state).started {
            return Some(false);
        }
        self.ready.wait(limit)
    }

    /// Watches the container whose cgroup directory is `cgroup_dir` (and the cgroups below it).
    pub fn watch(&self, container_id: &str, cgroup_dir: &Path) {
        let id = match std::fs::metadata(cgroup_dir) {
            Ok(m) => std::os::unix::fs::MetadataExt::ino(&m),
            Err(e) => {
                tracing::warn!(
                    container = %container_id,
                    "telemetry: cannot read the cgroup {}: {e}; its syscalls are not collected",
                    cgroup_dir.display()
                );
                return;
            }
        };
        // The name first: the BPF thread copies the names into the map after publishing it.
        lock(&self.names).insert(id, container_id.to_string());
        let map = {
            let mut st = lock(&self.state);
            st.watched.insert(container_id.to_string(), id);
            st.map.clone()
        };
        if let Some(map) = map {
            update_watch(&map, id, true);
        }
    }

    /// Stops watching a container (before its cgroup goes away).
    pub fn unwatch(&self, container_id: &str) {
        let (id, map) = {
            let mut st = lock(&self.state);
            (st.watched.remove(container_id), st.map.clone())
        };
        let Some(id) = id else { return };
        lock(&self.names).remove(&id);
        if let Some(map) = map {
            update_watch(&map, id, false);
        }
    }
}

/// Adds or removes one cgroup id in the BPF `containers` map. A cgroup id is never reused, so
/// an entry left behind by a race with the collector's start matches nothing.
fn update_watch(map: &MapHandle, cgroup_id: u64, watch: bool) {
    let key = cgroup_id.to_le_bytes();
    let res = if watch { map.update(&key, &[1u8], MapFlags::ANY) } else { map.delete(&key) };
    if let Err(e) = res {
        tracing::warn!(cgroup_id, watch, "telemetry: updating the containers map failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_and_unwatch_before_the_collector_loads() {
        let t = Telemetry::new();
        let dir = std::env::temp_dir();
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&dir).unwrap());
        t.watch("c1", &dir);
        assert_eq!(lock(&t.names).get(&ino).map(String::as_str), Some("c1"));
        assert_eq!(lock(&t.state).watched.get("c1"), Some(&ino));
        // No map yet: nothing blocks, the BPF thread copies the names when it loads.
        t.unwatch("c1");
        assert!(lock(&t.names).is_empty());
        assert!(lock(&t.state).watched.is_empty());
        t.unwatch("never-watched");
        t.watch("c2", Path::new("/nonexistent/cgroup"));
        assert!(lock(&t.names).is_empty(), "an unreadable cgroup is skipped");
    }

    #[test]
    fn readiness_is_waited_for_with_a_bound() {
        let t = Telemetry::new();
        assert_eq!(t.wait_attached(Duration::from_secs(5)), Some(false), "never started");
        lock(&t.state).started = true;
        let t0 = std::time::Instant::now();
        assert_eq!(t.wait_attached(Duration::from_millis(50)), None, "still loading");
        assert!(t0.elapsed() >= Duration::from_millis(50));
        let ready = t.ready.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            ready.set(true);
        });
        assert_eq!(t.wait_attached(Duration::from_secs(10)), Some(true));
        h.join().unwrap();
        t.ready.set(false);
        assert_eq!(t.wait_attached(Duration::ZERO), Some(false));
    }
}
