//! The cgroupfs operations on a cgroup v2 hierarchy: find a usable one, create a sandbox
//! cgroup with its limits (enabling the controllers on the way down, like runc), move
//! processes into it, remove it (bounded retries on EBUSY; the VMM leaf is killed through
//! `cgroup.kill` when its processes linger).
//!
//! Layout of one sandbox cgroup `S` (the pod's cgroupsPath): the limits are on `S`, the
//! processes in two leaves (cgroup v2 keeps processes out of inner nodes):
//! `S/vmm` (QEMU, virtiofsd, vhost-device-vsock) and `S/shim` (the shim's own per-pod work).
//!
//! Directory creation and removal go through [`Kernel`], so that unit tests run against a
//! fake hierarchy in a temporary directory ([`FakeKernel`]) that behaves like cgroupfs
//! (control files appear on mkdir, rmdir of a populated cgroup is EBUSY).

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::limits::Limits;

/// Controllers the sandbox cgroup cannot do without.
pub const REQUIRED: [&str; 3] = ["cpu", "memory", "pids"];
/// Controllers enabled when the host has them.
pub const OPTIONAL: [&str; 1] = ["io"];
/// The leaf of the VMM and its helpers.
pub const VMM_LEAF: &str = "vmm";
/// The leaf of the shim's own process.
pub const SHIM_LEAF: &str = "shim";

/// An error of the cgroup code: what failed, where, and what to do.
#[derive(Debug)]
pub enum Error {
    /// The host has no cgroup v2 hierarchy with the controllers needed.
    Unusable(String),
    /// A cgroupfs operation failed.
    Io { what: String, path: PathBuf, source: io::Error },
    /// The cgroup still has processes after every retry.
    Busy { path: PathBuf, detail: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unusable(why) => write!(f, "no usable cgroup v2: {why}"),
            Error::Io { what, path, source } => write!(f, "{what} {}: {source}", path.display()),
            Error::Busy { path, detail } => write!(
                f,
                "cgroup {} is still busy after the retries ({detail}); remove it by hand once its processes are gone",
                path.display()
            ),
        }
    }
}

impl std::error::Error for Error {}

fn io_err(what: impl Into<String>, path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    let what = what.into();
    move |source| Error::Io { what, path: path.to_path_buf(), source }
}

/// How directories are made and removed: the real `mkdir(2)`/`rmdir(2)`, or a fake for tests.
pub trait Kernel: Send + Sync + fmt::Debug {
    fn mkdir(&self, path: &Path) -> io::Result<()>;
    fn rmdir(&self, path: &Path) -> io::Result<()>;
}

/// The real cgroupfs.
#[derive(Debug, Default)]
pub struct RealKernel;

impl Kernel for RealKernel {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }
    fn rmdir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }
}

/// A fake cgroupfs in an ordinary directory (tests): mkdir creates the control files (the
/// controllers are the parent's `cgroup.subtree_control`), rmdir refuses with EBUSY while
/// `cgroup.procs` is not empty or a child cgroup exists.
#[derive(Debug, Default)]
pub struct FakeKernel;

impl FakeKernel {
    /// Makes `root` look like the root of a cgroup v2 hierarchy with `controllers`.
    pub fn make_root(root: &Path, controllers: &str) -> io::Result<()> {
        std::fs::create_dir_all(root)?;
        std::fs::write(root.join("cgroup.controllers"), format!("{controllers}\n"))?;
        for f in ["cgroup.subtree_control", "cgroup.procs"] {
            std::fs::write(root.join(f), "")?;
        }
        Ok(())
    }
}

