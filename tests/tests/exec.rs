//! Exec processes through a real containerd: `ctr task exec` into a container running in a
//! microVM: separate stdout/stderr and the exit status, stdin, signals, events, and a clean
//! refusal for a stopped container. Every test ends with the leftovers check.

use std::io::Write;
use std::process::{Child, Stdio};

use bulwark_e2e::containerd::{Containerd, CTR_LIMIT};
use bulwark_e2e::process::{poll, wait_bounded};
use bulwark_e2e::{RUNTIME, TEST_IMAGE};

/// Starts `sleep 600` as container `id` (ctr run --rm, in the background) and waits until it runs.
fn start_sleeper(c: &Containerd, id: &str) -> Result<Child, String> {
    let run = c.spawn_run(id, &["sleep", "600"])?;
    c.wait_running(id)?;
    Ok(run)
}

/// Ends the sleeper with SIGKILL and waits for its `ctr run --rm` (which deletes it).
fn stop_sleeper(c: &Containerd, id: &str, mut run: Child) -> Result<(), String> {
    let kill = c.ctr(&["task", "kill", "--signal", "SIGKILL", id])?;
    assert!(kill.status.success(), "ctr task kill failed: {kill:?}");
    wait_bounded(&mut run, CTR_LIMIT)?;
    Ok(())
}

