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
//! `config.rs` parses the request, `queue.rs` holds the queue, rate limit and counters,
//! `watch.rs` the watched containers, the shared map handle and the readiness. If the
//! BPF side cannot load (no BTF, verifier refusal...), a loud error is logged and the pod runs
//! without telemetry.
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod bpf;
mod config;
mod queue;
mod raw;
mod sender;
mod watch;

pub use config::{parse, Settings};

use queue::{Counters, EventQueue, QUEUE_BYTES, QUEUE_EVENTS};
use watch::{Ready, Watched};

/// The collector as the agent's RPCs see it: start once, watch and unwatch containers. Every
/// call returns at once.
#[derive(Default)]
pub struct Telemetry {
    started: AtomicBool,
    watched: Arc<Watched>,
    ready: Arc<Ready>,
}

impl Telemetry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Starts the collector (once; a second call is logged and ignored). `sandbox_id` goes
    /// into the stream's Hello (informational), `token` too (the host's proof that the stream
    /// is the collector's).
    pub fn start(&self, settings: Settings, sandbox_id: &str, token: Vec<u8>) {
        if self.started.swap(true, Ordering::SeqCst) {
            tracing::warn!("telemetry: the collector already runs; the new configuration is ignored");
            return;
        }
        let queue = Arc::new(EventQueue::new(QUEUE_EVENTS, QUEUE_BYTES));
        let counters = Arc::new(Counters::default());
        let reader = bpf::Reader {
            settings,
            queue: queue.clone(),
            counters: counters.clone(),
            watched: self.watched.clone(),
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
            token,
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
        if !self.started.load(Ordering::SeqCst) {
            return Some(false);
        }
        self.ready.wait(limit)
    }

    /// Watches the container whose cgroup directory is `cgroup_dir` (and the cgroups below it).
    pub fn watch(&self, container_id: &str, cgroup_dir: &Path) {
        match std::fs::metadata(cgroup_dir) {
            Ok(m) => self.watched.watch(container_id, std::os::unix::fs::MetadataExt::ino(&m)),
            Err(e) => tracing::warn!(
                container = %container_id,
                "telemetry: cannot read the cgroup {}: {e}; its syscalls are not collected",
                cgroup_dir.display()
            ),
        }
    }

    /// Stops watching a container (before its cgroup goes away).
    pub fn unwatch(&self, container_id: &str) {
        self.watched.unwatch(container_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_is_watched_by_its_cgroup_directorys_inode() {
        let t = Telemetry::new();
        let dir = std::env::temp_dir();
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&dir).unwrap());
        t.watch("c1", &dir);
        assert_eq!(t.watched.container_of(ino).as_deref(), Some("c1"));
        t.unwatch("c1");
        assert_eq!(t.watched.container_of(ino), None);
        t.watch("c2", Path::new("/nonexistent/cgroup"));
        assert!(t.watched.watched().0.is_empty(), "an unreadable cgroup is skipped");
    }

    #[test]
    fn attachment_is_not_awaited_before_the_start() {
        let t = Telemetry::new();
        assert_eq!(t.wait_attached(Duration::from_secs(5)), Some(false), "never started");
        t.started.store(true, Ordering::SeqCst);
        assert_eq!(t.wait_attached(Duration::from_millis(10)), None, "still loading");
    }
}
