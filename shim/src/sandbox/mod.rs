//! One microVM per sandbox: its state directory `<runtime_dir>/<id>/` (sockets, logs, pid
//! file, the virtio-fs share), its helper processes (vhost-device-vsock, virtiofsd), the
//! hypervisor, the agent connection, and teardown of all of it — on Delete and on any
//! failure part-way through boot. Nothing is left behind.
//!
//! Boot order (shared/PLATFORM.md): vsock backend → log listener → virtiofsd → QEMU →
//! READY from the agent → CONNECT to the agent → Check.

pub mod oom;
pub mod sizing;
pub mod state_dir;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use tokio::sync::{watch, Mutex};

use crate::agent::{handshake, streams};
use crate::agent::{AgentApi, TtrpcAgent};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::host::child::Child;
use crate::resources::mount::cleanup_mounts_and_dir;
use crate::resources::network::{self, HostNetwork, PodConfig};
use crate::sandbox::sizing::VmSize;
use crate::vmm::qemu::{vhost_vsock, virtiofsd};
use crate::vmm::{self, Accel, Hypervisor, VmSpec};
use state_dir::{cleanup_dir, sandbox_dir, PID_FILE};

struct Procs {
    vsock: Option<Child>,
    virtiofsd: Option<Child>,
    hv: Box<dyn Hypervisor>,
}

impl Procs {
    /// Stops virtiofsd and vhost-device-vsock (the latter never exits by itself).
    async fn stop_helpers(&self) {
        for c in [&self.virtiofsd, &self.vsock].into_iter().flatten() {
            c.stop(Duration::from_secs(1)).await;
        }
    }
}

/// A sandbox VM and everything that belongs to it.
pub struct Sandbox {
    pub id: String,
    pub dir: PathBuf,
    /// Host directory served to the guest (container rootfs go to `<share>/<cid>/rootfs`).
    pub share: PathBuf,
    cfg: Config,
    procs: Mutex<Procs>,
    agent: OnceLock<Arc<dyn AgentApi>>,
    vm_exit: OnceLock<watch::Receiver<Option<ExitStatus>>>,
    pid: AtomicU32,
    stopping: AtomicBool,
    torn_down: AtomicBool,
    log_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Hostname and netns from the sandbox container's spec (None: a bare VM, e.g. the probe).
    pod: std::sync::Mutex<Option<PodConfig>>,
    /// The attached pod network (network/), detached on teardown.
    network: Mutex<Option<HostNetwork>>,
}

