//! The process lifecycle of init processes and execs, driven through the container's verbs
//! with the fake agent and a stand-in VM: the events each sends and in which order, and the
//! runc-shim rules of each verb.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use containerd_shim::api;

use crate::agent::fake::Failure;
use crate::container::events::*;
use crate::container::process::Status;
use crate::container::testing::*;
use crate::container::Stdio;
use crate::error::Error;

#[tokio::test]
async fn init_events_in_order_create_start_exit_delete() {
    let (agent, _vm, c, mut rx) = setup().await;
    assert_eq!(next_topic(&mut rx).await, TOPIC_CREATE);
    assert_eq!(c.start(&c.init).await.expect("start"), VM_PID);
    assert_eq!(next_topic(&mut rx).await, TOPIC_START);
    assert_eq!(c.state(&c.init).status.enum_value_or_default(), api::Status::RUNNING);
    assert!(matches!(c.start(&c.init).await, Err(Error::FailedPrecondition(_))), "a second start is refused");
    agent.exit("c", "", 3);
    assert_eq!(next_exit(&mut rx).await, ("c".to_string(), 3));
    let d = c.delete(&c.init).await.expect("delete");
    assert_eq!((d.pid, d.status), (VM_PID, 3));
    c.report_deleted(&c.init, &d);
    assert_eq!(next_topic(&mut rx).await, TOPIC_DELETE);
    assert_quiet(&mut rx).await;
    assert!(agent.calls().contains(&"remove_container c".to_string()));
}

#[tokio::test]
async fn exec_events_in_order_and_exec_exits_before_init() {
    let (agent, _vm, c, mut rx) = setup().await;
    c.start(&c.init).await.expect("start");
    assert_eq!(next_topic(&mut rx).await, TOPIC_CREATE);
    assert_eq!(next_topic(&mut rx).await, TOPIC_START);

    let e1 = c.add_exec("e1", Stdio::default(), process_json()).expect("add e1");
    assert_eq!(next_topic(&mut rx).await, TOPIC_EXEC_ADDED);
    let st = c.state(&e1);
    assert_eq!((st.pid, st.exec_id.as_str(), st.id.as_str()), (0, "e1", "e1"), "no pid before start");
    assert_eq!(c.start(&e1).await.expect("start e1"), VM_PID);
    assert_eq!(next_topic(&mut rx).await, TOPIC_EXEC_STARTED);
    assert_eq!(c.state(&e1).pid, VM_PID);
    agent.exit("c", "e1", 7);
    assert_eq!(next_exit(&mut rx).await, ("e1".to_string(), 7));
    let d = c.delete(&e1).await.expect("delete e1");
    assert_eq!((d.pid, d.status), (VM_PID, 7));
    c.report_deleted(&e1, &d);
    assert_eq!(next_topic(&mut rx).await, TOPIC_DELETE);
    assert!(matches!(c.process("e1"), Err(Error::NotFound(_))), "a deleted exec is gone");
    assert!(agent.calls().contains(&"remove_process c/e1".to_string()));

    // The container's init process dies (SIGKILL): its running exec dies with it, and its
    // exit reaches containerd before the init process's.
    let e2 = c.add_exec("e2", Stdio::default(), process_json()).expect("add e2");
    c.start(&e2).await.expect("start e2");
    assert_eq!(next_topic(&mut rx).await, TOPIC_EXEC_ADDED);
    assert_eq!(next_topic(&mut rx).await, TOPIC_EXEC_STARTED);
    c.kill(&c.init, libc::SIGKILL as u32, false).await.expect("kill");
    assert_eq!(next_exit(&mut rx).await, ("e2".to_string(), 137));
    assert_eq!(next_exit(&mut rx).await, ("c".to_string(), 137));
    assert_quiet(&mut rx).await;
}

#[tokio::test]
async fn init_exit_waits_for_a_running_exec() {
    let (agent, _vm, c, mut rx) = setup().await;
    c.start(&c.init).await.expect("start");
    let e = c.add_exec("e", Stdio::default(), process_json()).expect("add");
    c.start(&e).await.expect("start e");
    for t in [TOPIC_CREATE, TOPIC_START, TOPIC_EXEC_ADDED, TOPIC_EXEC_STARTED] {
        assert_eq!(next_topic(&mut rx).await, t);
    }
    // The guest reports the init process's exit first; the exec's comes a little later.
    agent.exit("c", "", 1);
    assert_quiet(&mut rx).await;
    assert_eq!(c.init.state().status, Status::Running, "not recorded before the exec stops");
    agent.exit("c", "e", 2);
    assert_eq!(next_exit(&mut rx).await, ("e".to_string(), 2));
    assert_eq!(next_exit(&mut rx).await, ("c".to_string(), 1));
}

