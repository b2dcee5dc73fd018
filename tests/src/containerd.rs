//! A private, real containerd (the Debian package) for one test: its own root, state, socket
//! and Bulwark, installed by `scripts/install-node --root` (install.rs) under a short directory
//! in /tmp (unix socket paths are short). Dropping it removes every sandbox it still has, stops
//! containerd and deletes the directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::install::{install_node, Installed};
use crate::leftovers;
use crate::process::{self, Output};
use crate::{Artifacts, RUNTIME, TEST_IMAGE};

/// The containerd namespace the tests use.
pub const NAMESPACE: &str = "bulwark-e2e";
/// Upper bound for one `ctr` command (a VM boot under TCG on a busy 2-core machine included).
pub const CTR_LIMIT: Duration = Duration::from_secs(240);

/// The Bulwark shim configuration a test runs with: what `scripts/install-node` is told on top
/// of its own defaults (install.rs). After the install, the paths name the installed files.
#[derive(Debug, Clone)]
pub struct ShimConfig {
    pub qemu: PathBuf,
    pub virtiofsd: PathBuf,
    pub vhost_device_vsock: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub runtime_dir: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub acceleration: String,
    pub boot_timeout_secs: u32,
    /// `[tenant] host_paths`: where the test's bind mount sources (and containerd's own
    /// files) live: the test's directory.
    pub host_paths: Vec<PathBuf>,
    /// More TOML, as if it continued the `[vm]` table (it may open others): each key is passed
    /// on as a `--set`.
    pub extra: String,
}

impl ShimConfig {
    /// The defaults every e2e test starts from: this checkout's artefacts, one vCPU, 256 MiB,
    /// the runtime dir `<dir>/r`, acceleration from `BULWARK_TEST_ACCEL` (default `auto`).
    pub fn for_test(artifacts: &Artifacts, dir: &Path) -> ShimConfig {
        ShimConfig {
            qemu: artifacts.qemu.clone(),
            virtiofsd: artifacts.virtiofsd.clone(),
            vhost_device_vsock: artifacts.vhost_device_vsock.clone(),
            kernel: artifacts.kernel.clone(),
            initrd: artifacts.initrd.clone(),
            runtime_dir: dir.join("r"),
            vcpus: 1,
            memory_mib: 256,
            acceleration: std::env::var("BULWARK_TEST_ACCEL").unwrap_or_else(|_| "auto".into()),
            boot_timeout_secs: 120,
            host_paths: vec![dir.to_path_buf()],
            extra: String::new(),
        }
    }
}

/// A running containerd with Bulwark configured.
pub struct Containerd {
    /// Everything of this instance lives under here.
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub shim: ShimConfig,
    /// Where scripts/install-node put Bulwark (below `dir`).
    pub node: Installed,
    pub artifacts: Artifacts,
    child: Child,
    events: Arc<Mutex<Vec<String>>>,
    events_child: Option<Child>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Containerd {
    /// Starts containerd with the default Bulwark configuration, altered by `adjust`, and
    /// imports the busybox test image.
    pub fn start(adjust: impl FnOnce(&mut ShimConfig)) -> Result<Containerd, String> {
        let artifacts = Artifacts::locate()?;
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!("/tmp/bwk-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut shim = ShimConfig::for_test(&artifacts, &dir);
        adjust(&mut shim);
        let socket = dir.join("c.sock");
        let config = dir.join("containerd.toml");
        write(
            &config,
            &format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n\
                 [debug]\n  level = \"debug\"\n",
                d = dir.display()
            ),
        )?;
        let containerd =
            process::which("containerd").ok_or("containerd not found on PATH: apt-get install containerd")?;
        let node = install_node(&artifacts, &dir, &config, &containerd, &mut shim).inspect_err(|_| {
            if std::env::var_os("BULWARK_KEEP_TEST_DIRS").is_none() {
                let _ = std::fs::remove_dir_all(&dir);
            }
        })?;
        let child = spawn_containerd(&dir, &config, &node)?;
        let mut c =
            Containerd { dir, socket, shim, node, artifacts, child, events: Arc::default(), events_child: None };
        c.wait_up()?;
        c.watch_events()?;
        let import = c.ctr(&["images", "import", &c.artifacts.test_image.to_string_lossy()])?;
        if !import.status.success() {
            return Err(format!("importing the test image failed: {}", import.stderr));
        }
        Ok(c)
    }

    /// Waits (bounded) until containerd answers `ctr version`.
    fn wait_up(&self) -> Result<(), String> {
        let up = process::poll(Duration::from_secs(30), || {
            self.socket.exists().then(|| self.ctr(&["version"]).ok().filter(|o| o.status.success()))?
        });
        if up.is_none() {
            return Err(format!("containerd did not come up in 30 s\n{}", self.diagnostics()));
        }
        Ok(())
    }

    /// Restarts containerd (SIGTERM, then the same configuration, root and state), as an
    /// operator or a package upgrade does; the shims and their VMs keep running. The event
    /// watcher is started again (events published while containerd was down are replayed by
    /// the shims' publishers to the new containerd).
    pub fn restart(&mut self) -> Result<(), String> {
        if let Some(mut e) = self.events_child.take() {
            let _ = e.kill();
            let _ = e.wait();
        }
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        process::wait_bounded(&mut self.child, Duration::from_secs(20))?;
        self.child = spawn_containerd(&self.dir, &self.dir.join("containerd.toml"), &self.node)?;
        self.wait_up()?;
        self.watch_events()
    }

    /// A `ctr` command against this containerd, in the test namespace, not started.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a").arg(&self.socket).arg("-n").arg(NAMESPACE).args(args);
        cmd
    }

