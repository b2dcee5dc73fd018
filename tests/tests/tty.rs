//! Terminals through a real containerd: `ctr run -t` (init process) and `ctr task exec -t`
//! (exec) in a microVM get a /dev/pts terminal, and the size of ctr's own terminal (ctr sends
//! ResizePty once the process started). ctr runs on a pty the test opens with a known size.
//! Every test ends with the leftovers check.

use std::process::Child;

use bulwark_e2e::containerd::{Containerd, CTR_LIMIT};
use bulwark_e2e::process::wait_bounded;
use bulwark_e2e::pty::{run_on_pty, run_steps_on_pty, Step};
use bulwark_e2e::RUNTIME;
use bulwark_e2e::TEST_IMAGE;

const ROWS: u16 = 33;
const COLS: u16 = 101;

/// Prints the terminal name, waits (bounded) until the resize from ctr arrived, prints the
/// size, and says whether stdout and stderr are the terminal. Before the resize the size is
/// 0x0, which busybox's `stty size` reports as an error ("stty: standard input"), not "0 0":
/// both mean "not yet".
const SCRIPT: &str = "tty; i=0; while [ $i -lt 100 ]; do s=$(stty size 2>/dev/null); \
                      [ -n \"$s\" ] && [ \"$s\" != '0 0' ] && break; \
                      i=$((i+1)); sleep 0.1; done; echo \"size=$s\"; [ -t 1 ] && [ -t 2 ] && echo both-ttys; exit 4";

fn check_terminal_output(c: &Containerd, output: &str, code: i32) {
    assert!(
        output.lines().any(|l| l.trim().starts_with("/dev/pts/")),
        "`tty` should name a /dev/pts terminal: {output:?}\n{}",
        c.diagnostics()
    );
    assert!(output.contains(&format!("size={ROWS} {COLS}")), "terminal size not applied: {output:?}");
    assert!(output.contains("both-ttys"), "stdout and stderr should be the terminal: {output:?}");
    assert_eq!(code, 4, "exit status through ctr: {output:?}");
}

#[test]
fn tty_init_process_has_a_pts_and_ctrs_terminal_size() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let mut cmd = c.ctr_command(&["run", "--rm", "-t", "--runtime", RUNTIME, TEST_IMAGE, "tty1", "sh", "-c", SCRIPT]);
    let out = run_on_pty(&mut cmd, ROWS, COLS, CTR_LIMIT)?;
    check_terminal_output(&c, &out.output, out.code());
    c.assert_clean()
}

#[test]
fn tty_exec_has_a_pts_and_ctrs_terminal_size() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let mut run: Child = c.spawn_run("tty2", &["sleep", "600"])?;
    c.wait_running("tty2")?;
    let mut cmd = c.ctr_command(&["task", "exec", "-t", "--exec-id", "t1", "tty2", "sh", "-c", SCRIPT]);
    let out = run_on_pty(&mut cmd, ROWS, COLS, CTR_LIMIT)?;
    check_terminal_output(&c, &out.output, out.code());
    // The container's init process is untouched by the exec's terminal.
    assert_eq!(c.task_status("tty2").map(|s| s.0), Some("RUNNING".to_string()));
    let kill = c.ctr(&["task", "kill", "--signal", "SIGKILL", "tty2"])?;
    assert!(kill.status.success(), "ctr task kill: {kill:?}");
    wait_bounded(&mut run, CTR_LIMIT)?;
    c.assert_clean()
}

#[test]
fn tty_exec_is_interactive_and_follows_resizes() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let mut run: Child = c.spawn_run("tty3", &["sleep", "600"])?;
    c.wait_running("tty3")?;
    let mut cmd = c.ctr_command(&["task", "exec", "-t", "--exec-id", "i1", "tty3", "sh"]);
    // The echo of what is typed never contains the expected text: only the shell's answers do.
    let steps = [
        Step::WaitFor("# "),
        Step::Write(b"echo sum=$((40+2))\n"),
        Step::WaitFor("sum=42"),
        Step::Resize(40, 120),
        Step::Write(b"i=0; while [ $i -lt 100 ] && [ \"$(stty size)\" != '40 120' ]; do i=$((i+1)); sleep 0.1; done; echo now=$(stty size)\n"),
        Step::WaitFor("now=40 120"),
        Step::Write(b"exit 5\n"),
    ];
    let out =
        run_steps_on_pty(&mut cmd, ROWS, COLS, &steps, CTR_LIMIT).map_err(|e| format!("{e}\n{}", c.diagnostics()))?;
    assert_eq!(out.code(), 5, "exit status of the interactive shell: {out:?}");
    let kill = c.ctr(&["task", "kill", "--signal", "SIGKILL", "tty3"])?;
    assert!(kill.status.success(), "ctr task kill: {kill:?}");
    wait_bounded(&mut run, CTR_LIMIT)?;
    c.assert_clean()
}
