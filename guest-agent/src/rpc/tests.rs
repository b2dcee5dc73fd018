//! RPC logic over a fake runtime: no libcontainer, no real pid is ever signalled.
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use oci_spec::runtime::LinuxSeccomp;
use protocol::agent::*;
use tokio::sync::watch;
use ttrpc::Code;

use crate::container::runtime::Runtime;
use crate::container::ContainerError;
use crate::init::reaper::{ExitReceiver, Reaper};
use crate::init::share::Share;
use crate::process::{ChildStdio, Process};
use crate::rpc::containers::{self, check_terminal, sandbox_id_of};
use crate::rpc::errors::code_of;
use crate::rpc::processes::{self, parse_signal, read_limit};
use crate::rpc::service::AgentService;
use crate::rpc::stats;

/// Records every call; kill_all and signal "reap" the container's init process through the
/// exit channel the test registered, as the reaper would.
#[derive(Default)]
struct FakeRuntime {
    calls: Mutex<Vec<String>>,
    fail_kill_all: bool,
    fail_delete: bool,
    exits: Mutex<HashMap<i32, watch::Sender<Option<i32>>>>,
    /// Execs into this container block (like a child joining a frozen cgroup) until released;
    /// execs into others succeed.
    frozen: Option<String>,
    released: (Mutex<bool>, Condvar),
}

impl FakeRuntime {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls").clone()
    }
    fn record(&self, call: String) {
        self.calls.lock().expect("calls").push(call);
    }
    fn reap(&self, pid: i32, status: i32) {
        if let Some(tx) = self.exits.lock().expect("exits").remove(&pid) {
            let _ = tx.send(Some(status));
        }
    }
    fn release(&self) {
        *self.released.0.lock().expect("released") = true;
        self.released.1.notify_all();
    }
    fn io_error() -> ContainerError {
        ContainerError::Io { what: "fake", path: "/fake".into(), source: std::io::Error::other("fake failure") }
    }
}

impl Runtime for FakeRuntime {
    fn create(
        &self,
        id: &str,
        _bundle: &Path,
        _stdio: ChildStdio,
        _no_pivot: bool,
        _reaper: &Reaper,
    ) -> Result<(i32, ExitReceiver), ContainerError> {
        self.record(format!("create {id}"));
        Err(Self::io_error())
    }
    fn start(&self, id: &str) -> Result<(), ContainerError> {
        self.record(format!("start {id}"));
        Ok(())
    }
    fn kill_all(&self, id: &str, signal: i32) -> Result<(), ContainerError> {
        self.record(format!("kill_all {id} {signal}"));
        if self.fail_kill_all {
            return Err(Self::io_error());
        }
        let pids: Vec<i32> = self.exits.lock().expect("exits").keys().copied().collect();
        for pid in pids {
            self.reap(pid, 128 + signal);
        }
        Ok(())
    }
    fn delete(&self, id: &str) -> Result<(), ContainerError> {
        self.record(format!("delete {id}"));
        if self.fail_delete {
            return Err(Self::io_error());
        }
        Ok(())
    }
    fn exec(
        &self,
        id: &str,
        _process_json: &Path,
        _stdio: ChildStdio,
        _seccomp: Option<LinuxSeccomp>,
        reaper: &Reaper,
    ) -> Result<(i32, ExitReceiver), ContainerError> {
        self.record(format!("exec {id}"));
        match &self.frozen {
            Some(f) if f == id => {
                let (lock, cv) = &self.released;
                let g = lock.lock().expect("released");
                let (_g, _) = cv.wait_timeout_while(g, Duration::from_secs(20), |r| !*r).expect("wait");
                Err(Self::io_error())
            }
            Some(_) => {
                let guard = reaper.lock();
                Ok((7000, reaper.watch(&guard, 7000)))
            }
            None => Err(Self::io_error()),
        }
    }
    fn set_paused(&self, id: &str, pause: bool) -> Result<(), ContainerError> {
        self.record(format!("set_paused {id} {pause}"));
        Ok(())
    }
    fn signal(&self, pid: i32, signo: i32) -> std::io::Result<()> {
        self.record(format!("signal {pid} {signo}"));
        if signo == libc::SIGKILL {
            self.reap(pid, 137);
        }
        Ok(())
    }
}

