//! Guest syscall telemetry, host side: the relay of one sandbox. The guest's eBPF collector
//! connects out to the host's TELEMETRY_PORT; the relay reads its frames as hostile input
//! (stream.rs: bounded frames, Hello first, a per-sandbox rate limit), gives each event the
//! pod's and container's identity from the shim's own state (enrich.rs), and hands it to the
//! sinks (sinks.rs: the node socket the Falco plugin serves, the sandbox's
//! `telemetry.frames` for `bulwark events`, an optional JSON-lines file), each behind a queue
//! bounded in bytes (queue.rs). Configured by `[telemetry]` in config.toml; the collector's
//! own settings go to the agent in `SetupSandbox` ([`Relay::agent_config`]), with this boot's
//! stream token: the relay serves only a stream whose Hello carries it.

mod counters;
mod enrich;
mod queue;
mod sinks;
pub(crate) mod stream;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bulwark_protocol::agent::TelemetryConfig;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

pub use counters::Counters;
pub use enrich::Identity;
pub use sinks::FramesPaths;

use crate::agent::ratelimit::RateLimit;
use crate::config;

/// Bytes in a stream token.
const TOKEN_BYTES: usize = 32;

/// A new stream token from the kernel's random source.
fn new_token() -> std::io::Result<Arc<[u8]>> {
    use std::io::Read;
    let mut token = [0u8; TOKEN_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut token)?;
    Ok(Arc::from(&token[..]))
}

/// The node's name in events: the configured one, else the host name.
pub fn node_name(cfg: &config::Telemetry) -> String {
    if !cfg.node_name.is_empty() {
        return cfg.node_name.clone();
    }
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default()
}

/// A running relay; stopping (or dropping) it ends its tasks.
pub struct Relay {
    sandbox_id: String,
    /// What the collector's Hello must carry (secret: never logged).
    token: Arc<[u8]>,
    counters: Arc<Counters>,
    sinks: Arc<sinks::Sinks>,
    tasks: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Starts relaying the guest's connections on `listener` (bound on the VMM's socket for
    /// the host's TELEMETRY_PORT before the VM started), with a new stream token.
    pub fn start(
        cfg: &config::Telemetry,
        sandbox_id: &str,
        frames: &FramesPaths,
        identity: &Identity,
        listener: UnixListener,
    ) -> std::io::Result<Relay> {
        let token = new_token()?;
        let counters = Arc::new(Counters::default());
        let (sinks, mut tasks) = sinks::Sinks::start(cfg, sandbox_id, frames, counters.clone());
        tasks.push(tokio::spawn(stream::serve(
            listener,
            stream::Relaying {
                sandbox_id: sandbox_id.to_string(),
                token: token.clone(),
                limit: RateLimit::new(cfg.burst, cfg.max_events_per_sec),
                identity: identity.clone(),
                counters: counters.clone(),
                sinks: sinks.clone(),
            },
        )));
        Ok(Relay { sandbox_id: sandbox_id.to_string(), token, counters, sinks, tasks })
    }

    /// The collector's settings for the agent (`SetupSandboxRequest.telemetry`), with this
    /// relay's stream token.
    pub fn agent_config(&self, cfg: &config::Telemetry) -> TelemetryConfig {
        let mut t = TelemetryConfig::new();
        t.enabled = cfg.enabled;
        t.syscalls = cfg.syscalls.clone();
        t.max_events_per_sec = cfg.guest_max_events_per_sec;
        t.stream_token = self.token.to_vec();
        t
    }

    #[cfg(test)]
    pub(crate) fn token(&self) -> &[u8] {
        &self.token
    }

    /// What the relay counted so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Events the node socket sink dropped (its queue full while the socket was slow or away).
    pub fn node_dropped(&self) -> u64 {
        self.sinks.node_dropped()
    }

    /// Ends the relay and logs what it did.
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let c = &self.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        tracing::info!(
            "sandbox {}: telemetry: {} events received, {} forwarded, lost {} (rate {}, garbage {}, guest {}, sinks {}, \
             node socket queue {}), {} connections, {} dropped streams",
            self.sandbox_id,
            get(&c.received),
            get(&c.forwarded),
            c.lost(),
            get(&c.rate_dropped),
            get(&c.garbage),
            get(&c.guest_drops),
            get(&c.sink_dropped),
            self.sinks.node_dropped(),
            get(&c.connections),
            get(&c.bad_streams),
        );
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests;
