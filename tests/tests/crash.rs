//! The VMM dies under a running container: the task must exit non-zero, TaskExit must be
//! published, and the sandbox's helpers, sockets and mounts must be cleaned up.

use std::time::Duration;

use bulwark_e2e::containerd::{Containerd, CTR_LIMIT};
use bulwark_e2e::leftovers::vm_processes;
use bulwark_e2e::process::wait_bounded;

#[test]
fn killing_qemu_exits_the_task_and_cleans_up() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let mut run = c.spawn_run("crash", &["sleep", "600"])?;
    c.wait_running("crash")?;
    let qemu: Vec<_> = vm_processes(&c.dir.to_string_lossy())
        .into_iter()
        .filter(|p| p.cmdline.contains("qemu-system"))
        .collect();
    assert_eq!(qemu.len(), 1, "expected one QEMU for the sandbox: {qemu:?}");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is the QEMU this test's
    // containerd started.
    assert_eq!(unsafe { libc::kill(qemu[0].pid, libc::SIGKILL) }, 0);

    let status = wait_bounded(&mut run, CTR_LIMIT)?;
    assert!(!status.success(), "the task must exit non-zero when its VM dies: {status:?}");
    c.wait_event("crash", "/tasks/exit", Duration::from_secs(10))?;
    c.assert_clean()
}

#[test]
fn killing_the_shim_is_cleaned_up_by_the_delete_subcommand() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let mut run = c.spawn_run("shimcrash", &["sleep", "600"])?;
    c.wait_running("shimcrash")?;
    let shim: Vec<_> = vm_processes(&c.dir.to_string_lossy())
        .into_iter()
        .filter(|p| p.cmdline.contains("containerd-shim-bulwark-v2"))
        .collect();
    assert_eq!(shim.len(), 1, "expected one shim for the sandbox: {shim:?}");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is the shim this test's
    // containerd started.
    assert_eq!(unsafe { libc::kill(shim[0].pid, libc::SIGKILL) }, 0);

    // containerd notices the dead shim, runs `containerd-shim-bulwark-v2 delete` in the
    // bundle, and reports the task as exited; ctr run then returns non-zero.
    let status = wait_bounded(&mut run, CTR_LIMIT)?;
    assert!(!status.success(), "the task must exit non-zero when its shim dies: {status:?}");
    c.assert_clean()
}