impl Kernel for FakeKernel {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)?;
        let parent = path.parent().unwrap_or(Path::new("/"));
        let ctrl = std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
        let ctrl: Vec<&str> = ctrl.split_whitespace().map(|c| c.trim_start_matches('+')).collect();
        std::fs::write(path.join("cgroup.controllers"), format!("{}\n", ctrl.join(" ")))?;
        for f in ["cgroup.subtree_control", "cgroup.procs", "cgroup.kill", "cgroup.events"] {
            std::fs::write(path.join(f), "")?;
        }
        for (c, files) in [
            ("memory", &["memory.max", "memory.high", "memory.events"][..]),
            ("pids", &["pids.max"][..]),
            ("cpu", &["cpu.max", "cpu.weight", "cpu.stat"][..]),
            ("io", &["io.weight"][..]),
        ] {
            if ctrl.contains(&c) {
                for f in files {
                    std::fs::write(path.join(f), "")?;
                }
            }
        }
        Ok(())
    }

    fn rmdir(&self, path: &Path) -> io::Result<()> {
        let busy = || io::Error::from_raw_os_error(16); // EBUSY
        if std::fs::read_to_string(path.join("cgroup.procs"))?.trim() != "" {
            return Err(busy());
        }
        for e in std::fs::read_dir(path)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                return Err(busy());
            }
        }
        std::fs::remove_dir_all(path)
    }
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(io_err("reading", path))
}

fn write(path: &Path, value: &str) -> Result<(), Error> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(path).map_err(io_err("opening", path))?;
    f.write_all(value.as_bytes()).map_err(io_err(format!("writing {value:?} to"), path))
}

fn words(s: &str) -> BTreeSet<String> {
    s.split_whitespace().map(|w| w.trim_start_matches('+').to_string()).collect()
}

/// The cgroup2 mount points in a mountinfo text (mount point, unescaped).
pub fn cgroup2_mounts(mountinfo: &str) -> Vec<PathBuf> {
    let unescape =
        |s: &str| s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\");
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(unescape(mount_point)))
        })
        .collect()
}

/// A cgroup v2 hierarchy (its mount point).
#[derive(Debug, Clone)]
pub struct Hierarchy {
    pub mount: PathBuf,
    kernel: Arc<dyn Kernel>,
}

/// Which limits were written and which were left out (their controller is missing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub written: Vec<(&'static str, String)>,
    pub skipped: Vec<&'static str>,
}

impl Hierarchy {
    /// The real hierarchy mounted at `mount`.
    pub fn at(mount: impl Into<PathBuf>) -> Hierarchy {
        Hierarchy { mount: mount.into(), kernel: Arc::new(RealKernel) }
    }

    /// A hierarchy at `mount` handled by `kernel` (tests: [`FakeKernel`]).
    pub fn with_kernel(mount: impl Into<PathBuf>, kernel: Arc<dyn Kernel>) -> Hierarchy {
        Hierarchy { mount: mount.into(), kernel }
    }

