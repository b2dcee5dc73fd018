//! The host's watch on a guest that stops answering: a bounded health check (the agent's
//! `Check`) at a fixed interval on the agent connection. After [`FAILURES`] checks in a row
//! that fail or do not answer within [`TIMEOUT`], the pod is ended (its VM killed, so every
//! container reports its exit), with the reason in the shim log, instead of leaving calls to
//! hang. A guest whose kernel panics or whose agent crashes ends the same way, sooner: the
//! guest reboots on panic (QEMU exits) and a dead agent fails the check at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::agent::AgentApi;

/// Time between two checks.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// How long one check may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Failed checks in a row that end the pod.
pub const FAILURES: u32 = 3;

/// How often and how patiently to check.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub interval: Duration,
    pub timeout: Duration,
    pub failures: u32,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule { interval: INTERVAL, timeout: TIMEOUT, failures: FAILURES }
    }
}

/// Checks `agent` on `schedule` until `gone()` says the sandbox is stopping (or gone), or
/// until the guest failed `schedule.failures` checks in a row: then `end_pod(reason)` runs
/// once and the task ends.
pub fn spawn<G, E, F>(agent: Arc<dyn AgentApi>, schedule: Schedule, gone: G, end_pod: E) -> tokio::task::JoinHandle<()>
where
    G: Fn() -> bool + Send + 'static,
    E: FnOnce(String) -> F + Send + 'static,
    F: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut failed = 0u32;
        loop {
            tokio::time::sleep(schedule.interval).await;
            if gone() {
                return;
            }
            let why = match tokio::time::timeout(schedule.timeout, agent.check()).await {
                Ok(Ok(_)) => {
                    failed = 0;
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {:?}", schedule.timeout),
            };
            if gone() {
                return;
            }
            failed += 1;
            tracing::warn!("guest health check failed ({failed} of {} in a row): {why}", schedule.failures);
            if failed >= schedule.failures {
                end_pod(format!("the guest agent failed {failed} health checks in a row (last: {why})")).await;
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::fake::{Failure, FakeAgent};
    use std::sync::atomic::{AtomicBool, Ordering};

    const FAST: Schedule =
        Schedule { interval: Duration::from_millis(5), timeout: Duration::from_millis(20), failures: 3 };

    fn watch(agent: &Arc<FakeAgent>, gone: Arc<AtomicBool>) -> (tokio::task::JoinHandle<()>, Arc<AtomicBool>) {
        let ended = Arc::new(AtomicBool::new(false));
        let e = ended.clone();
        let h = spawn(
            agent.clone(),
            FAST,
            move || gone.load(Ordering::SeqCst),
            move |why: String| async move {
                assert!(why.contains("health checks"), "{why}");
                e.store(true, Ordering::SeqCst);
            },
        );
        (h, ended)
    }

    #[tokio::test]
    async fn a_guest_that_stops_answering_ends_its_pod() {
        let agent = Arc::new(FakeAgent::default());
        let (h, ended) = watch(&agent, Arc::new(AtomicBool::new(false)));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!ended.load(Ordering::SeqCst), "a healthy guest is left alone");
        agent.set_failure("check", Some(Failure::Hang));
        tokio::time::timeout(Duration::from_secs(5), h).await.expect("the watch ends").expect("join");
        assert!(ended.load(Ordering::SeqCst), "the pod is ended");
    }

    #[tokio::test]
    async fn one_failure_is_forgiven_and_a_stopping_sandbox_is_not_watched() {
        let agent = Arc::new(FakeAgent::default());
        let gone = Arc::new(AtomicBool::new(false));
        let (h, ended) = watch(&agent, gone.clone());
        agent.set_failure("check", Some(Failure::Unreachable));
        tokio::time::sleep(Duration::from_millis(12)).await;
        agent.set_failure("check", None);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!ended.load(Ordering::SeqCst), "failures must be in a row");
        gone.store(true, Ordering::SeqCst);
        agent.set_failure("check", Some(Failure::Unreachable));
        tokio::time::timeout(Duration::from_secs(5), h).await.expect("the watch ends").expect("join");
        assert!(!ended.load(Ordering::SeqCst), "a sandbox being torn down is not ended by the watch");
    }
}
