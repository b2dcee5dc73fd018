//! A private, real containerd with its CRI plugin enabled, for one CRI test: containerd 1.6
//! (Debian bookworm's, on PATH) or 2.x (Debian sid's, unpacked by scripts/lib/deps.sh), its own
//! root/state/socket under /tmp, runtime handlers `runc` and `bulwark` (the latter added by
//! `scripts/install-node --root`, install.rs, as on a node), the test pause image
//! pinned as sandbox image, a claimed CNI bridge network, and the busybox and pause images
//! imported into namespace k8s.io. Dropping it stops and removes every pod, stops containerd,
//! detaches mounts under its directory, deletes the bridge and the directory.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cni::{Network, CNI_BIN_DIR};
use crate::containerd::{search_path, shim_diagnostics, shim_leftovers, tail, write, ShimConfig};
use crate::cri_client::CriClient;
use crate::install::{install_node, Installed};
use crate::process::{self, Output};
use crate::{leftovers, Artifacts, PAUSE_IMAGE, TEST_IMAGE};

/// The containerd namespace the CRI plugin uses.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// Runtime handler names registered in the CRI config.
pub const HANDLER_BULWARK: &str = "bulwark";
pub const HANDLER_RUNC: &str = "runc";
/// Where libcni caches each attachment's result, as `<network>-<container>-<ifname>`.
const CNI_RESULTS: &str = "/var/lib/cni/results";

/// Which containerd to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerdVersion {
    /// Debian bookworm's containerd 1.6 (`/usr/bin`), config format version 2.
    V1,
    /// Debian sid's containerd 2.x from the private prefix, config format version 3.
    V2,
}

impl ContainerdVersion {
    /// Directory holding this version's `containerd`, `ctr` and `containerd-shim-runc-v2`.
    pub fn bin_dir(self) -> Result<PathBuf, String> {
        let dir = match self {
            ContainerdVersion::V1 => process::which("containerd")
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .ok_or("containerd not found on PATH: apt-get install containerd")?,
            ContainerdVersion::V2 => {
                std::env::var_os("BULWARK_CONTAINERD2_BIN").map(PathBuf::from).unwrap_or_else(|| {
                    let cache = std::env::var_os("BULWARK_CACHE").map(PathBuf::from).unwrap_or_else(|| {
                        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/bulwark")
                    });
                    cache.join("containerd2/usr/bin")
                })
            }
        };
        for b in ["containerd", "ctr", "containerd-shim-runc-v2"] {
            if !dir.join(b).is_file() {
                return Err(format!(
                    "{b} (containerd {self:?}) not found in {}: run scripts/test, or \
                     `. scripts/lib/deps.sh && bulwark_install_deps`, which fetches containerd 2.x",
                    dir.display()
                ));
            }
        }
        Ok(dir)
    }
}

/// A running containerd with the CRI plugin and a client connected to it.
pub struct CriContainerd {
    pub version: ContainerdVersion,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub shim: ShimConfig,
    /// Where scripts/install-node put Bulwark (below `dir`).
    pub node: Installed,
    pub artifacts: Artifacts,
    pub net: Network,
    pub client: CriClient,
    /// Where pods keep their container logs (one sub-directory per pod).
    pub log_root: PathBuf,
    bin_dir: PathBuf,
    child: Child,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The CRI plugin configuration shared by both formats' renderings.
struct Settings<'a> {
    dir: &'a Path,
    cni_conf_dir: PathBuf,
}

fn config_v2(s: &Settings) -> String {
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"
[debug]
  level = "debug"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
        d = s.dir.display(),
        pause = PAUSE_IMAGE,
        bin = CNI_BIN_DIR,
        conf = s.cni_conf_dir.display()
    )
}

fn config_v3(s: &Settings) -> String {
    format!(
        r#"version = 3
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"
[debug]
  level = "debug"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.nri.v1.nri"]
  disable = true
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{pause}"
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{bin}"]
    conf_dir = "{conf}"
    max_conf_num = 1
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"#,
        d = s.dir.display(),
        pause = PAUSE_IMAGE,
        bin = CNI_BIN_DIR,
        conf = s.cni_conf_dir.display()
    )
}

