//! The QEMU backend of [`Vmm`]: `qemu-system-x86_64 -M microvm` and the two helper processes
//! it owns, vhost-device-vsock (hybrid vsock, vhost_vsock.rs) and virtiofsd (the share,
//! virtiofsd.rs). It starts them in order, waits for their sockets, supervises them (an
//! unexpected VM exit stops the helpers, vhost-device-vsock never exits by itself; a helper
//! that dies kills the VM) and stops them. The command line is args.rs (pure). Its sockets and logs live in the sandbox's state
//! directory under the names of [`state_files`].

pub mod args;
pub mod console;
pub mod jail;
pub mod vhost_vsock;
pub mod virtiofsd;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{AgentSocket, Capabilities, ExitWatch, VmConfig, Vmm, VmmProcess};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::host::child::log_tail;
use crate::host::child::Child;
use crate::host::{Command, Host};
use crate::jail::uid::{self, Lease};
use crate::resources::network::VmNic;

pub use args::{build_args, host_tsc_khz, kernel_cmdline, parse_cpu_khz, PassedFds, VmSpec, BASE_KERNEL_PARAMS};
pub use jail::Policy;

/// The programs the backend runs (from the node configuration).
#[derive(Debug, Clone)]
pub struct QemuPaths {
    pub qemu: PathBuf,
    pub virtiofsd: PathBuf,
    pub vhost_device_vsock: PathBuf,
}

impl QemuPaths {
    pub fn from_config(cfg: &Config) -> Self {
        QemuPaths {
            qemu: cfg.paths.qemu.clone(),
            virtiofsd: cfg.paths.virtiofsd.clone(),
            vhost_device_vsock: cfg.paths.vhost_device_vsock.clone(),
        }
    }
}

/// QEMU's own log in the state directory `dir`.
pub fn log(dir: &Path) -> PathBuf {
    dir.join("qemu.log")
}

/// The backend's sockets and logs in the state directory `dir` (pure).
pub fn state_files(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("qemu log", log(dir)),
        ("vhost-device-vsock log", vhost_vsock::log(dir)),
        ("virtiofsd log", virtiofsd::log(dir)),
        ("vhost-user vsock socket", vhost_vsock::backend_socket(dir)),
        ("hybrid vsock socket", vhost_vsock::uds_path(dir)),
        ("vhost-user fs socket", virtiofsd::socket(dir)),
        ("jailed helpers' directory", jail::vm_dir(dir)),
        ("virtiofsd's directory", virtiofsd::fs_dir(dir)),
        ("jail uid record", dir.join(uid::RECORD)),
        ("vhost-device-vsock's jail uid record", dir.join(uid::VSOCK_RECORD)),
        ("id-map block record", dir.join(uid::IDMAP_RECORD)),
    ]
}

/// The jail uids of one sandbox (each also its gid).
#[derive(Debug, Clone, Copy)]
struct Uids {
    qemu: u32,
    vsock: u32,
}

/// One QEMU VM and its helpers.
pub struct Qemu {
    paths: QemuPaths,
    policy: Policy,
    dir: PathBuf,
    host: Arc<dyn Host>,
    /// QEMU's sandbox uid/gid, held until `stop`.
    lease: Option<Lease>,
    /// vhost-device-vsock's (another of the range: neither can signal, trace or enter the
    /// other), held until `stop`.
    vsock_lease: Option<Lease>,
    /// What `prepare` was given (`start` needs it).
    vm: Option<VmConfig>,
    vsock: Option<Arc<Child>>,
    virtiofsd: Option<Arc<Child>>,
    /// virtiofsd's serving process (its child), ended with the sandbox.
    fs_server: Option<virtiofsd::Server>,
    qemu: Option<Arc<Child>>,
    /// Set by `stop`: a VM exit after that is expected.
    stopping: Arc<AtomicBool>,
}

