//! What the collector's threads share with the agent: the watched containers (container id ->
//! cgroup id, cgroup id -> container id for the events), the BPF `containers` map once the
//! collector loaded it (a duplicated fd, updated directly: one non-blocking map update, no lock
//! held), and whether the programs are attached. Every call returns at once.
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
struct Ids {
    /// Container id -> its cgroup's id (kernfs id = the directory's inode number).
    by_container: HashMap<String, u64>,
    /// The BPF `containers` map, once loaded.
    map: Option<Arc<MapHandle>>,
}

/// The watched containers.
#[derive(Default)]
pub struct Watched {
    ids: Mutex<Ids>,
    /// cgroup id -> container id, read by the BPF thread for each event.
    names: Mutex<HashMap<u64, String>>,
}

impl Watched {
    /// Watches `container_id`, whose cgroup has id `cgroup_id`.
    pub fn watch(&self, container_id: &str, cgroup_id: u64) {
        // The name first: publish() copies the names into the map after publishing it.
        lock(&self.names).insert(cgroup_id, container_id.to_string());
        let map = {
            let mut ids = lock(&self.ids);
            ids.by_container.insert(container_id.to_string(), cgroup_id);
            ids.map.clone()
        };
        if let Some(map) = map {
            update(&map, cgroup_id, true);
        }
    }

    pub fn unwatch(&self, container_id: &str) {
        let (id, map) = {
            let mut ids = lock(&self.ids);
            (ids.by_container.remove(container_id), ids.map.clone())
        };
        let Some(id) = id else { return };
        lock(&self.names).remove(&id);
        if let Some(map) = map {
            update(&map, id, false);
        }
    }

    /// The container of a watched cgroup id.
    pub fn container_of(&self, cgroup_id: u64) -> Option<String> {
        lock(&self.names).get(&cgroup_id).cloned()
    }

    /// Hands over the loaded `containers` map and copies what was watched before into it: a
    /// watch racing with this lands in the map either way (it records its name before it looks
    /// for the map). A cgroup id is never reused, so an entry an unwatch raced past matches
    /// nothing.
    pub fn publish(&self, map: Arc<MapHandle>) {
        lock(&self.ids).map = Some(map.clone());
        let snapshot: Vec<u64> = lock(&self.names).keys().copied().collect();
        for id in snapshot {
            update(&map, id, true);
        }
    }

    #[cfg(test)]
    pub fn watched(&self) -> (HashMap<String, u64>, HashMap<u64, String>) {
        (lock(&self.ids).by_container.clone(), lock(&self.names).clone())
    }
}

/// Adds or removes one cgroup id in the BPF `containers` map.
fn update(map: &MapHandle, cgroup_id: u64, watch: bool) {
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
    fn watch_and_unwatch_before_the_map_is_loaded() {
        let w = Watched::default();
        w.watch("c1", 7);
        w.watch("c2", 8);
        assert_eq!(w.container_of(7).as_deref(), Some("c1"));
        assert_eq!(w.watched().0.get("c2"), Some(&8));
        w.unwatch("c1");
        assert_eq!(w.container_of(7), None);
        assert_eq!(w.watched().0.len(), 1);
        w.unwatch("never-watched");
        assert_eq!(w.container_of(8).as_deref(), Some("c2"));
    }

    #[test]
    fn readiness_is_waited_for_with_a_bound() {
        let r = Arc::new(Ready::default());
        let t0 = std::time::Instant::now();
        assert_eq!(r.wait(Duration::from_millis(50)), None, "still loading");
        assert!(t0.elapsed() >= Duration::from_millis(50));
        let r2 = r.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            r2.set(true);
        });
        assert_eq!(r.wait(Duration::from_secs(10)), Some(true));
        h.join().unwrap();
        r.set(false);
        assert_eq!(r.wait(Duration::ZERO), Some(false));
    }
}