fn service(fake: &Arc<FakeRuntime>) -> AgentService {
    AgentService::with_runtime(Reaper::new(), Share::new(), false, fake.clone())
}

/// Ids no real container uses (RemoveContainer also clears the bundle and pod directories).
const C: &str = "bwk-rpc-test-c1";

/// Adds a process to the table; returns the sender of its exit status.
async fn add(svc: &AgentService, fake: &FakeRuntime, exec_id: &str, pid: i32) -> watch::Sender<Option<i32>> {
    add_to(svc, fake, C, exec_id, pid).await
}

async fn add_to(
    svc: &AgentService,
    fake: &FakeRuntime,
    id: &str,
    exec_id: &str,
    pid: i32,
) -> watch::Sender<Option<i32>> {
    let (tx, rx) = watch::channel(None);
    let p = Arc::new(Process::without_stdio(pid, rx));
    if exec_id.is_empty() {
        svc.processes.insert_container(id.into(), p).await;
        // The fake runtime reaps the init process on kill_all / SIGKILL.
        let (fake_tx, mut fake_rx) = watch::channel(None);
        fake.exits.lock().expect("exits").insert(pid, fake_tx);
        let forward = tx.clone();
        tokio::spawn(async move {
            if let Ok(s) = fake_rx.wait_for(|s| s.is_some()).await {
                let _ = forward.send(*s);
            }
        });
    } else {
        svc.processes.insert_exec(id.into(), exec_id.into(), p).await;
    }
    tx
}

fn container_req(id: &str) -> ContainerRequest {
    ContainerRequest { container_id: id.into(), ..Default::default() }
}

fn process_req(exec_id: &str) -> ProcessRequest {
    ProcessRequest { container_id: C.into(), exec_id: exec_id.into(), ..Default::default() }
}

fn signal_req(exec_id: &str, signal: u32, all: bool) -> SignalProcessRequest {
    SignalProcessRequest { container_id: C.into(), exec_id: exec_id.into(), signal, all, ..Default::default() }
}

fn code<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> Code {
    code_of(&r.expect_err("an error")).0
}

#[test]
fn signals_are_checked() {
    assert_eq!(parse_signal(0).ok(), Some(0), "0 probes liveness");
    assert_eq!(parse_signal(15).ok(), Some(15));
    assert_eq!(
        code_of(&parse_signal(u32::MAX).expect_err("range")),
        (Code::INVALID_ARGUMENT, "signal out of range".into())
    );
    assert_eq!(code_of(&parse_signal(999).expect_err("999")), (Code::INVALID_ARGUMENT, "invalid signal 999".into()));
}

#[test]
fn read_sizes_are_capped() {
    assert_eq!(read_limit(0), protocol::MAX_READ_CHUNK as usize);
    assert_eq!(read_limit(10), 10);
    assert_eq!(read_limit(u32::MAX), protocol::MAX_READ_CHUNK as usize);
}

#[test]
fn terminal_must_match_the_spec_and_the_sandbox_defaults_to_the_container() {
    let spec = serde_json::json!({"process": {"terminal": true}});
    assert_eq!(check_terminal(&spec, true).ok(), Some(true));
    let e = check_terminal(&spec, false).expect_err("mismatch");
    assert_eq!(
        code_of(&e),
        (Code::INVALID_ARGUMENT, "terminal=false in the request but process.terminal=true in the spec".into())
    );
    assert_eq!(check_terminal(&serde_json::json!({}), false).ok(), Some(false), "no process.terminal: false");
    assert!(check_terminal(&serde_json::json!({}), true).is_err());

    let mut req = CreateContainerRequest { container_id: "pause".into(), ..Default::default() };
    assert_eq!(sandbox_id_of(&req), "pause");
    req.sandbox_id = "pod".into();
    assert_eq!(sandbox_id_of(&req), "pod");
}