impl Qemu {
    /// A backend for the sandbox whose state directory is `dir`. Starts nothing.
    pub fn new(paths: QemuPaths, policy: Policy, dir: &Path, host: Arc<dyn Host>) -> Self {
        Qemu {
            paths,
            policy,
            dir: dir.to_path_buf(),
            host,
            lease: None,
            vsock_lease: None,
            vm: None,
            vsock: None,
            virtiofsd: None,
            fs_server: None,
            qemu: None,
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }

    fn helpers(&self) -> Vec<Arc<Child>> {
        // virtiofsd first: it lets go of the share before the vsock device goes.
        [&self.virtiofsd, &self.vsock].into_iter().flatten().cloned().collect()
    }

    /// An unexpected exit of QEMU stops the helpers; an unexpected exit of a helper kills
    /// QEMU (the VM cannot work without its file share or its vsock device: a pod whose
    /// helper died must end, not hang), and the VM's death then ends every container.
    fn supervise(&self, qemu: Arc<Child>) {
        let helpers = self.helpers();
        for h in helpers.clone() {
            let (stopping, qemu) = (self.stopping.clone(), qemu.clone());
            tokio::spawn(async move {
                let st = h.wait().await;
                if stopping.load(Ordering::SeqCst) || qemu.exit_status().is_some() {
                    return;
                }
                tracing::error!(
                    "{} (pid {}) exited unexpectedly ({st}); the VM cannot run without it: killing QEMU (pid {})",
                    h.name,
                    h.pid,
                    qemu.pid
                );
                qemu.stop(Duration::ZERO).await;
            });
        }
        let stopping = self.stopping.clone();
        let console = self.vm.as_ref().map(|v| v.console_log.clone());
        tokio::spawn(async move {
            let st = qemu.wait().await;
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            tracing::warn!(
                "QEMU (pid {}) exited ({st}); stopping its helpers. Console: {}",
                qemu.pid,
                console.as_deref().map(log_tail).unwrap_or_default()
            );
            for c in helpers {
                c.stop(Duration::from_secs(1)).await;
            }
        });
    }
}

#[async_trait]
impl Vmm for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { fs_share: true, hybrid_vsock: true, hotplug: false }
    }

    fn agent_socket(&self) -> AgentSocket {
        AgentSocket::HybridVsock {
            uds_path: vhost_vsock::uds_path(&self.dir),
            owner: self.vsock_lease.as_ref().map(Lease::uid),
        }
    }

    async fn prepare(&mut self, vm: &VmConfig) -> Result<()> {
        for (what, key, path) in [("guest kernel", "kernel", &vm.kernel), ("guest initramfs", "initrd", &vm.initrd)] {
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
        if vm.accel == super::Accel::Tcg && self.policy.forbid_tcg_fallback {
            return Err(Error::FailedPrecondition(format!(
                "KVM is not usable on this host and vm.allow_tcg_fallback = false in {}: refusing to run \
                 the guest under TCG (emulation, which QEMU does not support as a security boundary). \
                 Fix KVM, or set vm.allow_tcg_fallback = true (or vm.acceleration = \"tcg\") to accept it",
                Config::path().display()
            )));
        }
        // What the sandbox uid must reach on the host, named with the fix if it cannot.
        crate::jail::reach::check_runtime_dir(&self.policy.runtime_dir).map_err(Error::FailedPrecondition)?;
        if vm.accel == super::Accel::Kvm {
            crate::jail::reach::check_kvm_device(Path::new("/dev/kvm")).map_err(Error::FailedPrecondition)?;
        }
        self.vm = Some(vm.clone());
        let Uids { vsock: vsock_id, .. } = self.take_uids()?;
        let mut vsock = None;
        let conf = jail::vhost_device_vsock(&self.policy, vsock_id, &self.dir);
        let r =
            vhost_vsock::start(self.host.as_ref(), &self.paths.vhost_device_vsock, &self.dir, &conf, &mut vsock).await;
        self.vsock = vsock.map(Arc::new);
        r?;
        if let Some(share) = &vm.share {
            let idmap = vm.share_idmap.as_deref();
            let fs_dir = virtiofsd::fs_dir(&self.dir);
            let owner = vm.virtiofsd_uid();
            if !fs_dir.exists() {
                self.host.create_dir(&fs_dir).map_err(|e| Error::io(format!("creating {}", fs_dir.display()), e))?;
            }
            self.host
                .chown(&fs_dir, owner, owner, 0o700)
                .map_err(|e| Error::io(format!("giving {} to {owner}", fs_dir.display()), e))?;
            let mut fs = None;
            let conf = jail::virtiofsd(&self.policy, &self.dir, share, idmap);
            let r = virtiofsd::start(self.host.as_ref(), &self.paths.virtiofsd, &self.dir, share, &conf, &mut fs).await;
            self.virtiofsd = fs.map(Arc::new);
            r?;
            if let Some(parent) = self.virtiofsd.clone() {
                let server = virtiofsd::Server::wait_for(&parent, Duration::from_secs(10)).await;
                self.fs_server = server.map_err(Error::Boot)?;
            }
        }
        Ok(())
    }

    async fn start(&mut self, nics: Vec<VmNic>) -> Result<()> {
        let vm = self.vm.as_ref().ok_or_else(|| Error::Boot("QEMU started before its helpers".into()))?;
        if !self.paths.qemu.exists() {
            return Err(Error::Missing {
                what: "QEMU binary",
                path: self.paths.qemu.clone(),
                hint: "install qemu-system-x86 or set paths.qemu in the bulwark config".into(),
            });
        }
        let (Some(id), Some(vsock_id)) =
            (self.lease.as_ref().map(Lease::uid), self.vsock_lease.as_ref().map(Lease::uid))
        else {
            return Err(Error::Boot("QEMU started without its uids".into()));
        };
        // QEMU gets its two helpers' sockets already connected, and the console log open.
        let vsock_fd =
            connect(self.host.as_ref(), "vhost-device-vsock", &vhost_vsock::backend_socket(&self.dir), vsock_id)
                .await?;
        let fs_fd = match vm.share {
            Some(_) => {
                Some(connect(self.host.as_ref(), "virtiofsd", &virtiofsd::socket(&self.dir), vm.virtiofsd_uid()).await?)
            }
            None => None,
        };
        // The guest kernel and initrd by their real paths: QEMU's own root holds each file there only.
        let real = |p: &Path| {
            std::fs::canonicalize(p).map_err(|e| Error::io(format!("resolving the guest image {}", p.display()), e))
        };
        let (kernel, initrd) = (real(&vm.kernel)?, real(&vm.initrd)?);
        // The console goes into a pipe the shim copies into a size-capped log (console.rs).
        let console = console::spawn(&vm.console_log)
            .map_err(|e| Error::io(format!("opening the console log {}", vm.console_log.display()), e))?;
        self.give_host_ports(vsock_id);
        let passed = PassedFds {
            vsock: Some(vsock_fd.as_raw_fd()),
            fs: fs_fd.as_ref().map(|f| f.as_raw_fd()),
            console: Some(console.as_raw_fd()),
        };
        let mut fds: Vec<_> = nics.iter().map(|n| n.tap_fd).collect();
        fds.extend([passed.vsock, passed.fs, passed.console].into_iter().flatten());
        let spec = VmSpec {
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            accel: vm.accel,
            kernel: kernel.clone(),
            initrd: initrd.clone(),
            extra_kernel_params: vm.extra_kernel_params.clone(),
            vsock_socket: vhost_vsock::backend_socket(&self.dir),
            fs_socket: vm.share.as_ref().map(|_| virtiofsd::socket(&self.dir)),
            console_log: vm.console_log.clone(),
            log: log(&self.dir),
            nics,
            fds: passed,
            sandbox: true,
            name: Some(self.dir.to_string_lossy().into_owned()),
        };
        let args = build_args(&spec, host_tsc_khz());
        let kvm_group = match vm.accel {
            super::Accel::Kvm => jail::kvm_gid(),
            super::Accel::Tcg => None,
        };
        let kvm = vm.accel == super::Accel::Kvm;
        let conf = jail::qemu(&self.policy, id, kvm, kvm_group, &kernel, &initrd);
        let child = self.host.spawn(&Command {
            name: "qemu",
            exe: &self.paths.qemu,
            args: &args,
            log: &spec.log,
            keep_fds: &fds,
            jail: Some(&conf),
        })?;
        drop((vsock_fd, fs_fd, console));
        let child = Arc::new(child);
        self.qemu = Some(child.clone());
        self.supervise(child);
        Ok(())
    }

    fn exit_watch(&self) -> Option<ExitWatch> {
        self.qemu.as_ref().map(|c| c.exit_watch())
    }

    fn pid(&self) -> Option<u32> {
        self.qemu.as_ref().map(|c| c.pid)
    }

    fn processes(&self) -> Vec<VmmProcess> {
        [&self.vsock, &self.virtiofsd, &self.qemu]
            .into_iter()
            .flatten()
            .map(|c| VmmProcess { name: c.name, pid: c.pid, exe: c.exe.clone() })
            .collect()
    }

    fn logs(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("qemu", log(&self.dir)),
            ("vhost-device-vsock", vhost_vsock::log(&self.dir)),
            ("virtiofsd", virtiofsd::log(&self.dir)),
        ]
    }

    async fn kill(&mut self) {
        if let Some(c) = &self.qemu {
            c.stop(Duration::ZERO).await;
        }
    }

    async fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(c) = &self.qemu {
            // No guest state to save: SIGTERM makes QEMU quit at once; SIGKILL after 2s.
            c.stop(Duration::from_secs(2)).await;
        }
        for c in self.helpers() {
            c.stop(Duration::from_secs(1)).await;
        }
        let mut server_left = false;
        if let Some(s) = self.fs_server.take() {
            server_left = !s.end(Duration::from_secs(1)).await;
            if server_left {
                tracing::warn!("virtiofsd's serving process (pid {}) outlived its SIGKILL", s.pid);
            }
        }
        // Only once none of its processes runs: the uid may then go to another sandbox.
        let running =
            server_left || [&self.vsock, &self.virtiofsd, &self.qemu].into_iter().flatten().any(|c| !c.has_exited());
        if running {
            tracing::warn!(
                "a VMM process of {} outlived its stop; leaving its lock files (its uids and id-map block \
                 go to no other sandbox while a process runs as them)",
                self.dir.display()
            );
            for mut l in [self.lease.take(), self.vsock_lease.take()].into_iter().flatten() {
                l.keep_file();
            }
            if let Some(m) = self.vm.as_ref().and_then(|v| v.share_idmap.as_ref()) {
                m.keep_reserved();
            }
        }
        self.lease = None;
        self.vsock_lease = None;
    }
}