#[tokio::test]
async fn kill_before_start() {
    let (_agent, _vm, c, mut rx) = setup().await;
    assert_eq!(next_topic(&mut rx).await, TOPIC_CREATE);
    // An exec may be added to a created container; killing it before its start is
    // FAILED_PRECONDITION, and it cannot start before its container runs.
    let e = c.add_exec("e", Stdio::default(), process_json()).expect("add");
    assert_eq!(next_topic(&mut rx).await, TOPIC_EXEC_ADDED);
    assert!(matches!(c.kill(&e, 9, false).await, Err(Error::FailedPrecondition(_))));
    assert!(matches!(c.start(&e).await, Err(Error::FailedPrecondition(_))), "no exec in a container not running");
    // The init process, created: the signal goes to the guest, the exit follows, Start is refused.
    c.kill(&c.init, libc::SIGKILL as u32, false).await.expect("kill created init");
    assert_eq!(next_exit(&mut rx).await, ("c".to_string(), 137));
    assert!(matches!(c.start(&c.init).await, Err(Error::FailedPrecondition(_))));
    assert!(matches!(c.kill(&c.init, 9, false).await, Err(Error::NotFound(_))), "killing an exited process");
    assert!(matches!(c.add_exec("e2", Stdio::default(), process_json()), Err(Error::FailedPrecondition(_))));
    assert_quiet(&mut rx).await;
}

#[tokio::test]
async fn delete_of_a_running_process_is_refused() {
    let (agent, _vm, c, mut rx) = setup().await;
    c.start(&c.init).await.expect("start");
    let e = c.add_exec("e", Stdio::default(), process_json()).expect("add");
    c.start(&e).await.expect("start e");
    assert!(matches!(c.delete(&e).await, Err(Error::FailedPrecondition(_))));
    assert!(matches!(c.delete(&c.init).await, Err(Error::FailedPrecondition(_))));
    c.pause(true).await.expect("pause");
    assert_eq!(c.state(&c.init).status.enum_value_or_default(), api::Status::PAUSED);
    assert!(matches!(c.delete(&c.init).await, Err(Error::FailedPrecondition(_))), "paused is still running");
    assert!(matches!(c.pause(true).await, Err(Error::FailedPrecondition(_))));
    c.pause(false).await.expect("resume");
    for t in [TOPIC_CREATE, TOPIC_START, TOPIC_EXEC_ADDED, TOPIC_EXEC_STARTED, TOPIC_PAUSED, TOPIC_RESUMED] {
        assert_eq!(next_topic(&mut rx).await, t);
    }
    assert!(!agent.calls().iter().any(|c| c.starts_with("remove_")), "nothing removed in the guest");
    assert_eq!(c.state(&e).status.enum_value_or_default(), api::Status::RUNNING);
}

#[tokio::test]
async fn wait_after_exit_and_wait_before() {
    let (agent, _vm, c, mut rx) = setup().await;
    c.start(&c.init).await.expect("start");
    let e = c.add_exec("e", Stdio::default(), process_json()).expect("add");
    c.start(&e).await.expect("start e");
    let c2 = c.clone();
    let e2 = e.clone();
    let early = tokio::spawn(async move { c2.wait(&e2).await });
    agent.exit("c", "e", 5);
    for t in [TOPIC_CREATE, TOPIC_START, TOPIC_EXEC_ADDED, TOPIC_EXEC_STARTED, TOPIC_EXIT] {
        assert_eq!(next_topic(&mut rx).await, t);
    }
    assert_eq!(early.await.expect("join").status, 5, "a waiter from before the exit");
    assert_eq!(c.wait(&e).await.status, 5, "Wait after the exit answers at once");
    let st = c.state(&e);
    assert_eq!((st.status.enum_value_or_default(), st.exit_status), (api::Status::STOPPED, 5));
    assert!(matches!(c.kill(&e, 15, false).await, Err(Error::NotFound(_))), "kill of an exited exec");
}

#[tokio::test]
async fn exec_start_with_an_unreachable_agent_or_a_dying_vm() {
    let (agent, vm, c, mut rx) = setup().await;
    c.start(&c.init).await.expect("start");
    let e = c.add_exec("e", Stdio::default(), process_json()).expect("add");
    agent.set_failure("exec_process", Some(Failure::Unreachable));
    assert!(matches!(c.start(&e).await, Err(Error::AgentUnreachable(_))));
    assert_eq!(c.state(&e).status.enum_value_or_default(), api::Status::CREATED, "still not started");
    assert!(matches!(c.kill(&e, 9, false).await, Err(Error::FailedPrecondition(_))));

    agent.set_failure("exec_process", Some(Failure::Hang));
    *vm.exit.lock().expect("lock") = Some(FakeVm::sigkilled());
    let (c2, e2) = (c.clone(), e.clone());
    let start = tokio::spawn(async move { c2.start(&e2).await });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(!start.is_finished(), "the start waits for the hung agent");
    agent.kill_vm();
    assert!(matches!(start.await.expect("join"), Err(Error::Agent(_))), "the VM's death ends the start");
    for t in [TOPIC_CREATE, TOPIC_START, TOPIC_EXEC_ADDED] {
        assert_eq!(next_topic(&mut rx).await, t);
    }
    assert_eq!(next_exit(&mut rx).await, ("c".to_string(), 137), "init of a SIGKILLed VM: 137");
    assert_quiet(&mut rx).await;
    let d = c.delete(&e).await.expect("an exec that never started can be deleted");
    assert_eq!((d.status, d.at.is_some()), (0, false));
}