impl CriContainerd {
    /// Starts containerd `version` with the CRI plugin, imports the test images and waits
    /// until CRI reports the runtime and the network ready.
    pub fn start(version: ContainerdVersion) -> Result<CriContainerd, String> {
        Self::start_with(version, |_| {})
    }

    /// Like `start`, with the Bulwark shim configuration altered by `adjust` first.
    pub fn start_with(
        version: ContainerdVersion,
        adjust: impl FnOnce(&mut ShimConfig),
    ) -> Result<CriContainerd, String> {
        let artifacts = Artifacts::locate()?;
        if !artifacts.pause_image.exists() {
            return Err(format!(
                "the pause image not found at {}: run scripts/test (images/build-test-image builds it)",
                artifacts.pause_image.display()
            ));
        }
        let bin_dir = version.bin_dir()?;
        for plugin in ["bridge", "host-local", "portmap", "loopback"] {
            if !Path::new(CNI_BIN_DIR).join(plugin).is_file() {
                return Err(format!(
                    "CNI plugin {plugin} not found in {CNI_BIN_DIR}: apt-get install containernetworking-plugins"
                ));
            }
        }
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!("/tmp/bwc-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // Until the client connects, a failure must still stop containerd (once started) and
        // remove the directory: the guard cleans up like Drop does.
        let mut early = EarlyGuard { child: None, dir: dir.clone(), armed: true };
        let net = Network::claim()?;
        // The subnet (and its network name) is ours now: cached CNI results under that name
        // are what an earlier, crashed run of a test left.
        for stale in
            leftovers::entries(Path::new(CNI_RESULTS)).into_iter().filter(|e| e.starts_with(&format!("{}-", net.name)))
        {
            let _ = std::fs::remove_file(Path::new(CNI_RESULTS).join(stale));
        }
        let cni_conf_dir = dir.join("cni");
        let log_root = dir.join("logs");
        for d in [&cni_conf_dir, &log_root] {
            std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        write(&cni_conf_dir.join("10-bulwark-test.conflist"), &net.conflist(&dir.join("ipam")))?;
        let mut shim = ShimConfig::for_test(&artifacts, &dir);
        adjust(&mut shim);
        let settings = Settings { dir: &dir, cni_conf_dir };
        let config = dir.join("containerd.toml");
        write(
            &config,
            &match version {
                ContainerdVersion::V1 => config_v2(&settings),
                ContainerdVersion::V2 => config_v3(&settings),
            },
        )?;
        let node = install_node(&artifacts, &dir, &config, &bin_dir.join("containerd"), &mut shim)?;
        let _ = std::fs::remove_file(dir.join("containerd.log"));
        let child = spawn_containerd(&bin_dir, &dir, version, &node)?;
        let socket = dir.join("c.sock");
        early.child = Some(child);
        let up = process::poll(Duration::from_secs(30), || {
            socket.exists().then(|| ctr_at(&bin_dir, &socket, &["version"]).ok().filter(|o| o.status.success()))?
        });
        if up.is_none() {
            return Err(format!(
                "containerd {version:?} did not come up in 30 s\n{}",
                tail(&dir.join("containerd.log"), 40)
            ));
        }
        for image in [&artifacts.test_image, &artifacts.pause_image] {
            let out = ctr_at(&bin_dir, &socket, &["images", "import", &image.to_string_lossy()])?;
            if !out.status.success() {
                return Err(format!("ctr images import {} failed: {}", image.display(), out.stderr));
            }
        }
        let client = CriClient::connect(&socket)?;
        let mut last = String::new();
        let ready = process::poll(Duration::from_secs(30), || match client.ready() {
            Ok(()) => Some(()),
            Err(e) => {
                last = e;
                None
            }
        });
        if ready.is_none() {
            return Err(format!("CRI never became ready: {last}\n{}", tail(&dir.join("containerd.log"), 40)));
        }
        let mut tags = Vec::new();
        let seen = process::poll(Duration::from_secs(20), || {
            tags = client.image_tags().unwrap_or_default();
            [TEST_IMAGE, PAUSE_IMAGE].iter().all(|i| tags.iter().any(|t| t == i)).then_some(())
        });
        if seen.is_none() {
            return Err(format!("CRI does not list the imported images; it lists {tags:?}"));
        }
        let child = early.child.take().ok_or("containerd child lost")?;
        early.armed = false;
        Ok(CriContainerd { version, dir, socket, shim, node, artifacts, net, client, log_root, bin_dir, child })
    }

    /// Restarts containerd as an upgrade or an operator does (SIGTERM, then the same
    /// configuration, root and state); the shims and their VMs keep running. `while_down`
    /// runs while containerd is stopped. The CRI client is connected anew and CRI is ready
    /// again when this returns.
    pub fn restart_with(&mut self, while_down: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        process::wait_bounded(&mut self.child, Duration::from_secs(20))?;
        let down = while_down();
        self.child = spawn_containerd(&self.bin_dir, &self.dir, self.version, &self.node)?;
        down?;
        let up = process::poll(Duration::from_secs(30), || self.ctr(&["version"]).ok().filter(|o| o.status.success()));
        if up.is_none() {
            return Err(format!(
                "containerd did not come back in 30 s\n{}",
                tail(&self.dir.join("containerd.log"), 40)
            ));
        }
        self.client = CriClient::connect(&self.socket)?;
        let mut last = String::new();
        process::poll(Duration::from_secs(30), || match self.client.ready() {
            Ok(()) => Some(()),
            Err(e) => {
                last = e;
                None
            }
        })
        .ok_or_else(|| format!("CRI not ready after the restart: {last}"))
    }

    /// Runs this version's `ctr` against this containerd in namespace k8s.io.
    pub fn ctr(&self, args: &[&str]) -> Result<Output, String> {
        ctr_at(&self.bin_dir, &self.socket, args)
    }

    /// The pod's log directory (created).
    pub fn pod_log_dir(&self, pod_name: &str) -> Result<PathBuf, String> {
        let d = self.log_root.join(pod_name);
        std::fs::create_dir_all(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        Ok(d)
    }

    /// Everything a removed pod may leave behind: processes mentioning this instance's
    /// directory (VM side, shims) other than containerd, mounts under it other than
    /// containerd's own, the given netns paths, ports on the test bridge, CNI result caches of
    /// the test network, shim state dirs.
    pub fn leftovers(&self, netns: &[String]) -> Vec<String> {
        let needle = self.dir.to_string_lossy().to_string();
        let containerd = self.child.id() as i32;
        let mut found: Vec<String> = leftovers::processes_mentioning(&needle)
            .into_iter()
            .filter(|p| {
                p.pid != containerd && !p.cmdline.starts_with(&self.bin_dir.join("ctr").to_string_lossy().to_string())
            })
            .map(|p| format!("process {}: {}", p.pid, p.cmdline))
            .collect();
        // The VM-side processes are in `found` already; the shim's state dirs and mounts are not.
        found.extend(
            shim_leftovers(&self.dir, &self.shim.runtime_dir).into_iter().filter(|l| !l.starts_with("process ")),
        );
        found.extend(
            leftovers::mounts_under(&self.dir)
                .into_iter()
                .filter(|m| !m.starts_with(&self.shim.runtime_dir.to_string_lossy().to_string()))
                .map(|m| format!("mount {m}")),
        );
        for ns in netns {
            if Path::new(ns).exists() {
                found.push(format!("netns {ns}"));
            }
        }
        found.extend(self.net.bridge_ports().into_iter().map(|p| format!("bridge {} port {p}", self.net.bridge)));
        // libcni caches each attachment's result as <network>-<container>-<ifname>.
        found.extend(
            leftovers::entries(Path::new(CNI_RESULTS))
                .into_iter()
                .filter(|e| e.starts_with(&format!("{}-", self.net.name)))
                .map(|e| format!("CNI result cache {CNI_RESULTS}/{e}")),
        );
        found
    }

    /// Polls up to 30 s until `leftovers(netns)` is empty.
    pub fn assert_clean(&self, netns: &[String]) -> Result<(), String> {
        match process::poll(Duration::from_secs(30), || self.leftovers(netns).is_empty().then_some(())) {
            Some(()) => Ok(()),
            None => Err(format!("left behind: {:#?}", self.leftovers(netns))),
        }
    }

    /// containerd's log tail and the VM console logs, for failure messages.
    pub fn diagnostics(&self) -> String {
        shim_diagnostics(&self.dir.join("containerd.log"), &self.shim.runtime_dir)
    }
}

/// Starts `<bin_dir>/containerd` with `<dir>/containerd.toml` and the installed Bulwark
/// `node`, its log appended to `<dir>/containerd.log`. The bulwark handler names its shim with
/// runtime_path, which containerd 2.x follows: its shim is not on PATH. containerd 1.6
/// ignores runtime_path when it starts a shim and looks for containerd-shim-bulwark-v2 on
/// PATH (install-node links it there).
fn spawn_containerd(bin_dir: &Path, dir: &Path, version: ContainerdVersion, node: &Installed) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))
        .map_err(|e| format!("creating containerd.log: {e}"))?;
    let shim_path = (version == ContainerdVersion::V1).then_some(node.bin_dir.as_path());
    Command::new(bin_dir.join("containerd"))
        .arg("--config")
        .arg(dir.join("containerd.toml"))
        .env("PATH", search_path(shim_path, Some(bin_dir)))
        .env("BULWARK_CONFIG", &node.shim_config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin_dir.join("containerd").display()))
}

