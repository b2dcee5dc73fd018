//! The host cgroup v2 of one sandbox: QEMU, virtiofsd, vhost-device-vsock (leaf `vmm`) and
//! the shim's own process (leaf `shim`, config `cgroup.move_shim`) run in a cgroup at the pod
//! sandbox container's `linux.cgroupsPath`, below the pod cgroup kubelet made, with limits
//! from the pod's resources plus the node's per-pod overhead (`[cgroup]` in config.toml).
//! The work is the `bulwark-host-cgroup` crate (shared with the test /init that proves it on
//! a pure cgroup v2 kernel: `tests/tests/host_cgroup.rs`); this file is the shim's policy:
//!
//! - no usable cgroup v2 on the host (cgroup v1 or hybrid, as on a stock Debian 11 node):
//!   one warning per sandbox saying that host limits are not applied and why, and the pod
//!   runs, unless `cgroup.required = true` makes it an error;
//! - a systemd-format cgroupsPath while systemd runs: systemd makes the cgroup as a transient
//!   scope over D-Bus (systemd.rs), started with the shim's pid, which moves into the `shim`
//!   leaf and stays there while the pod lives (an empty scope is stopped by systemd); the
//!   limits go both as unit properties and through cgroupfs. When systemd's D-Bus does not
//!   answer, or systemd is not running at all: the same cgroup is made through cgroupfs at the
//!   path systemd would use (a warning, resp. an info line);
//! - processes are moved right after they start (memory charged before the move stays with
//!   the shim's cgroup: a few MiB of QEMU's start-up);
//! - removal after the processes are gone, with bounded retries; the shim moves back to
//!   where it came from first.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark_host_cgroup as hc;
pub use bulwark_host_cgroup::{CgroupPath, Driver, PodResources};

use crate::config::Cgroup as CgroupConfig;
use crate::error::{Error, Result};
use crate::jail::systemd::{self, SystemdError};

const MIB: u64 = 1024 * 1024;
/// Removal: attempts and the pause between them (the VMM leaf is killed half way).
const REMOVE_ATTEMPTS: u32 = 20;
const REMOVE_PAUSE: Duration = Duration::from_millis(50);

/// Finds the host's cgroup v2 hierarchy (production: [`host_hierarchy`]; tests: a fake one).
pub type FindHierarchy = Arc<dyn Fn() -> std::result::Result<hc::Hierarchy, hc::Error> + Send + Sync>;

/// The real host's hierarchy, detected (never mounted or changed).
pub fn host_hierarchy() -> FindHierarchy {
    Arc::new(hc::Hierarchy::detect)
}

/// Whether this shim process sits in a sandbox cgroup (one shim serves one pod; never two).
static SHIM_MOVED: AtomicBool = AtomicBool::new(false);

