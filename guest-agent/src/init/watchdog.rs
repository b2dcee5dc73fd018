//! Lock watchdog: every lock the agent holds registers a [`Held`] token for as long as it is
//! held (what, since when, its limit); [`run`] checks the tokens once a second and logs an
//! error, loudly and repeatedly (at 1x, 2x, 4x ... the limit), for each one held past its
//! limit. No lock is meant to be held across a call that can block on a tenant, so a token that
//! fires is a bug report with the lock's name and holder in it.
//!
//! Fork safety: the registry is a mutex other threads may hold when the agent forks a runtime
//! helper (init/helper.rs); the helper child never creates or drops a token.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

struct Entry {
    what: &'static str,
    detail: String,
    since: Instant,
    limit: Duration,
    /// Next time held for which to log (doubles after each report).
    next_report: Duration,
}

fn registry() -> &'static Mutex<HashMap<u64, Entry>> {
    static REG: OnceLock<Mutex<HashMap<u64, Entry>>> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(HashMap::new()))
}

fn reg() -> std::sync::MutexGuard<'static, HashMap<u64, Entry>> {
    registry().lock().unwrap_or_else(|p| p.into_inner())
}

static NEXT: AtomicU64 = AtomicU64::new(1);

/// A lock (or another critical section) being held; unregistered on drop.
pub struct Held {
    id: u64,
}

/// Registers that `what` (with `detail`: the container, the holder) is held from now on, and
/// should be released within `limit`.
pub fn hold(what: &'static str, detail: impl Into<String>, limit: Duration) -> Held {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let entry = Entry { what, detail: detail.into(), since: Instant::now(), limit, next_report: limit };
    reg().insert(id, entry);
    Held { id }
}

impl Drop for Held {
    fn drop(&mut self) {
        let e = reg().remove(&self.id);
        if let Some(e) = e {
            let held = e.since.elapsed();
            if held > e.limit {
                tracing::error!(lock = e.what, detail = %e.detail, ?held, limit = ?e.limit, "LOCK WATCHDOG: released after its limit");
            }
        }
    }
}

/// The entries held past their report time: (what, detail, held for). Each is reported again
/// only once it has been held twice as long.
pub fn overdue(now: Instant) -> Vec<(&'static str, String, Duration)> {
    let mut out = Vec::new();
    for e in reg().values_mut() {
        let held = now.saturating_duration_since(e.since);
        if held >= e.next_report {
            out.push((e.what, e.detail.clone(), held));
            e.next_report = e.next_report.saturating_mul(2);
        }
    }
    out
}

/// Runs forever: once a second, logs every lock held past its limit.
pub async fn run() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (what, detail, held) in overdue(Instant::now()) {
            tracing::error!(lock = what, detail = %detail, ?held, "LOCK WATCHDOG: lock held too long");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overdue_locks_are_reported_at_doubling_intervals_and_released_ones_never() {
        let t = hold("test-lock-overdue", "c1", Duration::from_millis(100));
        let released = hold("test-lock-released", "c2", Duration::from_millis(100));
        drop(released);
        let start = Instant::now();
        let mine = |v: Vec<(&'static str, String, Duration)>| {
            v.into_iter().filter(|(w, _, _)| w.starts_with("test-lock-")).map(|(w, d, _)| (w, d)).collect::<Vec<_>>()
        };
        assert!(mine(overdue(start)).is_empty());
        let later = start + Duration::from_millis(150);
        assert_eq!(mine(overdue(later)), vec![("test-lock-overdue", "c1".to_string())]);
        assert!(mine(overdue(later)).is_empty(), "reported again only at twice the limit");
        assert_eq!(mine(overdue(start + Duration::from_millis(250))).len(), 1);
        drop(t);
        assert!(mine(overdue(start + Duration::from_secs(10))).is_empty());
    }
}