#[tokio::test]
async fn kill_with_an_unreachable_agent_or_a_dying_vm() {
    let (agent, vm, c, mut rx) = setup().await;
    c.start(&c.init).await.expect("start");
    agent.set_failure("signal_process", Some(Failure::Unreachable));
    assert!(matches!(c.kill(&c.init, 15, false).await, Err(Error::AgentUnreachable(_))), "only SIGKILL kills the VM");
    assert!(!vm.killed.load(Ordering::SeqCst));
    c.kill(&c.init, libc::SIGKILL as u32, false).await.expect("SIGKILL of the sandbox container");
    assert!(vm.killed.load(Ordering::SeqCst), "a sandbox container's unreachable guest: the VM is killed");

    // Not the sandbox container: the SIGKILL is accepted, and the host reports the container
    // killed after the grace period (the guest never confirmed it); its VM lives on.
    let vm2 = Arc::new(FakeVm::default());
    let (tx, mut rx2) = EventTx::channel();
    let other = created(&agent, &vm2, &tx, "app", "c").await;
    other.start(&other.init).await.expect("start app");
    other.kill(&other.init, libc::SIGKILL as u32, false).await.expect("SIGKILL is the host's to carry out");
    assert!(!vm2.killed.load(Ordering::SeqCst));
    for t in [TOPIC_CREATE, TOPIC_START] {
        assert_eq!(next_topic(&mut rx2).await, t);
    }
    assert_eq!(next_exit(&mut rx2).await, ("app".to_string(), 137), "reported killed by the host");
    let other = created(&agent, &vm2, &tx, "app2", "c").await;
    assert_eq!(next_topic(&mut rx2).await, TOPIC_CREATE);

    // The VM dies while a kill waits for the guest: the kill fails, the exit is 255 when the
    // VM's end is unknown.
    agent.set_failure("signal_process", Some(Failure::Hang));
    let o = other.clone();
    let kill = tokio::spawn(async move { o.kill(&o.init, 15, false).await });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(!kill.is_finished());
    agent.kill_vm();
    assert!(matches!(kill.await.expect("join"), Err(Error::Agent(_))));
    assert_eq!(next_exit(&mut rx2).await, ("app2".to_string(), 255));
    for t in [TOPIC_CREATE, TOPIC_START] {
        assert_eq!(next_topic(&mut rx).await, t);
    }
    assert_eq!(next_exit(&mut rx).await, ("c".to_string(), 137), "the killed VM: 137");
}

#[tokio::test]
async fn oom_before_exit_once() {
    let (agent, _vm, c, mut rx) = setup().await;
    c.start(&c.init).await.expect("start");
    c.on_oom_event();
    agent.set_stats([("memory.events".to_string(), b"oom 2\noom_kill 2\n".to_vec())].into());
    agent.exit("c", "", 137);
    for t in [TOPIC_CREATE, TOPIC_START, TOPIC_OOM, TOPIC_OOM, TOPIC_EXIT] {
        assert_eq!(next_topic(&mut rx).await, t);
    }
    c.on_oom_event();
    assert_quiet(&mut rx).await;
}

#[tokio::test]
async fn lookup_limits_and_container_delete() {
    let (agent, _vm, c, _rx) = setup().await;
    assert!(matches!(c.process("nope"), Err(Error::NotFound(_))));
    assert!(Arc::ptr_eq(&c.process("").expect("init"), &c.init));
    assert!(matches!(c.add_exec("bad id", Stdio::default(), process_json()), Err(Error::InvalidArgument(_))));
    assert!(matches!(c.add_exec("e", Stdio::default(), b"{}".to_vec()), Err(Error::InvalidArgument(_))));
    c.add_exec("e", Stdio::default(), process_json()).expect("add");
    assert!(matches!(c.add_exec("e", Stdio::default(), process_json()), Err(Error::AlreadyExists(_))));
    // Deleting a container that never ran: exit 137, running execs freed.
    let e = c.process("e").expect("e");
    e.set_running();
    let d = c.delete(&c.init).await.expect("delete created container");
    assert_eq!(d.status, 137);
    assert_eq!(c.wait(&e).await.status, 137, "deleting the container frees exec waiters");
    assert_eq!(c.init.state().status, Status::Stopped);
    assert!(agent.calls().contains(&"remove_container c".to_string()));
}

