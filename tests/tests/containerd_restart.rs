//! containerd restarts while a Bulwark sandbox runs (an upgrade, a crash, an operator's
//! `systemctl restart`): the shim and its VM keep running; the new containerd reconnects to
//! the shim (the bundle's `address` file, `Connect`, `State`), `ctr task ls` shows the task
//! RUNNING, exec and metrics work, and a kill is reported with its exit event (published to
//! the new containerd), then delete leaves nothing behind.

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
