//! OOM events of one sandbox: one background task long-polls the agent's WaitOomEvent and
//! hands each container id to a callback (which publishes `/tasks/oom` for containers this
//! shim knows). The ids come from the guest: the callback must ignore unknown ones. The task
//! ends when the VM dies or the sandbox is being torn down.
//!
//! So that `/tasks/oom` always precedes `/tasks/exit`, the exit path also reads the cgroup's
//! `oom_kill` total before it publishes the exit; [`OomCount`] makes the two sources publish
//! each kill once.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::agent::ratelimit::RateLimit;
use crate::agent::AgentApi;
use crate::sandbox::Sandbox;

/// Pause after a failed poll that was not the VM's death (an old agent, a transient error).
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// OOM events taken from the guest: a burst, then at most this many a second.
const OOM_BURST: u32 = 16;
const OOM_PER_SEC: u32 = 2;
/// Failed polls in a row after which the watcher gives up (logged).
const MAX_FAILURES: u32 = 30;

/// Most events the exit check publishes at once (the total comes from the guest).
pub const MAX_EVENTS_AT_EXIT: u64 = 16;

/// How many OOM kills of one container were published, and how many the watcher reported.
#[derive(Debug, Default)]
pub struct OomCount {
    /// (watcher events seen, events published)
    counts: Mutex<(u64, u64)>,
}

impl OomCount {
    fn counts(&self) -> std::sync::MutexGuard<'_, (u64, u64)> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A watcher event for this container: whether to publish it (not if the exit check
    /// already did).
    pub fn on_event(&self) -> bool {
        let mut c = self.counts();
        c.0 = c.0.saturating_add(1);
        if c.0 > c.1 {
            c.1 = c.0;
            true
        } else {
            false
        }
    }

    /// The cgroup's oom_kill total at exit: how many events to publish now (at most
    /// MAX_EVENTS_AT_EXIT).
    pub fn on_total(&self, total: u64) -> u64 {
        let mut c = self.counts();
        if total <= c.1 {
            return 0;
        }
        let n = (total - c.1).min(MAX_EVENTS_AT_EXIT);
        c.1 = total;
        n
    }
}

/// Spawns the OOM watcher of `sandbox`. `on_oom(container_id)` runs for every event.
pub fn spawn<F, Fut>(sandbox: &Arc<Sandbox>, agent: Arc<dyn AgentApi>, on_oom: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let sandbox = Arc::downgrade(sandbox);
    tokio::spawn(async move {
        let mut failures = 0;
        let mut limit = RateLimit::new(OOM_BURST, OOM_PER_SEC);
        loop {
            // The guest decides how often it reports: the host takes at most OOM_PER_SEC
            // events a second (after a burst), leaving the rest queued in the guest.
            let wait = limit.wait_time();
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let res = agent.wait_oom_event().await;
            let (gone, id) = match sandbox.upgrade() {
                None => (true, None),
                Some(sb) => (sb.is_stopping() || vm_exited(&sb), Some(sb.id.clone())),
            };
            match res {
                Ok(container_id) => {
                    failures = 0;
                    limit.allow();
                    tracing::info!(
                        "sandbox {}: the guest reports an OOM kill in container {container_id:?}",
                        id.unwrap_or_default()
                    );
                    on_oom(container_id).await;
                }
                Err(_) if gone => {
                    tracing::debug!("OOM watcher of sandbox {}: the VM is gone, stopping", id.unwrap_or_default());
                    return;
                }
                Err(e) => {
                    failures += 1;
                    if failures >= MAX_FAILURES {
                        tracing::error!(
                            "OOM watcher of sandbox {}: {e}; giving up after {failures} failures",
                            id.unwrap_or_default()
                        );
                        return;
                    }
                    tracing::warn!("OOM watcher of sandbox {}: {e}; retrying", id.unwrap_or_default());
                    tokio::time::sleep(RETRY_DELAY).await;
                }
            }
        }
    })
}

fn vm_exited(sb: &Sandbox) -> bool {
    sb.vm_exit().map(|rx| rx.borrow().is_some()).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kill_is_published_once_whichever_source_sees_it_first() {
        // Watcher first, then the exit check.
        let c = OomCount::default();
        assert!(c.on_event());
        assert_eq!(c.on_total(1), 0);
        // Exit check first, then the watcher's event for the same kill.
        let c = OomCount::default();
        assert_eq!(c.on_total(1), 1);
        assert!(!c.on_event());
        // Two kills: one seen by the watcher, both counted at exit; the late event is dropped.
        let c = OomCount::default();
        assert!(c.on_event());
        assert_eq!(c.on_total(2), 1);
        assert!(!c.on_event());
        assert!(c.on_event(), "a third kill after that is new");
        // A hostile total is capped.
        assert_eq!(OomCount::default().on_total(u64::MAX), MAX_EVENTS_AT_EXIT);
    }
}