#[tokio::test]
async fn create_refuses_bad_and_duplicate_ids_before_touching_the_guest() {
    let fake = Arc::new(FakeRuntime::default());
    let svc = service(&fake);
    for bad in ["", "../x", "a/b", ".hidden"] {
        let req = CreateContainerRequest { container_id: bad.into(), ..Default::default() };
        assert_eq!(code(containers::create(&svc, &req).await), Code::INVALID_ARGUMENT, "{bad:?}");
    }
    let _exit = add(&svc, &fake, "", 10).await;
    let req = CreateContainerRequest { container_id: C.into(), ..Default::default() };
    assert_eq!(code(containers::create(&svc, &req).await), Code::ALREADY_EXISTS);
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
}

#[tokio::test]
async fn start_looks_the_container_up_then_calls_the_runtime() {
    let fake = Arc::new(FakeRuntime::default());
    let svc = service(&fake);
    assert_eq!(code(containers::start(&svc, container_req(C)).await), Code::NOT_FOUND);
    assert!(fake.calls().is_empty());
    let _exit = add(&svc, &fake, "", 10).await;
    containers::start(&svc, container_req(C)).await.expect("start");
    assert_eq!(fake.calls(), [format!("start {C}")]);
}

#[tokio::test]
async fn signal_goes_to_the_process_or_to_the_whole_container() {
    let fake = Arc::new(FakeRuntime::default());
    let svc = service(&fake);
    assert_eq!(code(processes::signal(&svc, signal_req("", 15, false)).await), Code::NOT_FOUND);
    let _init = add(&svc, &fake, "", 10).await;
    let exec_exit = add(&svc, &fake, "e1", 11).await;
    processes::signal(&svc, signal_req("", 15, false)).await.expect("init");
    processes::signal(&svc, signal_req("e1", 2, false)).await.expect("exec");
    assert_eq!(code(processes::signal(&svc, signal_req("e1", 999, false)).await), Code::INVALID_ARGUMENT);
    exec_exit.send(Some(0)).expect("exit");
    let e = processes::signal(&svc, signal_req("e1", 15, false)).await.expect_err("exited");
    assert_eq!(code_of(&e), (Code::NOT_FOUND, format!("process of container {C:?} has already exited")));
    processes::signal(&svc, signal_req("e1", 9, true)).await.expect("all");
    assert_eq!(fake.calls(), ["signal 10 15".to_string(), "signal 11 2".into(), format!("kill_all {C} 9")]);
}

