//! What a sandbox's telemetry relay counts: events in, forwarded and lost (and where), and
//! the guest's connections. Shared by the stream reader and the sinks; logged at teardown.

use std::sync::atomic::{AtomicU64, Ordering};

/// What a sandbox's relay counted.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicU64,
    /// Events that decoded and passed the checks.
    pub received: AtomicU64,
    /// Events handed to the sinks.
    pub forwarded: AtomicU64,
    /// Events over the rate limit.
    pub rate_dropped: AtomicU64,
    /// Frames that did not decode or broke a limit (skipped; the stream goes on).
    pub garbage: AtomicU64,
    /// Connections ended by an oversize frame, a missing/bad Hello, or a stream cut inside
    /// a frame.
    pub bad_streams: AtomicU64,
    /// What the guest's collector reported losing (its last `Drops` count per connection,
    /// summed over connections).
    pub guest_drops: AtomicU64,
    /// Refusals and losses in the sinks (full queues, failed writes; per sink).
    pub sink_dropped: AtomicU64,
}

impl Counters {
    /// Events of this sandbox lost anywhere so far (the `drops` every enriched event carries).
    pub fn lost(&self) -> u64 {
        [&self.rate_dropped, &self.garbage, &self.guest_drops, &self.sink_dropped]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .fold(0u64, u64::saturating_add)
    }
}
