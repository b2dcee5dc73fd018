//! One microVM per pod, as an explicit [`Sandbox`] with a [`SandboxState`]: it owns its VMM
//! (vmm/, which owns the helper processes), the agent connection, the pod network, the
//! virtio-fs share and the state directory, and tears all of it down — on Delete and on any
//! failure part-way through boot. Nothing is left behind.
//!
//! The boot sequence is boot.rs; the state directory's layout and the cleanup after a crashed
//! shim are state_dir.rs; VM sizing is sizing.rs; the OOM event watcher is oom.rs.
//! Production builds a sandbox with [`Sandbox::prepare`]; tests inject a fake VMM, agent and
//! host with [`Sandbox::prepare_with`] and [`SandboxDeps`].

pub mod boot;
pub mod health;
pub mod info;
pub mod oom;
pub mod sizing;
pub mod state_dir;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use std::os::unix::fs::PermissionsExt;
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use crate::agent::client::TtrpcAgent;
use crate::agent::AgentApi;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::host::linux::LinuxHost;
use crate::host::Host;
use crate::jail::cgroup::{self as host_cgroup, CgroupPath, HostCgroup, PodResources};
use crate::jail::idmap::IdMap;
use crate::resources::mount::cleanup_mounts_and_dir_with;
use crate::resources::network::{HostNetwork, PodConfig};
use crate::telemetry;
use crate::vmm::{self, ExitWatch, Vmm};

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    /// State directory and share exist; no process yet.
    Prepared,
    /// `boot` is running: helpers, VM, handshake.
    Booting,
    /// The agent answered: containers can be created.
    Ready,
    /// The VM is gone (failed to boot, exited, killed); teardown still cleans up.
    Dead,
    /// Teardown has begun (VM exits after that are expected).
    Stopping,
    /// Teardown finished: nothing of the sandbox is left on the host.
    TornDown,
}

/// Makes the agent client of a booted VM from the connected stream and the VM's exit (which
/// must end every pending call).
pub type ConnectAgent = Arc<dyn Fn(UnixStream, ExitWatch) -> Arc<dyn AgentApi> + Send + Sync>;

/// What a sandbox is built from: production's come from [`SandboxDeps::production`]; tests
/// pass a `FakeVmm`, a fake agent and a `FakeHost`.
pub struct SandboxDeps {
    /// The VM backend, for this sandbox's state directory ([`state_dir::sandbox_dir`]).
    pub vmm: Box<dyn Vmm>,
    pub connect_agent: ConnectAgent,
    pub host: Arc<dyn Host>,
    /// Where host cgroups are made (the host's cgroup v2, or a fake hierarchy in tests).
    pub cgroups: host_cgroup::FindHierarchy,
    /// Give the sandbox an id-map (jail/idmap.rs) for an unprivileged virtiofsd.
    pub idmap: bool,
}