    /// Runs `ctr` against this containerd, in the test namespace.
    pub fn ctr(&self, args: &[&str]) -> Result<Output, String> {
        process::run(Command::new("ctr").arg("-a").arg(&self.socket).arg("-n").arg(NAMESPACE).args(args), CTR_LIMIT)
    }

    /// `ctr run --rm --runtime io.containerd.bulwark.v2 <image> <id> <args...>`.
    pub fn run_rm(&self, id: &str, args: &[&str]) -> Result<Output, String> {
        let mut all = vec!["run", "--rm", "--runtime", RUNTIME, TEST_IMAGE, id];
        all.extend_from_slice(args);
        self.ctr(&all)
    }

    /// Starts `ctr run` (not detached) in the background; the caller waits on the child.
    pub fn spawn_run(&self, id: &str, args: &[&str]) -> Result<Child, String> {
        self.spawn_run_with(id, &[], args)
    }

    /// [`Self::spawn_run`] with extra `ctr run` flags (e.g. `--mount ...`) before the image.
    pub fn spawn_run_with(&self, id: &str, flags: &[&str], args: &[&str]) -> Result<Child, String> {
        Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .arg("-n")
            .arg(NAMESPACE)
            .args(["run", "--rm", "--runtime", RUNTIME])
            .args(flags)
            .args([TEST_IMAGE, id])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting ctr run: {e}"))
    }

    /// [`Self::spawn_run_with`], with the child's stdout lines arriving on the returned channel.
    pub fn spawn_run_lines(
        &self,
        id: &str,
        flags: &[&str],
        args: &[&str],
    ) -> Result<(Child, std::sync::mpsc::Receiver<String>), String> {
        let mut child = self.spawn_run_with(id, flags, args)?;
        let stdout = child.stdout.take().ok_or("ctr run has no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok((child, rx))
    }

    /// The task's status column in `ctr task ls` (e.g. RUNNING, STOPPED), if it is listed.
    pub fn task_status(&self, id: &str) -> Option<(String, i32)> {
        let out = self.ctr(&["task", "ls"]).ok()?;
        out.stdout.lines().skip(1).find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.first() == Some(&id)).then(|| {
                (cols.get(2).unwrap_or(&"").to_string(), cols.get(1).and_then(|p| p.parse().ok()).unwrap_or(0))
            })
        })
    }

    /// Polls until the task is RUNNING (after a VM boot); returns its pid as containerd sees it.
    pub fn wait_running(&self, id: &str) -> Result<i32, String> {
        process::poll(CTR_LIMIT, || match self.task_status(id) {
            Some((s, pid)) if s == "RUNNING" => Some(pid),
            _ => None,
        })
        .ok_or_else(|| format!("task {id} never became RUNNING\n{}", self.diagnostics()))
    }

    fn watch_events(&mut self) -> Result<(), String> {
        let mut child = Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .arg("events")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting ctr events: {e}"))?;
        let out = child.stdout.take().ok_or("ctr events has no stdout")?;
        let sink = self.events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(mut v) = sink.lock() {
                    v.push(line);
                }
            }
        });
        self.events_child = Some(child);
        Ok(())
    }

    /// The `/tasks/*` event topics containerd published for container `id`, in order.
    pub fn task_events(&self, id: &str) -> Vec<String> {
        let key = format!("\"container_id\":\"{id}\"");
        let lines = self.events.lock().map(|v| v.clone()).unwrap_or_default();
        lines
            .iter()
            .filter(|l| l.contains(&key))
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/")).map(str::to_string))
            .collect()
    }

    /// Polls until the events for `id` include `topic`.
    pub fn wait_event(&self, id: &str, topic: &str, limit: Duration) -> Result<Vec<String>, String> {
        process::poll(limit, || {
            let ev = self.task_events(id);
            ev.iter().any(|t| t == topic).then_some(ev)
        })
        .ok_or_else(|| format!("no {topic} event for {id}; saw {:?}", self.task_events(id)))
    }

    /// Everything Bulwark may leave behind for this containerd: VM-side processes, mounts
    /// under the runtime dir, and sandbox state directories. Empty when all is clean.
    pub fn leftovers(&self) -> Vec<String> {
        shim_leftovers(&self.dir, &self.shim.runtime_dir)
    }

    /// Polls for up to 30 s until nothing is left behind; returns what is left otherwise.
    pub fn assert_clean(&self) -> Result<(), String> {
        match process::poll(Duration::from_secs(30), || self.leftovers().is_empty().then_some(())) {
            Some(()) => Ok(()),
            None => Err(format!("left behind: {:#?}\n{}", self.leftovers(), self.diagnostics())),
        }
    }

    /// The end of containerd's log (it holds the shim's and the agent's logs) and of every
    /// VM console log, for failure messages.
    pub fn diagnostics(&self) -> String {
        shim_diagnostics(&self.dir.join("containerd.log"), &self.shim.runtime_dir)
    }
}