impl Qemu {
    /// Allocates the sandbox's two uids (once): QEMU's, and vhost-device-vsock's, which gets
    /// `<dir>/vm/` (QEMU needs nothing there: it gets its sockets connected).
    fn take_uids(&mut self) -> Result<Uids> {
        if let (Some(q), Some(v)) = (&self.lease, &self.vsock_lease) {
            return Ok(Uids { qemu: q.uid(), vsock: v.uid() });
        }
        let take = |record: &str| {
            let lease = uid::allocate(&self.policy.runtime_dir, self.policy.range, &self.dir).map_err(Error::Boot)?;
            uid::record_as(&self.dir, record, &lease)
                .map_err(|e| Error::io(format!("recording a jail uid in {}", self.dir.display()), e))?;
            Ok::<_, Error>(lease)
        };
        let qemu = take(uid::RECORD)?;
        let qemu_id = qemu.uid();
        self.lease = Some(qemu);
        let vsock = take(uid::VSOCK_RECORD)?;
        let ids = Uids { qemu: qemu_id, vsock: vsock.uid() };
        self.vsock_lease = Some(vsock);
        let vm = jail::vm_dir(&self.dir);
        if !vm.exists() {
            self.host.create_dir(&vm).map_err(|e| Error::io(format!("creating {}", vm.display()), e))?;
        }
        self.host
            .chown(&vm, ids.vsock, ids.vsock, 0o700)
            .map_err(|e| Error::io(format!("giving {} to uid {}", vm.display(), ids.vsock), e))?;
        tracing::info!(
            "sandbox {}: QEMU runs as uid/gid {}, vhost-device-vsock as {}",
            self.dir.display(),
            ids.qemu,
            ids.vsock
        );
        Ok(ids)
    }

