//! The boot sequence of a sandbox VM, one step after the other:
//! VMM helpers (`Vmm::prepare`: for QEMU, vhost-device-vsock then virtiofsd) → the host's
//! listener for the agent's READY + log connection → the telemetry relay (its listener for
//! the guest's syscall events) → the pod network → the VM
//! (`Vmm::start`) → READY from the agent (or the VM's exit, or the timeout) → the log
//! forwarder → CONNECT to the agent's port → Check → SetupSandbox. Then a watcher marks the
//! sandbox dead when the VM exits.
//!
//! Also the KVM boot probe that `vmm::accel` is given ([`resolve_accel`]): a throwaway
//! sandbox booted up to the agent's Check.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{state_dir, Sandbox, SandboxState};
use crate::agent::{handshake, streams, AgentApi};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::host::child::{log_tail, wait_exit};
use crate::host::Host;
use crate::jail::cgroup as host_cgroup;
use crate::resources::network;
use crate::sandbox::sizing::VmSize;
use crate::vmm::accel::{self, KvmBootProbe, PROBE_TIMEOUT};
use crate::vmm::{Accel, AgentSocket, VmConfig};

/// Attempts at CONNECT to the agent's port after READY, and the pause between them.
const CONNECT_ATTEMPTS: u32 = 3;
const CONNECT_RETRY: Duration = Duration::from_millis(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Sandbox {
    /// Starts the VMM (helpers and VM) and waits for the agent. On error the caller tears
    /// down. `accel` comes from [`resolve_accel`] (or is forced, for the KVM probe).
    pub async fn boot(self: &Arc<Self>, accel: Accel, size: VmSize, timeout: Duration) -> Result<()> {
        if let Err(s) = self.transition(&[SandboxState::Prepared], SandboxState::Booting) {
            return Err(Error::FailedPrecondition(format!("sandbox {} cannot boot: it is {s:?}", self.id)));
        }
        let res = self.boot_steps(accel, size, timeout).await;
        let to = if res.is_ok() { SandboxState::Ready } else { SandboxState::Dead };
        // Teardown may have begun meanwhile: Stopping stays.
        let _ = self.transition(&[SandboxState::Booting], to);
        if res.is_ok() {
            self.watch_vm_exit();
        }
        res
    }

    async fn boot_steps(self: &Arc<Self>, accel: Accel, size: VmSize, timeout: Duration) -> Result<()> {
        let cfg = &self.cfg;
        let started = Instant::now();
        let console = state_dir::console_log(&self.dir);
        let mut vmm = self.vmm.lock().await;
        let caps = vmm.capabilities();
        if !caps.fs_share {
            tracing::warn!("sandbox {}: the {} backend cannot share files: the VM gets no share", self.id, vmm.name());
        }
        let vm = VmConfig {
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            accel,
            kernel: cfg.paths.kernel.clone(),
            initrd: cfg.paths.initrd.clone(),
            extra_kernel_params: cfg.vm.kernel_params.clone(),
            share: caps.fs_share.then(|| state_dir::export(&self.dir)),
            share_idmap: self.idmap(),
            console_log: console.clone(),
        };
        // The host cgroup first, so that each VMM process moves in right after it starts.
        self.setup_host_cgroup(size).await?;
        let prepared = vmm.prepare(&vm).await;
        self.write_pid_file(&vmm.processes());
        self.cgroup_add(&vmm.processes())?;
        prepared?;
        // Only now: the socket's owner (the jailed helper's uid) exists once prepare made it,
        // and without an owner the shim would connect by path into the helper's directory.
        let socket = vmm.agent_socket();

        let listener = handshake::bind_port_listener(&socket.host_port_path(bulwark_protocol::LOG_PORT))?;
        let pod = super::lock(&self.pod).clone();
        // The guest's collector connects out once SetupSandbox turned it on: listen first.
        if cfg.telemetry.enabled && pod.is_some() {
            let path = socket.host_port_path(bulwark_protocol::TELEMETRY_PORT);
            let telemetry = handshake::bind_port_listener(&path)?;
            let frames = crate::telemetry::FramesPaths {
                current: state_dir::telemetry_frames(&self.dir),
                old: state_dir::telemetry_frames_old(&self.dir),
            };
            let relay = crate::telemetry::Relay::start(&cfg.telemetry, &self.id, &frames, &self.telemetry, telemetry)
                .map_err(|e| Error::Boot(format!("starting the telemetry relay: {e}")))?;
            *super::lock(&self.relay) = Some(relay);
        }

        let mut net = self.network.lock().await;
        if let Some((path, ceiling)) = pod.as_ref().and_then(|p| Some((p.netns.as_ref()?, p.bandwidth))) {
            let attached = network::attach(path, ceiling).await?;
            attached.save(&self.dir);
            *net = Some(attached);
        }
        let started_vm = vmm.start(net.as_ref().map(|n| n.vm_nics()).unwrap_or_default()).await;
        if let Some(n) = net.as_mut() {
            n.release_taps();
        }
        let setup = pod.map(|p| {
            let mut req = match net.as_ref() {
                Some(n) => n.setup_request(&p.hostname),
                None => network::setup_request(&p.hostname, &[], &[]),
            };
            // The relay's stream token goes to the agent only (telemetry off: no relay, no
            // collector).
            req.telemetry = super::lock(&self.relay).as_ref().map(|r| r.agent_config(&cfg.telemetry)).into();
            req
        });
        drop(net);
        self.write_pid_file(&vmm.processes());
        self.cgroup_add(&vmm.processes())?;
        started_vm?;
        let (pid, vm_exit) = match (vmm.pid(), vmm.exit_watch()) {
            (Some(pid), Some(w)) => (pid, w),
            _ => return Err(Error::Boot("the hypervisor did not start".into())),
        };
        self.pid.store(pid, Ordering::SeqCst);
        let _ = self.vm_exit.set(vm_exit.clone());
        self.write_info(size, accel, pid);
        let name = vmm.name();
        // The hypervisor's own log comes first.
        let hv_log = vmm.logs().into_iter().next();
        drop(vmm);

        let ready = tokio::select! {
            r = handshake::accept_ready(&listener, timeout) => r,
            st = wait_exit(vm_exit.clone()) => Err(Error::Boot(format!(
                "the VM ({name}) exited ({st}) before the agent was ready. {}",
                hv_log.map(|(what, p)| format!("{what} log {}: {}", p.display(), log_tail(&p))).unwrap_or_default()))),
        };
        let (version, log_stream) = ready.map_err(|e| {
            let e = match e {
                Error::Boot(m) => m,
                other => other.to_string(),
            };
            Error::Boot(format!(
                "{e} (accel {}, timeout {}s). Guest console {}: {}",
                accel.as_str(),
                timeout.as_secs(),
                console.display(),
                log_tail(&console)
            ))
        })?;
        drop(listener);
        crate::agent::check_version(version)?;
        *super::lock(&self.log_task) = Some(streams::spawn_log_forwarder(log_stream, self.id.clone()));

        let stream = connect_agent_port(self.host.as_ref(), &socket).await?;
        let agent: Arc<dyn AgentApi> = (self.connect_agent)(stream, vm_exit);
        let info = agent.check().await?;
        tracing::info!(
            "sandbox {} booted in {:?} ({name} {}, pid {pid}): agent {} protocol {}, guest kernel {}",
            self.id,
            started.elapsed(),
            accel.as_str(),
            crate::agent::ratelimit::sanitize(&info.agent_version, 64),
            info.agent_protocol_version,
            crate::agent::ratelimit::sanitize(&info.kernel_release, 64)
        );
        if let Some(req) = setup {
            agent.setup_sandbox(&req).await?;
        }
        let _ = self.agent.set(agent);
        Ok(())
    }

    /// Creates the sandbox's host cgroup (jail/cgroup.rs) when its spec named a cgroupsPath,
    /// and records it in the state directory for `delete` after a crash.
    async fn setup_host_cgroup(&self, size: VmSize) -> Result<()> {
        let Some((path, pod)) = super::lock(&self.cgroup_plan).clone() else { return Ok(()) };
        let (cfg, id, find) = (self.cfg.cgroup.clone(), self.id.clone(), self.cgroups.clone());
        let made =
            tokio::task::spawn_blocking(move || host_cgroup::setup_on(find(), &cfg, &id, &path, &pod, size.memory_mib))
                .await
                .map_err(|e| Error::Boot(format!("host cgroup setup task failed: {e}")))??;
        if let Some(cg) = made {
            let record = state_dir::cgroup_record(&self.dir);
            if let Err(e) = std::fs::write(&record, cg.path().as_os_str().as_encoded_bytes()) {
                tracing::warn!("writing {}: {e}", record.display());
            }
            *super::lock(&self.host_cgroup) = Some(Arc::new(cg));
        }
        Ok(())
    }

    /// Records the booted sandbox in `sandbox.json` for operator tools (info.rs).
    fn write_info(&self, size: VmSize, accel: Accel, pid: u32) {
        let info = super::info::SandboxInfo {
            sandbox_id: self.id.clone(),
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            accel: accel.as_str().to_string(),
            vm_pid: pid,
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            ..super::lock(&self.identity).clone()
        };
        if let Err(e) = super::info::write(&self.dir, &info) {
            tracing::warn!("writing {}: {e}", super::info::path(&self.dir).display());
        }
    }

    /// Moves the VMM's processes into the host cgroup (those not moved yet).
    fn cgroup_add(&self, procs: &[crate::vmm::VmmProcess]) -> Result<()> {
        let Some(cg) = super::lock(&self.host_cgroup).clone() else { return Ok(()) };
        let procs: Vec<(&str, u32)> = procs.iter().map(|p| (p.name, p.pid)).collect();
        cg.add_vmm_processes(&procs)
    }

    /// After boot: an unexpected VM exit makes the sandbox `Dead` (logged with the console's
    /// tail). The backend stops its helpers; containers learn it through their own watchers.
    fn watch_vm_exit(self: &Arc<Self>) {
        let Some(vm_exit) = self.vm_exit() else { return };
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let st = wait_exit(vm_exit).await;
            let Some(me) = me.upgrade() else { return };
            if me.transition(&[SandboxState::Ready], SandboxState::Dead).is_ok() {
                tracing::error!(
                    "the VM of sandbox {} exited unexpectedly ({st}). Console: {}",
                    me.id,
                    log_tail(&state_dir::console_log(&me.dir))
                );
            }
        });
    }
}

