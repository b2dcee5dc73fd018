//! A process of the sandbox dies under a running container: when QEMU dies, the task must exit
//! non-zero, TaskExit must be published, and the helpers, sockets and mounts cleaned up; when
//! the shim itself dies, containerd's `containerd-shim-bulwark-v2 delete` must clean up; when
//! the VM freezes, a SIGKILL for the sandbox must still end it. In every case a second pod
//! (another sandbox of the same containerd) answers an exec every 2 s throughout.

use std::process::{Command, ExitStatus};
use std::time::Duration;

use bulwark_e2e::containerd::{Containerd, CTR_LIMIT, NAMESPACE};
use bulwark_e2e::faults::{sandbox_processes, shim_pid, Bystander};
use bulwark_e2e::leftovers::Proc;
use bulwark_e2e::process::{poll, run, wait_bounded};
use bulwark_e2e::{RUNTIME, TEST_IMAGE};

/// A second pod (`ctr run -d`) whose exec is checked every 2 s while the fault happens.
struct SecondPod {
    watch: Bystander,
}

impl SecondPod {
    const ID: &'static str = "bystander";

    fn start(c: &Containerd) -> Result<SecondPod, String> {
        let r = c.ctr(&["run", "-d", "--runtime", RUNTIME, TEST_IMAGE, Self::ID, "sleep", "100000"])?;
        if !r.status.success() {
            return Err(format!("starting the second pod: {r:?}\n{}", c.diagnostics()));
        }
        c.wait_running(Self::ID)?;
        let socket = c.socket.clone();
        let n = std::sync::atomic::AtomicU32::new(0);
        let watch = Bystander::start(move || {
            let exec_id = format!("alive{}", n.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
            let out = run(
                Command::new("ctr").arg("-a").arg(&socket).args([
                    "-n",
                    NAMESPACE,
                    "task",
                    "exec",
                    "--exec-id",
                    &exec_id,
                    Self::ID,
                    "echo",
                    "alive",
                ]),
                Duration::from_secs(60),
            )?;
            if out.status.success() && out.stdout == "alive\n" {
                Ok(())
            } else {
                Err(format!("exec into the second pod: {out:?}"))
            }
        });
        Ok(SecondPod { watch })
    }

    /// Checks it answered throughout, then ends it.
    fn finish(self, c: &Containerd) -> Result<(), String> {
        let answered = self.watch.finish();
        let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", Self::ID]);
        let stopped = poll(CTR_LIMIT, || c.task_status(Self::ID).filter(|(s, _)| s == "STOPPED"));
        let _ = c.ctr(&["task", "delete", Self::ID]);
        let _ = c.ctr(&["container", "delete", Self::ID]);
        let n = answered?;
        stopped.ok_or("the second pod did not stop")?;
        eprintln!("the second pod answered {n} execs throughout");
        Ok(())
    }
}

/// The processes of sandbox `id` whose command line contains `program`: its shim, or its VM
/// side (QEMU, virtiofsd, vhost-device-vsock name the sandbox's state directory).
fn processes_of(c: &Containerd, id: &str, program: &str) -> Vec<Proc> {
    if program.contains("containerd-shim") {
        return shim_pid(&c.dir, id).map(|pid| Proc { pid, cmdline: program.into() }).into_iter().collect();
    }
    sandbox_processes(&c.shim.runtime_dir, id, program)
}

/// Runs `sleep 600` as container `id`, SIGKILLs the processes of its sandbox whose command
/// line contains `program` (virtiofsd is two: it forks its sandboxed worker), and returns how
/// `ctr run` ended.
fn kill_mid_run(c: &Containerd, id: &str, program: &str) -> Result<ExitStatus, String> {
    let mut run = c.spawn_run(id, &["sleep", "600"])?;
    c.wait_running(id)?;
    let victims = processes_of(c, id, program);
    assert!(!victims.is_empty(), "expected a {program} for the sandbox");
    for v in &victims {
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is a process this
        // test's containerd started.
        unsafe { libc::kill(v.pid, libc::SIGKILL) };
    }
    wait_bounded(&mut run, CTR_LIMIT)
}

/// A helper of the VM dies (kill -9 of virtiofsd or vhost-device-vsock): the pod must end, not
/// hang with its containers RUNNING: the task exits non-zero with a TaskExit event within a
/// bounded time, and nothing is left behind.
fn a_dead_helper_ends_the_pod(program: &str, id: &str) -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let second = SecondPod::start(&c)?;
    let status = kill_mid_run(&c, id, program)?;
    assert!(!status.success(), "the task must exit non-zero when {program} dies: {status:?}\n{}", c.diagnostics());
    c.wait_event(id, "/tasks/exit", Duration::from_secs(10))?;
    second.finish(&c)?;
    c.assert_clean()
}