impl SandboxDeps {
    /// The configured VMM backend, the ttrpc agent client and the real host.
    pub fn production(cfg: &Config, dir: &Path) -> SandboxDeps {
        let host: Arc<dyn Host> = Arc::new(LinuxHost);
        SandboxDeps {
            vmm: vmm::backend::new_backend(cfg, dir, host.clone()),
            connect_agent: Arc::new(|stream, vm_exit| Arc::new(TtrpcAgent::new(stream, vm_exit)) as Arc<dyn AgentApi>),
            host,
            cgroups: host_cgroup::host_hierarchy(),
            idmap: cfg.jail.unprivileged_virtiofsd,
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
    state: std::sync::Mutex<SandboxState>,
    vmm: Mutex<Box<dyn Vmm>>,
    connect_agent: ConnectAgent,
    host: Arc<dyn Host>,
    cgroups: host_cgroup::FindHierarchy,
    agent: OnceLock<Arc<dyn AgentApi>>,
    vm_exit: OnceLock<ExitWatch>,
    pid: AtomicU32,
    log_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Hostname and netns from the sandbox container's spec (None: a bare VM, e.g. the probe).
    pod: std::sync::Mutex<Option<PodConfig>>,
    /// The attached pod network (resources/network/), detached on teardown.
    network: Mutex<Option<HostNetwork>>,
    /// The sandbox container's cgroupsPath and the pod's resources (None: no host cgroup).
    cgroup_plan: std::sync::Mutex<Option<(CgroupPath, PodResources)>>,
    /// The host cgroup (jail/cgroup.rs), once created at boot; removed on teardown.
    host_cgroup: std::sync::Mutex<Option<Arc<HostCgroup>>>,
    /// Who the guest's syscall events belong to: the pod, and its containers by id.
    telemetry: telemetry::Identity,
    /// The relay of the guest's syscall events (telemetry/), from boot to teardown.
    relay: std::sync::Mutex<Option<telemetry::Relay>>,
    /// The pod's identity from the sandbox container's spec, for `sandbox.json` (info.rs).
    identity: std::sync::Mutex<info::SandboxInfo>,
    /// The share's id-map (jail/idmap.rs), held for the sandbox's life.
    idmap: Option<Arc<IdMap>>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sandbox {
    /// Creates the state directory and the share (a private→shared bind mount onto itself, so
    /// container mounts made later propagate into virtiofsd's mount namespace). Cleans up a
    /// leftover directory of the same sandbox first. No processes yet.
    pub fn prepare(cfg: &Config, ns: &str, id: &str) -> Result<Sandbox> {
        let dir = state_dir::sandbox_dir(&cfg.paths.runtime_dir, ns, id);
        Self::prepare_with(cfg, ns, id, SandboxDeps::production(cfg, &dir))
    }

    /// [`Sandbox::prepare`] with the VMM, agent client and host given.
    pub fn prepare_with(cfg: &Config, ns: &str, id: &str, deps: SandboxDeps) -> Result<Sandbox> {
        let host = deps.host;
        let dir = state_dir::sandbox_dir(&cfg.paths.runtime_dir, ns, id);
        if dir.exists() {
            tracing::warn!("sandbox dir {} exists (leftover of a crashed shim?): cleaning it", dir.display());
            state_dir::cleanup_dir_with(host.as_ref(), &dir)?;
        }
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating runtime dir {}", parent.display()), e))?;
        }
        host.create_dir(&dir).map_err(|e| Error::io(format!("creating sandbox dir {}", dir.display()), e))?;
        let share = state_dir::share(&dir);
        let made = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("making {} private (0700)", dir.display()), e))
            .and_then(|()| crate::resources::share::create(host.as_ref(), &dir))
            .and_then(|()| {
                deps.idmap
                    .then(|| IdMap::create(&cfg.paths.runtime_dir, &cfg.jail, &dir).map(Arc::new))
                    .transpose()
                    .map_err(|e| Error::FailedPrecondition(format!("sandbox {id}: {e}")))
            });
        let idmap = match made {
            Ok(m) => m,
            Err(e) => {
                let _ = state_dir::cleanup_dir_with(host.as_ref(), &dir);
                return Err(e);
            }
        };
        Ok(Sandbox {
            id: id.to_string(),
            dir,
            share,
            cfg: cfg.clone(),
            state: std::sync::Mutex::new(SandboxState::Prepared),
            vmm: Mutex::new(deps.vmm),
            connect_agent: deps.connect_agent,
            host,
            cgroups: deps.cgroups,
            agent: OnceLock::new(),
            vm_exit: OnceLock::new(),
            pid: AtomicU32::new(0),
            log_task: std::sync::Mutex::new(None),
            pod: std::sync::Mutex::new(None),
            network: Mutex::new(None),
            cgroup_plan: std::sync::Mutex::new(None),
            host_cgroup: std::sync::Mutex::new(None),
            telemetry: telemetry::Identity::default(),
            relay: std::sync::Mutex::new(None),
            identity: std::sync::Mutex::new(info::SandboxInfo::default()),
            idmap,
        })
    }

    /// The id-map of the sandbox's share (None: virtiofsd runs as root).
    pub fn idmap(&self) -> Option<Arc<IdMap>> {
        self.idmap.clone()
    }

    /// Where the sandbox is in its life.
    pub fn state(&self) -> SandboxState {
        *lock(&self.state)
    }