/// CONNECT to the agent's ttrpc port through the hybrid-vsock socket, a few times.
async fn connect_agent_port(host: &dyn Host, socket: &AgentSocket) -> Result<tokio::net::UnixStream> {
    let path = socket.connect_path();
    let mut last = None;
    for _ in 0..CONNECT_ATTEMPTS {
        let attempt = match socket.owner() {
            // In a directory the jailed helper can write: only that uid's very socket.
            Some(uid) => match host.connect_owned_socket(path, uid).and_then(|fd| {
                let s = std::os::unix::net::UnixStream::from(fd);
                s.set_nonblocking(true)?;
                tokio::net::UnixStream::from_std(s)
            }) {
                Ok(s) => handshake::connect_over(s, path, bulwark_protocol::AGENT_PORT, CONNECT_TIMEOUT).await,
                Err(e) => Err(Error::io(format!("connecting to {}", path.display()), e)),
            },
            None => handshake::connect(path, bulwark_protocol::AGENT_PORT, CONNECT_TIMEOUT).await,
        };
        match attempt {
            Ok(s) => return Ok(s),
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(CONNECT_RETRY).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::Agent("connect failed".into())))
}

/// Boots a throwaway VM with `accel` up to the agent's Check, then tears it down.
pub async fn probe_boot(cfg: &Config, accel: Accel, timeout: Duration) -> Result<()> {
    // ".probe" cannot clash with a containerd namespace (identifiers start alphanumeric).
    let id = std::process::id().to_string();
    remove_stale_probes(&cfg.paths.runtime_dir.join(".probe"));
    let sb = Arc::new(Sandbox::prepare(cfg, ".probe", &id)?);
    let size = VmSize { vcpus: cfg.vm.vcpus, memory_mib: cfg.vm.memory_mib };
    let r = sb.boot(accel, size, timeout).await;
    sb.teardown().await;
    r
}

