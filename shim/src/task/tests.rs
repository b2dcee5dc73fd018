//! The task verbs through their dispatch (container, then process, then verb) with the fake
//! agent: events in order across Start/Kill/Exec/Delete, containerd's error codes, and Stats
//! with hostile replies. No VM, no containerd: the containers are made by the test kit.

use std::collections::HashMap;
use std::sync::Arc;

use containerd_shim::api;
use containerd_shim::protos::cgroups_v2::metrics::Metrics;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::ExitSignal;

use crate::agent::fake::{Failure, FakeAgent};
use crate::container::events::*;
use crate::container::testing::*;
use crate::error::Error;
use crate::task::service::Service;
use crate::task::{delete, exec, kill, resources, start, state};

/// A service holding container `c` (its own sandbox); the test reads the event channel.
async fn service() -> (Arc<Service>, Arc<FakeAgent>, EventRx) {
    let agent = Arc::new(FakeAgent::default());
    let vm = Arc::new(FakeVm::default());
    let (tx, rx) = EventTx::channel();
    let svc = Arc::new(Service::new("ns".into(), tx.clone(), None, Arc::new(ExitSignal::default())));
    svc.insert_container(created(&agent, &vm, &tx, "c", "c").await);
    (svc, agent, rx)
}

fn exec_req(exec_id: &str) -> api::ExecProcessRequest {
    api::ExecProcessRequest {
        id: "c".into(),
        exec_id: exec_id.into(),
        spec: MessageField::some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: process_json(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn start_req(exec_id: &str) -> api::StartRequest {
    api::StartRequest { id: "c".into(), exec_id: exec_id.into(), ..Default::default() }
}

fn kill_req(exec_id: &str, signal: u32) -> api::KillRequest {
    api::KillRequest { id: "c".into(), exec_id: exec_id.into(), signal, ..Default::default() }
}

fn delete_req(exec_id: &str) -> api::DeleteRequest {
    api::DeleteRequest { id: "c".into(), exec_id: exec_id.into(), ..Default::default() }
}

fn state_req(exec_id: &str) -> api::StateRequest {
    api::StateRequest { id: "c".into(), exec_id: exec_id.into(), ..Default::default() }
}

#[tokio::test]
async fn a_container_and_an_exec_through_the_task_api() {
    let (svc, agent, mut rx) = service().await;
    assert_eq!(start::start(&svc, start_req("")).await.expect("start").pid, VM_PID);
    exec::exec(&svc, exec_req("e")).expect("exec");
    let st = state::state(&svc, state_req("e")).expect("state");
    assert_eq!((st.pid, st.status.enum_value_or_default()), (0, api::Status::CREATED));
    assert!(matches!(kill::kill(&svc, kill_req("e", 9)).await, Err(Error::FailedPrecondition(_))));
    assert!(matches!(kill::kill(&svc, kill_req("nope", 9)).await, Err(Error::NotFound(_))));
    assert_eq!(start::start(&svc, start_req("e")).await.expect("start e").pid, VM_PID);
    assert!(matches!(delete::delete(&svc, delete_req("e")).await, Err(Error::FailedPrecondition(_))));
    kill::kill(&svc, kill_req("e", 15)).await.expect("kill e");
    let w = state::wait(&svc, api::WaitRequest { id: "c".into(), exec_id: "e".into(), ..Default::default() })
        .await
        .expect("wait");
    assert_eq!(w.exit_status, 143);
    let d = delete::delete(&svc, delete_req("e")).await.expect("delete e");
    assert_eq!((d.pid, d.exit_status), (VM_PID, 143));
    assert!(matches!(state::state(&svc, state_req("e")), Err(Error::NotFound(_))));

    agent.exit("c", "", 0);
    let w = state::wait(&svc, api::WaitRequest { id: "c".into(), ..Default::default() }).await.expect("wait");
    assert_eq!(w.exit_status, 0);
    let d = delete::delete(&svc, delete_req("")).await.expect("delete");
    assert_eq!((d.pid, d.exit_status), (VM_PID, 0));
    assert!(matches!(svc.container("c"), Err(Error::NotFound(_))), "the container is forgotten");
    assert!(!svc.has_containers());

    let expected = [
        TOPIC_CREATE,
        TOPIC_START,
        TOPIC_EXEC_ADDED,
        TOPIC_EXEC_STARTED,
        TOPIC_EXIT,
        TOPIC_DELETE,
        TOPIC_EXIT,
        TOPIC_DELETE,
    ];
    for t in expected {
        assert_eq!(next_topic(&mut rx).await, t);
    }
    assert_quiet(&mut rx).await;
}

#[tokio::test]
async fn delete_of_a_running_container_is_refused_and_keeps_it() {
    let (svc, _agent, mut rx) = service().await;
    start::start(&svc, start_req("")).await.expect("start");
    assert!(matches!(delete::delete(&svc, delete_req("")).await, Err(Error::FailedPrecondition(_))));
    assert!(svc.container("c").is_ok());
    resources::pause(&svc, "c", true).await.expect("pause");
    assert!(matches!(delete::delete(&svc, delete_req("")).await, Err(Error::FailedPrecondition(_))));
    assert_eq!(state::state(&svc, state_req("")).expect("state").status.enum_value_or_default(), api::Status::PAUSED);
    for t in [TOPIC_CREATE, TOPIC_START, TOPIC_PAUSED] {
        assert_eq!(next_topic(&mut rx).await, t);
    }
    assert_quiet(&mut rx).await;
}

#[tokio::test]
async fn unknown_container_or_process() {
    let (svc, _agent, _rx) = service().await;
    let req = api::StartRequest { id: "other".into(), ..Default::default() };
    assert!(matches!(start::start(&svc, req).await, Err(Error::NotFound(_))));
    assert!(matches!(state::state(&svc, state_req("nope")), Err(Error::NotFound(_))));
    let mut bad = exec_req("e");
    bad.id = "other".into();
    assert!(matches!(exec::exec(&svc, bad), Err(Error::NotFound(_))));
    assert_eq!(state::connect(&svc, api::ConnectRequest { id: "c".into(), ..Default::default() }).task_pid, VM_PID);
}

fn metrics(r: &api::StatsResponse) -> Metrics {
    let any = r.stats.as_ref().expect("stats");
    assert!(any.type_url.ends_with("io.containerd.cgroups.v2.Metrics"), "{}", any.type_url);
    Metrics::parse_from_bytes(&any.value).expect("metrics decode")
}

#[tokio::test]
async fn stats_with_oversized_or_malformed_replies() {
    let (svc, agent, _rx) = service().await;
    let req = || api::StatsRequest { id: "c".into(), ..Default::default() };
    // Oversized: a huge io.stat (more devices than kept) and a huge memory.events.
    let io: String = (0..10_000).map(|i| format!("8:{i} rbytes=1 wbytes=2 rios=3 wios=4\n")).collect();
    let mut events = vec![b'x'; 8 * 1024 * 1024];
    events.extend_from_slice(b"\noom_kill 9\n");
    agent.set_stats(HashMap::from([
        ("io.stat".to_string(), io.into_bytes()),
        ("memory.events".to_string(), events),
        ("pids.current".to_string(), b"12\n".to_vec()),
    ]));
    let m = metrics(&resources::stats(&svc, req()).await.expect("oversized reply: bounded, not an error"));
    assert!(!m.io.usage.is_empty() && m.io.usage.len() <= 256, "io devices bounded: {}", m.io.usage.len());
    assert_eq!(m.memory_events.oom_kill, 0, "a line past the size bound is not read");
    assert_eq!(m.pids.current, 12);
    // Malformed: binary garbage, overflowing numbers, wrong shapes: zeros, no panic.
    agent.set_stats(HashMap::from([
        ("cpu.stat".to_string(), vec![0xff, 0xfe, 0x00, b'\n']),
        ("memory.current".to_string(), b"99999999999999999999999999\n".to_vec()),
        ("pids.max".to_string(), b"max\n".to_vec()),
        ("io.stat".to_string(), b"8:x rbytes=y\n:\n8:0 rbytes\n".to_vec()),
    ]));
    let m = metrics(&resources::stats(&svc, req()).await.expect("malformed reply"));
    assert_eq!((m.cpu.usage_usec, m.memory.usage, m.pids.limit), (0, 0, u64::MAX));
    assert_eq!(m.io.usage.len(), 1, "only the well-formed device line is kept");
    // The agent fails: a clear error, not a panic.
    agent.set_failure("stats_container", Some(Failure::Unreachable));
    assert!(matches!(resources::stats(&svc, req()).await, Err(Error::AgentUnreachable(_))));
    // A stopped container has no stats.
    agent.set_failure("stats_container", None);
    agent.exit("c", "", 0);
    let c = svc.container("c").expect("c");
    c.wait(&c.init).await;
    assert!(matches!(resources::stats(&svc, req()).await, Err(Error::FailedPrecondition(_))));
}

/// Create through the real Create verb: the pod's sandbox prepared on the host for real (its
/// share mounted in a temporary runtime directory; the test runs as root, like scripts/test)
/// with the fake VMM and the fake agent; then Start, the guest's exit, Delete — events in order,
/// and nothing left behind. A VM that dies while booting fails Create and leaves nothing.
mod create_through_fakes {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::agent::AgentApi;
    use crate::config::{Acceleration, Config};
    use crate::host::fake::MountedTempDir;
    use crate::host::linux::{mounts_under, LinuxHost};
    use crate::sandbox::state_dir;
    use crate::sandbox::{Sandbox, SandboxDeps};
    use crate::task::create;
    use crate::task::service::Env;
    use crate::vmm::fake::{Behaviour, FakeVmm, FAKE_PID};

    fn bundle(dir: &Path) -> PathBuf {
        bundle_with(dir, serde_json::json!({}))
    }

    /// A bundle whose config.json has `annotations`.
    fn bundle_with(dir: &Path, annotations: serde_json::Value) -> PathBuf {
        let b = dir.join("bundle");
        std::fs::create_dir_all(b.join("rootfs")).unwrap();
        std::fs::write(b.join("rootfs/hello"), b"hi").unwrap();
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "annotations": annotations
        });
        std::fs::write(b.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
        b
    }

    fn service(runtime_dir: &Path, behaviour: Behaviour) -> (Arc<Service>, Arc<FakeAgent>, EventRx) {
        service_with(runtime_dir, behaviour, |_| {})
    }

    fn service_with(
        runtime_dir: &Path,
        behaviour: Behaviour,
        tweak: fn(&mut Config),
    ) -> (Arc<Service>, Arc<FakeAgent>, EventRx) {
        let agent = Arc::new(FakeAgent::default());
        let (a, rd) = (agent.clone(), runtime_dir.to_path_buf());
        let env = Env {
            config: Box::new(move || {
                let mut c = Config::default();
                c.paths.runtime_dir = rd.clone();
                c.vm.acceleration = Acceleration::Tcg;
                tweak(&mut c);
                Ok(c)
            }),
            prepare: std::sync::Arc::new(move |cfg, ns, id| {
                let (vmm, _handle) = FakeVmm::new(&state_dir::sandbox_dir(&cfg.paths.runtime_dir, ns, id), behaviour);
                let a = a.clone();
                let deps = SandboxDeps {
                    vmm: Box::new(vmm),
                    connect_agent: Arc::new(move |_stream, _exit| a.clone() as Arc<dyn AgentApi>),
                    host: Arc::new(LinuxHost),
                    // This host has no usable cgroup v2: the sandbox runs without host limits.
                    cgroups: Arc::new(|| Err(bulwark_host_cgroup::Error::Unusable("test host".into()))),
                    idmap: false,
                };
                Sandbox::prepare_with(cfg, ns, id, deps)
            }),
        };
        let (tx, rx) = EventTx::channel();
        let svc = Arc::new(Service::with_env(env, "ns".into(), tx, None, Arc::new(ExitSignal::default())));
        (svc, agent, rx)
    }

    fn create_req(bundle: &Path) -> api::CreateTaskRequest {
        api::CreateTaskRequest { id: "pod1".into(), bundle: bundle.display().to_string(), ..Default::default() }
    }

    fn assert_nothing_left(runtime_dir: &Path) {
        let dir = state_dir::sandbox_dir(runtime_dir, "ns", "pod1");
        assert!(!dir.exists(), "{} left behind", dir.display());
        assert!(mounts_under(runtime_dir).is_empty(), "mounts left: {:?}", mounts_under(runtime_dir));
    }

    #[tokio::test]
    async fn create_start_exit_delete() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root (scripts/test runs as root)");
        let tmp = MountedTempDir::new("task-create");
        let (svc, agent, mut rx) = service(&tmp.join("run"), Behaviour::Boots);
        let r = create::create(&svc, create_req(&bundle(&tmp))).await.expect("create");
        assert_eq!(r.pid, FAKE_PID, "the task pid is the VM's");
        assert_eq!(next_topic(&mut rx).await, TOPIC_CREATE);
        let export = state_dir::export(&state_dir::sandbox_dir(&tmp.join("run"), "ns", "pod1"));
        assert_eq!(std::fs::read(export.join("pod1/rootfs/hello")).unwrap(), b"hi", "the guest sees the rootfs");
        let calls = agent.calls();
        assert!(calls.iter().any(|c| c == "check") && calls.iter().any(|c| c == "create_container pod1"), "{calls:?}");
        let again = create::create(&svc, create_req(&bundle(&tmp))).await;
        assert!(matches!(again, Err(Error::AlreadyExists(_))), "{again:?}");

        let req = api::StartRequest { id: "pod1".into(), ..Default::default() };
        assert_eq!(start::start(&svc, req).await.expect("start").pid, FAKE_PID);
        assert_eq!(next_topic(&mut rx).await, TOPIC_START);
        agent.exit("pod1", "", 3);
        assert_eq!(next_exit(&mut rx).await, ("pod1".to_string(), 3));
        let req = api::DeleteRequest { id: "pod1".into(), ..Default::default() };
        let d = delete::delete(&svc, req).await.expect("delete");
        assert_eq!((d.pid, d.exit_status), (FAKE_PID, 3));
        assert_eq!(next_topic(&mut rx).await, TOPIC_DELETE);
        assert_nothing_left(&tmp.join("run"));
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[tokio::test]
    async fn a_vm_dying_during_boot_fails_create_and_leaves_nothing() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root (scripts/test runs as root)");
        let tmp = MountedTempDir::new("task-create-dies");
        let (svc, agent, mut rx) = service(&tmp.join("run"), Behaviour::DiesDuringBoot);
        let e = create::create(&svc, create_req(&bundle(&tmp))).await.expect_err("create must fail");
        assert!(e.to_string().contains("exited"), "{e}");
        assert!(!agent.calls().iter().any(|c| c.starts_with("create_container")), "{:?}", agent.calls());
        assert!(!svc.has_containers());
        assert_quiet(&mut rx).await;
        assert_nothing_left(&tmp.join("run"));
        let _ = std::fs::remove_dir_all(&tmp);
    }

    /// The tenant policy: a pod over its tenant's ceiling is refused before anything is made;
    /// a hostile annotation changes nothing; exec is refused where the tenant may not exec.
    #[tokio::test]
    async fn the_tenant_policy_is_enforced() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root (scripts/test runs as root)");
        let tmp = MountedTempDir::new("task-tenant");
        let run = tmp.join("run");
        let small = |c: &mut Config| {
            let over = crate::policy::TenantOverride {
                max_vcpus: Some(2),
                allow_exec: Some(false),
                allow_unconfined_seccomp: Some(true),
                ..Default::default()
            };
            c.tenants.insert("team-a".into(), over);
        };
        let (svc, agent, mut rx) = service_with(&run, Behaviour::Boots, small);
        let greedy = bundle_with(
            &tmp,
            serde_json::json!({
                "io.kubernetes.cri.sandbox-namespace": "team-a",
                "io.kubernetes.cri.sandbox-cpu-quota": "400000",
                "io.kubernetes.cri.sandbox-cpu-period": "100000"
            }),
        );
        let e = create::create(&svc, create_req(&greedy)).await.expect_err("over the ceiling");
        let msg = e.to_string();
        assert!(matches!(e, Error::InvalidArgument(_)) && msg.contains("4 vCPUs") && msg.contains("team-a"), "{msg}");
        assert!(agent.calls().is_empty(), "nothing reached a VM: {:?}", agent.calls());
        assert_nothing_left(&run);

        // Within the ceiling, with an annotation that tries to pick a kernel: created, and the
        // annotation is ignored (only READ_ANNOTATIONS are read).
        let ok = bundle_with(
            &tmp,
            serde_json::json!({
                "io.kubernetes.cri.sandbox-namespace": "team-a",
                "io.kubernetes.cri.sandbox-cpu-quota": "200000",
                "io.kubernetes.cri.sandbox-cpu-period": "100000",
                "bulwark.io/kernel": "/tmp/evil-vmlinux"
            }),
        );
        create::create(&svc, create_req(&ok)).await.expect("create");
        assert_eq!(next_topic(&mut rx).await, TOPIC_CREATE);
        assert!(
            agent.calls().iter().any(|c| c == "create_container pod1 unconfined-seccomp"),
            "the tenant's seccomp allowance reaches the agent: {:?}",
            agent.calls()
        );
        let req = api::StartRequest { id: "pod1".into(), ..Default::default() };
        start::start(&svc, req).await.expect("start");
        assert_eq!(next_topic(&mut rx).await, TOPIC_START);
        let mut x = exec_req("e");
        x.id = "pod1".into();
        let e = exec::exec(&svc, x).expect_err("exec refused");
        assert!(e.to_string().contains("allow_exec"), "{e}");
        agent.exit("pod1", "", 0);
        assert_eq!(next_exit(&mut rx).await, ("pod1".to_string(), 0));
        let req = api::DeleteRequest { id: "pod1".into(), ..Default::default() };
        delete::delete(&svc, req).await.expect("delete");
        assert_nothing_left(&run);
        let _ = std::fs::remove_dir_all(&tmp);
    }
}

