//! What a container needs of the microVM it runs in ([`Vm`]): the task pid containerd sees,
//! how the VM ended, and a way to kill it. The sandbox (sandbox/) implements it; unit tests
//! use a stand-in, so the process lifecycle runs without a VM.

use std::process::ExitStatus;
use std::time::Duration;

use async_trait::async_trait;

use crate::sandbox::Sandbox;

/// The VM of a container, as its processes see it.
#[async_trait]
pub trait Vm: Send + Sync {
    /// Host pid of the hypervisor: the task pid containerd sees for every process of the VM.
    fn pid(&self) -> u32;
    /// How the VM ended, if it ends within `limit` (None: still running, or not booted).
    async fn exit_status(&self, limit: Duration) -> Option<ExitStatus>;
    /// SIGKILLs the VM (a guest that no longer answers); every process in it then ends.
    async fn kill(&self);
}

#[async_trait]
impl Vm for Sandbox {
    fn pid(&self) -> u32 {
        Sandbox::pid(self)
    }

    async fn exit_status(&self, limit: Duration) -> Option<ExitStatus> {
        let rx = self.vm_exit()?;
        tokio::time::timeout(limit, crate::host::child::wait_exit(rx)).await.ok()
    }

    async fn kill(&self) {
        self.kill_vm().await
    }
}