#[test]
fn killing_virtiofsd_ends_the_pod() -> Result<(), String> {
    a_dead_helper_ends_the_pod("virtiofsd", "fsdead")
}

#[test]
fn killing_vhost_device_vsock_ends_the_pod() -> Result<(), String> {
    a_dead_helper_ends_the_pod("vhost-device-vsock", "vsockdead")
}

#[test]
fn killing_qemu_exits_the_task_and_cleans_up() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let second = SecondPod::start(&c)?;
    // (Also: the guest's serial console reaches the shim's capped console log while it runs.)
    let mut run = c.spawn_run("crash", &["sleep", "600"])?;
    c.wait_running("crash")?;
    let console = c.shim.runtime_dir.join(bulwark_e2e::containerd::NAMESPACE).join("crash").join("console.log");
    let text = std::fs::read_to_string(&console).map_err(|e| format!("{}: {e}", console.display()))?;
    assert!(text.contains("bulwark-agent"), "the guest console should show the agent's lines: {text:?}");
    let qemu = processes_of(&c, "crash", "qemu-system");
    assert_eq!(qemu.len(), 1, "expected one QEMU for the sandbox: {qemu:?}");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is this test's QEMU.
    unsafe { libc::kill(qemu[0].pid, libc::SIGKILL) };
    let status = wait_bounded(&mut run, CTR_LIMIT)?;
    assert!(!status.success(), "the task must exit non-zero when its VM dies: {status:?}");
    c.wait_event("crash", "/tasks/exit", Duration::from_secs(10))?;
    second.finish(&c)?;
    c.assert_clean()
}

#[test]
fn killing_the_shim_is_cleaned_up_by_the_delete_subcommand() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let second = SecondPod::start(&c)?;
    // containerd notices the dead shim, runs `containerd-shim-bulwark-v2 delete` in the
    // bundle, and reports the task as exited; ctr run then returns non-zero.
    let status = kill_mid_run(&c, "shimcrash", "containerd-shim-bulwark-v2")?;
    assert!(!status.success(), "the task must exit non-zero when its shim dies: {status:?}");
    c.wait_event("shimcrash", "/tasks/exit", Duration::from_secs(30))?;
    second.finish(&c)?;
    c.assert_clean()
}

#[test]
fn a_frozen_vm_does_not_keep_its_sandbox_from_being_killed() -> Result<(), String> {
    // A guest that stops answering (here: QEMU stopped with SIGSTOP) must not leave a pod that
    // cannot be stopped: SIGKILL for the sandbox container kills the VM once the agent call
    // times out (30 s), and everything is cleaned up.
    let c = Containerd::start(|_| {})?;
    let second = SecondPod::start(&c)?;
    let mut run = c.spawn_run("frozen", &["sleep", "600"])?;
    c.wait_running("frozen")?;
    let qemu = processes_of(&c, "frozen", "qemu-system");
    assert_eq!(qemu.len(), 1, "expected one QEMU for the sandbox: {qemu:?}");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is this test's QEMU.
    assert_eq!(unsafe { libc::kill(qemu[0].pid, libc::SIGSTOP) }, 0);
    let kill = c.ctr(&["task", "kill", "-s", "SIGKILL", "frozen"])?;
    assert!(kill.status.success(), "ctr task kill failed on a frozen VM: {kill:?}\n{}", c.diagnostics());
    let status = wait_bounded(&mut run, CTR_LIMIT)?;
    assert_eq!(status.code(), Some(137), "ctr run of a killed frozen VM: {status:?}\n{}", c.diagnostics());
    c.wait_event("frozen", "/tasks/exit", Duration::from_secs(10))?;
    second.finish(&c)?;
    c.assert_clean()
}