    /// Finds this host's cgroup v2 hierarchy (`/sys/fs/cgroup` when it is cgroup2, else any
    /// cgroup2 mount, e.g. the hybrid layout's `/sys/fs/cgroup/unified`) and checks that it
    /// has the required controllers. Never mounts or changes anything.
    pub fn detect() -> Result<Hierarchy, Error> {
        let mi = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::Unusable(format!("cannot read /proc/self/mountinfo: {e}")))?;
        let mounts = cgroup2_mounts(&mi);
        let mount =
            mounts.iter().find(|m| m.as_path() == Path::new("/sys/fs/cgroup")).or_else(|| mounts.first()).ok_or_else(
                || {
                    Error::Unusable(
                        "no cgroup2 filesystem is mounted (the host uses cgroup v1 only); boot it with \
                     systemd.unified_cgroup_hierarchy=1 to get host limits"
                            .into(),
                    )
                },
            )?;
        let h = Hierarchy::at(mount);
        h.check()?;
        Ok(h)
    }

    /// Checks that the root has the required controllers; returns the ones it has.
    pub fn check(&self) -> Result<BTreeSet<String>, Error> {
        let path = self.mount.join("cgroup.controllers");
        let have = words(
            &std::fs::read_to_string(&path)
                .map_err(|e| Error::Unusable(format!("cannot read {}: {e}", path.display())))?,
        );
        let missing: Vec<&str> = REQUIRED.iter().copied().filter(|c| !have.contains(*c)).collect();
        if !missing.is_empty() {
            let have: Vec<&str> = have.iter().map(String::as_str).collect();
            return Err(Error::Unusable(format!(
                "the cgroup v2 hierarchy at {} has the controllers [{}] but lacks {} (a hybrid host keeps them \
                 in cgroup v1); boot the host with systemd.unified_cgroup_hierarchy=1 (or cgroup_no_v1=all) to \
                 get host limits",
                self.mount.display(),
                have.join(" "),
                missing.join(", ")
            )));
        }
        Ok(have)
    }

    /// Enables the wanted controllers in `dir`'s `cgroup.subtree_control`; returns the
    /// controllers its children get.
    fn enable(&self, dir: &Path) -> Result<BTreeSet<String>, Error> {
        let have = words(&read(&dir.join("cgroup.controllers"))?);
        let on = words(&read(&dir.join("cgroup.subtree_control"))?);
        let want: Vec<&str> = REQUIRED.iter().chain(OPTIONAL.iter()).copied().filter(|c| have.contains(*c)).collect();
        if let Some(m) = REQUIRED.iter().find(|c| !have.contains(**c)) {
            return Err(Error::Unusable(format!(
                "controller {m} is not available in {} (not delegated by its parent)",
                dir.display()
            )));
        }
        let add: Vec<String> = want.iter().filter(|c| !on.contains(**c)).map(|c| format!("+{c}")).collect();
        if !add.is_empty() {
            write(&dir.join("cgroup.subtree_control"), &add.join(" "))?;
        }
        Ok(want.into_iter().map(str::to_string).collect())
    }

    /// A handle on the sandbox cgroup at `rel` (which may or may not exist): for removal.
    pub fn open(&self, rel: &Path) -> SandboxCgroup {
        SandboxCgroup { path: self.mount.join(rel), kernel: self.kernel.clone() }
    }

    /// Creates the sandbox cgroup at `rel` (a validated cgroupsPath, see `path::parse`)
    /// with `limits` and its VMM leaf. Missing parents are created (kubelet normally made
    /// them) and never removed; a leftover cgroup of the same path is removed first. On
    /// error nothing of the sandbox cgroup is left.
    pub fn create(&self, rel: &Path, limits: &Limits) -> Result<(SandboxCgroup, Applied), Error> {
        let comps: Vec<&std::ffi::OsStr> = rel
            .components()
            .map(|c| match c {
                Component::Normal(n) => Ok(n),
                _ => Err(Error::Unusable(format!("cgroup path {} is not a plain relative path", rel.display()))),
            })
            .collect::<Result<_, _>>()?;
        let Some((leaf, parents)) = comps.split_last() else {
            return Err(Error::Unusable("the sandbox cgroup cannot be the root cgroup".into()));
        };
        let mut cur = self.mount.clone();
        for c in parents {
            self.enable(&cur)?;
            cur.push(c);
            match self.kernel.mkdir(&cur) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && cur.is_dir() => {}
                Err(e) => return Err(io_err("creating parent cgroup", &cur)(e)),
            }
        }
        self.enable(&cur)?;
        let cg = SandboxCgroup { path: cur.join(leaf), kernel: self.kernel.clone() };
        if cg.path.exists() {
            cg.remove(10, Duration::from_millis(50))?;
        }
        self.kernel.mkdir(&cg.path).map_err(io_err("creating cgroup", &cg.path))?;
        match self.fill(&cg, limits) {
            Ok(applied) => Ok((cg, applied)),
            Err(e) => {
                let _ = cg.remove(3, Duration::from_millis(20));
                Err(e)
            }
        }
    }

    /// Takes over the sandbox cgroup at `rel` that another manager made with process
    /// `resident` in it (systemd's transient scope, started with the shim's pid, as runc
    /// does): the resident moves into [`SHIM_LEAF`] first (cgroup v2 allows no process in a
    /// cgroup whose controllers are enabled for its children), then the limits, the
    /// controllers and the VMM leaf as [`Hierarchy::create`] makes them. The cgroup itself is
    /// the manager's: on error only the leaves made here are removed.
    pub fn adopt(&self, rel: &Path, limits: &Limits, resident: u32) -> Result<(SandboxCgroup, Applied), Error> {
        let cg = self.open(rel);
        if !cg.path.is_dir() {
            return Err(io_err("adopting cgroup", &cg.path)(io::Error::from(io::ErrorKind::NotFound)));
        }
        let res = cg.add_process(SHIM_LEAF, resident).and_then(|()| self.fill(&cg, limits));
        if res.is_err() {
            for leaf in [VMM_LEAF, SHIM_LEAF] {
                let _ = self.kernel.rmdir(&cg.leaf(leaf));
            }
        }
        res.map(|applied| (cg, applied))
    }

    fn fill(&self, cg: &SandboxCgroup, limits: &Limits) -> Result<Applied, Error> {
        let on = words(&read(&cg.path.join("cgroup.controllers"))?);
        let mut applied = Applied::default();
        for (file, value) in limits.files() {
            let controller = file.split('.').next().unwrap_or(file);
            let path = cg.path.join(file);
            // io.weight exists only with an I/O cost model or BFQ.
            if !on.contains(controller) || (controller == "io" && !path.exists()) {
                applied.skipped.push(file);
                continue;
            }
            write(&path, &value)?;
            applied.written.push((file, value));
        }
        self.enable(&cg.path)?;
        self.kernel.mkdir(&cg.leaf(VMM_LEAF)).map_err(io_err("creating cgroup", &cg.leaf(VMM_LEAF)))?;
        Ok(applied)
    }
}

