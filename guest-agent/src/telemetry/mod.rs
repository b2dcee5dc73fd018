//! The guest syscall collector (docs/telemetry.md): eBPF programs observe the tenant
//! containers' syscalls in the guest kernel and the agent streams them to the host.
//!
//! Started by SetupSandbox when `telemetry.enabled`; containers are watched from their
//! creation to their removal (their cgroup's id goes into a BPF map). Two std threads, never
//! waited on by the agent:
//! - `bpf.rs`: loads and attaches the BPF programs, reads the ring buffer, applies watch
//!   changes; records become events (`raw.rs`) under the rate limit into the bounded queue;
//! - `sender.rs`: the vsock stream to the host (Hello, events, Drops; reconnects).
//!
//! `config.rs` parses the request, `queue.rs` holds the queue, rate limit and counters. If the
//! BPF side cannot load (no BTF, verifier refusal...), a loud error is logged and the pod runs
//! without telemetry.
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};

mod bpf;
mod config;
mod queue;
mod raw;
mod sender;

pub use config::{parse, Settings};

use bpf::Command;
use queue::{Counters, EventQueue, QUEUE_BYTES, QUEUE_EVENTS};

/// Watch changes waiting for the BPF thread at most (it applies them every 200 ms).
const COMMAND_QUEUE: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct State {
    /// Container id -> its cgroup's id (kernfs id = the directory's inode number).
    watched: HashMap<String, u64>,
    /// Set once the collector started.
    commands: Option<SyncSender<Command>>,
}

/// The collector as the agent's RPCs see it: start once, watch and unwatch containers. Every
/// call returns at once (a short lock around maps, a non-blocking channel send).
#[derive(Default)]
pub struct Telemetry {
    state: Mutex<State>,
    /// cgroup id -> container id, read by the BPF thread for each event.
    names: Arc<Mutex<HashMap<u64, String>>>,
}

impl Telemetry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Starts the collector (once; a second call is logged and ignored). `sandbox_id` goes
    /// into the stream's Hello (informational).
    pub fn start(&self, settings: Settings, sandbox_id: &str) {
        let (tx, rx) = sync_channel(COMMAND_QUEUE);
        {
            let mut st = lock(&self.state);
            if st.commands.is_some() {
                tracing::warn!("telemetry: the collector already runs; the new configuration is ignored");
                return;
            }
            st.commands = Some(tx);
        }
        let queue = Arc::new(EventQueue::new(QUEUE_EVENTS, QUEUE_BYTES));
        let counters = Arc::new(Counters::default());
        let reader = bpf::Reader {
            settings,
            queue: queue.clone(),
            counters: counters.clone(),
            names: self.names.clone(),
            commands: rx,
        };
        let spawned = std::thread::Builder::new().name("telemetry-bpf".into()).spawn(move || {
            if let Err(e) = reader.run() {
                tracing::error!(
                    "TELEMETRY DISABLED: the guest syscall collector could not start: {e}. The pod runs \
                     without syscall telemetry."
                );
            }
        });
        if let Err(e) = spawned {
            tracing::error!("TELEMETRY DISABLED: cannot start the collector thread: {e}");
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

    /// Watches the container whose cgroup directory is `cgroup_dir` (and the cgroups below it).
    pub fn watch(&self, container_id: &str, cgroup_dir: &Path) {
        let id = match std::fs::metadata(cgroup_dir) {
            Ok(m) => std::os::unix::fs::MetadataExt::ino(&m),
            Err(e) => {
                tracing::warn!(container = %container_id, "telemetry: cannot read the cgroup {}: {e}; its syscalls are not collected", cgroup_dir.display());
                return;
            }
        };
        lock(&self.names).insert(id, container_id.to_string());
        let commands = {
            let mut st = lock(&self.state);
            st.watched.insert(container_id.to_string(), id);
            st.commands.clone()
        };
        send(commands, Command::Watch(id));
    }

    /// Stops watching a container (before its cgroup goes away).
    pub fn unwatch(&self, container_id: &str) {
        let (id, commands) = {
            let mut st = lock(&self.state);
            (st.watched.remove(container_id), st.commands.clone())
        };
        let Some(id) = id else { return };
        lock(&self.names).remove(&id);
        send(commands, Command::Unwatch(id));
    }
}

fn send(commands: Option<SyncSender<Command>>, c: Command) {
    let Some(tx) = commands else { return };
    match tx.try_send(c) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => tracing::warn!("telemetry: {c:?} not applied: too many pending changes"),
        // The collector thread ended (it could not load): nothing to update.
        Err(TrySendError::Disconnected(_)) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_and_unwatch_before_and_after_start() {
        let t = Telemetry::new();
        let dir = std::env::temp_dir();
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&dir).unwrap());
        t.watch("c1", &dir);
        assert_eq!(lock(&t.names).get(&ino).map(String::as_str), Some("c1"));
        // Not started: no channel, nothing blocks.
        t.unwatch("c1");
        assert!(lock(&t.names).is_empty());
        t.unwatch("never-watched");
        t.watch("c2", Path::new("/nonexistent/cgroup"));
        assert!(lock(&t.names).is_empty(), "an unreadable cgroup is skipped");

        // Started (by hand, without threads): commands go to the channel.
        let (tx, rx) = sync_channel(1);
        lock(&t.state).commands = Some(tx);
        t.watch("c3", &dir);
        assert_eq!(rx.try_recv(), Ok(Command::Watch(ino)));
        t.watch("c4", &dir);
        t.watch("c5", &dir); // the channel is full: dropped with a warning, no blocking
        assert_eq!(rx.try_recv(), Ok(Command::Watch(ino)));
        assert!(rx.try_recv().is_err());
        drop(rx);
        t.unwatch("c3"); // the collector is gone: no error
    }
}
