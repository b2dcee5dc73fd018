//! Shared pieces of the fault and hostile-guest tests: the test guest image and its modes
//! (`bulwark.test_mode=<name>`: guest-agent/src/testmodes/), switching the shim configuration
//! between two pods of one containerd (the shim reads it at every Create, so a pod started
//! before the switch keeps the production guest), a bystander that must keep answering exec
//! throughout a fault, containerd's events through `ctr events`, a process's memory, and
//! [`CriScene`]: a CRI containerd with a bystander pod that answers exec all along, pods in
//! test modes beside it, and the check that nothing of any of them is left behind.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::containerd::ShimConfig;
use crate::cri::{ContainerdVersion, CriContainerd, HANDLER_BULWARK};
use crate::cri_client::{ContainerSpec, CriClient};
use crate::process;
use crate::{leftovers, TEST_IMAGE};
use k8s_cri::v1::PodSandboxConfig;

/// The test initramfs (its agent has the test modes), built by `bulwark_build` next to the
/// production one.
pub fn test_initrd() -> Result<PathBuf, String> {
    let build =
        std::env::var_os("BULWARK_BUILD").map(PathBuf::from).unwrap_or_else(|| crate::repo_root().join("build"));
    let p = build.join("guest-test/initramfs.cpio");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "the test initramfs not found at {}: run scripts/test, or `. scripts/lib/deps.sh && . scripts/lib/build.sh && bulwark_build`",
            p.display()
        ))
    }
}

/// `base` with the test initramfs and `bulwark.test_mode=<mode>` on the guest kernel command
/// line; the "after start" modes act after the `starts`-th StartContainer.
pub fn with_test_mode(base: &ShimConfig, mode: &str, starts: u32) -> Result<ShimConfig, String> {
    let mut cfg = base.clone();
    cfg.initrd = test_initrd()?;
    cfg.extra.push_str(&format!("\nkernel_params = \"bulwark.test_mode={mode} bulwark.test_mode_starts={starts}\"\n"));
    Ok(cfg)
}

/// Points the shim configuration that scripts/install-node wrote for the harness's containerd
/// (`config`, the file `BULWARK_CONFIG` names) at `cfg`: its runtime directory, initramfs and
/// extra settings (`ShimConfig::extra`, e.g. a test mode's kernel parameters), on top of the
/// file as installed (kept beside it as `<config>.installed`), atomically: the next Create
/// reads it.
pub fn install_shim_config(config: &Path, cfg: &ShimConfig) -> Result<(), String> {
    let installed = config.with_extension("toml.installed");
    if !installed.exists() {
        std::fs::copy(config, &installed).map_err(|e| format!("keeping {}: {e}", config.display()))?;
    }
    let text = std::fs::read_to_string(&installed).map_err(|e| format!("reading {}: {e}", installed.display()))?;
    let mut doc: toml::Table = text.parse().map_err(|e| format!("{} is not TOML: {e}", installed.display()))?;
    let extra: toml::Table =
        format!("[vm]\n{}", cfg.extra).parse().map_err(|e| format!("the test's extra shim config is not TOML: {e}"))?;
    let mut paths = toml::Table::new();
    paths.insert("runtime_dir".into(), toml::Value::String(cfg.runtime_dir.to_string_lossy().into_owned()));
    paths.insert("initrd".into(), toml::Value::String(cfg.initrd.to_string_lossy().into_owned()));
    for (name, table) in
        std::iter::once(("paths".to_string(), paths)).chain(extra.into_iter().filter_map(|(k, v)| match v {
            toml::Value::Table(t) => Some((k, t)),
            _ => None,
        }))
    {
        let section = doc
            .entry(name.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("{}: [{name}] is not a table", config.display()))?;
        section.extend(table);
    }
    let tmp = config.with_extension("toml.new");
    std::fs::write(&tmp, doc.to_string()).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, config).map_err(|e| format!("renaming to {}: {e}", config.display()))
}

/// A check run every [`Bystander::INTERVAL`] on a thread while a fault happens elsewhere (an
/// exec into another pod); every failure and every slow answer is recorded.
pub struct Bystander {
    stop: Arc<AtomicBool>,
    made: Arc<std::sync::atomic::AtomicU32>,
    thread: Option<std::thread::JoinHandle<(u32, Vec<String>)>>,
}

impl Bystander {
    pub const INTERVAL: Duration = Duration::from_secs(2);
    /// An answer slower than this counts as a failure (a TCG guest answers an exec in ~1 s).
    pub const SLOW: Duration = Duration::from_secs(20);
    /// Checks made at least before [`Bystander::finish`] stops them (so a short test still
    /// checks across its fault and after it).
    pub const MIN_CHECKS: u32 = 5;