impl Sandbox {
    /// Creates the state directory and the share (a private→shared bind mount onto itself, so
    /// container mounts made later propagate into virtiofsd's mount namespace). Cleans up a
    /// leftover directory of the same sandbox first. No processes yet.
    pub fn prepare(cfg: &Config, ns: &str, id: &str) -> Result<Sandbox> {
        let dir = sandbox_dir(&cfg.paths.runtime_dir, ns, id);
        if dir.exists() {
            tracing::warn!("sandbox dir {} exists (leftover of a crashed shim?): cleaning it", dir.display());
            cleanup_dir(&dir)?;
        }
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating runtime dir {}", parent.display()), e))?;
        }
        std::fs::create_dir(&dir).map_err(|e| Error::io(format!("creating sandbox dir {}", dir.display()), e))?;
        let share = dir.join("share");
        let sb = Sandbox {
            id: id.to_string(),
            dir: dir.clone(),
            share: share.clone(),
            cfg: cfg.clone(),
            procs: Mutex::new(Procs { vsock: None, virtiofsd: None, hv: vmm::new_backend(cfg.paths.qemu.clone()) }),
            agent: OnceLock::new(),
            vm_exit: OnceLock::new(),
            pid: AtomicU32::new(0),
            stopping: AtomicBool::new(false),
            torn_down: AtomicBool::new(false),
            log_task: std::sync::Mutex::new(None),
            pod: std::sync::Mutex::new(None),
            network: Mutex::new(None),
        };
        if let Err(e) = make_share(&share) {
            let _ = cleanup_dir(&dir);
            return Err(e);
        }
        Ok(sb)
    }

    /// Host pid of the hypervisor (0 before boot).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// The agent, once booted.
    pub fn agent(&self) -> Option<Arc<dyn AgentApi>> {
        self.agent.get().cloned()
    }

    /// The VM's exit status channel, once booted.
    pub fn vm_exit(&self) -> Option<watch::Receiver<Option<ExitStatus>>> {
        self.vm_exit.get().cloned()
    }

    /// Records the pod settings (hostname, netns) of the sandbox container's spec; `boot`
    /// attaches the network and sends them to the agent.
    pub fn set_pod_config(&self, spec: &oci_spec::runtime::Spec) -> Result<()> {
        let pod = PodConfig::from_spec(spec)?;
        *self.pod.lock().unwrap_or_else(|p| p.into_inner()) = Some(pod);
        Ok(())
    }

    /// Whether teardown has begun (VM exits after that are expected).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Starts the helpers and the VM and waits for the agent. On error the caller tears down.
    /// `accel` comes from [`crate::vmm::accel::resolve`] (or is forced, for the KVM probe).
    pub async fn boot(self: &Arc<Self>, accel: Accel, size: VmSize, timeout: Duration) -> Result<()> {
        let cfg = &self.cfg;
        for (what, key, path) in
            [("guest kernel", "kernel", &cfg.paths.kernel), ("guest initramfs", "initrd", &cfg.paths.initrd)]
        {
            if !path.exists() {
                return Err(Error::Missing {
                    what,
                    path: path.clone(),
                    hint: format!(
                        "set paths.{key} in {} or build it with images/build-guest-image",
                        Config::path().display()
                    ),
                });
            }
        }
        let started = Instant::now();
        let mut procs = self.procs.lock().await;

        let vs = vhost_vsock::spawn_backend(cfg, &self.dir)?;
        let vs_exit = vs.exit_watch();
        procs.vsock = Some(vs);
        self.write_pid_file(&procs);
        wait_for_socket(
            &vhost_vsock::backend_socket(&self.dir),
            &vs_exit,
            "vhost-device-vsock",
            &self.dir.join("vsock.log"),
        )
        .await?;

        let listener =
            handshake::bind_log_listener(&vhost_vsock::host_port_path(&self.dir, bulwark_protocol::LOG_PORT))?;

        let fs = virtiofsd::spawn(cfg, &self.dir, &self.share)?;
        let fs_exit = fs.exit_watch();
        procs.virtiofsd = Some(fs);
        self.write_pid_file(&procs);
        wait_for_socket(&virtiofsd::socket(&self.dir), &fs_exit, "virtiofsd", &self.dir.join("virtiofsd.log")).await?;

        let pod = self.pod.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut net = self.network.lock().await;
        if let Some(path) = pod.as_ref().and_then(|p| p.netns.as_ref()) {
            let attached = network::attach(path).await?;
            attached.save(&self.dir);
            *net = Some(attached);
        }
        let spec = VmSpec {
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            accel,
            kernel: cfg.paths.kernel.clone(),
            initrd: cfg.paths.initrd.clone(),
            extra_kernel_params: cfg.vm.kernel_params.clone(),
            vsock_socket: vhost_vsock::backend_socket(&self.dir),
            fs_socket: Some(virtiofsd::socket(&self.dir)),
            console_log: self.dir.join("console.log"),
            log: self.dir.join("qemu.log"),
            nics: net.as_ref().map(|n| n.vm_nics()).unwrap_or_default(),
        };
        let started_vm = procs.hv.start(&spec).await;
        if let Some(n) = net.as_mut() {
            n.release_taps();
        }
        let setup = pod.map(|p| match net.as_ref() {
            Some(n) => n.setup_request(&p.hostname),
            None => network::setup_request(&p.hostname, &[], &[]),
        });
        drop(net);
        started_vm?;
        let (pid, vm_exit) = match procs.hv.process() {
            Some(c) => (c.pid, c.exit_watch()),
            None => return Err(Error::Boot("the hypervisor did not start".into())),
        };
        self.pid.store(pid, Ordering::SeqCst);
        let _ = self.vm_exit.set(vm_exit.clone());
        self.write_pid_file(&procs);
        drop(procs);

        let ready = tokio::select! {
            r = handshake::accept_ready(&listener, timeout) => r,
            st = crate::host::child::wait_exit(vm_exit.clone()) => Err(Error::Boot(format!(
                "QEMU exited ({st}) before the agent was ready. QEMU log {}: {}",
                self.dir.join("qemu.log").display(), tail(&self.dir.join("qemu.log"))))),
        };
        let (version, log_stream) = match ready {
            Ok(x) => x,
            Err(e) => {
                let e = match e {
                    Error::Boot(m) => m,
                    other => other.to_string(),
                };
                return Err(Error::Boot(format!(
                    "{e} (accel {}, timeout {}s). Guest console {}: {}",
                    accel.as_str(),
                    timeout.as_secs(),
                    self.dir.join("console.log").display(),
                    tail(&self.dir.join("console.log"))
                )));
            }
        };
        drop(listener);
        crate::agent::check_version(version)?;
        *self.log_task.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(streams::spawn_log_forwarder(log_stream, self.id.clone()));

        let mut last = None;
        let mut stream = None;
        for _ in 0..3 {
            match handshake::connect(
                &vhost_vsock::uds_path(&self.dir),
                bulwark_protocol::AGENT_PORT,
                Duration::from_secs(10),
            )
            .await
            {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        let stream = stream.ok_or_else(|| last.unwrap_or_else(|| Error::Agent("connect failed".into())))?;
        let agent: Arc<dyn AgentApi> = Arc::new(TtrpcAgent::new(stream, vm_exit.clone()));
        let info = agent.check().await?;
        tracing::info!(
            "sandbox {} booted in {:?} ({} {}, pid {pid}): agent {} protocol {}, guest kernel {}",
            self.id,
            started.elapsed(),
            self.procs.lock().await.hv.name(),
            accel.as_str(),
            info.agent_version.chars().take(64).collect::<String>(),
            info.agent_protocol_version,
            info.kernel_release.chars().take(64).collect::<String>()
        );
        if let Some(req) = setup {
            agent.setup_sandbox(&req).await?;
        }
        let _ = self.agent.set(agent);

        // Supervise: an unexpected VM exit stops the helpers (vhost-device-vsock never exits
        // by itself). Containers learn about it through their own watchers.
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let st = crate::host::child::wait_exit(vm_exit).await;
            if me.is_stopping() {
                return;
            }
            tracing::error!(
                "QEMU of sandbox {} exited unexpectedly ({st}); stopping its helpers. Console: {}",
                me.id,
                tail(&me.dir.join("console.log"))
            );
            me.procs.lock().await.stop_helpers().await;
        });
        Ok(())
    }

    /// Records the helpers' pids for `delete` after a crashed shim: "<name> <pid> <exe>".
    fn write_pid_file(&self, procs: &Procs) {
        let mut text = String::new();
        for c in [procs.vsock.as_ref(), procs.virtiofsd.as_ref(), procs.hv.process()].into_iter().flatten() {
            text.push_str(&format!("{} {} {}\n", c.name, c.pid, c.exe.display()));
        }
        let path = self.dir.join(PID_FILE);
        if let Err(e) = std::fs::write(&path, text) {
            tracing::warn!("writing {}: {e}", path.display());
        }
    }

    /// SIGKILLs the hypervisor: for a guest that no longer answers. The VM-death supervisor
    /// then stops the helpers, and every container's watcher reports exit status 137.
    pub async fn kill_vm(&self) {
        let procs = self.procs.lock().await;
        if let Some(c) = procs.hv.process() {
            c.stop(Duration::ZERO).await;
        }
    }

    /// Stops the VM and helpers, unmounts the share and removes the state directory.
    /// Idempotent; logs what it could not do.
    pub async fn teardown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        {
            let mut procs = self.procs.lock().await;
            procs.hv.stop().await;
            procs.stop_helpers().await;
        }
        if let Some(h) = self.log_task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.abort();
        }
        // After QEMU is gone (its tap fds closed): remove the tc redirects and any tap left.
        if let Some(net) = self.network.lock().await.take() {
            net.detach().await;
        }
        let dir = self.dir.clone();
        let res = tokio::task::spawn_blocking(move || cleanup_mounts_and_dir(&dir)).await;
        match res {
            Ok(Ok(())) => tracing::info!("sandbox {} torn down", self.id),
            Ok(Err(e)) => tracing::error!("tearing down sandbox {}: {e}", self.id),
            Err(e) => tracing::error!("tearing down sandbox {}: {e}", self.id),
        }
    }
}