#[test]
fn exec_output_status_stdin_signals_and_events() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let run = start_sleeper(&c, "ex1")?;

    // Separate stdout and stderr, and the exit status.
    let out = c.ctr(&["task", "exec", "--exec-id", "e1", "ex1", "sh", "-c", "echo out; echo err >&2; exit 3"])?;
    assert_eq!(out.stdout, "out\n", "stdout: {out:?}\n{}", c.diagnostics());
    assert!(out.stderr.contains("err\n"), "stderr: {out:?}");
    assert!(!out.stdout.contains("err"), "stderr leaked into stdout: {out:?}");
    assert_eq!(out.code(), 3, "exit status: {out:?}");

    // The exec runs in the container: same PID namespace (the sleeper is PID 1) and cgroup.
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1b",
        "ex1",
        "sh",
        "-c",
        "cat /proc/1/cmdline | tr '\\0' ' '; cat /proc/self/cgroup",
    ])?;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.starts_with("sleep 600"), "PID 1 seen by the exec: {out:?}");
    let init_cgroup = c.ctr(&["task", "exec", "--exec-id", "e1c", "ex1", "cat", "/proc/1/cgroup"])?;
    assert!(
        out.stdout.ends_with(&init_cgroup.stdout),
        "exec cgroup differs from the init's: {out:?} vs {init_cgroup:?}"
    );

    // stdin reaches the exec; its EOF ends `cat`.
    let mut cat = c
        .ctr_command(&["task", "exec", "--exec-id", "e2", "ex1", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting ctr task exec: {e}"))?;
    {
        let mut stdin = cat.stdin.take().ok_or("no stdin")?;
        stdin.write_all(b"hi from stdin\n").map_err(|e| format!("writing stdin: {e}"))?;
    }
    let status = wait_bounded(&mut cat, CTR_LIMIT)?;
    let mut stdout = String::new();
    if let Some(mut s) = cat.stdout.take() {
        use std::io::Read;
        let _ = s.read_to_string(&mut stdout);
    }
    assert!(status.success(), "cat exec failed: {status:?} {stdout:?}\n{}", c.diagnostics());
    assert_eq!(stdout, "hi from stdin\n");

    // An exec that cannot start fails with the reason, and the container goes on.
    let out = c.ctr(&["task", "exec", "--exec-id", "bad", "ex1", "/no/such/binary"])?;
    assert!(!out.status.success(), "exec of a missing binary succeeded: {out:?}");
    assert!(out.stderr.contains("/no/such/binary"), "the error should name the binary: {out:?}");
    let out = c.ctr(&["task", "exec", "--exec-id", "after-bad", "ex1", "echo", "still-here"])?;
    assert_eq!(out.stdout, "still-here\n", "{out:?}");

    // A signal to one exec ends it (143 = SIGTERM), and only it.
    let mut sleeper = c
        .ctr_command(&["task", "exec", "--exec-id", "k1", "ex1", "sleep", "600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting ctr task exec: {e}"))?;
    // Until the exec has started, kill is refused ("not started").
    let killed = poll(CTR_LIMIT, || {
        c.ctr(&["task", "kill", "--exec-id", "k1", "--signal", "SIGTERM", "ex1"]).ok().filter(|o| o.status.success())
    });
    assert!(killed.is_some(), "ctr task kill --exec-id k1 never succeeded\n{}", c.diagnostics());
    let status = wait_bounded(&mut sleeper, CTR_LIMIT)?;
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    assert_eq!(code, 143, "exit status of the exec killed with SIGTERM");
    assert_eq!(c.task_status("ex1").map(|s| s.0), Some("RUNNING".to_string()), "the container must keep running");

    // Events: exec-added, exec-started, exit (of e1: the init process still runs), delete.
    let events = c.task_events("ex1");
    let order = ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"];
    let positions: Vec<Option<usize>> = order.iter().map(|t| events.iter().position(|e| e == t)).collect();
    assert!(
        positions.iter().all(Option::is_some) && positions.windows(2).all(|w| w[0] < w[1]),
        "exec events out of order or missing: {events:?}"
    );

    stop_sleeper(&c, "ex1", run)?;
    c.assert_clean()
}

#[test]
fn exec_into_a_stopped_container_fails_cleanly() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let create = c.ctr(&["container", "create", "--runtime", RUNTIME, TEST_IMAGE, "st1", "true"])?;
    assert!(create.status.success(), "ctr container create: {create:?}");
    let start = c.ctr(&["task", "start", "--detach", "st1"])?;
    assert!(start.status.success(), "ctr task start: {start:?}\n{}", c.diagnostics());
    let stopped = poll(CTR_LIMIT, || c.task_status("st1").filter(|(s, _)| s == "STOPPED"));
    assert!(stopped.is_some(), "st1 never stopped\n{}", c.diagnostics());

    let out = c.ctr(&["task", "exec", "--exec-id", "late", "st1", "echo", "hi"])?;
    assert!(!out.status.success(), "exec into a stopped container succeeded: {out:?}");
    assert!(!out.stdout.contains("hi"), "{out:?}");
    assert!(out.stderr.contains("stopped"), "the error should say the container stopped: {out:?}");
    // The task is still there, stopped, and deletes normally.
    assert_eq!(c.task_status("st1").map(|s| s.0), Some("STOPPED".to_string()));
    let del = c.ctr(&["task", "delete", "st1"])?;
    assert!(del.status.success(), "ctr task delete: {del:?}");
    let del = c.ctr(&["container", "delete", "st1"])?;
    assert!(del.status.success(), "ctr container delete: {del:?}");
    c.assert_clean()
}

#[test]
fn exec_gets_the_containers_seccomp_profile() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    // ctr run --seccomp: containerd's default profile on the init process.
    let run = c
        .ctr_command(&["run", "--rm", "--seccomp", "--runtime", RUNTIME, TEST_IMAGE, "sc1", "sleep", "600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting ctr run: {e}"))?;
    c.wait_running("sc1")?;
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "s1",
        "sc1",
        "sh",
        "-c",
        "grep Seccomp: /proc/1/status /proc/self/status",
    ])?;
    assert!(out.status.success(), "{out:?}\n{}", c.diagnostics());
    // Mode 2 = filter, for the init process and for the exec.
    let filtered = out.stdout.lines().filter(|l| l.trim_end().ends_with("Seccomp:\t2")).count();
    assert_eq!(filtered, 2, "both processes must run under the container's seccomp filter: {out:?}");
    stop_sleeper(&c, "sc1", run)?;
    c.assert_clean()
}