    /// Moves to `to` if the state is one of `from`; returns the state before.
    fn transition(&self, from: &[SandboxState], to: SandboxState) -> std::result::Result<SandboxState, SandboxState> {
        let mut s = lock(&self.state);
        let before = *s;
        if from.contains(&before) {
            *s = to;
            tracing::debug!("sandbox {}: {before:?} -> {to:?}", self.id);
            Ok(before)
        } else {
            Err(before)
        }
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
    pub fn vm_exit(&self) -> Option<ExitWatch> {
        self.vm_exit.get().cloned()
    }

    /// Who the guest's syscall events belong to (the shim's verbs add and remove containers).
    pub fn telemetry(&self) -> &telemetry::Identity {
        &self.telemetry
    }

    /// Records the pod settings (hostname, netns) of the sandbox container's spec and the
    /// tenant's bandwidth ceiling (Mbit/s); `boot` attaches the network with the ceiling and
    /// sends the settings to the agent.
    pub fn set_pod_config(&self, spec: &oci_spec::runtime::Spec, bandwidth_mbit: Option<u32>) -> Result<()> {
        let pod = PodConfig::from_spec(spec)?.with_bandwidth_mbit(bandwidth_mbit);
        let node = telemetry::node_name(&self.cfg.telemetry);
        self.telemetry.set_pod(&node, &self.id, &spec.annotations().clone().unwrap_or_default());
        let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
        let plan = match cgroups_path {
            Some(p) => {
                let s = p.to_str().ok_or_else(|| {
                    Error::InvalidArgument(format!("linux.cgroupsPath {p:?} refused: it is not UTF-8"))
                })?;
                let annotations = spec.annotations().clone().unwrap_or_default();
                Some((host_cgroup::parse_path(s)?, sizing::pod_resources(&annotations)))
            }
            None => {
                tracing::info!("sandbox {}: the spec has no linux.cgroupsPath: no host cgroup", self.id);
                None
            }
        };
        *lock(&self.pod) = Some(pod);
        *lock(&self.cgroup_plan) = plan;
        *lock(&self.identity) = info::identity(&spec.annotations().clone().unwrap_or_default());
        Ok(())
    }

    /// Whether teardown has begun (VM exits after that are expected).
    pub fn is_stopping(&self) -> bool {
        matches!(self.state(), SandboxState::Stopping | SandboxState::TornDown)
    }

    /// Records the VM's processes for `delete` after a crashed shim: "<name> <pid> <exe>".
    fn write_pid_file(&self, procs: &[vmm::VmmProcess]) {
        let text: String = procs.iter().map(|p| format!("{} {} {}\n", p.name, p.pid, p.exe.display())).collect();
        let path = state_dir::pid_file(&self.dir);
        if let Err(e) = std::fs::write(&path, text) {
            tracing::warn!("writing {}: {e}", path.display());
        }
    }

    /// SIGKILLs the hypervisor: for a guest that no longer answers. The backend then stops
    /// its helpers, and every container's watcher reports exit status 137.
    pub async fn kill_vm(&self) {
        self.vmm.lock().await.kill().await;
    }

    /// Stops the VM and helpers, unmounts the share and removes the state directory.
    /// Idempotent; logs what it could not do.
    pub async fn teardown(&self) {
        let all = [SandboxState::Prepared, SandboxState::Booting, SandboxState::Ready, SandboxState::Dead];
        if self.transition(&all, SandboxState::Stopping).is_err() {
            return;
        }
        self.vmm.lock().await.stop().await;
        if let Some(h) = lock(&self.log_task).take() {
            h.abort();
        }
        if let Some(mut relay) = lock(&self.relay).take() {
            relay.stop();
        }
        // After the VM is gone (its tap fds closed): remove the tc redirects and any tap left.
        if let Some(net) = self.network.lock().await.take() {
            net.detach().await;
        }
        // After its processes are gone: the host cgroup.
        let cgroup = lock(&self.host_cgroup).take();
        if let Some(cg) = cgroup {
            match tokio::task::spawn_blocking(move || cg.remove()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("sandbox {}: removing its host cgroup: {e}", self.id),
                Err(e) => tracing::error!("sandbox {}: removing its host cgroup: {e}", self.id),
            }
        }
        let dir = self.dir.clone();
        let host = self.host.clone();
        let res = tokio::task::spawn_blocking(move || cleanup_mounts_and_dir_with(host.as_ref(), &dir)).await;
        let cleaned = matches!(res, Ok(Ok(())));
        match res {
            Ok(Ok(())) => tracing::info!("sandbox {} torn down", self.id),
            Ok(Err(e)) => tracing::error!("tearing down sandbox {}: {e}", self.id),
            Err(e) => tracing::error!("tearing down sandbox {}: {e}", self.id),
        }
        // Last: virtiofsd is gone (the VMM's stop leaves the lock file otherwise); a mount left
        // in the state directory leaves it too, as a record (no other sandbox's helpers see
        // this state directory, so the block itself may go to another sandbox).
        if let Some(m) = &self.idmap {
            if !cleaned {
                m.keep_reserved();
            }
            m.release();
        }
        let _ = self.transition(&[SandboxState::Stopping], SandboxState::TornDown);
    }
}

#[cfg(test)]
mod tests;
