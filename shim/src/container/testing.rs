//! Test kit for the process lifecycle without a VM: a stand-in [`Vm`], a container whose init
//! process exists in the [`FakeAgent`]'s guest, and helpers to read the events it sends.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::protos::events::task::TaskExit;

use crate::agent::fake::FakeAgent;
use crate::agent::{AgentApi, NewContainer};
use crate::container::events::{Event, EventRx, EventTx};
use crate::container::{Container, ContainerConfig, Stdio, Vm};
use crate::resources::rootfs::RootfsMounts;

/// The task pid the stand-in VM reports.
pub const VM_PID: u32 = 4242;
/// The SIGKILL grace period of the test kit's containers.
pub const TEST_KILL_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// A stand-in VM: a fixed pid, a settable exit status, and a record of kills.
#[derive(Default)]
pub struct FakeVm {
    pub exit: Mutex<Option<ExitStatus>>,
    pub killed: AtomicBool,
}

impl FakeVm {
    /// The VM ended by SIGKILL (what `kill` makes of it too).
    pub fn sigkilled() -> ExitStatus {
        ExitStatus::from_raw(libc::SIGKILL)
    }
}

#[async_trait]
impl Vm for FakeVm {
    fn pid(&self) -> u32 {
        VM_PID
    }

    async fn exit_status(&self, _limit: Duration) -> Option<ExitStatus> {
        *self.exit.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        *self.exit.lock().unwrap_or_else(|p| p.into_inner()) = Some(Self::sigkilled());
    }
}

/// A container `id` of sandbox `sandbox_id` created in the fake guest, with the stdio given,
/// after Create: /tasks/create sent, its init process's watcher running.
pub async fn created(
    agent: &Arc<FakeAgent>,
    vm: &Arc<FakeVm>,
    events: &EventTx,
    id: &str,
    sandbox_id: &str,
) -> Arc<Container> {
    let guest_pid = agent
        .create_container(NewContainer { id: id.into(), sandbox_id: sandbox_id.into(), ..Default::default() })
        .await
        .expect("fake create_container");
    let cfg = ContainerConfig {
        id: id.into(),
        bundle: format!("/bundles/{id}"),
        sandbox_id: sandbox_id.into(),
        stdio: Stdio::default(),
        mounts: RootfsMounts::default(),
        guest_pid,
    };
    let c = Arc::new(Container::new(cfg, agent.clone(), vm.clone(), events.clone()).with_kill_grace(TEST_KILL_GRACE));
    c.init_created(&[], None, None);
    c
}

/// One container `c` (its own sandbox) with a fresh fake agent, VM and event channel.
pub async fn setup() -> (Arc<FakeAgent>, Arc<FakeVm>, Arc<Container>, EventRx) {
    let agent = Arc::new(FakeAgent::default());
    let vm = Arc::new(FakeVm::default());
    let (tx, rx) = EventTx::channel();
    let c = created(&agent, &vm, &tx, "c", "c").await;
    (agent, vm, c, rx)
}

/// An exec request's process JSON.
pub fn process_json() -> Vec<u8> {
    br#"{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}"#.to_vec()
}

/// The next event, waiting at most 2 s (a missing event fails the test, it does not hang it).
pub async fn next(rx: &mut EventRx) -> Event {
    match tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("event channel closed"),
        Err(_) => panic!("no event within 2 s"),
    }
}

/// The next event's topic.
pub async fn next_topic(rx: &mut EventRx) -> &'static str {
    next(rx).await.topic
}

/// The next event, which must be /tasks/exit: (id, status).
pub async fn next_exit(rx: &mut EventRx) -> (String, u32) {
    let e = next(rx).await;
    let exit = e.message.downcast_ref::<TaskExit>().unwrap_or_else(|| panic!("expected an exit, got {e:?}"));
    (exit.id.clone(), exit.exit_status)
}

/// Asserts no event arrives within a short while.
pub async fn assert_quiet(rx: &mut EventRx) {
    if let Ok(e) = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
        panic!("unexpected event {e:?}");
    }
}