#[tokio::test]
async fn wait_returns_the_exit_status_once_reaped() {
    let fake = Arc::new(FakeRuntime::default());
    let svc = Arc::new(service(&fake));
    let exit = add(&svc, &fake, "e1", 11).await;
    let waiter = {
        let svc = svc.clone();
        tokio::spawn(async move { processes::wait(&svc, process_req("e1")).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiter.is_finished(), "returned before the process exited");
    exit.send(Some(3)).expect("exit");
    let resp = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("in time").expect("task");
    assert_eq!(resp.expect("wait").exit_status, 3);
    assert_eq!(code(processes::wait(&svc, process_req("e2")).await), Code::NOT_FOUND);
}

#[tokio::test]
async fn remove_process_takes_an_exited_exec_only() {
    let fake = Arc::new(FakeRuntime::default());
    let svc = service(&fake);
    let _init = add(&svc, &fake, "", 10).await;
    let exit = add(&svc, &fake, "e1", 11).await;
    assert_eq!(code(processes::remove(&svc, process_req("")).await), Code::INVALID_ARGUMENT);
    assert_eq!(code(processes::remove(&svc, process_req("e1")).await), Code::FAILED_PRECONDITION);
    exit.send(Some(0)).expect("exit");
    processes::remove(&svc, process_req("e1")).await.expect("remove");
    assert_eq!(code(processes::remove(&svc, process_req("e1")).await), Code::NOT_FOUND);
    assert!(svc.processes.get(C, "").await.is_ok(), "the init process stays");
}

#[tokio::test]
async fn exec_is_refused_before_the_runtime_when_it_cannot_run() {
    let fake = Arc::new(FakeRuntime::default());
    let svc = service(&fake);
    let req = |exec_id: &str| ExecProcessRequest {
        container_id: C.into(),
        exec_id: exec_id.into(),
        process_json: b"{}".to_vec(),
        ..Default::default()
    };
    assert_eq!(code(processes::exec(&svc, req("e1")).await), Code::NOT_FOUND);
    let init_exit = add(&svc, &fake, "", 10).await;
    let _e1 = add(&svc, &fake, "e1", 11).await;
    assert_eq!(code(processes::exec(&svc, req("e1")).await), Code::ALREADY_EXISTS);
    assert_eq!(code(processes::exec(&svc, req("a/b")).await), Code::INVALID_ARGUMENT);
    assert_eq!(code(processes::exec(&svc, req("e2")).await), Code::INVALID_ARGUMENT, "{{}} has no args");
    init_exit.send(Some(0)).expect("exit");
    assert_eq!(code(processes::exec(&svc, req("e2")).await), Code::FAILED_PRECONDITION);
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
}

#[tokio::test]
async fn stdio_rpcs_without_stdio() {
    let fake = Arc::new(FakeRuntime::default());
    let svc = service(&fake);
    let _init = add(&svc, &fake, "", 10).await;
    let write = WriteStreamRequest { container_id: C.into(), data: b"x".to_vec(), ..Default::default() };
    assert_eq!(code(processes::write_stdin(&svc, write).await), Code::FAILED_PRECONDITION, "no stdin");
    processes::close_stdin(&svc, process_req("")).await.expect("close stdin");
    let resize = ResizePtyRequest { container_id: C.into(), width: 80, height: 24, ..Default::default() };
    processes::resize_pty(&svc, resize).await.expect("ignored without a terminal");
    let read = ReadStreamRequest { container_id: C.into(), exec_id: "e9".into(), ..Default::default() };
    assert_eq!(code(processes::read(&svc, read, false).await), Code::NOT_FOUND);
}

#[tokio::test]
async fn remove_container_kills_a_running_init_and_forgets_its_execs() {
    let fake = Arc::new(FakeRuntime::default());
    let svc = service(&fake);
    let _init = add(&svc, &fake, "", 10).await;
    let _e1 = add(&svc, &fake, "e1", 11).await;
    tokio::time::timeout(Duration::from_secs(5), containers::remove(&svc, container_req(C)))
        .await
        .expect("the init process was reaped, no KILL_WAIT")
        .expect("remove");
    assert_eq!(fake.calls(), [format!("kill_all {C} 9"), format!("delete {C}")]);
    assert!(svc.processes.get(C, "").await.is_err());
    assert!(svc.processes.get(C, "e1").await.is_err());
    assert_eq!(code(containers::remove(&svc, container_req(C)).await), Code::NOT_FOUND);
}

#[tokio::test]
async fn remove_container_falls_back_to_the_init_pid_and_forgets_it_even_if_delete_fails() {
    let fake = Arc::new(FakeRuntime { fail_kill_all: true, fail_delete: true, ..Default::default() });
    let svc = service(&fake);
    let _init = add(&svc, &fake, "", 10).await;
    let e = tokio::time::timeout(Duration::from_secs(5), containers::remove(&svc, container_req(C)))
        .await
        .expect("in time")
        .expect_err("delete failed");
    assert_eq!(code_of(&e).0, Code::INTERNAL);
    assert_eq!(fake.calls(), [format!("kill_all {C} 9"), "signal 10 9".into(), format!("delete {C}")]);
    assert!(svc.processes.get(C, "").await.is_err(), "forgotten, so the id can be reused");
}

fn exec_req(id: &str, exec_id: &str) -> ExecProcessRequest {
    let process = serde_json::json!({"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    ExecProcessRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        process_json: serde_json::to_vec(&process).expect("json"),
        ..Default::default()
    }
}

/// A bundle with a minimal config.json (exec reads the container's seccomp profile from it).
fn minimal_bundle(id: &str) {
    let spec = serde_json::json!({"ociVersion": "1.0.2", "root": {"path": "/r"},
        "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}}});
    crate::container::bundle::write_bundle(id, &spec).expect("bundle");
}

/// The wedge: an exec whose child blocks (a frozen cgroup, a hung fork) must not stop the agent
/// answering for other containers: no agent-wide lock is held across the runtime call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_exec_does_not_stop_the_agent_answering_for_other_containers() {
    const FROZEN: &str = "bwk-rpc-test-frozen";
    const OTHER: &str = "bwk-rpc-test-other";
    let fake = Arc::new(FakeRuntime { frozen: Some(FROZEN.into()), ..Default::default() });
    let svc = Arc::new(service(&fake));
    for id in [FROZEN, OTHER] {
        minimal_bundle(id);
    }
    let _f = add_to(&svc, &fake, FROZEN, "", 10).await;
    let _o = add_to(&svc, &fake, OTHER, "", 20).await;

    let blocked = {
        let svc = svc.clone();
        tokio::spawn(async move { processes::exec(&svc, exec_req(FROZEN, "stuck")).await })
    };
    // Wait until the runtime is inside the blocked exec.
    for _ in 0..200 {
        if fake.calls().contains(&format!("exec {FROZEN}")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(fake.calls().contains(&format!("exec {FROZEN}")), "{:?}", fake.calls());

    let quick = Duration::from_secs(2);
    // An exec into another container answers.
    let r = tokio::time::timeout(quick, processes::exec(&svc, exec_req(OTHER, "e1"))).await;
    assert_eq!(r.expect("exec into the other container answered").expect("exec").pid, 7000);
    // Signals (the reaper lock is free) and a Pause of the other container answer.
    let sig = SignalProcessRequest { container_id: OTHER.into(), signal: 0, ..Default::default() };
    tokio::time::timeout(quick, processes::signal(&svc, sig)).await.expect("signal answered").expect("signal");
    let pause = tokio::time::timeout(quick, stats::freeze(&svc, container_req(OTHER), true)).await;
    assert_eq!(code(pause.expect("pause answered")), Code::NOT_FOUND, "no tracked cgroup in the test");
    // The reaper is not paused.
    let reaper = svc.reaper.clone();
    let reaped = tokio::time::timeout(quick, tokio::task::spawn_blocking(move || reaper.reap_all())).await;
    assert!(reaped.is_ok(), "reaping is not blocked");
    // A Pause of the blocked container waits for the exec (one lock, one order)...
    let pausing = {
        let svc = svc.clone();
        tokio::spawn(async move { stats::freeze(&svc, container_req(FROZEN), true).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!pausing.is_finished(), "a Pause does not overtake the exec in progress");
    // ... and goes on once the exec ends.
    fake.release();
    let e = tokio::time::timeout(Duration::from_secs(5), blocked).await.expect("exec ended").expect("join");
    assert_eq!(code(e), Code::INTERNAL);
    let p = tokio::time::timeout(Duration::from_secs(5), pausing).await.expect("pause ended").expect("join");
    assert_eq!(code(p), Code::NOT_FOUND);
    for id in [FROZEN, OTHER] {
        crate::container::bundle::remove_bundle(id);
    }
}

#[tokio::test]
async fn exec_is_refused_while_the_container_is_paused() {
    const PAUSED: &str = "bwk-rpc-test-paused";
    let fake = Arc::new(FakeRuntime::default());
    let svc = service(&fake);
    minimal_bundle(PAUSED);
    let _i = add_to(&svc, &fake, PAUSED, "", 30).await;
    svc.locks.lock(PAUSED, "pause").await.expect("lock").paused = true;
    let e = processes::exec(&svc, exec_req(PAUSED, "e1")).await.expect_err("refused");
    assert_eq!(code_of(&e).0, Code::FAILED_PRECONDITION);
    assert!(code_of(&e).1.contains("paused"), "{e:?}");
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    crate::container::bundle::remove_bundle(PAUSED);
}

#[test]
fn setup_sandbox_refuses_unknown_telemetry_syscalls_before_touching_the_network() {
    use crate::rpc::sandbox::telemetry_settings;
    let mut req = SetupSandboxRequest::default();
    assert_eq!(telemetry_settings(&req).map_err(|e| code_of(&e)), Ok(None), "absent: off");
    req.telemetry = Some(TelemetryConfig { enabled: true, ..Default::default() }).into();
    let s = telemetry_settings(&req).map_err(|e| code_of(&e)).unwrap().expect("on");
    assert_eq!(s.max_events_per_sec, 20_000, "the default rate");
    req.telemetry = Some(TelemetryConfig { enabled: true, syscalls: vec!["open".into()], ..Default::default() }).into();
    let (code, msg) = code_of(&telemetry_settings(&req).unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(msg.contains("\"open\""), "{msg}");
}
