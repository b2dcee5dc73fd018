//! One container in a microVM through a real containerd, driven with `ctr run --runtime
//! io.containerd.bulwark.v2`: output, exit status, signals, events, and nothing left behind.

use std::time::Duration;

use bulwark_e2e::containerd::{Containerd, CTR_LIMIT};
use bulwark_e2e::process::wait_bounded;

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string()
}

#[test]
fn uname_r_prints_the_guest_kernel_release() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let out = c.run_rm("uname", &["uname", "-r"])?;
    assert!(out.status.success(), "ctr run failed: {out:?}\n{}", c.diagnostics());
    let release = out.stdout.trim();
    assert_eq!(release, c.artifacts.kernel_release, "expected the guest kernel's release");
    assert_ne!(release, host_release(), "the container ran on the host kernel");
    c.assert_clean()
}

#[test]
fn stdout_stderr_and_exit_status_come_back_separately() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let out = c.run_rm("outerr", &["sh", "-c", "echo out; echo err >&2; exit 7"])?;
    assert_eq!(out.stdout, "out\n", "stdout: {out:?}\n{}", c.diagnostics());
    assert!(out.stderr.contains("err\n"), "stderr: {out:?}");
    assert!(!out.stdout.contains("err"), "stderr leaked into stdout: {out:?}");
    assert_eq!(out.code(), 7, "exit status: {out:?}");
    let events = c.wait_event("outerr", "/tasks/delete", Duration::from_secs(10))?;
    let order = ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"];
    let positions: Vec<Option<usize>> = order.iter().map(|t| events.iter().position(|e| e == t)).collect();
    assert!(
        positions.iter().all(Option::is_some) && positions.windows(2).all(|w| w[0] < w[1]),
        "task events out of order or missing: {events:?}"
    );
    c.assert_clean()
}

/// Starts `args` with `ctr run --rm`, waits until it runs (and, with `ready`, until it has
/// printed that line), sends `signal` with `ctr task kill`, and returns the exit status
/// `ctr run` reports.
fn run_and_kill(c: &Containerd, id: &str, signal: &str, ready: Option<&str>, args: &[&str]) -> Result<i32, String> {
    let mut run = c.spawn_run(id, args)?;
    c.wait_running(id)?;
    if let Some(marker) = ready {
        let stdout = run.stdout.take().ok_or("ctr run has no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        loop {
            match rx.recv_timeout(CTR_LIMIT) {
                Ok(line) if line.trim() == marker => break,
                Ok(_) => continue,
                Err(_) => return Err(format!("{id} never printed {marker:?}\n{}", c.diagnostics())),
            }
        }
    }
    let kill = c.ctr(&["task", "kill", "--signal", signal, id])?;
    assert!(kill.status.success(), "ctr task kill failed: {kill:?}");
    let status = wait_bounded(&mut run, CTR_LIMIT)?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

#[test]
fn sigterm_from_ctr_task_kill_ends_a_long_sleep() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    // The container's init is PID 1 of its PID namespace: like with runc, the kernel only
    // delivers SIGTERM to it once it handles the signal, so the shell traps it and says so
    // before the test sends the signal.
    let code = run_and_kill(
        &c,
        "term",
        "SIGTERM",
        Some("ready"),
        &["sh", "-c", "trap 'exit 143' TERM; echo ready; sleep 600 & wait"],
    )?;
    assert_eq!(code, 143, "exit status after SIGTERM\n{}", c.diagnostics());
    c.assert_clean()
}

#[test]
fn sigkill_from_ctr_task_kill_ends_a_long_sleep() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let code = run_and_kill(&c, "kill9", "SIGKILL", None, &["sleep", "600"])?;
    assert_eq!(code, 137, "exit status after SIGKILL\n{}", c.diagnostics());
    c.assert_clean()
}

#[test]
fn container_processes_start_with_default_signal_dispositions() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    // With SIGPIPE ignored, `yes` would never die once `head` exits and this would hang.
    // SigIgn in /proc/self/status lists the ignored signals: none, like under runc.
    let out =
        c.run_rm("sigpipe", &["sh", "-c", "yes | head -n 2 >/dev/null; grep SigIgn /proc/self/status; echo END"])?;
    assert!(out.status.success(), "ctr run failed: {out:?}\n{}", c.diagnostics());
    assert!(out.stdout.contains("END"), "the pipeline did not finish: {out:?}");
    assert!(
        out.stdout.contains("SigIgn:\t0000000000000000"),
        "container processes must not inherit ignored signals: {}",
        out.stdout
    );
    c.assert_clean()
}
