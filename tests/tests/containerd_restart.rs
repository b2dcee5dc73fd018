//! containerd restarts while a Bulwark sandbox runs (an upgrade, a crash, an operator's
//! `systemctl restart`): the shim and its VM keep running; the new containerd reconnects to
//! the shim (the bundle's `address` file, `Connect`, `State`), `ctr task ls` shows the task
//! RUNNING, exec and metrics work, and a kill is reported with its exit event (published to
//! the new containerd), then delete leaves nothing behind. The same through CRI: the pod is
//! listed READY, an exit that came while containerd was down is reported, exec, stats, stop
//! and remove work.

use std::time::Duration;

use bulwark_e2e::containerd::{Containerd, CTR_LIMIT};
use bulwark_e2e::process::poll;
use bulwark_e2e::{RUNTIME, TEST_IMAGE};

#[test]
fn a_containerd_restart_keeps_the_sandbox_and_its_events() -> Result<(), String> {
    let mut c = Containerd::start(|_| {})?;
    let create = c.ctr(&["container", "create", "--runtime", RUNTIME, TEST_IMAGE, "rs1", "sleep", "600"])?;
    assert!(create.status.success(), "ctr container create: {create:?}");
    let start = c.ctr(&["task", "start", "--detach", "rs1"])?;
    assert!(start.status.success(), "ctr task start: {start:?}\n{}", c.diagnostics());
    let pid = c.wait_running("rs1")?;

    c.restart()?;

    assert_eq!(
        c.task_status("rs1"),
        Some(("RUNNING".to_string(), pid)),
        "after the restart the task is RUNNING with the same pid\n{}",
        c.diagnostics()
    );
    let exec = c.ctr(&["task", "exec", "--exec-id", "after", "rs1", "echo", "still-here"])?;
    assert!(exec.status.success() && exec.stdout.contains("still-here"), "exec after the restart: {exec:?}");
    let metrics = c.ctr(&["task", "metrics", "rs1"])?;
    assert!(metrics.status.success(), "metrics after the restart: {metrics:?}");

    let kill = c.ctr(&["task", "kill", "--signal", "SIGKILL", "rs1"])?;
    assert!(kill.status.success(), "ctr task kill: {kill:?}");
    let stopped = poll(CTR_LIMIT, || c.task_status("rs1").filter(|(s, _)| s == "STOPPED"));
    assert!(stopped.is_some(), "rs1 never stopped after the restart\n{}", c.diagnostics());
    c.wait_event("rs1", "/tasks/exit", Duration::from_secs(30))?;
    let del = c.ctr(&["task", "delete", "rs1"])?;
    assert!(del.status.success(), "ctr task delete: {del:?}");
    let del = c.ctr(&["container", "delete", "rs1"])?;
    assert!(del.status.success(), "ctr container delete: {del:?}");
    c.assert_clean()
}

/// The same through CRI, the way kubelet sees it: a pod with two containers runs across a
/// restart of containerd (1.6, CRI plugin); one container exits (7) while containerd is down.
/// After the restart CRI lists the pod READY, the exit is not lost (ContainerStatus and the
/// exit event say 7), exec and ContainerStats work in the other container, and
/// StopPodSandbox/RemovePodSandbox leave nothing behind.
#[test]
fn a_containerd_restart_keeps_cri_pods_and_their_exits() -> Result<(), String> {
    use bulwark_e2e::cri::{ContainerdVersion, CriContainerd, HANDLER_BULWARK};
    use bulwark_e2e::cri_client::{ContainerSpec, CriClient};
    use bulwark_e2e::faults::Events;
    use k8s_cri::v1::{ContainerState, PodSandboxState};

    let mut c = CriContainerd::start(ContainerdVersion::V1)?;
    let config = CriClient::pod_config("restart", "restart", &c.pod_log_dir("restart")?);
    let pod = c.client.run_pod_sandbox(&config, HANDLER_BULWARK)?;
    let netns = vec![c.client.pod_netns(&pod)?];
    let app = c.client.create_container(&pod, &config, &ContainerSpec::new("app", TEST_IMAGE, &["sleep", "100000"]))?;
    c.client.start_container(&app)?;
    // Exits 7 three seconds after /tmp/go appears in its filesystem.
    let script = "while [ ! -e /tmp/go ]; do sleep 0.2; done; sleep 3; exit 7";
    let exiter =
        c.client.create_container(&pod, &config, &ContainerSpec::new("exiter", TEST_IMAGE, &["sh", "-c", script]))?;
    c.client.start_container(&exiter)?;
    let go = c.client.exec_sync(&exiter, &["touch", "/tmp/go"], 30)?;
    assert_eq!(go.exit_code, 0, "touch /tmp/go: {go:?}");

    // containerd is down for 10 s: the exit comes while it is.
    c.restart_with(|| {
        std::thread::sleep(Duration::from_secs(10));
        Ok(())
    })?;
    let ctr = ContainerdVersion::V1.bin_dir()?.join("ctr");
    let events = Events::start(&ctr, &c.socket)?;

    let (status, _) = c.client.pod_status(&pod)?;
    assert_eq!(status.state, PodSandboxState::SandboxReady as i32, "the pod after the restart: {status:?}");
    let st = c.client.wait_exited(&exiter, Duration::from_secs(60))?;
    assert_eq!(st.exit_code, 7, "the exit that came while containerd was down: {st:?}\n{}", c.diagnostics());
    let running = c.client.container_status(&app)?;
    assert_eq!(running.state, ContainerState::ContainerRunning as i32, "the other container: {running:?}");
    let r = c.client.exec_sync(&app, &["echo", "after-restart"], 30)?;
    assert_eq!(r.stdout, "after-restart\n", "exec after the restart: {r:?}");
    let stats = c.client.container_stats(&app)?;
    assert!(stats.memory.is_some() || stats.cpu.is_some(), "ContainerStats after the restart: {stats:?}");

    c.client.stop_pod(&pod)?;
    // The app's exit, published to the new containerd.
    let exit = events.wait_exit(&app, Duration::from_secs(60))?;
    assert_ne!(exit.exit_status, 0, "the app's exit on StopPodSandbox: {exit:?}");
    c.client.remove_pod(&pod)?;
    c.assert_clean(&netns)
}
