//! Container cgroups in the guest (cgroup v2, mounted at /sys/fs/cgroup with all
//! controllers): raw stats files, resource updates (OCI `linux.resources` applied with
//! libcgroups' v2 manager: the same conversions youki and runc use), freeze/thaw through
//! libcontainer (runtime.rs, so its stored state stays consistent), the process list, and OOM-kill
//! events from `memory.events` (one event per `oom_kill` increment, delivered once).
//!
//! A container is tracked from its creation to its removal; its cgroup directory comes from
//! libcontainer's stored config (the `cgroupsPath` the agent wrote into the spec).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libcgroups::common::{CgroupManager, ControllerOpt};
use oci_spec::runtime::LinuxResources;
use tokio::sync::mpsc;

use crate::container::runtime::{self, Runtime};

/// Mount point of the guest's cgroup v2 hierarchy.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The files StatsContainer returns (those that exist).
pub const STATS_FILES: &[&str] = &[
    "cpu.stat",
    "memory.current",
    "memory.max",
    "memory.peak",
    "memory.stat",
    "memory.events",
    "memory.swap.current",
    "memory.swap.max",
    "pids.current",
    "pids.max",
    "io.stat",
];
/// How often the OOM watcher reads every tracked container's memory.events.
pub const OOM_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// OOM events kept for the host before the oldest are dropped (the host normally waits).
const OOM_QUEUE_CAP: usize = 1024;
/// Events queued for one container in one scan at most (a counter jump is not a storm).
const MAX_EVENTS_PER_SCAN: u64 = 64;
/// Largest cgroup.procs read for ListProcesses.
const MAX_PROCS_FILE: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("container {0:?} is not known to the agent (create it first)")]
    NotFound(String),
    #[error("cgroupsPath {0:?} of the container is not a plain path below {CGROUP_ROOT}")]
    BadCgroupPath(String),
    #[error("invalid resources JSON: {0}")]
    InvalidResources(String),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: String, source: std::io::Error },
    #[error("applying resources to the cgroup of {id}: {msg}")]
    Apply { id: String, msg: String },
    #[error("libcontainer {op} of {id} failed: {msg}")]
    Libcontainer { op: &'static str, id: String, msg: String },
    #[error("internal task failed: {0}")]
    Join(String),
}

struct Tracked {
    /// Path as libcontainer knows it (`cgroupsPath`), for libcgroups' manager.
    cgroup_path: PathBuf,
    /// Absolute directory in the guest.
    dir: PathBuf,
    /// oom_kill count already turned into events.
    oom_kills: u64,
}

/// The tracked containers' cgroups and the OOM event queue.
pub struct Cgroups {
    root: PathBuf,
    tracked: Mutex<HashMap<String, Tracked>>,
    oom_tx: mpsc::Sender<String>,
    oom_rx: tokio::sync::Mutex<mpsc::Receiver<String>>,
    watcher: OnceLock<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `cgroup_path` (absolute or relative, as in an OCI spec) below `root`; refuses `..`.
pub fn cgroup_dir(root: &Path, cgroup_path: &Path) -> Result<PathBuf, CgroupError> {
    let mut dir = root.to_path_buf();
    let mut normal = 0;
    for c in cgroup_path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => {
                dir.push(n);
                normal += 1;
            }
            Component::ParentDir | Component::Prefix(_) => {
                return Err(CgroupError::BadCgroupPath(cgroup_path.display().to_string()))
            }
        }
    }
    if normal == 0 {
        return Err(CgroupError::BadCgroupPath(cgroup_path.display().to_string()));
    }
    Ok(dir)
}

/// Reads at most `cap` bytes of `path`.
fn read_capped(path: &Path, cap: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::fs::File::open(path)?.take(cap as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The `oom_kill` count in a memory.events text (0 if absent).
pub fn oom_kill_count(events: &str) -> u64 {
    events
        .lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some("oom_kill")).then(|| it.next().and_then(|v| v.parse().ok()))?
        })
        .unwrap_or(0)
}