    pub fn start(check: impl Fn() -> Result<(), String> + Send + 'static) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (flag, count) = (stop.clone(), made.clone());
        let thread = std::thread::spawn(move || {
            let mut ok = 0;
            let mut failures = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                let t = Instant::now();
                match check() {
                    Ok(()) if t.elapsed() <= Self::SLOW => ok += 1,
                    Ok(()) => failures.push(format!("an exec took {:?}", t.elapsed())),
                    Err(e) => failures.push(e),
                }
                count.fetch_add(1, Ordering::SeqCst);
                let mut slept = Duration::ZERO;
                while slept < Self::INTERVAL && !flag.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                    slept += Duration::from_millis(100);
                }
            }
            (ok, failures)
        });
        Bystander { stop, made, thread: Some(thread) }
    }

    /// Stops the checks (after at least [`Bystander::MIN_CHECKS`] were made): Ok(number of
    /// answered checks) if every one answered, else every failure.
    pub fn finish(mut self) -> Result<u32, String> {
        let _ = process::poll(Self::INTERVAL * (Self::MIN_CHECKS + 2), || {
            (self.made.load(Ordering::SeqCst) >= Self::MIN_CHECKS).then_some(())
        });
        self.stop.store(true, Ordering::SeqCst);
        let (ok, failures) =
            self.thread.take().map(|t| t.join().unwrap_or((0, vec!["the check panicked".into()]))).unwrap_or_default();
        if failures.is_empty() && ok > 0 {
            Ok(ok)
        } else {
            Err(format!("the bystander answered {ok} checks; failures: {failures:#?}"))
        }
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// containerd's event stream (`ctr events`), collected on a thread.
pub struct Events {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

/// One `/tasks/exit` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskExit {
    pub container_id: String,
    /// The process (empty: the container's init process).
    pub id: String,
    pub exit_status: u32,
}

impl Events {
    /// Starts `<ctr> -a <socket> events` (pass the ctr of the containerd version under test).
    pub fn start(ctr: &Path, socket: &Path) -> Result<Events, String> {
        let mut child = Command::new(ctr)
            .arg("-a")
            .arg(socket)
            .arg("events")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {} events: {e}", ctr.display()))?;
        let out = child.stdout.take().ok_or("ctr events has no stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(mut v) = sink.lock() {
                    v.push(line);
                }
            }
        });
        Ok(Events { child, lines })
    }

    /// The `/tasks/exit` events seen so far.
    pub fn exits(&self) -> Vec<TaskExit> {
        let lines = self.lines.lock().map(|v| v.clone()).unwrap_or_default();
        lines
            .iter()
            .filter(|l| l.split_whitespace().any(|w| w == "/tasks/exit"))
            .filter_map(|l| parse_exit(l))
            .collect()
    }

    /// Waits until containerd published the exit of `container_id`'s init process.
    pub fn wait_exit(&self, container_id: &str, limit: Duration) -> Result<TaskExit, String> {
        process::poll(limit, || {
            self.exits()
                .into_iter()
                .find(|e| e.container_id == container_id && (e.id.is_empty() || e.id == container_id))
        })
        .ok_or_else(|| format!("no /tasks/exit for {container_id} within {limit:?}; exits seen: {:?}", self.exits()))
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The string value of `"key":"..."` in a JSON text (ids have no quotes or escapes).
fn json_str(text: &str, key: &str) -> Option<String> {
    let at = text.find(&format!("\"{key}\":\""))? + key.len() + 4;
    Some(text[at..].split('"').next()?.to_string())
}

/// A `ctr events` line with a `/tasks/exit` event (exit_status is left out when 0).
fn parse_exit(line: &str) -> Option<TaskExit> {
    let json = &line[line.find('{')?..];
    let exit_status = json
        .find("\"exit_status\":")
        .and_then(|at| json[at + 14..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or(0);
    Some(TaskExit {
        container_id: json_str(json, "container_id")?,
        id: json_str(json, "id").unwrap_or_default(),
        exit_status,
    })
}

/// A process's resident memory (KiB): now (VmRSS) and its peak so far (VmHWM).
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

pub fn memory(pid: i32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field =
        |name: &str| status.lines().find_map(|l| l.strip_prefix(name)?.split_whitespace().next()?.parse::<u64>().ok());
    Some(Memory { rss_kib: field("VmRSS:")?, hwm_kib: field("VmHWM:")? })
}

/// Samples a process's memory every 100 ms on a thread; keeps the highest peak seen.
pub struct MemoryWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Memory>>,
}

impl MemoryWatch {
    pub fn start(pid: i32) -> MemoryWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut most = Memory::default();
            while !flag.load(Ordering::SeqCst) {
                if let Some(m) = memory(pid) {
                    most.rss_kib = most.rss_kib.max(m.rss_kib);
                    most.hwm_kib = most.hwm_kib.max(m.hwm_kib);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            most
        });
        MemoryWatch { stop, thread: Some(thread) }
    }

    /// The highest VmRSS sampled and the highest VmHWM (the kernel's own peak) read.
    pub fn finish(mut self) -> Memory {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

impl Drop for MemoryWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The shim serving sandbox `sandbox_id` of a containerd living under `dir` (its command line
/// has `-id <sandbox_id>`).
pub fn shim_pid(dir: &Path, sandbox_id: &str) -> Option<i32> {
    let id = format!("-id {sandbox_id}");
    leftovers::processes_mentioning(&dir.to_string_lossy())
        .into_iter()
        .find(|p| p.cmdline.contains("containerd-shim-bulwark") && p.cmdline.contains(&id))
        .map(|p| p.pid)
}

/// The VM-side processes of sandbox `sandbox_id` whose command line contains `program`
/// (QEMU, virtiofsd, vhost-device-vsock name the sandbox's state directory).
pub fn sandbox_processes(runtime_dir: &Path, sandbox_id: &str, program: &str) -> Vec<leftovers::Proc> {
    let needle = format!("{}/", runtime_dir.display());
    // The state directory's path ends a word (QEMU's `-name <dir>`) or goes on (`<dir>/vm/...`).
    let dir = format!("/{sandbox_id}");
    let names_dir = |cmdline: &str| {
        cmdline
            .match_indices(&dir)
            .any(|(i, _)| matches!(cmdline[i + dir.len()..].chars().next(), None | Some('/' | ' ')))
    };
    leftovers::vm_processes(&needle)
        .into_iter()
        .filter(|p| p.cmdline.contains(program) && names_dir(&p.cmdline))
        .collect()
}

/// One pod of a [`CriScene`]: its sandbox and one app container (`sleep`), both started.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub id: String,
    pub config: PodSandboxConfig,
    pub app: String,
}

/// A CRI containerd (1.6) with a bystander pod (production guest) whose app container
/// answers an exec every [`Bystander::INTERVAL`] while the test runs other pods beside it.
/// [`CriScene::finish`] checks the bystander never failed, removes it, and checks nothing of
/// any pod is left: processes, mounts, state directories, netns files and processes still in
/// a pod's netns, bridge ports, CNI caches, cgroups, taps in the host namespace.
pub struct CriScene {
    pub c: CriContainerd,
    pub events: Events,
    pub bystander: Pod,
    watch: Option<Bystander>,
    netns: Vec<String>,
    netns_ids: Vec<(u64, u64)>,
    ids: Vec<String>,
}

/// The app container every scene pod runs.
const APP: &[&str] = &["sh", "-c", "echo app-ready; exec sleep 100000"];

impl CriScene {
    pub fn start() -> Result<CriScene, String> {
        let c = CriContainerd::start(ContainerdVersion::V1)?;
        let ctr = ContainerdVersion::V1.bin_dir()?.join("ctr");
        let events = Events::start(&ctr, &c.socket)?;
        let mut scene = CriScene {
            c,
            events,
            bystander: Pod {
                name: String::new(),
                id: String::new(),
                config: PodSandboxConfig::default(),
                app: String::new(),
            },
            watch: None,
            netns: Vec::new(),
            netns_ids: Vec::new(),
            ids: Vec::new(),
        };
        scene.bystander = scene.run_pod("bystander", None)?;
        let client = CriClient::connect(&scene.c.socket)?;
        let app = scene.bystander.app.clone();
        scene.watch = Some(Bystander::start(move || {
            let r = client.exec_sync(&app, &["echo", "alive"], 30)?;
            if r.exit_code == 0 && r.stdout == "alive\n" {
                Ok(())
            } else {
                Err(format!("bystander exec: {r:?}"))
            }
        }));
        Ok(scene)
    }

    /// Runs pod `name` with its app container; with `mode = Some((mode, starts))` its guest is
    /// the test initramfs in that mode (the configuration is switched for this pod only).
    pub fn run_pod(&mut self, name: &str, mode: Option<(&str, u32)>) -> Result<Pod, String> {
        if let Some((m, starts)) = mode {
            install_shim_config(&self.c.node.shim_config, &with_test_mode(&self.c.shim, m, starts)?)?;
        }
        let started = self.start_pod(name);
        if mode.is_some() {
            install_shim_config(&self.c.node.shim_config, &self.c.shim)?;
        }
        started
    }

    fn start_pod(&mut self, name: &str) -> Result<Pod, String> {
        let cl = &self.c.client;
        let config = CriClient::pod_config(name, name, &self.c.pod_log_dir(name)?);
        let id = cl.run_pod_sandbox(&config, HANDLER_BULWARK)?;
        self.ids.push(id.clone());
        if let Ok(ns) = cl.pod_netns(&id) {
            if let Some(nid) = leftovers::netns_id(Path::new(&ns)) {
                self.netns_ids.push(nid);
            }
            self.netns.push(ns);
        }
        let app = cl.create_container(&id, &config, &ContainerSpec::new("app", TEST_IMAGE, APP))?;
        self.ids.push(app.clone());
        cl.start_container(&app)?;
        Ok(Pod { name: name.to_string(), id, config, app })
    }

    /// The pod's shim process.
    pub fn shim_pid(&self, pod: &Pod) -> Result<i32, String> {
        shim_pid(&self.c.dir, &pod.id).ok_or_else(|| format!("no shim process for pod {}", pod.name))
    }

    /// The pod's sandbox state directory (console log, sockets).
    pub fn state_dir(&self, pod: &Pod) -> PathBuf {
        bulwark_shim::sandbox::state_dir::sandbox_dir(&self.c.shim.runtime_dir, crate::cri::K8S_NAMESPACE, &pod.id)
    }

    /// The pod's serial console as logged so far (both files of the capped log).
    pub fn console(&self, pod: &Pod) -> String {
        let dir = self.state_dir(pod);
        let mut text = std::fs::read_to_string(dir.join("console.log.1")).unwrap_or_default();
        text.push_str(&std::fs::read_to_string(dir.join("console.log")).unwrap_or_default());
        text
    }

    /// containerd's log so far (the shims' logs: the guest agents' forwarded lines, and the
    /// console's tail when a VM died).
    pub fn containerd_log(&self) -> String {
        std::fs::read_to_string(self.c.dir.join("containerd.log")).unwrap_or_default()
    }

    /// StopPodSandbox then RemovePodSandbox (each bounded by the client); returns how long
    /// the two took.
    pub fn end_pod(&self, pod: &Pod) -> Result<Duration, String> {
        let t = Instant::now();
        self.c.client.stop_pod(&pod.id).map_err(|e| format!("pod {}: {e}\n{}", pod.name, self.c.diagnostics()))?;
        self.c.client.remove_pod(&pod.id).map_err(|e| format!("pod {}: {e}\n{}", pod.name, self.c.diagnostics()))?;
        Ok(t.elapsed())
    }

    /// Everything of every pod of the scene still there (empty when all is clean).
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = self.c.leftovers(&self.netns);
        for id in &self.netns_ids {
            found.extend(
                leftovers::processes_in_netns(*id)
                    .into_iter()
                    .map(|p| format!("process {} in a pod netns: {}", p.pid, p.cmdline)),
            );
        }
        let ids: Vec<&str> = self.ids.iter().map(String::as_str).collect();
        found.extend(leftovers::cgroups_mentioning(&ids).into_iter().map(|c| format!("cgroup {c}")));
        found.extend(
            leftovers::host_interfaces_ending("_bwk").into_iter().map(|i| format!("tap {i} in the host namespace")),
        );
        found
    }

    /// Checks that the bystander answered every exec, ends it, and checks nothing is left
    /// (polled for up to 30 s). Returns the number of bystander execs.
    pub fn finish(mut self) -> Result<u32, String> {
        let answered = self.watch.take().map(Bystander::finish).unwrap_or_else(|| Err("no bystander".into()));
        let ended = self.end_pod(&self.bystander.clone());
        let clean = process::poll(Duration::from_secs(30), || self.leftovers().is_empty().then_some(()))
            .ok_or_else(|| format!("left behind: {:#?}", self.leftovers()));
        let n = answered?;
        ended?;
        clean?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_events_are_parsed() {
        let line = r#"2024-05-01 10:00:00.1 +0000 UTC k8s.io /tasks/exit {"container_id":"abc","id":"abc","pid":42,"exit_status":137,"exited_at":"2024-05-01T10:00:00Z"}"#;
        assert_eq!(parse_exit(line), Some(TaskExit { container_id: "abc".into(), id: "abc".into(), exit_status: 137 }));
        let zero = r#"t k8s.io /tasks/exit {"container_id":"abc","id":"e1","pid":42,"exited_at":"x"}"#;
        assert_eq!(parse_exit(zero).map(|e| (e.id, e.exit_status)), Some(("e1".to_string(), 0)));
        assert_eq!(parse_exit("no json here"), None);
    }

    #[test]
    fn memory_of_this_process() {
        let m = memory(std::process::id() as i32).expect("own /proc status");
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib, "{m:?}");
    }
}
