//! Unit tests of the sandbox state machine and its boot failure paths, with a `FakeVmm`, a
//! `FakeAgent` and a `FakeHost` in a temporary runtime directory (no root, no QEMU).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::agent::fake::FakeAgent;
use crate::host::fake::{temp_dir, FakeHost};
use crate::sandbox::sizing::VmSize;
use crate::vmm::fake::{Behaviour, FakeVmm, FakeVmmHandle, FAKE_PID};
use crate::vmm::Accel;

struct Kit {
    runtime_dir: PathBuf,
    host: Arc<FakeHost>,
    agent: Arc<FakeAgent>,
    vmm: FakeVmmHandle,
    sb: Arc<Sandbox>,
}

fn cfg(runtime_dir: &Path) -> Config {
    let mut cfg = Config::default();
    cfg.paths.runtime_dir = runtime_dir.to_path_buf();
    cfg
}

fn kit(what: &str, behaviour: Behaviour) -> Kit {
    let runtime_dir = temp_dir(what);
    let cfg = cfg(&runtime_dir);
    let host = FakeHost::new();
    let agent = Arc::new(FakeAgent::default());
    let (vmm, handle) = FakeVmm::new(&state_dir::sandbox_dir(&runtime_dir, "ns", "pod1"), behaviour);
    let a = agent.clone();
    let deps = SandboxDeps {
        vmm: Box::new(vmm),
        connect_agent: Arc::new(move |_stream, _exit| a.clone() as Arc<dyn AgentApi>),
        host: host.clone(),
    };
    let sb = Arc::new(Sandbox::prepare_with(&cfg, "ns", "pod1", deps).expect("prepare"));
    Kit { runtime_dir, host, agent, vmm: handle, sb }
}

const SIZE: VmSize = VmSize { vcpus: 1, memory_mib: 256 };

async fn boot(k: &Kit, timeout: Duration) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(20), k.sb.boot(Accel::Tcg, SIZE, timeout))
        .await
        .expect("boot must end by itself")
}

/// Teardown leaves nothing: no directory, no mount, state TornDown.
async fn assert_torn_down(k: &Kit) {
    k.sb.teardown().await;
    assert_eq!(k.sb.state(), SandboxState::TornDown);
    assert!(k.sb.is_stopping());
    assert!(!k.sb.dir.exists(), "{} left behind", k.sb.dir.display());
    assert!(k.host.mounts().is_empty(), "mounts left: {:?}", k.host.mounts());
    let _ = std::fs::remove_dir_all(&k.runtime_dir);
}

#[tokio::test]
async fn prepare_makes_dir_and_shared_share() {
    let k = kit("sandbox-prepare", Behaviour::Boots);
    assert_eq!(k.sb.state(), SandboxState::Prepared);
    assert!(k.sb.dir.is_dir() && k.sb.share.is_dir());
    assert_eq!(k.sb.share, state_dir::share(&k.sb.dir));
    // The share's layout itself is resources/share.rs's test; here: it is made, and the
    // state directory is private.
    let mounts: Vec<_> = k.host.calls().into_iter().filter(|c| c.starts_with("mount")).collect();
    assert_eq!(mounts.len(), 7, "{mounts:?}");
    assert!(mounts[0].starts_with("mount tmpfs") && mounts[0].contains(&k.sb.share.display().to_string()));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&k.sb.dir).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(k.sb.pid(), 0);
    assert!(k.sb.agent().is_none() && k.sb.vm_exit().is_none());
    assert_torn_down(&k).await;
}

#[tokio::test]
async fn prepare_cleans_a_leftover_dir() {
    let runtime_dir = temp_dir("sandbox-leftover");
    let dir = state_dir::sandbox_dir(&runtime_dir, "ns", "pod1");
    std::fs::create_dir_all(dir.join("share")).unwrap();
    std::fs::write(dir.join("stale"), b"x").unwrap();
    std::fs::write(state_dir::pid_file(&dir), "fake-vmm 4200000 /nonexistent/fake-vmm\n").unwrap();
    let host = FakeHost::new();
    let (vmm, _h) = FakeVmm::new(&dir, Behaviour::Boots);
    let deps = SandboxDeps {
        vmm: Box::new(vmm),
        connect_agent: Arc::new(|_, _| Arc::new(FakeAgent::default()) as Arc<dyn AgentApi>),
        host: host.clone(),
    };
    let sb = Sandbox::prepare_with(&cfg(&runtime_dir), "ns", "pod1", deps).unwrap();
    assert!(!dir.join("stale").exists());
    assert!(sb.share.is_dir());
    sb.teardown().await;
    assert!(!dir.exists());
    let _ = std::fs::remove_dir_all(&runtime_dir);
}