    /// Gives the host-port sockets the shim listens on in `<dir>/vm/` (root's, made before
    /// QEMU starts) to the sandbox uid, so vhost-device-vsock can connect to them. Only
    /// sockets are touched, through an O_PATH fd of the very inode checked.
    fn give_host_ports(&self, id: u32) {
        let vm = jail::vm_dir(&self.dir);
        let Ok(entries) = std::fs::read_dir(&vm) else { return };
        for e in entries.flatten() {
            if !e.file_name().to_string_lossy().starts_with(vhost_vsock::HOST_PORT_PREFIX) {
                continue;
            }
            if let Err(err) = give_socket(&e.path(), id) {
                tracing::warn!("giving {} to uid {id}: {err}", e.path().display());
            }
        }
    }
}

/// Connects to a helper's socket (checked: see [`Host::connect_owned_socket`]). A helper
/// creates its socket file (bind) a moment before it listens: refused connections are
/// retried for up to 2 s.
async fn connect(host: &dyn Host, what: &str, path: &Path, owner: u32) -> Result<std::os::fd::OwnedFd> {
    let mut tries = 0;
    loop {
        match host.connect_owned_socket(path, owner) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(Error::io(format!("connecting to {what} at {}", path.display()), e)),
        }
    }
}

/// fchown of the unix socket `path` (never a symlink) to `id`:`id`.
fn give_socket(path: &Path, id: u32) -> std::io::Result<()> {
    let (fd, _) = crate::host::linux::open_socket_node(path)?;
    nix::unistd::fchownat(
        Some(fd.as_raw_fd()),
        "",
        Some(nix::unistd::Uid::from_raw(id)),
        Some(nix::unistd::Gid::from_raw(id)),
        nix::unistd::FchownatFlags::AT_EMPTY_PATH,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::{temp_dir, FakeHost};

    fn vm(dir: &Path, share: bool) -> VmConfig {
        std::fs::write(dir.join("vmlinux"), b"").unwrap();
        std::fs::write(dir.join("initrd"), b"").unwrap();
        VmConfig {
            vcpus: 1,
            memory_mib: 256,
            accel: super::super::Accel::Tcg,
            kernel: dir.join("vmlinux"),
            initrd: dir.join("initrd"),
            extra_kernel_params: String::new(),
            share: share.then(|| dir.join("share")),
            share_idmap: None,
            console_log: dir.join("console.log"),
        }
    }

    /// Uids no process runs as, lock files in the test's directory.
    fn policy(dir: &Path) -> Policy {
        Policy {
            range: crate::jail::uid::UidRange { base: 3_900_001_000, count: 1000 },
            oom_score_adj: 0,
            runtime_dir: dir.to_path_buf(),
            forbid_tcg_fallback: false,
        }
    }

    /// Existing programs (the test binary itself) so the backend's checks pass; the fake
    /// host spawns nothing.
    fn paths() -> QemuPaths {
        let me = std::env::current_exe().unwrap();
        QemuPaths { qemu: me.clone(), virtiofsd: me.clone(), vhost_device_vsock: me }
    }

    #[tokio::test]
    async fn helper_that_exits_at_start_fails_prepare_and_is_recorded() {
        let dir = temp_dir("qemu-helper-exit");
        let host = FakeHost::new();
        host.exit_at_spawn("vhost-device-vsock");
        std::fs::write(vhost_vsock::log(&dir), b"bad option\n").unwrap();
        let mut q = Qemu::new(paths(), policy(&dir), &dir, host.clone());
        let e = q.prepare(&vm(&dir, true)).await.unwrap_err().to_string();
        assert!(e.contains("vhost-device-vsock exited") && e.contains("bad option"), "{e}");
        // started, so recorded for the pid file and stopped by `stop`
        assert_eq!(q.processes().len(), 1);
        assert!(!host.calls().iter().any(|c| c.starts_with("spawn virtiofsd")));
        q.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn helpers_start_in_order_and_stop_with_the_vm() {
        let dir = temp_dir("qemu-order");
        let host = FakeHost::new();
        // the helpers' sockets appear at once
        std::fs::create_dir(jail::vm_dir(&dir)).unwrap();
        std::fs::write(vhost_vsock::backend_socket(&dir), b"").unwrap();
        std::fs::create_dir(virtiofsd::fs_dir(&dir)).unwrap();
        std::fs::write(virtiofsd::socket(&dir), b"").unwrap();
        let mut q = Qemu::new(paths(), policy(&dir), &dir, host.clone());
        q.prepare(&vm(&dir, true)).await.unwrap();
        q.start(Vec::new()).await.unwrap();
        let names: Vec<_> = q.processes().iter().map(|p| p.name).collect();
        assert_eq!(names, ["vhost-device-vsock", "virtiofsd", "qemu"]);
        let spawns: Vec<_> = host.calls().into_iter().filter(|c| c.starts_with("spawn")).collect();
        assert!(spawns[2].contains("vhost-user-fs-device"), "{spawns:?}");
        // an unexpected VM exit stops the helpers
        let helpers = q.helpers();
        host.exit("qemu", libc::SIGKILL);
        for h in helpers {
            tokio::time::timeout(Duration::from_secs(5), h.wait()).await.unwrap();
        }
        q.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn no_share_no_virtiofsd() {
        let dir = temp_dir("qemu-noshare");
        let host = FakeHost::new();
        std::fs::create_dir(jail::vm_dir(&dir)).unwrap();
        std::fs::write(vhost_vsock::backend_socket(&dir), b"").unwrap();
        let mut q = Qemu::new(paths(), policy(&dir), &dir, host.clone());
        q.prepare(&vm(&dir, false)).await.unwrap();
        assert!(!host.calls().iter().any(|c| c.starts_with("spawn virtiofsd")));
        q.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