/// Boots a throwaway VM with `accel` up to the agent's Check, then tears it down.
pub async fn probe_boot(cfg: &Config, accel: Accel, timeout: Duration) -> Result<()> {
    // ".probe" cannot clash with a containerd namespace (identifiers start alphanumeric).
    let id = std::process::id().to_string();
    let sb = Arc::new(Sandbox::prepare(cfg, ".probe", &id)?);
    let size = VmSize { vcpus: cfg.vm.vcpus, memory_mib: cfg.vm.memory_mib };
    let r = sb.boot(accel, size, timeout).await;
    sb.teardown().await;
    r
}

fn make_share(share: &Path) -> Result<()> {
    std::fs::create_dir(share).map_err(|e| Error::io(format!("creating {}", share.display()), e))?;
    let m = |flags: MsFlags, src: Option<&Path>| {
        mount(src, share, None::<&str>, flags, None::<&str>)
            .map_err(|e| Error::Mount(format!("{} ({flags:?}): {e}", share.display())))
    };
    m(MsFlags::MS_BIND, Some(share))?;
    m(MsFlags::MS_PRIVATE, None)?;
    m(MsFlags::MS_SHARED, None)?;
    Ok(())
}

async fn wait_for_socket(
    path: &Path,
    exit: &watch::Receiver<Option<ExitStatus>>,
    what: &str,
    log: &Path,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if path.exists() {
            return Ok(());
        }
        if let Some(st) = *exit.borrow() {
            return Err(Error::Boot(format!(
                "{what} exited ({st}) at start. Its log {}: {}",
                log.display(),
                tail(log)
            )));
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout(format!("{what} did not create {} within 10s", path.display())));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The last ~1.5 KiB of a log file, one line, control characters replaced.
pub fn tail(path: &Path) -> String {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) => return format!("(unreadable: {e})"),
    };
    let start = data.len().saturating_sub(1536);
    let s: String = String::from_utf8_lossy(&data[start..])
        .chars()
        .map(|c| {
            if c == '\n' {
                '|'
            } else if c.is_control() {
                ' '
            } else {
                c
            }
        })
        .collect();
    if s.trim().is_empty() {
        "(empty)".into()
    } else {
        s
    }
}