/// `PATH` for a containerd: `first` (e.g. containerd 2.x's directory, for its runc shim), then
/// `bulwark_bin` (where `ctr run --runtime io.containerd.bulwark.v2` finds the shim; the CRI
/// handler names it with runtime_path instead), then ours.
pub fn search_path(bulwark_bin: Option<&Path>, first: Option<&Path>) -> String {
    let mut dirs: Vec<String> = first.into_iter().chain(bulwark_bin).map(|d| d.display().to_string()).collect();
    dirs.push(std::env::var("PATH").unwrap_or_default());
    dirs.join(":")
}

/// Starts containerd with `config` and the installed Bulwark `node`, logging to
/// `<dir>/containerd.log` (appended: a restart keeps the earlier log).
fn spawn_containerd(dir: &Path, config: &Path, node: &Installed) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))
        .map_err(|e| format!("creating containerd.log: {e}"))?;
    Command::new("containerd")
        .arg("--config")
        .arg(config)
        .env("PATH", search_path(Some(&node.bin_dir), None))
        .env("BULWARK_CONFIG", &node.shim_config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting containerd: {e} (apt-get install containerd)"))
}

/// What the Bulwark shim may leave behind for a containerd living under `dir` with the shim's
/// runtime dir `runtime_dir`: VM-side processes, mounts under the runtime dir, and sandbox
/// state directories. Empty when all is clean.
pub fn shim_leftovers(dir: &Path, runtime_dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().to_string();
    let mut found: Vec<String> =
        leftovers::vm_processes(&needle).into_iter().map(|p| format!("process {}: {}", p.pid, p.cmdline)).collect();
    found.extend(leftovers::mounts_under(runtime_dir).into_iter().map(|m| format!("mount {m}")));
    // The shim keeps sandbox state in <runtime_dir>/<namespace>/<sandbox>; only the
    // per-host acceleration probe cache (accel-probe*) may stay at the top.
    for entry in leftovers::entries(runtime_dir) {
        let path = runtime_dir.join(&entry);
        if entry.starts_with("accel-probe") {
            continue;
        }
        if path.is_dir() && !entry.starts_with("h-") {
            found.extend(leftovers::entries(&path).into_iter().map(|s| format!("sandbox state dir {entry}/{s}")));
        } else {
            found.push(format!("runtime dir entry {entry}"));
        }
    }
    found
}

/// The end of containerd's log (it holds the shim's and the agent's logs) and of every VM
/// console log under `runtime_dir`, for failure messages.
pub fn shim_diagnostics(containerd_log: &Path, runtime_dir: &Path) -> String {
    let mut s = format!("--- containerd.log (tail) ---\n{}", tail(containerd_log, 60));
    for ns in leftovers::entries(runtime_dir) {
        for sandbox in leftovers::entries(&runtime_dir.join(&ns)) {
            let console = runtime_dir.join(&ns).join(sandbox).join("console.log");
            if console.exists() {
                s.push_str(&format!("\n--- {} (tail) ---\n{}", console.display(), tail(&console, 30)));
            }
        }
    }
    s
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Whatever a failed test left: end the sandboxes this instance started (by pid), stop
        // containerd, detach mounts under our own directory, remove it.
        let needle = self.dir.to_string_lossy().to_string();
        for p in leftovers::vm_processes(&needle) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
        }
        if let Some(mut e) = self.events_child.take() {
            let _ = e.kill();
            let _ = e.wait();
        }
        // SAFETY: as above.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if process::wait_bounded(&mut self.child, Duration::from_secs(10)).is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let mut mounts = leftovers::mounts_under(&self.dir);
        mounts.reverse();
        for m in mounts {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: `c` is a valid NUL-terminated path that lives across the call.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        if std::env::var_os("BULWARK_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub(crate) fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