/// A verb dropped by ttrpc at its deadline still runs to its end (nothing half made is left
/// without an owner), and a panic in it is an error, not a dead shim.
#[tokio::test]
async fn a_verb_whose_request_is_dropped_runs_to_its_end() {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = done.clone();
    let verb = super::to_the_end("Create", async move {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        d.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    });
    // the request's deadline: the handler's future is dropped
    assert!(tokio::time::timeout(std::time::Duration::from_millis(10), verb).await.is_err());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(done.load(std::sync::atomic::Ordering::SeqCst), "the verb was cut off halfway");
    let e = super::to_the_end::<()>("Delete", async { panic!("a bug") }).await.unwrap_err();
    assert!(e.to_string().contains("Delete"), "{e}");
}

/// Shutdown waits behind a Create or Delete still at work (one whose request timed out runs on
/// in its own task): the shim does not exit under it.
#[tokio::test]
async fn shutdown_waits_for_a_verb_at_work() {
    let (tx, _rx) = EventTx::channel();
    let exit = Arc::new(ExitSignal::default());
    let svc = Arc::new(Service::new("ns".into(), tx, None, exit.clone()));
    let at_work = svc.lifecycle.lock().await;
    let s = svc.clone();
    let shutdown = tokio::spawn(async move { delete::shutdown(&s).await });
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), exit.wait()).await;
    assert!(early.is_err(), "the shim was told to exit while a verb held the lifecycle lock");
    drop(at_work);
    tokio::time::timeout(std::time::Duration::from_secs(5), exit.wait()).await.expect("exit once the verb is done");
    shutdown.await.unwrap();
}
