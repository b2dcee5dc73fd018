//! One container: its init process and its execs (one [`Process`] model for both,
//! process.rs), the handles its processes work through — the guest agent, the VM ([`Vm`],
//! vm.rs) and the event channel ([`EventTx`], events.rs) — and its OOM count. The verbs on
//! its processes are lifecycle.rs; adding an exec is exec.rs; its id and spec are spec.rs;
//! stdio copying is stdio.rs. Its rootfs and volumes are resources/rootfs.rs and
//! resources/volumes.rs.
//!
//! Nothing here knows the task service: events go into the channel, and the verbs get what
//! they need from the container, so they run in unit tests with the fake agent.

pub mod events;
pub mod exec;
pub mod lifecycle;
pub mod process;
pub mod spec;
pub mod stdio;
#[cfg(test)]
pub mod testing;
#[cfg(test)]
mod tests;
pub mod vm;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::agent::AgentApi;
use crate::error::{Error, Result};
use crate::resources::rootfs::RootfsMounts;
use crate::sandbox::oom::OomCount;
pub use events::EventTx;
pub use process::{Process, Status, Stdio};
pub use spec::{check_ids_mapped, load_spec, sandbox_id_from_bundle, sandbox_id_of, validate_id};
pub use vm::Vm;

/// What a container is made of, once its init process exists in the guest.
pub struct ContainerConfig {
    pub id: String,
    pub bundle: String,
    pub sandbox_id: String,
    /// The init process's stdio.
    pub stdio: Stdio,
    pub mounts: RootfsMounts,
    /// The init process's pid in the guest.
    pub guest_pid: u32,
}

/// One container of the sandbox.
pub struct Container {
    pub id: String,
    pub bundle: String,
    pub sandbox_id: String,
    pub mounts: RootfsMounts,
    pub init: Arc<Process>,
    /// Exec processes (containerd Exec), by exec id.
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// OOM kills published as /tasks/oom (watcher events and the exit check).
    oom: OomCount,
    agent: Arc<dyn AgentApi>,
    vm: Arc<dyn Vm>,
    events: EventTx,
    /// How long a SIGKILL may take before the host carries it out itself.
    kill_grace: std::time::Duration,
}

/// How long a SIGKILL may take in the guest before the host carries it out itself.
pub const KILL_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

impl Container {
    pub fn new(cfg: ContainerConfig, agent: Arc<dyn AgentApi>, vm: Arc<dyn Vm>, events: EventTx) -> Self {
        Container {
            id: cfg.id,
            bundle: cfg.bundle,
            sandbox_id: cfg.sandbox_id,
            mounts: cfg.mounts,
            init: Arc::new(Process::init(cfg.stdio, cfg.guest_pid)),
            execs: Mutex::new(HashMap::new()),
            oom: OomCount::default(),
            agent,
            vm,
            events,
            kill_grace: KILL_GRACE,
        }
    }

    /// This container with another SIGKILL grace period (tests use a short one).
    #[cfg(test)]
    pub fn with_kill_grace(mut self, grace: std::time::Duration) -> Self {
        self.kill_grace = grace;
        self
    }

    /// The guest agent of the container's VM.
    pub fn agent(&self) -> &Arc<dyn AgentApi> {
        &self.agent
    }

    /// The channel the container's events go into.
    pub fn events(&self) -> &EventTx {
        &self.events
    }

    /// The task pid containerd sees for every process of the container (QEMU's host pid).
    pub fn pid(&self) -> u32 {
        self.vm.pid()
    }

    pub(crate) fn execs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Process>>> {
        self.execs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The process `exec_id` names: the init process when it is empty, else that exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id:?} of container {:?} not found", self.id)))
    }

    /// Fails unless the container still has a process in the guest (created, running or
    /// paused): for Stats, Update, Pids, Pause and Resume.
    pub fn live(&self) -> Result<()> {
        if self.init.state().status == Status::Stopped {
            return Err(Error::FailedPrecondition(format!("container {} has stopped", self.id)));
        }
        Ok(())
    }

    /// Stops every task working for the container: its init process's and its execs'. Execs
    /// still running died with it (SIGKILL), which frees their waiters.
    pub fn abort_tasks(&self) {
        self.init.abort_tasks();
        for e in self.execs().values() {
            e.abort_tasks();
            if e.state().status == Status::Running {
                e.mark_exited(137);
            }
        }
    }

    /// An OOM kill the sandbox's watcher reports for this container: `/tasks/oom`, unless the
    /// exit check published it already.
    pub fn on_oom_event(&self) {
        if self.oom.on_event() {
            self.events.oom(&self.id);
        }
    }
}