/// Removes the probe directories of shims that died mid-probe (named by their pid; a pid
/// that no longer runs this shim's program is stale), with their processes and mounts.
fn remove_stale_probes(probes: &std::path::Path) {
    let me = std::env::current_exe().ok();
    let Ok(entries) = std::fs::read_dir(probes) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<u32>() else { continue };
        let alive = std::fs::read_link(format!("/proc/{pid}/exe")).ok().is_some_and(|exe| Some(exe) == me);
        if !alive {
            tracing::warn!("removing the probe directory of a shim that died mid-probe: {}", e.path().display());
            if let Err(err) = state_dir::cleanup_dir(&e.path()) {
                tracing::warn!("{err}");
            }
        }
    }
}

/// The KVM boot probe: a real boot of the configured kernel+initrd under KVM, up to the
/// agent's Check, within [`PROBE_TIMEOUT`].
struct BootProbe;

#[async_trait]
impl KvmBootProbe for BootProbe {
    async fn probe(&self, cfg: &Config) -> std::result::Result<(), String> {
        probe_boot(cfg, Accel::Kvm, PROBE_TIMEOUT).await.map_err(|e| e.to_string())
    }
}

/// The acceleration for a new VM (`vm.acceleration`; `auto` probes KVM with a real boot).
pub async fn resolve_accel(cfg: &Config) -> Accel {
    accel::resolve(cfg, &BootProbe).await
}

#[cfg(test)]
mod probe_tests {
    use super::remove_stale_probes;

    #[test]
    fn probe_dirs_of_dead_shims_are_removed_and_live_ones_kept() {
        let probes = crate::host::fake::temp_dir("probes");
        let dead = probes.join("999999999"); // above the kernel's PID_MAX_LIMIT: never alive
        let live = probes.join(std::process::id().to_string());
        let other = probes.join("not-a-pid");
        for d in [&dead, &live, &other] {
            std::fs::create_dir_all(d.join("share")).unwrap();
        }
        remove_stale_probes(&probes);
        assert!(!dead.exists(), "a dead shim's probe directory is removed");
        assert!(live.exists() && other.exists(), "a running shim's (and anything else) is kept");
        std::fs::remove_dir_all(&probes).unwrap();
    }
}