/// Parses the sandbox container's `linux.cgroupsPath` (untrusted: validated, refused clearly).
pub fn parse_path(s: &str) -> Result<CgroupPath> {
    hc::path::parse(s).map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// Whether systemd is the init system (sd_booted(3)'s test).
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// A connection to systemd's D-Bus, or None when systemd is not the init system.
pub type ConnectSystemd = dyn Fn() -> Option<std::result::Result<zbus::blocking::Connection, SystemdError>>;

/// The host's systemd: the system bus when systemd runs.
pub fn host_systemd() -> Option<std::result::Result<zbus::blocking::Connection, SystemdError>> {
    systemd_running().then(systemd::system_bus)
}

/// The node overhead from the configuration.
pub fn overhead(cfg: &CgroupConfig) -> hc::Overhead {
    hc::Overhead {
        memory_bytes: cfg.overhead_memory_mib.saturating_mul(MIB),
        cpu_millis: cfg.overhead_cpu_millis,
        pids_max: cfg.pids_max,
        io_weight: cfg.io_weight,
    }
}

/// A sandbox's host cgroup, created.
#[derive(Debug)]
pub struct HostCgroup {
    sandbox: String,
    required: bool,
    cg: hc::SandboxCgroup,
    moved: Mutex<HashSet<u32>>,
    /// Where the shim was before it moved in (it returns there before removal).
    shim_home: Mutex<Option<PathBuf>>,
    /// The systemd scope the cgroup is, and the D-Bus connection that started it (None: made
    /// through cgroupfs).
    scope: Option<(String, zbus::blocking::Connection)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The current process's cgroup v2 directory below `mount` (from /proc/self/cgroup's `0::`).
fn own_cgroup(mount: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let rel = rel.trim().trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    Some(mount.join(rel))
}

/// Creates the sandbox cgroup on `hierarchy` (production: [`host_hierarchy`]'s). Returns
/// None when limits are not applied (logged once) and that is allowed.
pub fn setup_on(
    hierarchy: std::result::Result<hc::Hierarchy, hc::Error>,
    cfg: &CgroupConfig,
    sandbox: &str,
    path: &CgroupPath,
    pod: &PodResources,
    vm_memory_mib: u32,
) -> Result<Option<HostCgroup>> {
    setup_with(hierarchy, &host_systemd, cfg, sandbox, path, pod, vm_memory_mib)
}

/// [`setup_on`] with the way to reach systemd given (tests: a stand-in on a private bus).
pub fn setup_with(
    hierarchy: std::result::Result<hc::Hierarchy, hc::Error>,
    connect_systemd: &ConnectSystemd,
    cfg: &CgroupConfig,
    sandbox: &str,
    path: &CgroupPath,
    pod: &PodResources,
    vm_memory_mib: u32,
) -> Result<Option<HostCgroup>> {
    let not_applied = |why: String| -> Result<Option<HostCgroup>> {
        if cfg.required {
            Err(Error::FailedPrecondition(format!(
                "sandbox {sandbox}: host cgroup limits cannot be applied and cgroup.required is set: {why}"
            )))
        } else {
            tracing::warn!(
                "sandbox {sandbox}: host cgroup limits are NOT applied (the VM runs without host limits): {why}. \
                 Set cgroup.required = true in the node config to refuse such pods instead"
            );
            Ok(None)
        }
    };
    let h = match hierarchy {
        Ok(h) => h,
        Err(e) => return not_applied(e.to_string()),
    };
    let limits = hc::compute(pod, u64::from(vm_memory_mib) * MIB, &overhead(cfg));
    let mut scope = None;
    if let (Driver::Systemd, Some(unit)) = (path.driver, &path.systemd) {
        match connect_systemd() {
            None => tracing::info!(
                "sandbox {sandbox}: systemd-format cgroupsPath but systemd is not running (no /run/systemd/system): \
                 creating {} through cgroupfs",
                path.rel.display()
            ),
            Some(conn) => match conn.and_then(|c| start_scope(&c, &h, sandbox, unit, path, &limits).map(|h| (c, h))) {
                Ok((conn, home)) => scope = Some((unit.unit.clone(), conn, home)),
                Err(e) => tracing::warn!(
                    "sandbox {sandbox}: systemd-format cgroupsPath, but systemd did not make the scope over D-Bus \
                     ({e}): creating {} through cgroupfs (systemd does not know about it)",
                    path.rel.display()
                ),
            },
        }
    }
    let made = match &scope {
        Some(_) => h.adopt(&path.rel, &limits, std::process::id()),
        None => h.create(&path.rel, &limits),
    };
    let (cg, applied) = match made {
        Ok(x) => x,
        Err(e) => {
            if let Some((unit, conn, home)) = &scope {
                leave_and_stop(sandbox, conn, unit, home.as_deref());
            }
            return not_applied(format!("creating the sandbox cgroup: {e}"));
        }
    };
    tracing::info!(
        "sandbox {sandbox}: host cgroup {}{}: {}{}",
        cg.path().display(),
        scope.as_ref().map(|(u, _, _)| format!(" (systemd scope {u})")).unwrap_or_default(),
        applied.written.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
        if applied.skipped.is_empty() {
            String::new()
        } else {
            format!(" (not set, controller missing: {})", applied.skipped.join(", "))
        }
    );
    let (scope, home) = match scope {
        Some((unit, conn, home)) => (Some((unit, conn)), Some(home)),
        None => (None, None),
    };
    let hc = HostCgroup {
        sandbox: sandbox.to_string(),
        required: cfg.required,
        cg,
        moved: Mutex::new(HashSet::new()),
        shim_home: Mutex::new(None),
        scope,
    };
    match home {
        // The shim started the scope and sits in its leaf already (adopt moved it there).
        Some(home) => {
            SHIM_MOVED.store(true, Ordering::SeqCst);
            *lock(&hc.shim_home) = home;
        }
        None if cfg.move_shim => hc.move_shim(&h.mount),
        None => {}
    }
    Ok(Some(hc))
}

/// Starts the transient scope with the shim in it and waits (bounded) for its cgroup to
/// appear; returns where the shim was before. The shim must be the only sandbox it serves.
fn start_scope(
    conn: &zbus::blocking::Connection,
    h: &hc::Hierarchy,
    sandbox: &str,
    unit: &hc::path::SystemdUnit,
    path: &CgroupPath,
    limits: &hc::Limits,
) -> std::result::Result<Option<PathBuf>, SystemdError> {
    let home = own_cgroup(&h.mount);
    let scope = systemd::Scope {
        unit: unit.unit.clone(),
        slice: unit.slice.clone(),
        pid: std::process::id(),
        limits: *limits,
        description: format!("bulwark sandbox {sandbox}"),
    };
    let job = systemd::start(conn, &scope)?;
    let dir = h.mount.join(&path.rel);
    for _ in 0..SCOPE_WAIT_STEPS {
        if dir.is_dir() {
            tracing::debug!("sandbox {sandbox}: systemd job {job} made {}", dir.display());
            return Ok(home);
        }
        std::thread::sleep(SCOPE_WAIT_PAUSE);
    }
    leave_and_stop(sandbox, conn, &unit.unit, home.as_deref());
    Err(SystemdError::Missing { unit: unit.unit.clone(), dir })
}

/// Moves the shim back to `home` (stopping a scope signals what is in it), then stops `unit`.
fn leave_and_stop(sandbox: &str, conn: &zbus::blocking::Connection, unit: &str, home: Option<&Path>) {
    if let Some(home) = home {
        if let Err(e) = std::fs::write(home.join("cgroup.procs"), format!("{}\n", std::process::id())) {
            tracing::warn!("sandbox {sandbox}: moving the shim back to {}: {e}", home.display());
            return; // never stop a scope the shim may still be in
        }
        SHIM_MOVED.store(false, Ordering::SeqCst);
    }
    if let Err(e) = systemd::stop(conn, unit) {
        tracing::warn!("sandbox {sandbox}: {e}");
    }
}

/// Waiting for a new scope's cgroup: steps and the pause between them (5 s in all).
const SCOPE_WAIT_STEPS: u32 = 100;
const SCOPE_WAIT_PAUSE: Duration = Duration::from_millis(50);

impl HostCgroup {
    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        self.cg.path()
    }

    fn move_shim(&self, mount: &Path) {
        if SHIM_MOVED.swap(true, Ordering::SeqCst) {
            tracing::warn!("sandbox {}: the shim is in another sandbox's cgroup already: not moved", self.sandbox);
            return;
        }
        let home = own_cgroup(mount);
        match self.cg.add_process(hc::SHIM_LEAF, std::process::id()) {
            Ok(()) => *lock(&self.shim_home) = home,
            Err(e) => {
                SHIM_MOVED.store(false, Ordering::SeqCst);
                tracing::warn!("sandbox {}: moving the shim into its cgroup: {e}", self.sandbox);
            }
        }
    }

    /// Moves the VMM's processes (name, pid) into the VMM leaf, each once. A process that
    /// cannot be moved runs without host limits: an error when `cgroup.required`, else a warning.
    pub fn add_vmm_processes(&self, procs: &[(&str, u32)]) -> Result<()> {
        let mut moved = lock(&self.moved);
        for &(name, pid) in procs {
            if moved.contains(&pid) {
                continue;
            }
            match self.cg.add_process(hc::VMM_LEAF, pid) {
                Ok(()) => {
                    moved.insert(pid);
                    tracing::debug!("sandbox {}: {name} (pid {pid}) in {}", self.sandbox, self.cg.path().display());
                }
                Err(e) if self.required => {
                    return Err(Error::FailedPrecondition(format!(
                        "sandbox {}: moving {name} (pid {pid}) into its host cgroup: {e}",
                        self.sandbox
                    )))
                }
                Err(e) => tracing::warn!(
                    "sandbox {}: {name} (pid {pid}) runs without host cgroup limits: moving it failed: {e}",
                    self.sandbox
                ),
            }
        }
        Ok(())
    }

    /// Removes the cgroup once the VMM's processes are gone (blocking: retries with pauses);
    /// the shim moves back home first. Idempotent.
    pub fn remove(&self) -> Result<()> {
        let mut home_left = true;
        if let Some(home) = lock(&self.shim_home).take() {
            let procs = home.join("cgroup.procs");
            match std::fs::write(&procs, format!("{}\n", std::process::id())) {
                Ok(()) => SHIM_MOVED.store(false, Ordering::SeqCst),
                Err(e) => {
                    home_left = false;
                    tracing::warn!("sandbox {}: moving the shim back to {}: {e}", self.sandbox, home.display())
                }
            }
        }
        let removed = self
            .cg
            .remove(REMOVE_ATTEMPTS, REMOVE_PAUSE)
            .map_err(|e| Error::io(format!("sandbox {}", self.sandbox), std::io::Error::other(e.to_string())));
        // systemd stops an emptied scope by itself; stopping it says so at once (never while
        // the shim may still be in it: stopping signals what is left).
        if let (Some((unit, conn)), true) = (&self.scope, home_left) {
            leave_and_stop(&self.sandbox, conn, unit, None);
        }
        removed
    }
}