/// One sandbox's cgroup.
#[derive(Debug, Clone)]
pub struct SandboxCgroup {
    path: PathBuf,
    kernel: Arc<dyn Kernel>,
}

impl SandboxCgroup {
    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One of its leaves ([`VMM_LEAF`], [`SHIM_LEAF`]).
    pub fn leaf(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Reads one of its files (e.g. `memory.events`, `vmm/cgroup.procs`).
    pub fn read(&self, file: &str) -> Result<String, Error> {
        read(&self.path.join(file))
    }

    /// Moves process `pid` (all its threads) into the leaf `leaf` (created when missing).
    /// Memory charged before the move stays where it was charged (cgroup v2).
    pub fn add_process(&self, leaf: &str, pid: u32) -> Result<(), Error> {
        let dir = self.leaf(leaf);
        if !dir.is_dir() {
            match self.kernel.mkdir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("creating cgroup", &dir)(e)),
            }
        }
        write(&dir.join("cgroup.procs"), &format!("{pid}\n"))
    }

    /// Removes the cgroup and its leaves once their processes are gone: `attempts` tries
    /// `pause` apart; from the second half on, what is left in the VMM leaf is killed
    /// (`cgroup.kill`). The shim leaf is never killed: the shim moves itself out first.
    /// Idempotent: an absent cgroup is removed already.
    pub fn remove(&self, attempts: u32, pause: Duration) -> Result<(), Error> {
        let attempts = attempts.max(1);
        let mut last = String::new();
        for i in 0..attempts {
            match self.remove_tree(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(16) || e.kind() == io::ErrorKind::DirectoryNotEmpty => {
                    last = format!("{e}; vmm procs [{}], shim procs [{}]", self.procs(VMM_LEAF), self.procs(SHIM_LEAF));
                }
                Err(e) => return Err(io_err("removing cgroup", &self.path)(e)),
            }
            if i + 1 >= attempts.div_ceil(2) {
                let kill = self.leaf(VMM_LEAF).join("cgroup.kill");
                if kill.exists() {
                    let _ = write(&kill, "1");
                }
            }
            std::thread::sleep(pause);
        }
        Err(Error::Busy { path: self.path.clone(), detail: last })
    }

    fn procs(&self, leaf: &str) -> String {
        std::fs::read_to_string(self.leaf(leaf).join("cgroup.procs"))
            .map(|s| {
                let pids: Vec<&str> = s.split_whitespace().collect();
                let more = if pids.len() > 16 { format!(" and {} more", pids.len() - 16) } else { String::new() };
                format!("{}{more}", pids[..pids.len().min(16)].join(" "))
            })
            .unwrap_or_default()
    }

    /// rmdir of the subtree, children first (directories only: control files go with them).
    fn remove_tree(&self, dir: &Path) -> io::Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for e in entries {
            let e = e?;
            if e.file_type()?.is_dir() {
                self.remove_tree(&e.path())?;
            }
        }
        match self.kernel.rmdir(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{compute, Overhead, PodResources};
    use std::sync::atomic::{AtomicU32, Ordering};

    struct TempRoot(PathBuf);
    impl Drop for TempRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn fake(controllers: &str) -> (TempRoot, Hierarchy) {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "bulwark-cgroup-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        FakeKernel::make_root(&dir, controllers).unwrap();
        (TempRoot(dir.clone()), Hierarchy::with_kernel(dir, Arc::new(FakeKernel)))
    }

    fn limits() -> Limits {
        let pod = PodResources {
            cpu_quota_us: Some(50_000),
            cpu_period_us: Some(100_000),
            cpu_shares: Some(512),
            memory_bytes: Some(64 << 20),
        };
        compute(&pod, 512 << 20, &Overhead { memory_bytes: 16 << 20, cpu_millis: 100, pids_max: 64, io_weight: 50 })
    }

    fn text(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap().trim().to_string()
    }

    #[test]
    fn mountinfo_cgroup2() {
        let mi = "25 30 0:22 / /sys/fs/cgroup ro shared:9 - tmpfs tmpfs ro,mode=755\n\
                  36 25 0:30 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate\n\
                  37 25 0:31 / /sys/fs/cgroup/memory rw shared:11 - cgroup cgroup rw,memory\n\
                  38 25 0:32 / /mnt/with\\040space rw - cgroup2 none rw\n";
        assert_eq!(cgroup2_mounts(mi), vec![PathBuf::from("/sys/fs/cgroup/unified"), PathBuf::from("/mnt/with space")]);
    }

    #[test]
    fn hybrid_host_is_unusable_with_the_reason() {
        let (_t, h) = fake("hugetlb");
        let e = h.check().unwrap_err().to_string();
        assert!(e.contains("[hugetlb]") && e.contains("lacks cpu, memory, pids"), "{e}");
        let (_t, h) = fake("cpu memory pids");
        assert!(h.check().is_ok());
    }

    #[test]
    fn create_writes_limits_enables_controllers_and_removes() {
        let (_t, h) = fake("cpuset cpu io memory hugetlb pids");
        let rel = Path::new("kubepods/burstable/pod1/sb1");
        let (cg, applied) = h.create(rel, &limits()).unwrap();
        assert_eq!(cg.path(), h.mount.join(rel));
        // Controllers enabled from the root down to the sandbox cgroup.
        for d in ["", "kubepods", "kubepods/burstable", "kubepods/burstable/pod1", "kubepods/burstable/pod1/sb1"] {
            assert_eq!(text(&h.mount.join(d).join("cgroup.subtree_control")), "+cpu +memory +pids +io", "{d}");
        }
        let p = cg.path();
        assert_eq!(text(&p.join("memory.max")), (80u64 << 20).to_string());
        assert_eq!(text(&p.join("memory.high")), (75u64 << 20).to_string());
        assert_eq!(text(&p.join("pids.max")), "64");
        assert_eq!(text(&p.join("cpu.max")), "60000 100000");
        assert_eq!(text(&p.join("cpu.weight")), "20");
        assert_eq!(text(&p.join("io.weight")), "default 50");
        assert!(applied.skipped.is_empty(), "{applied:?}");
        assert!(p.join(VMM_LEAF).is_dir());

        cg.add_process(VMM_LEAF, 4242).unwrap();
        assert_eq!(text(&p.join("vmm/cgroup.procs")), "4242");
        cg.add_process(SHIM_LEAF, 4343).unwrap();
        assert_eq!(text(&p.join("shim/cgroup.procs")), "4343");

        // A populated leaf keeps the cgroup: bounded retries, then Busy naming the processes;
        // the VMM leaf was asked to die.
        std::fs::write(p.join("vmm/cgroup.procs"), "").unwrap();
        let e = cg.remove(2, Duration::from_millis(1)).unwrap_err();
        assert!(matches!(e, Error::Busy { .. }), "{e}");
        assert!(e.to_string().contains("shim procs [4343]"), "{e}");
        assert_eq!(text(&p.join("vmm/cgroup.kill")), "1");
        std::fs::write(p.join("shim/cgroup.procs"), "").unwrap();
        cg.remove(2, Duration::from_millis(1)).unwrap();
        assert!(!p.exists());
        // The parents stay (kubelet's); removal is idempotent.
        assert!(h.mount.join("kubepods/burstable/pod1").is_dir());
        cg.remove(2, Duration::from_millis(1)).unwrap();
        h.open(rel).remove(1, Duration::from_millis(1)).unwrap();
    }

    #[test]
    fn adopting_a_scope_moves_its_resident_to_a_leaf_first() {
        let (_t, h) = fake("cpu memory pids io");
        // What systemd leaves: the scope, the shim's pid in it, controllers on down to it.
        let rel = Path::new("kubepods.slice/kubepods-pod1.slice/cri-containerd-sb.scope");
        let mut cur = h.mount.clone();
        for c in rel.components() {
            std::fs::write(cur.join("cgroup.subtree_control"), "+cpu +memory +pids +io").unwrap();
            cur.push(c);
            FakeKernel.mkdir(&cur).unwrap();
        }
        std::fs::write(cur.join("cgroup.procs"), "777").unwrap();
        let (cg, applied) = h.adopt(rel, &limits(), 777).unwrap();
        assert_eq!(cg.path(), cur);
        assert_eq!(text(&cur.join("shim/cgroup.procs")), "777", "the resident is in the shim leaf");
        assert_eq!(text(&cur.join("memory.max")), (80u64 << 20).to_string());
        assert_eq!(text(&cur.join("cgroup.subtree_control")), "+cpu +memory +pids +io");
        assert!(cur.join(VMM_LEAF).is_dir() && applied.skipped.is_empty());
        // No such scope: an error, nothing made.
        let e = h.adopt(Path::new("kubepods.slice/none.scope"), &limits(), 1).unwrap_err();
        assert!(e.to_string().contains("none.scope"), "{e}");
        assert!(!h.mount.join("kubepods.slice/none.scope").exists());
    }

    #[test]
    fn missing_io_controller_skips_io_weight() {
        let (_t, h) = fake("cpu memory pids");
        let (cg, applied) = h.create(Path::new("sb"), &limits()).unwrap();
        assert_eq!(applied.skipped, vec!["io.weight"]);
        assert_eq!(text(&h.mount.join("cgroup.subtree_control")), "+cpu +memory +pids");
        cg.remove(1, Duration::from_millis(1)).unwrap();
    }

    #[test]
    fn leftover_is_replaced_and_failures_leave_nothing() {
        let (_t, h) = fake("cpu memory pids io");
        let rel = Path::new("pod/sb");
        let (cg, _) = h.create(rel, &limits()).unwrap();
        std::fs::write(cg.path().join("memory.max"), "stale").unwrap();
        let (cg, _) = h.create(rel, &limits()).unwrap();
        assert_eq!(text(&cg.path().join("memory.max")), (80u64 << 20).to_string());
        cg.remove(1, Duration::from_millis(1)).unwrap();

        // A parent without the memory controller delegated: refused, nothing created below it.
        let (_t, h) = fake("cpu memory pids");
        std::fs::create_dir(h.mount.join("pod")).unwrap();
        std::fs::write(h.mount.join("pod/cgroup.controllers"), "cpu pids\n").unwrap();
        std::fs::write(h.mount.join("pod/cgroup.subtree_control"), "").unwrap();
        let e = h.create(rel, &limits()).unwrap_err().to_string();
        assert!(e.contains("controller memory is not available"), "{e}");
        assert!(!h.mount.join(rel).exists());

        // A limit that cannot be written (control file missing): the new cgroup is removed.
        let (_t, h) = fake("cpu memory pids");
        struct NoPidsMax;
        impl fmt::Debug for NoPidsMax {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("NoPidsMax")
            }
        }
        impl Kernel for NoPidsMax {
            fn mkdir(&self, p: &Path) -> io::Result<()> {
                FakeKernel.mkdir(p)?;
                let _ = std::fs::remove_file(p.join("pids.max"));
                Ok(())
            }
            fn rmdir(&self, p: &Path) -> io::Result<()> {
                FakeKernel.rmdir(p)
            }
        }
        let h = Hierarchy::with_kernel(h.mount.clone(), Arc::new(NoPidsMax));
        let e = h.create(rel, &limits()).unwrap_err().to_string();
        assert!(e.contains("pids.max"), "{e}");
        assert!(!h.mount.join(rel).exists());
        assert!(h.mount.join("pod").is_dir());
    }

    #[test]
    fn root_and_odd_paths_refused() {
        let (_t, h) = fake("cpu memory pids");
        assert!(h.create(Path::new(""), &limits()).is_err());
        assert!(h.create(Path::new("a/../b"), &limits()).is_err());
        assert!(h.create(Path::new("/abs"), &limits()).is_err());
    }
}
