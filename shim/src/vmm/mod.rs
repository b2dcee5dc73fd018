//! Hypervisor backends behind one trait, so Cloud Hypervisor or Firecracker can be added
//! without touching the task service. QEMU (microvm) is the only backend today.

pub mod accel;
pub mod qemu;

use std::path::PathBuf;

use async_trait::async_trait;

use crate::error::Result;
use crate::host::child::Child;

pub use accel::Accel;

/// Everything a backend needs to start one sandbox VM. Paths come from the node
/// configuration and the shim's own state directory, never from the pod.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub vcpus: u32,
    pub memory_mib: u32,
    pub accel: Accel,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Operator-supplied extra kernel parameters (config `vm.kernel_params`).
    pub extra_kernel_params: String,
    /// vhost-user socket of the vsock backend (vhost-device-vsock).
    pub vsock_socket: PathBuf,
    /// vhost-user socket of virtiofsd, when the VM gets the share.
    pub fs_socket: Option<PathBuf>,
    /// Guest serial console is written here.
    pub console_log: PathBuf,
    /// The hypervisor's own stdout/stderr go here.
    pub log: PathBuf,
    /// Pod NICs: open tap fds (owned by the sandbox's network) and the guest MACs.
    pub nics: Vec<crate::resources::network::VmNic>,
}

/// One VM's hypervisor process.
#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// Short name for logs ("qemu").
    fn name(&self) -> &'static str;
    /// Starts the VM. Returns once the hypervisor process runs (not when the guest booted).
    async fn start(&mut self, spec: &VmSpec) -> Result<()>;
    /// The hypervisor process, once started: pid, exit status, wait.
    fn process(&self) -> Option<&Child>;
    /// Stops the VM (hard: the guest holds no state the host needs). Idempotent.
    async fn stop(&mut self);
}

/// The configured backend.
pub fn new_backend(qemu_binary: PathBuf) -> Box<dyn Hypervisor> {
    Box::new(qemu::Qemu::new(qemu_binary))
}