/// Parses cgroup.procs: one pid per line; junk lines are skipped.
pub fn parse_procs(text: &str) -> Vec<u32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Parses and checks an OCI `linux.resources` JSON document.
pub fn parse_resources(json: &[u8]) -> Result<LinuxResources, CgroupError> {
    if json.len() > protocol::MAX_SPEC_JSON {
        return Err(CgroupError::InvalidResources(format!(
            "{} bytes, more than the {} accepted",
            json.len(),
            protocol::MAX_SPEC_JSON
        )));
    }
    let r: LinuxResources = serde_json::from_slice(json).map_err(|e| CgroupError::InvalidResources(e.to_string()))?;
    if let Some(u) = r.unified() {
        for key in u.keys() {
            let ok = !key.is_empty() && !key.starts_with('.') && !key.contains('/') && !key.starts_with("cgroup.");
            if !ok {
                return Err(CgroupError::InvalidResources(format!(
                    "unified key {key:?} is not a controller file name (like memory.high)"
                )));
            }
        }
    }
    Ok(r)
}

/// Applies `resources` to the cgroup `cgroup_path` below `root` (libcgroups v2 manager:
/// memory limit/reservation/swap, cpu shares→weight, quota/period→cpu.max, cpuset, pids,
/// io, hugetlb, unified).
pub fn apply_resources(root: &Path, cgroup_path: &Path, resources: &LinuxResources) -> Result<(), String> {
    let manager = libcgroups::v2::manager::Manager::new(root.to_path_buf(), cgroup_path.to_path_buf())
        .map_err(|e| e.to_string())?;
    let opt = ControllerOpt { resources, disable_oom_killer: false, oom_score_adj: None, freezer_state: None };
    manager.apply(&opt).map_err(|e| e.to_string())
}

impl Cgroups {
    pub fn new() -> Arc<Self> {
        Self::with_root(PathBuf::from(CGROUP_ROOT))
    }

    fn with_root(root: PathBuf) -> Arc<Self> {
        let (oom_tx, oom_rx) = mpsc::channel(OOM_QUEUE_CAP);
        Arc::new(Cgroups {
            root,
            tracked: Mutex::new(HashMap::new()),
            oom_tx,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
            watcher: OnceLock::new(),
        })
    }

    fn insert(&self, id: &str, cgroup_path: PathBuf) -> Result<(), CgroupError> {
        let dir = cgroup_dir(&self.root, &cgroup_path)?;
        let oom_kills = std::fs::read_to_string(dir.join("memory.events")).map(|s| oom_kill_count(&s)).unwrap_or(0);
        lock(&self.tracked).insert(id.to_string(), Tracked { cgroup_path, dir, oom_kills });
        Ok(())
    }

    /// Starts tracking a created container (its cgroup exists from now on). Logs failures:
    /// the container still runs, only stats/update/pause/OOM events are unavailable.
    pub fn track(&self, id: &str) {
        let res = runtime::stored_cgroup_path(id)
            .map_err(|e| CgroupError::Libcontainer { op: "load", id: id.to_string(), msg: e.to_string() })
            .and_then(|cgroup_path| self.insert(id, cgroup_path));
        match res {
            Ok(()) => tracing::debug!(container = %id, "cgroup tracked"),
            Err(e) => tracing::error!(container = %id, "tracking the cgroup: {e}"),
        }
    }

    /// Stops tracking (before the cgroup goes away): a last OOM check first.
    pub fn untrack(&self, id: &str) {
        self.check_oom(id);
        lock(&self.tracked).remove(id);
    }

    /// The tracked container's cgroup directory in the guest.
    pub fn dir_of(&self, id: &str) -> Option<PathBuf> {
        lock(&self.tracked).get(id).map(|t| t.dir.clone())
    }

    fn dir(&self, id: &str) -> Result<(PathBuf, PathBuf), CgroupError> {
        lock(&self.tracked)
            .get(id)
            .map(|t| (t.dir.clone(), t.cgroup_path.clone()))
            .ok_or_else(|| CgroupError::NotFound(id.to_string()))
    }

