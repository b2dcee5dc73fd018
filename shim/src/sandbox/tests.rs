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

/// A host like this one: hybrid mode, no usable cgroup v2.
fn no_cgroup_v2() -> host_cgroup::FindHierarchy {
    Arc::new(|| Err(bulwark_host_cgroup::Error::Unusable("test host: cgroup v1 only".into())))
}

fn kit(what: &str, behaviour: Behaviour) -> Kit {
    kit_with(what, behaviour, |_| {}, no_cgroup_v2())
}

fn kit_with(
    what: &str,
    behaviour: Behaviour,
    adjust: impl FnOnce(&mut Config),
    cgroups: host_cgroup::FindHierarchy,
) -> Kit {
    let runtime_dir = temp_dir(what);
    let mut cfg = cfg(&runtime_dir);
    adjust(&mut cfg);
    let host = FakeHost::new();
    let agent = Arc::new(FakeAgent::default());
    let (vmm, handle) = FakeVmm::new(&state_dir::sandbox_dir(&runtime_dir, "ns", "pod1"), behaviour);
    let a = agent.clone();
    let deps = SandboxDeps {
        vmm: Box::new(vmm),
        connect_agent: Arc::new(move |_stream, _exit| a.clone() as Arc<dyn AgentApi>),
        host: host.clone(),
        cgroups,
        idmap: false,
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
        cgroups: no_cgroup_v2(),
        idmap: false,
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
    assert_eq!(k.vmm.calls(), ["prepare", "agent_socket", "start"]);
    let pids = state_dir::read_pids(&k.sb.dir);
    assert_eq!(pids, [("fake-vmm".to_string(), FAKE_PID as i32, PathBuf::from("/nonexistent/fake-vmm"))]);
    // booting twice is refused
    let e = boot(&k, Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
    assert_torn_down(&k).await;
    assert_eq!(k.vmm.calls(), ["prepare", "agent_socket", "start", "stop"]);
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
    assert_eq!(k.vmm.calls(), ["prepare", "agent_socket", "start", "stop"]);
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

// --- host cgroup (jail/cgroup.rs) wiring

/// A sandbox spec with `cgroupsPath` and the CRI resource annotations.
fn pod_spec(cgroups_path: &str) -> oci_spec::runtime::Spec {
    let json = serde_json::json!({
        "ociVersion": "1.0.2",
        "root": { "path": "rootfs" },
        "annotations": {
            "io.kubernetes.cri.sandbox-cpu-quota": "50000",
            "io.kubernetes.cri.sandbox-cpu-period": "100000",
            "io.kubernetes.cri.sandbox-memory": "134217728"
        },
        "linux": { "cgroupsPath": cgroups_path }
    });
    serde_json::from_value(json).expect("spec")
}

/// A fake cgroup v2 hierarchy in which the VMM's processes are gone once rmdir is tried
/// (the fake VMM's pids are not real processes).
#[derive(Debug)]
struct ProcsGoneKernel;
impl bulwark_host_cgroup::Kernel for ProcsGoneKernel {
    fn mkdir(&self, p: &Path) -> std::io::Result<()> {
        bulwark_host_cgroup::FakeKernel.mkdir(p)
    }
    fn rmdir(&self, p: &Path) -> std::io::Result<()> {
        std::fs::write(p.join("cgroup.procs"), "")?;
        bulwark_host_cgroup::FakeKernel.rmdir(p)
    }
}

#[tokio::test]
async fn host_cgroup_created_filled_and_removed() {
    let root = temp_dir("sandbox-cgroup-root");
    bulwark_host_cgroup::FakeKernel::make_root(&root, "cpu memory pids io").unwrap();
    let r = root.clone();
    let find: host_cgroup::FindHierarchy =
        Arc::new(move || Ok(bulwark_host_cgroup::Hierarchy::with_kernel(&r, Arc::new(ProcsGoneKernel))));
    let k = kit_with("sandbox-cgroup", Behaviour::Boots, |c| c.cgroup.move_shim = false, find);
    k.sb.set_pod_config(&pod_spec("/kubepods/burstable/pod1/pod1"), None).unwrap();
    boot(&k, Duration::from_secs(5)).await.expect("boot");
    let cg = root.join("kubepods/burstable/pod1/pod1");
    let read = |f: &str| std::fs::read_to_string(cg.join(f)).unwrap();
    // 128 MiB + 256 MiB overhead; 0.5 CPU + 250 millicores.
    assert_eq!(read("memory.max"), (384u64 << 20).to_string());
    assert_eq!(read("cpu.max"), "75000 100000");
    assert_eq!(read("pids.max"), "1024");
    assert_eq!(read("vmm/cgroup.procs").trim(), FAKE_PID.to_string());
    assert_eq!(std::fs::read_to_string(state_dir::cgroup_record(&k.sb.dir)).unwrap(), cg.display().to_string());
    assert_torn_down(&k).await;
    assert!(!cg.exists(), "host cgroup left behind");
    assert!(root.join("kubepods/burstable/pod1").is_dir(), "the pod cgroup is kubelet's");
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn no_cgroup_v2_boots_unless_required() {
    let k = kit("sandbox-cgroup-none", Behaviour::Boots);
    k.sb.set_pod_config(&pod_spec("/kubepods/pod1/pod1"), None).unwrap();
    boot(&k, Duration::from_secs(5)).await.expect("boots without host limits");
    assert_torn_down(&k).await;

    let k = kit_with("sandbox-cgroup-req", Behaviour::Boots, |c| c.cgroup.required = true, no_cgroup_v2());
    k.sb.set_pod_config(&pod_spec("kubepods-pod1.slice:cri-containerd:pod1"), None).unwrap();
    let e = boot(&k, Duration::from_secs(5)).await.expect_err("required").to_string();
    assert!(e.contains("cgroup.required") && e.contains("cgroup v1 only"), "{e}");
    // Refused before any VMM process started.
    assert!(!k.vmm.calls().iter().any(|c| c == "prepare" || c == "start"), "{:?}", k.vmm.calls());
    assert_torn_down(&k).await;
}

#[tokio::test]
async fn hostile_cgroups_path_is_refused() {
    let k = kit("sandbox-cgroup-bad", Behaviour::Boots);
    for bad in ["/kubepods/../../sys", "kubepods.slice:cri:../x", "relative/pod"] {
        let e = k.sb.set_pod_config(&pod_spec(bad), None).expect_err(bad);
        assert!(matches!(e, Error::InvalidArgument(_)), "{bad}: {e}");
        assert!(e.to_string().contains("cgroupsPath"), "{e}");
    }
    assert_torn_down(&k).await;
}
