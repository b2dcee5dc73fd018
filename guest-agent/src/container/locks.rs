//! Each container's lifecycle lock: the runtime calls that change a container (create, exec,
//! pause, resume, delete) take it, one at a time per container, in one order (this lock, then
//! at most the reaper lock for a non-blocking step). It also carries the container's paused
//! state, so an exec and a Pause cannot race: an exec checks "not paused" and starts under the
//! lock, and a Pause waits for it (a child joining a frozen cgroup would block in libcontainer).
//!
//! The lock is per container, so a slow or frozen container never delays another one; its
//! holder is bounded by the runtime's call deadline (runtime.rs `CALL_LIMIT`), a waiter by
//! [`WAIT_LIMIT`] (then the RPC fails with "busy"), and the watchdog (init/watchdog.rs) logs a
//! holder past [`HOLD_LIMIT`].
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

use crate::container::runtime::CALL_LIMIT;
use crate::container::ContainerError;
use crate::init::watchdog::{self, Held};

/// How long a call waits for a container's lifecycle lock.
pub const WAIT_LIMIT: Duration = Duration::from_secs(27);
/// Held longer than this (a runtime call past its own deadline) is logged by the watchdog.
pub const HOLD_LIMIT: Duration = Duration::from_secs(CALL_LIMIT.as_secs() + 2);

/// What the lock protects besides the order of calls.
#[derive(Debug, Default)]
pub struct LifecycleState {
    pub paused: bool,
}

#[derive(Default)]
struct Entry {
    lock: Arc<tokio::sync::Mutex<LifecycleState>>,
    /// What holds the lock now (for "busy" errors).
    holder: Mutex<&'static str>,
}

#[derive(Default)]
pub struct ContainerLocks {
    map: Mutex<HashMap<String, Arc<Entry>>>,
}

/// A held lifecycle lock; the state is reachable through it.
pub struct LifecycleGuard {
    guard: OwnedMutexGuard<LifecycleState>,
    _held: Held,
}

impl std::ops::Deref for LifecycleGuard {
    type Target = LifecycleState;
    fn deref(&self) -> &LifecycleState {
        &self.guard
    }
}

impl std::ops::DerefMut for LifecycleGuard {
    fn deref_mut(&mut self) -> &mut LifecycleState {
        &mut self.guard
    }
}

impl ContainerLocks {
    fn entry(&self, id: &str) -> Arc<Entry> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).entry(id.to_string()).or_default().clone()
    }

    /// Takes container `id`'s lock for `what` (waits at most `wait`).
    pub async fn lock_for(
        &self,
        id: &str,
        what: &'static str,
        wait: Duration,
    ) -> Result<LifecycleGuard, ContainerError> {
        let e = self.entry(id);
        let guard = match tokio::time::timeout(wait, e.lock.clone().lock_owned()).await {
            Ok(g) => g,
            Err(_) => {
                let holder = *e.holder.lock().unwrap_or_else(|p| p.into_inner());
                tracing::warn!(container = %id, "{what}: the container's lifecycle lock stayed busy ({holder}) for {wait:?}");
                return Err(ContainerError::Busy { id: id.to_string(), holder });
            }
        };
        *e.holder.lock().unwrap_or_else(|p| p.into_inner()) = what;
        Ok(LifecycleGuard { guard, _held: watchdog::hold("container lifecycle", format!("{id}: {what}"), HOLD_LIMIT) })
    }

    /// Takes container `id`'s lock for `what` (waits at most [`WAIT_LIMIT`]).
    pub async fn lock(&self, id: &str, what: &'static str) -> Result<LifecycleGuard, ContainerError> {
        self.lock_for(id, what, WAIT_LIMIT).await
    }

    /// Forgets a removed container's lock (a holder or waiter keeps its own reference).
    pub fn forget(&self, id: &str) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_per_container_and_containers_are_independent() {
        let locks = ContainerLocks::default();
        let mut a = locks.lock("a", "exec").await.expect("a");
        a.paused = true;
        // Another container is not delayed.
        let b = tokio::time::timeout(Duration::from_millis(200), locks.lock("b", "pause")).await;
        assert!(matches!(b, Ok(Ok(_))));
        // The same container waits, then reports who holds it.
        let busy = locks.lock_for("a", "pause", Duration::from_millis(100)).await;
        assert!(matches!(busy, Err(ContainerError::Busy { holder: "exec", .. })), "{:?}", busy.err());
        drop(a);
        let again = locks.lock_for("a", "pause", Duration::from_millis(100)).await.expect("free again");
        assert!(again.paused, "the state stays with the container");
        drop(again);
        locks.forget("a");
        assert!(!locks.lock("a", "create").await.expect("new").paused);
    }
}