    /// The raw stats files of the container's cgroup, each capped at MAX_CGROUP_FILE.
    pub fn stats(&self, id: &str) -> Result<HashMap<String, Vec<u8>>, CgroupError> {
        let (dir, _) = self.dir(id)?;
        if !dir.is_dir() {
            return Err(CgroupError::Io {
                what: "reading cgroup",
                path: dir.display().to_string(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let mut files = HashMap::new();
        for name in STATS_FILES {
            if let Ok(data) = read_capped(&dir.join(name), protocol::MAX_CGROUP_FILE) {
                files.insert(name.to_string(), data);
            }
        }
        Ok(files)
    }

    /// Guest pids of every process in the container's cgroup.
    pub fn processes(&self, id: &str) -> Result<Vec<u32>, CgroupError> {
        let (dir, _) = self.dir(id)?;
        let path = dir.join("cgroup.procs");
        let data = read_capped(&path, MAX_PROCS_FILE).map_err(|source| CgroupError::Io {
            what: "reading",
            path: path.display().to_string(),
            source,
        })?;
        Ok(parse_procs(&String::from_utf8_lossy(&data)))
    }

    /// Applies an OCI `linux.resources` JSON document to the container's cgroup.
    pub async fn update(&self, id: &str, json: &[u8]) -> Result<(), CgroupError> {
        let resources = parse_resources(json)?;
        let (_, cgroup_path) = self.dir(id)?;
        let root = self.root.clone();
        let id_owned = id.to_string();
        tokio::task::spawn_blocking(move || apply_resources(&root, &cgroup_path, &resources))
            .await
            .map_err(|e| CgroupError::Join(e.to_string()))?
            .map_err(|msg| CgroupError::Apply { id: id_owned, msg })?;
        tracing::info!(container = %id, "resources updated");
        Ok(())
    }

    /// Freezes (`pause`) or thaws the container through the runtime (libcontainer rewrites its
    /// state file; in a helper process with a deadline). The caller holds the container's
    /// lifecycle lock (locks.rs).
    pub async fn freeze(&self, runtime: &Arc<dyn Runtime>, id: &str, pause: bool) -> Result<(), CgroupError> {
        self.dir(id)?;
        let runtime = runtime.clone();
        let cid = id.to_string();
        let op = if pause { "pause" } else { "resume" };
        tokio::task::spawn_blocking(move || {
            runtime.set_paused(&cid, pause).map_err(|e| CgroupError::Libcontainer {
                op,
                id: cid.clone(),
                msg: e.to_string(),
            })
        })
        .await
        .map_err(|e| CgroupError::Join(e.to_string()))??;
        tracing::info!(container = %id, "{op}d");
        Ok(())
    }

    /// Queues one event per new oom_kill of `id` (and returns how many).
    pub fn check_oom(&self, id: &str) -> u64 {
        let mut tracked = lock(&self.tracked);
        let Some(t) = tracked.get_mut(id) else { return 0 };
        let Ok(text) = std::fs::read_to_string(t.dir.join("memory.events")) else { return 0 };
        let now = oom_kill_count(&text);
        if now <= t.oom_kills {
            t.oom_kills = now;
            return 0;
        }
        let new = now - t.oom_kills;
        t.oom_kills = now;
        drop(tracked);
        for _ in 0..new.min(MAX_EVENTS_PER_SCAN) {
            if self.oom_tx.try_send(id.to_string()).is_err() {
                tracing::warn!(container = %id, "OOM event queue full: dropping an event");
            }
        }
        tracing::warn!(container = %id, kills = new, "OOM kill in the container's cgroup");
        new
    }

    fn scan(&self) {
        let ids: Vec<String> = lock(&self.tracked).keys().cloned().collect();
        for id in ids {
            self.check_oom(&id);
        }
    }

    /// Long poll: the id of the next container whose cgroup saw an OOM kill. Starts the
    /// watcher on first use. Events are handed out once, to whichever caller takes them.
    pub async fn next_oom(self: &Arc<Self>) -> String {
        self.watcher.get_or_init(|| {
            let me = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(OOM_POLL_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    match me.upgrade() {
                        Some(c) => c.scan(),
                        None => return,
                    }
                }
            });
        });
        let mut rx = self.oom_rx.lock().await;
        match rx.recv().await {
            Some(id) => id,
            // The sender lives in self: cannot end while we hold &self.
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMORY_EVENTS: &str = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n";

    #[test]
    fn oom_kill_counts() {
        assert_eq!(oom_kill_count(MEMORY_EVENTS), 2);
        assert_eq!(oom_kill_count(""), 0);
        assert_eq!(oom_kill_count("oom_kill\noom_kill x\n"), 0);
        assert_eq!(oom_kill_count("oom_kill_x 5\noom_kill 7"), 7);
    }

    #[test]
    fn procs_parsing_skips_junk() {
        assert_eq!(parse_procs("1\n23\n\nx\n-4\n 5 \n"), vec![1, 23, 5]);
    }

    #[test]
    fn cgroup_dirs_stay_below_the_root() {
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(cgroup_dir(root, Path::new("/bulwark/c1")).unwrap(), root.join("bulwark/c1"));
        assert_eq!(cgroup_dir(root, Path::new("default/c1")).unwrap(), root.join("default/c1"));
        for bad in ["/", "", "/a/../../etc", ".."] {
            assert!(cgroup_dir(root, Path::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resources_json_is_checked() {
        assert!(parse_resources(br#"{"memory":{"limit":1048576}}"#).is_ok());
        assert!(parse_resources(b"nonsense").is_err());
        assert!(parse_resources(br#"{"memory":{"limit":"x"}}"#).is_err());
        assert!(parse_resources(br#"{"unified":{"../../x":"1"}}"#).is_err());
        assert!(parse_resources(br#"{"unified":{"cgroup.procs":"1"}}"#).is_err());
        assert!(parse_resources(br#"{"unified":{"memory.high":"1000000"}}"#).is_ok());
        let big = vec![b' '; protocol::MAX_SPEC_JSON + 1];
        assert!(parse_resources(&big).is_err());
    }

    /// A fake cgroup v2 directory: the files libcgroups writes must exist (it never creates).
    fn fake_cgroup(name: &str) -> (PathBuf, PathBuf) {
        let root = std::env::temp_dir().join(format!("bulwark-cg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("bulwark/c1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory hugetlb pids rdma misc\n").unwrap();
        for f in [
            "memory.max",
            "memory.low",
            "memory.swap.max",
            "cpu.weight",
            "cpu.max",
            "cpuset.cpus",
            "cpuset.mems",
            "pids.max",
        ] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        (root, dir)
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn resources_convert_to_cgroup_v2_files() {
        let (root, dir) = fake_cgroup("conv");
        let json = br#"{
            "memory": {"limit": 33554432, "reservation": 16777216, "swap": 67108864},
            "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
            "pids": {"limit": 64}
        }"#;
        let r = parse_resources(json).unwrap();
        apply_resources(&root, Path::new("/bulwark/c1"), &r).unwrap();
        assert_eq!(read(&dir.join("memory.max")), "33554432");
        assert_eq!(read(&dir.join("memory.low")), "16777216");
        // v1 swap is memory+swap; v2 swap is swap alone.
        assert_eq!(read(&dir.join("memory.swap.max")), "33554432");
        let weight: u64 = read(&dir.join("cpu.weight")).parse().unwrap();
        assert!((39..=100).contains(&weight), "1024 shares -> weight {weight}");
        assert_eq!(read(&dir.join("cpu.max")), "50000 100000");
        assert_eq!(read(&dir.join("cpuset.cpus")), "0-1");
        assert_eq!(read(&dir.join("cpuset.mems")), "0");
        assert_eq!(read(&dir.join("pids.max")), "64");

        let (root2, dir2) = fake_cgroup("conv2");
        let r = parse_resources(br#"{"memory":{"limit":-1},"cpu":{"quota":-1,"period":100000},"pids":{"limit":-1}}"#)
            .unwrap();
        apply_resources(&root2, Path::new("bulwark/c1"), &r).unwrap();
        assert_eq!(read(&dir2.join("memory.max")), "max");
        assert_eq!(read(&dir2.join("cpu.max")), "max 100000");
        assert_eq!(read(&dir2.join("pids.max")), "max");

        // swap below the limit is refused, and nothing is left half-parsed.
        let r = parse_resources(br#"{"memory":{"limit":2000000,"swap":1000}}"#).unwrap();
        assert!(apply_resources(&root2, Path::new("/bulwark/c1"), &r).is_err());
        let _ = std::fs::remove_dir_all(root);
        let _ = std::fs::remove_dir_all(root2);
    }

    #[tokio::test]
    async fn one_event_per_oom_kill_and_none_twice() {
        let (root, dir) = fake_cgroup("oom");
        std::fs::write(dir.join("memory.events"), "oom 1\noom_kill 1\n").unwrap();
        let cg = Cgroups::with_root(root.clone());
        cg.insert("c1", PathBuf::from("/bulwark/c1")).unwrap();
        // The kill before tracking began is not reported.
        assert_eq!(cg.check_oom("c1"), 0);
        std::fs::write(dir.join("memory.events"), "oom 3\noom_kill 3\n").unwrap();
        assert_eq!(cg.check_oom("c1"), 2);
        assert_eq!(cg.check_oom("c1"), 0);
        assert_eq!(cg.next_oom().await, "c1");
        assert_eq!(cg.next_oom().await, "c1");
        assert!(tokio::time::timeout(Duration::from_millis(300), cg.next_oom()).await.is_err(), "a third event");
        // The watcher picks up a kill by itself; untrack does a last check.
        std::fs::write(dir.join("memory.events"), "oom_kill 4\n").unwrap();
        let id = tokio::time::timeout(Duration::from_secs(5), cg.next_oom()).await.expect("watcher event");
        assert_eq!(id, "c1");
        std::fs::write(dir.join("memory.events"), "oom_kill 5\n").unwrap();
        cg.untrack("c1");
        assert_eq!(tokio::time::timeout(Duration::from_secs(1), cg.next_oom()).await.ok().as_deref(), Some("c1"));
        assert!(matches!(cg.stats("c1"), Err(CgroupError::NotFound(_))));
        let _ = std::fs::remove_dir_all(root);
    }

    #[tokio::test]
    async fn concurrent_waiters_share_the_queue_without_losing_events() {
        let (root, dir) = fake_cgroup("waiters");
        std::fs::write(dir.join("memory.events"), "oom_kill 0\n").unwrap();
        let cg = Cgroups::with_root(root.clone());
        cg.insert("c1", PathBuf::from("/bulwark/c1")).unwrap();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let cg = cg.clone();
                tokio::spawn(async move { tokio::time::timeout(Duration::from_secs(5), cg.next_oom()).await.ok() })
            })
            .collect();
        std::fs::write(dir.join("memory.events"), "oom_kill 3\n").unwrap();
        let mut got = Vec::new();
        for w in waiters {
            got.push(w.await.unwrap());
        }
        assert_eq!(got, vec![Some("c1".to_string()); 3], "each waiter gets one of the three events");
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn stats_files_are_capped() {
        let (root, dir) = fake_cgroup("stats");
        std::fs::write(dir.join("memory.stat"), vec![b'a'; protocol::MAX_CGROUP_FILE * 2]).unwrap();
        std::fs::write(dir.join("memory.current"), "4096\n").unwrap();
        let cg = Cgroups::with_root(root.clone());
        cg.insert("c1", PathBuf::from("/bulwark/c1")).unwrap();
        let files = cg.stats("c1").unwrap();
        assert_eq!(files["memory.stat"].len(), protocol::MAX_CGROUP_FILE);
        assert_eq!(files["memory.current"], b"4096\n");
        assert!(!files.contains_key("io.stat"));
        std::fs::write(dir.join("cgroup.procs"), "12\n13\n").unwrap();
        assert_eq!(cg.processes("c1").unwrap(), vec![12, 13]);
        let _ = std::fs::remove_dir_all(root);
    }
}
