//! VMM backends behind one trait ([`Vmm`]), the way Kata's runtime-rs puts hypervisors
//! behind one: a backend prepares, starts, watches and stops one sandbox VM together with
//! the helper processes it needs, names its processes, tells how the host reaches the
//! guest's vsock ports, and declares what it can do ([`Capabilities`]). QEMU (microvm, with
//! virtiofsd and vhost-device-vsock) is the only backend today (qemu/); Cloud Hypervisor or
//! Firecracker would be another file here, and the sandbox would not change.
//! The acceleration choice (KVM or TCG) is accel.rs.

pub mod accel;
pub mod backend;
#[cfg(test)]
pub mod fake;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::error::Result;
use crate::resources::network::VmNic;

pub use accel::Accel;

/// The VM's exit status once its hypervisor process is gone (None while it runs).
pub type ExitWatch = watch::Receiver<Option<ExitStatus>>;

/// What a backend can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Serves a host directory to the guest over virtio-fs (tag `bulwark-share`).
    pub fs_share: bool,
    /// Hybrid vsock ([`AgentSocket::HybridVsock`]).
    pub hybrid_vsock: bool,
    /// Devices (disks, NICs, vCPUs, memory) can be added to a running VM.
    pub hotplug: bool,
}

/// How the host reaches the guest's vsock ports, and where the guest's connections to the
/// host arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentSocket {
    /// Firecracker-style hybrid vsock: connect to `uds_path` and send `CONNECT <port>\n` to
    /// reach guest port P; guest connections to the host's port P arrive on `<uds_path>_P`.
    /// `owner`: the uid the socket must belong to when it lives in a directory a jailed
    /// helper can write (the host then connects only to that very socket, never through a
    /// planted symlink or another program's socket); `None`: a root-only directory.
    HybridVsock { uds_path: PathBuf, owner: Option<u32> },
}

impl AgentSocket {
    /// The unix socket the host connects to (then `CONNECT <port>`).
    pub fn connect_path(&self) -> &Path {
        match self {
            AgentSocket::HybridVsock { uds_path, .. } => uds_path,
        }
    }

    /// The uid the connect socket must belong to, if any (see the variant).
    pub fn owner(&self) -> Option<u32> {
        match self {
            AgentSocket::HybridVsock { owner, .. } => *owner,
        }
    }

    /// Where the guest's connections to the host's `port` arrive (the host listens there).
    pub fn host_port_path(&self, port: u32) -> PathBuf {
        match self {
            AgentSocket::HybridVsock { uds_path, .. } => {
                let mut s = uds_path.as_os_str().to_owned();
                s.push(format!("_{port}"));
                PathBuf::from(s)
            }
        }
    }
}

/// The VM a sandbox asks for (backend-neutral). Paths come from the node configuration and
/// the sandbox's state directory, never from the pod.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub vcpus: u32,
    pub memory_mib: u32,
    pub accel: Accel,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Operator-supplied extra kernel parameters (config `vm.kernel_params`).
    pub extra_kernel_params: String,
    /// Host directory served to the guest (virtio-fs), if any.
    pub share: Option<PathBuf>,
    /// The share's id-map: virtiofsd runs as root of its user namespace (None: host root).
    pub share_idmap: Option<std::sync::Arc<crate::jail::idmap::IdMap>>,
    /// The guest's serial console is written here.
    pub console_log: PathBuf,
}

impl VmConfig {
    /// The host uid (and gid) virtiofsd runs as: its id-map's root, else host root.
    pub fn virtiofsd_uid(&self) -> u32 {
        self.share_idmap.as_deref().map_or(0, crate::jail::idmap::IdMap::host_root)
    }
}

/// One host process of a VM (hypervisor or helper), as recorded in the pid file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmProcess {
    /// "qemu", "virtiofsd", "vhost-device-vsock", ...
    pub name: &'static str,
    pub pid: u32,
    /// The program (checked against /proc/<pid>/exe before killing a leftover).
    pub exe: PathBuf,
}

/// One sandbox VM and the host processes that serve it.
///
/// Order: [`prepare`](Vmm::prepare) (helpers up, sockets ready; the host may then listen on
/// [`AgentSocket::host_port_path`]) → [`start`](Vmm::start) (the hypervisor runs) →
/// [`exit_watch`](Vmm::exit_watch) / [`kill`](Vmm::kill) → [`stop`](Vmm::stop). The backend
/// supervises its helpers: when the VM exits they are stopped too.
#[async_trait]
pub trait Vmm: Send + Sync {
    /// Short name for logs ("qemu").
    fn name(&self) -> &'static str;
    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;
    /// How to reach the guest's vsock ports (known before `prepare`).
    fn agent_socket(&self) -> AgentSocket;
    /// Checks the binaries and guest image, starts the helper processes and waits until they
    /// serve. On error, what was started is left for `stop`.
    async fn prepare(&mut self, vm: &VmConfig) -> Result<()>;
    /// Starts the VM with `nics` (tap fds the caller keeps open until this returns). Returns
    /// once the hypervisor process runs, not when the guest booted.
    async fn start(&mut self, nics: Vec<VmNic>) -> Result<()>;
    /// The VM's exit status channel, once started.
    fn exit_watch(&self) -> Option<ExitWatch>;
    /// Host pid of the hypervisor, once started.
    fn pid(&self) -> Option<u32>;
    /// Every host process of this VM so far (hypervisor and helpers): for the pid file and
    /// the host cgroup.
    fn processes(&self) -> Vec<VmmProcess>;
    /// The logs of its processes ("qemu", path), for error messages.
    fn logs(&self) -> Vec<(&'static str, PathBuf)>;
    /// SIGKILLs the hypervisor (a guest that no longer answers); the helpers follow.
    async fn kill(&mut self);
    /// Stops the VM and its helpers (hard: the guest holds no state the host needs).
    /// Idempotent.
    async fn stop(&mut self);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_vsock_paths() {
        let s = AgentSocket::HybridVsock { uds_path: "/run/b/x/vsock.sock".into(), owner: None };
        assert_eq!(s.connect_path(), Path::new("/run/b/x/vsock.sock"));
        assert_eq!(s.host_port_path(1025), PathBuf::from("/run/b/x/vsock.sock_1025"));
    }
}