#[tokio::test]
async fn boots_to_ready() {
    let k = kit("sandbox-boot", Behaviour::Boots);
    boot(&k, Duration::from_secs(10)).await.expect("boot");
    assert_eq!(k.sb.state(), SandboxState::Ready);
    assert_eq!(k.sb.pid(), FAKE_PID);
    assert!(k.sb.agent().is_some());
    assert_eq!(k.agent.calls(), ["check"]);
    assert_eq!(k.vmm.calls(), ["prepare", "start"]);
    let pids = state_dir::read_pids(&k.sb.dir);
    assert_eq!(pids, [("fake-vmm".to_string(), FAKE_PID as i32, PathBuf::from("/nonexistent/fake-vmm"))]);
    // booting twice is refused
    let e = boot(&k, Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
    assert_torn_down(&k).await;
    assert_eq!(k.vmm.calls(), ["prepare", "start", "stop"]);
}

#[tokio::test]
async fn vm_dies_during_boot() {
    let k = kit("sandbox-dies", Behaviour::DiesDuringBoot);
    let e = boot(&k, Duration::from_secs(10)).await.unwrap_err().to_string();
    assert!(e.contains("exited") && e.contains("before the agent was ready"), "{e}");
    assert!(e.contains("Guest console"), "{e}");
    assert_eq!(k.sb.state(), SandboxState::Dead);
    assert!(k.sb.agent().is_none());
    assert!(!k.sb.is_stopping());
    assert_torn_down(&k).await;
}

#[tokio::test]
async fn boot_timeout() {
    let k = kit("sandbox-hangs", Behaviour::Hangs);
    let e = boot(&k, Duration::from_millis(200)).await.unwrap_err().to_string();
    assert!(e.contains("no READY line") && e.contains("timeout 0s"), "{e}");
    assert_eq!(k.sb.state(), SandboxState::Dead);
    assert_torn_down(&k).await;
    assert_eq!(k.vmm.calls(), ["prepare", "start", "stop"]);
}

#[tokio::test]
async fn vmm_fails_to_start() {
    let k = kit("sandbox-nostart", Behaviour::FailsToStart);
    let e = boot(&k, Duration::from_secs(10)).await.unwrap_err();
    assert!(matches!(e, Error::Spawn { .. }), "{e}");
    assert_eq!(k.sb.state(), SandboxState::Dead);
    assert_eq!(k.sb.pid(), 0);
    assert_torn_down(&k).await;
}

#[tokio::test]
async fn agent_check_failure_fails_boot() {
    let k = kit("sandbox-check", Behaviour::Boots);
    k.agent.set_failure("check", Some(crate::agent::fake::Failure::Refused("no".into())));
    let e = boot(&k, Duration::from_secs(10)).await.unwrap_err().to_string();
    assert!(e.contains("check: no"), "{e}");
    assert_eq!(k.sb.state(), SandboxState::Dead);
    assert!(k.sb.agent().is_none());
    assert_torn_down(&k).await;
}

#[tokio::test]
async fn vm_death_after_boot_marks_the_sandbox_dead() {
    let k = kit("sandbox-death", Behaviour::Boots);
    boot(&k, Duration::from_secs(10)).await.unwrap();
    k.sb.kill_vm().await;
    let st = tokio::time::timeout(Duration::from_secs(5), crate::host::child::wait_exit(k.sb.vm_exit().unwrap()))
        .await
        .unwrap();
    assert_eq!(crate::host::child::shell_status(st), 137);
    for _ in 0..100 {
        if k.sb.state() == SandboxState::Dead {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(k.sb.state(), SandboxState::Dead);
    assert_torn_down(&k).await;
}

#[tokio::test]
async fn teardown_is_idempotent_and_final() {
    let k = kit("sandbox-teardown", Behaviour::Boots);
    boot(&k, Duration::from_secs(10)).await.unwrap();
    k.vmm.die();
    let (a, b) = tokio::join!(k.sb.teardown(), k.sb.teardown());
    let _ = (a, b);
    assert_torn_down(&k).await;
    assert_eq!(k.vmm.calls().iter().filter(|c| *c == "stop").count(), 1);
    // nothing boots a torn-down sandbox
    let e = k.sb.boot(Accel::Tcg, SIZE, Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
}

#[tokio::test]
async fn teardown_before_boot() {
    let k = kit("sandbox-early-teardown", Behaviour::Boots);
    assert_torn_down(&k).await;
    assert!(k.vmm.calls().contains(&"stop".to_string()));
}