/// `delete` after a crashed shim: removes the sandbox cgroup recorded at `recorded` (an
/// absolute path the shim wrote into its state directory), if it lies below a cgroup2 mount
/// of this host. Its processes must have been killed already.
pub fn remove_leftover(recorded: &Path) -> Result<()> {
    let h = match hc::Hierarchy::detect() {
        Ok(h) => h,
        Err(_) => return Ok(()),
    };
    let rel = recorded.strip_prefix(&h.mount).map_err(|_| {
        Error::InvalidArgument(format!("recorded cgroup {} is not below {}", recorded.display(), h.mount.display()))
    })?;
    let s = rel.to_str().ok_or_else(|| Error::InvalidArgument(format!("recorded cgroup {rel:?} is not UTF-8")))?;
    // Same rules as a cgroupsPath (the state directory is the shim's, but check anyway).
    parse_path(&format!("/{s}"))?;
    h.open(rel).remove(REMOVE_ATTEMPTS, REMOVE_PAUSE).map_err(|e| {
        Error::io(format!("removing leftover cgroup {}", recorded.display()), std::io::Error::other(e.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(required: bool) -> CgroupConfig {
        CgroupConfig { required, move_shim: false, ..CgroupConfig::default() }
    }

    fn pod() -> PodResources {
        PodResources {
            cpu_quota_us: Some(100_000),
            cpu_period_us: Some(100_000),
            cpu_shares: Some(1024),
            memory_bytes: Some(256 * MIB),
        }
    }

    #[test]
    fn no_cgroup_v2_logs_and_runs_unless_required() {
        let path = parse_path("/kubepods/pod1/sb").unwrap();
        let unusable = || Err(hc::Error::Unusable("hybrid host: no memory controller".into()));
        assert!(setup_with(unusable(), &|| None, &cfg(false), "sb", &path, &pod(), 512).unwrap().is_none());
        let e = setup_with(unusable(), &|| None, &cfg(true), "sb", &path, &pod(), 512).unwrap_err().to_string();
        assert!(e.contains("cgroup.required") && e.contains("no memory controller"), "{e}");
    }

    #[test]
    fn hostile_paths_are_invalid_arguments() {
        for p in ["/kubepods/../etc", "a.slice:b", "relative/x"] {
            assert!(matches!(parse_path(p), Err(Error::InvalidArgument(_))), "{p}");
        }
    }

    #[test]
    fn fake_hierarchy_limits_moves_and_idempotent_teardown() {
        let root = std::env::temp_dir().join(format!("bulwark-jail-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        hc::FakeKernel::make_root(&root, "cpu memory pids io").unwrap();
        let h = hc::Hierarchy::with_kernel(&root, Arc::new(hc::FakeKernel));
        let path = parse_path("kubepods-burstable-pod1.slice:cri-containerd:sb").unwrap();
        // Without systemd: the systemd-format path made through cgroupfs.
        let cg = setup_with(Ok(h), &|| None, &cfg(false), "sb", &path, &pod(), 512).unwrap().unwrap();
        let dir =
            root.join("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-sb.scope");
        assert_eq!(cg.path(), dir);
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        // 256 MiB + 256 MiB overhead; 1 CPU + 250 millicores.
        assert_eq!(read("memory.max"), (512 * MIB).to_string());
        assert_eq!(read("cpu.max"), "125000 100000");
        assert_eq!(read("cpu.weight"), "39");
        assert_eq!(read("pids.max"), "1024");
        assert_eq!(read("io.weight"), "default 100");
        cg.add_vmm_processes(&[("qemu", 11), ("virtiofsd", 12)]).unwrap();
        assert_eq!(read("vmm/cgroup.procs").trim(), "12");
        // The processes are gone (the fake's procs file emptied): removed, twice.
        std::fs::write(dir.join("vmm/cgroup.procs"), "").unwrap();
        cg.remove().unwrap();
        assert!(!dir.exists());
        cg.remove().unwrap();
        let _ = std::fs::remove_dir_all(&root);
    }

    /// With systemd: the scope is started over D-Bus with the shim's pid and the limits, the
    /// cgroup systemd made is adopted (the shim in its leaf, limits, the VMM leaf), and
    /// removal stops the scope after the shim left it.
    #[test]
    fn systemd_makes_the_scope_over_dbus_and_the_shim_adopts_it() {
        use crate::jail::systemd::fake::{fake_systemd, job_reply};
        let root = std::env::temp_dir().join(format!("bulwark-jail-systemd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        hc::FakeKernel::make_root(&root, "cpu memory pids io").unwrap();
        let h = hc::Hierarchy::with_kernel(&root, Arc::new(hc::FakeKernel));
        let path = parse_path("kubepods-burstable-pod1.slice:cri-containerd:sb").unwrap();
        let dir =
            root.join("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-sb.scope");
        // systemd makes the scope's cgroup with the pid it was given in it.
        let (made, fake_root) = (path.rel.clone(), root.clone());
        let (conn, seen) = fake_systemd(move |member, call| {
            if member == "StartTransientUnit" {
                use hc::Kernel;
                let mut cur = fake_root.clone();
                for c in made.components() {
                    std::fs::write(cur.join("cgroup.subtree_control"), "+cpu +memory +pids +io").unwrap();
                    cur.push(c);
                    hc::FakeKernel.mkdir(&cur).unwrap();
                }
                std::fs::write(cur.join("cgroup.procs"), std::process::id().to_string()).unwrap();
            }
            job_reply(call)
        });
        let conn = std::sync::Mutex::new(Some(conn));
        let connect = move || lock(&conn).take().map(Ok);
        let cg = setup_with(Ok(h), &connect, &cfg(true), "sb", &path, &pod(), 512).unwrap().expect("made");
        assert_eq!(cg.path(), dir);
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("shim/cgroup.procs").trim(), std::process::id().to_string(), "the shim in its leaf");
        assert_eq!(read("memory.max"), (512 * MIB).to_string(), "limits through cgroupfs too");
        assert!(dir.join("vmm").is_dir());
        let calls: Vec<(String, String, String)> = seen.try_iter().collect();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!((calls[0].0.as_str(), calls[0].2.as_str()), ("StartTransientUnit", "cri-containerd-sb.scope"));
        // The shim leaves (its home in the fake hierarchy), the cgroup goes, the scope is stopped.
        // (The fake kernel keeps written pids where they were written: empty both files.)
        for f in ["cgroup.procs", "shim/cgroup.procs"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        cg.remove().unwrap();
        assert!(!dir.exists());
        let calls: Vec<String> = seen.try_iter().map(|c| c.0).collect();
        assert_eq!(calls, ["StopUnit"]);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn without_systemds_dbus_the_scope_path_is_made_through_cgroupfs() {
        let root = std::env::temp_dir().join(format!("bulwark-jail-nodbus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        hc::FakeKernel::make_root(&root, "cpu memory pids io").unwrap();
        let h = hc::Hierarchy::with_kernel(&root, Arc::new(hc::FakeKernel));
        let path = parse_path("kubepods-pod2.slice:cri-containerd:sb2").unwrap();
        let refused = || Some(Err(SystemdError::Connect(Box::new(zbus::Error::Address("no system bus".into())))));
        let cg = setup_with(Ok(h), &refused, &cfg(false), "sb2", &path, &pod(), 512).unwrap().unwrap();
        assert_eq!(cg.path(), root.join("kubepods.slice/kubepods-pod2.slice/cri-containerd-sb2.scope"));
        assert!(cg.scope.is_none());
        cg.remove().unwrap();
        let _ = std::fs::remove_dir_all(&root);
    }
}
