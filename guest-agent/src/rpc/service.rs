//! The state behind the `Agent` service: the process table, the guest cgroups, the share, the
//! reaper, the containers' lifecycle locks, the syscall collector and the container runtime
//! (libcontainer, or a fake in tests).
use std::sync::Arc;

use crate::container::cgroups::Cgroups;
use crate::container::locks::ContainerLocks;
use crate::container::runtime::{Libcontainer, Runtime};
use crate::init::reaper::Reaper;
use crate::init::share::Share;
use crate::process::table::ProcessTable;
use crate::telemetry::Telemetry;

pub struct AgentService {
    pub(super) reaper: Arc<Reaper>,
    pub(super) share: Share,
    pub(super) no_pivot: bool,
    pub(super) runtime: Arc<dyn Runtime>,
    /// Init processes (empty exec id) and exec processes by (container id, exec id).
    pub(super) processes: ProcessTable,
    pub(super) cgroups: Arc<Cgroups>,
    /// Each container's lifecycle lock and paused state (container/locks.rs).
    pub(super) locks: ContainerLocks,
    /// The syscall collector (started by SetupSandbox; containers watched while they exist).
    pub(super) telemetry: Arc<Telemetry>,
}

impl AgentService {
    /// The service over libcontainer.
    pub fn new(reaper: Arc<Reaper>, share: Share, no_pivot: bool) -> Self {
        Self::with_runtime(reaper, share, no_pivot, Arc::new(Libcontainer))
    }

    pub fn with_runtime(reaper: Arc<Reaper>, share: Share, no_pivot: bool, runtime: Arc<dyn Runtime>) -> Self {
        Self {
            reaper,
            share,
            no_pivot,
            runtime,
            processes: ProcessTable::default(),
            cgroups: Cgroups::new(),
            locks: ContainerLocks::default(),
            telemetry: Telemetry::new(),
        }
    }
}