#[tokio::test]
async fn close_io_and_resize_follow_the_process() {
    let (agent, _vm, c, _rx) = setup().await;
    c.start(&c.init).await.expect("start");
    let tty = Stdio { terminal: true, ..Default::default() };
    let e = c.add_exec("t", tty, process_json()).expect("add");
    c.resize_pty(&e, 80, 24).await.expect("resize before start is ignored");
    c.close_io(&e).await.expect("close before start is ignored");
    c.resize_pty(&c.init, 80, 24).await.expect("init without a terminal ignores it");
    c.start(&e).await.expect("start");
    c.resize_pty(&e, 100, 30).await.expect("resize");
    c.close_io(&c.init).await.expect("close init stdin");
    let calls = agent.calls();
    let resizes: Vec<_> = calls.iter().filter(|c| c.starts_with("resize_pty")).collect();
    assert_eq!(resizes, ["resize_pty c/t 100x30"]);
    assert_eq!(calls.iter().filter(|c| c.starts_with("close_stdin")).collect::<Vec<_>>(), ["close_stdin c"]);
}

#[tokio::test]
async fn exit_is_recorded_once() {
    let p = crate::container::Process::init(Stdio::default(), 1);
    p.set_running();
    assert_eq!(p.state().status, Status::Running);
    assert!(p.set_paused(true) && !p.set_paused(true));
    assert_eq!(p.state().status, Status::Paused);
    assert!(p.set_paused(false) && !p.set_paused(false));
    assert_eq!(p.state().status, Status::Running);
    let mut reported = 0;
    assert_eq!(p.finish(3, |_| reported += 1).map(|e| e.status), Some(3));
    assert!(p.finish(4, |_| reported += 1).is_none());
    assert!(p.mark_exited(137).is_none());
    assert_eq!(reported, 1, "one exit event");
    assert_eq!(p.wait().await.status, 3);
    assert_eq!(p.state().exit.map(|e| e.status), Some(3));
}

/// A guest that lies: it answers SignalProcess with OK and never reports the exit. The host
/// owns the lifecycle: an app container (and its exec, first) is reported killed after the
/// grace period and can be deleted; the sandbox container's SIGKILL kills the VM.
#[tokio::test]
async fn a_lying_guest_cannot_keep_a_killed_container_alive() {
    let (agent, vm, sandbox, mut rx) = setup().await;
    agent.exit_on_signal.store(false, Ordering::SeqCst);
    sandbox.start(&sandbox.init).await.expect("start");
    let app = created(&agent, &vm, sandbox.events(), "app", "c").await;
    app.start(&app.init).await.expect("start app");
    let e = app.add_exec("e", Stdio::default(), process_json()).expect("exec");
    app.start(&e).await.expect("start exec");
    for t in [TOPIC_CREATE, TOPIC_START, TOPIC_CREATE, TOPIC_START, TOPIC_EXEC_ADDED, TOPIC_EXEC_STARTED] {
        assert_eq!(next_topic(&mut rx).await, t);
    }
    app.kill(&app.init, libc::SIGKILL as u32, false).await.expect("kill app");
    assert_eq!(next_exit(&mut rx).await, ("e".to_string(), 137), "the exec's exit first");
    assert_eq!(next_exit(&mut rx).await, ("app".to_string(), 137));
    let d = app.delete(&app.init).await.expect("Delete works after the host-decided exit");
    assert_eq!(d.status, 137);
    assert!(!vm.killed.load(Ordering::SeqCst), "the pod's VM lives on");

    sandbox.kill(&sandbox.init, libc::SIGKILL as u32, false).await.expect("kill sandbox");
    tokio::time::sleep(TEST_KILL_GRACE * 3).await;
    assert!(vm.killed.load(Ordering::SeqCst), "the sandbox container's lying guest: the VM is killed");

    // A guest that does carry out the SIGKILL in time is not overruled.
    let (agent, vm, c, mut rx) = setup().await;
    c.start(&c.init).await.expect("start");
    c.kill(&c.init, libc::SIGKILL as u32, false).await.expect("kill");
    for t in [TOPIC_CREATE, TOPIC_START] {
        assert_eq!(next_topic(&mut rx).await, t);
    }
    assert_eq!(next_exit(&mut rx).await, ("c".to_string(), 137));
    tokio::time::sleep(TEST_KILL_GRACE * 3).await;
    assert!(!vm.killed.load(Ordering::SeqCst));
    assert!(agent.calls().iter().any(|c| c.starts_with("signal_process c 9")));
}