fn ctr_at(bin_dir: &Path, socket: &Path, args: &[&str]) -> Result<Output, String> {
    process::run(
        Command::new(bin_dir.join("ctr")).arg("-a").arg(socket).arg("-n").arg(K8S_NAMESPACE).args(args),
        Duration::from_secs(120),
    )
}

/// Stops containerd (SIGTERM, then SIGKILL after 10 s), kills VM-side processes and shims
/// mentioning `dir`, detaches mounts under `dir` and removes it.
fn teardown(child: &mut Child, dir: &Path) {
    let needle = dir.to_string_lossy().to_string();
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    if process::wait_bounded(child, Duration::from_secs(10)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    for p in leftovers::processes_mentioning(&needle) {
        if p.cmdline.contains("containerd-shim") || leftovers::vm_processes(&needle).iter().any(|v| v.pid == p.pid) {
            // SAFETY: as above; these are processes of this test instance (they name its dir).
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
        }
    }
    let mut mounts = leftovers::mounts_under(dir);
    mounts.reverse();
    for m in mounts {
        if let Ok(c) = std::ffi::CString::new(m) {
            // SAFETY: `c` is a valid NUL-terminated path that lives across the call.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    if std::env::var_os("BULWARK_KEEP_TEST_DIRS").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Cleans up a `CriContainerd::start` that failed half-way: stops containerd if it was
/// started, removes the directory.
struct EarlyGuard {
    child: Option<Child>,
    dir: PathBuf,
    armed: bool,
}

impl Drop for EarlyGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        match self.child.take() {
            Some(mut c) => teardown(&mut c, &self.dir),
            None => {
                if std::env::var_os("BULWARK_KEEP_TEST_DIRS").is_none() {
                    let _ = std::fs::remove_dir_all(&self.dir);
                }
            }
        }
    }
}

impl Drop for CriContainerd {
    fn drop(&mut self) {
        // Pods first, through CRI, so CNI DEL runs and the runtimes clean up after themselves.
        if let Ok(pods) = self.client.list_pods() {
            for pod in pods {
                let _ = self.client.stop_pod(&pod);
                let _ = self.client.remove_pod(&pod);
            }
        }
        // BULWARK_E2E_KEEP_LOGS=<dir>: keep containerd's log (with the shim's and the agents'
        // lines) for a look after the run.
        if let Some(keep) = std::env::var_os("BULWARK_E2E_KEEP_LOGS") {
            let name = self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::copy(self.dir.join("containerd.log"), Path::new(&keep).join(format!("{name}.log")));
        }
        teardown(&mut self.child, &self.dir);
        // `net` is dropped after this: it deletes the bridge.
    }
}

/// A tiny HTTP server the test runs on one address (e.g. the bridge gateway): answers every
/// request with `body`, for at most `limit`, then stops by itself.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl TestServer {
    /// Binds `ip:0` (only that address) and serves `body`.
    pub fn start(ip: Ipv4Addr, body: &str, limit: Duration) -> Result<TestServer, String> {
        let listener = TcpListener::bind((ip, 0)).map_err(|e| format!("binding {ip}:0: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let response = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let thread = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let start = Instant::now();
            let mut served = 0;
            while !flag.load(Ordering::SeqCst) && start.elapsed() < limit && served < 100 {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf);
                        let _ = s.write_all(response.as_bytes());
                        served += 1;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
            served
        });
        Ok(TestServer { addr, stop, thread: Some(thread) })
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `GET /` from `addr` with HTTP/1.0, retried until it answers or `limit` passes; returns the
/// body.
pub fn http_get(addr: SocketAddr, limit: Duration) -> Result<String, String> {
    use std::io::{Read, Write};
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
                if let Err(e) = s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n") {
                    last = format!("write: {e}");
                } else {
                    let mut text = Vec::new();
                    let _ = s.take(1 << 20).read_to_end(&mut text);
                    let text = String::from_utf8_lossy(&text).into_owned();
                    if let Some((_, body)) = text.split_once("\r\n\r\n") {
                        return Ok(body.to_string());
                    }
                    last = format!("no HTTP answer: {text:?}");
                }
            }
            Err(e) => last = format!("connect: {e}"),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Err(format!("GET http://{addr}/ failed for {limit:?}: {last}"))
}

/// Named checks that all run even when some fail, so one report says what works and what
/// does not (many CRI features are built in parallel by different people).
pub struct Checks {
    label: String,
    results: Vec<(String, Result<(), String>, Duration)>,
}

impl Checks {
    /// Checks whose progress lines are tagged with `label` (e.g. the handler and containerd).
    pub fn new(label: &str) -> Checks {
        Checks { label: label.to_string(), results: Vec::new() }
    }

    /// Runs `f` as the check `name` and records the outcome.
    pub fn run(&mut self, name: &str, f: impl FnOnce() -> Result<(), String>) -> bool {
        let start = Instant::now();
        let r = f();
        let ok = r.is_ok();
        eprintln!(
            "[cri check {}] {} {name} ({:.1} s){}",
            self.label,
            if ok { "PASS" } else { "FAIL" },
            start.elapsed().as_secs_f64(),
            r.as_ref().err().map(|e| format!(": {e}")).unwrap_or_default()
        );
        self.results.push((name.to_string(), r, start.elapsed()));
        ok
    }

    /// Records a check that could not run because `reason`.
    pub fn not_run(&mut self, name: &str, reason: &str) {
        self.run(name, || Err(format!("not run: {reason}")));
    }

    /// Ok when every check passed; otherwise one error listing every result.
    pub fn finish(self, diagnostics: impl FnOnce() -> String) -> Result<(), String> {
        let failed = self.results.iter().filter(|r| r.1.is_err()).count();
        let mut report = String::new();
        for (name, r, t) in &self.results {
            match r {
                Ok(()) => report.push_str(&format!("  PASS {name} ({:.1} s)\n", t.as_secs_f64())),
                Err(e) => report.push_str(&format!("  FAIL {name} ({:.1} s): {e}\n", t.as_secs_f64())),
            }
        }
        eprintln!(
            "CRI check results for {} (passed {}, failed {failed}):\n{report}",
            self.label,
            self.results.len() - failed
        );
        if failed == 0 {
            Ok(())
        } else {
            Err(format!(
                "{}: {failed} of {} CRI checks failed:\n{report}\n{}",
                self.label,
                self.results.len(),
                diagnostics()
            ))
        }
    }
}
