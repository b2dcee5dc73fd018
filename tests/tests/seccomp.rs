//! Seccomp in the guest through a real containerd (`ctr run`): a container without a profile
//! gets the agent's default one (the escapes fail with EPERM, ordinary commands work, in the
//! init process and in execs); capabilities unlock what they normally unlock; a profile
//! brought with `ctr run --seccomp --seccomp-profile` is enforced, with AF_VSOCK denied on top.
//! `/bin/bulwark-probe` (images/probe/probe.c) prints one `<check> <OK|ERRNO>` line per
//! attempted syscall; every check asserts the exact outcome. Every test ends with the
//! leftovers check.

use std::process::Child;

use bulwark_e2e::containerd::{Containerd, CTR_LIMIT};
use bulwark_e2e::process::wait_bounded;
use bulwark_e2e::{RUNTIME, TEST_IMAGE};

/// The probe's lines in `out` (other output is ignored).
fn probe_lines(out: &str) -> Vec<String> {
    const CHECKS: [&str; 13] = [
        "seccomp-mode",
        "socket-vsock",
        "socket-unix",
        "unshare-user",
        "unshare-files",
        "mount",
        "userns-mount-unshare",
        "userns-mount",
        "keyctl",
        "ptrace",
        "ptrace-child",
        "mkdir",
        "probe-exit",
    ];
    out.lines().filter(|l| l.split(' ').next().is_some_and(|w| CHECKS.contains(&w))).map(str::to_string).collect()
}

/// The escapes: a sibling `sleep` to ptrace, then every check (userns-mount last: it leaves
/// the probe in new namespaces when it works).
const ESCAPES: &str = "sleep 300 & p=$!; bulwark-probe seccomp-mode socket-vsock socket-unix unshare-user \
     unshare-files mount keyctl ptrace $p ptrace-child mkdir /tmp/probe-dir-$$ userns-mount; echo probe-exit $?; kill $p";

const CONFINED: [&str; 12] = [
    "seccomp-mode 2",
    "socket-vsock EPERM",
    "socket-unix OK",
    "unshare-user EPERM",
    "unshare-files OK",
    "mount EPERM",
    "keyctl EPERM",
    "ptrace EPERM",
    "ptrace-child EPERM",
    "mkdir OK",
    "userns-mount-unshare EPERM",
    "probe-exit 0",
];

fn stop(c: &Containerd, id: &str, mut run: Child) -> Result<(), String> {
    let kill = c.ctr(&["task", "kill", "--signal", "SIGKILL", id])?;
    assert!(kill.status.success(), "ctr task kill failed: {kill:?}");
    wait_bounded(&mut run, CTR_LIMIT)?;
    Ok(())
}

#[test]
fn without_a_profile_the_default_one_denies_the_escapes() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    // The init process probes first (into a file), then sleeps; execs probe again.
    let init = format!("{{ {ESCAPES}; }} > /tmp/init-probe 2>&1; exec sleep 600");
    let run = c.spawn_run("sd1", &["sh", "-c", &init])?;
    c.wait_running("sd1")?;
    let got = bulwark_e2e::process::poll(CTR_LIMIT, || {
        c.ctr(&["task", "exec", "--exec-id", "r0", "sd1", "cat", "/tmp/init-probe"])
            .ok()
            .filter(|o| o.stdout.contains("probe-exit"))
    })
    .ok_or_else(|| format!("the init process's probe never finished\n{}", c.diagnostics()))?;
    assert_eq!(probe_lines(&got.stdout), CONFINED, "init process: {got:?}\n{}", c.diagnostics());

    let out = c.ctr(&["task", "exec", "--exec-id", "p1", "sd1", "sh", "-c", ESCAPES])?;
    assert!(out.status.success(), "{out:?}\n{}", c.diagnostics());
    assert_eq!(probe_lines(&out.stdout), CONFINED, "exec: {out:?}");

    // busybox's own tools agree.
    let out = c.ctr(&["task", "exec", "--exec-id", "p2", "sd1", "unshare", "-U", "true"])?;
    assert!(!out.status.success(), "unshare -U worked under the default profile: {out:?}");
    assert!(out.stderr.contains("Operation not permitted"), "{out:?}");

    // Ordinary commands work: pipes, files, fork/exec, a TCP server and client, signals.
    let script = "echo hi | cat; mkdir -p /tmp/w && echo data > /tmp/w/f && tail -n1 /tmp/w/f; \
                  ls / >/dev/null && echo ls-ok; uname -s; \
                  echo ok > /tmp/w/index.html; httpd -p 127.0.0.1:8080 -h /tmp/w; \
                  printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 8080 | head -n1 | cut -d' ' -f2; \
                  sleep 30 & kill $! && wait $!; echo killed $?";
    let out = c.ctr(&["task", "exec", "--exec-id", "o1", "sd1", "sh", "-c", script])?;
    assert!(out.status.success(), "{out:?}\n{}", c.diagnostics());
    let lines: Vec<&str> = out.stdout.lines().map(str::trim_end).collect();
    assert_eq!(lines, ["hi", "data", "ls-ok", "Linux", "200", "killed 143"], "{out:?}");

    stop(&c, "sd1", run)?;
    c.assert_clean()
}

#[test]
fn capabilities_unlock_what_they_normally_unlock() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--cap-add",
        "CAP_SYS_ADMIN",
        TEST_IMAGE,
        "sc1",
        "sh",
        "-c",
        "bulwark-probe seccomp-mode mount keyctl socket-vsock unshare-user",
    ])?;
    assert!(out.status.success(), "{out:?}\n{}", c.diagnostics());
    // CAP_SYS_ADMIN unlocks mount and namespaces, not keyrings nor vsock.
    assert_eq!(
        probe_lines(&out.stdout),
        ["seccomp-mode 2", "mount OK", "keyctl EPERM", "socket-vsock EPERM", "unshare-user OK"],
        "{out:?}"
    );
    c.assert_clean()
}

#[test]
fn a_profile_from_ctr_is_enforced_with_vsock_denied() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let dir = std::env::temp_dir().join(format!("bwk-seccomp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let profile = dir.join("deny-mkdir.json");
    let json = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    std::fs::write(&profile, json.to_string()).map_err(|e| format!("writing {}: {e}", profile.display()))?;
    let profile_arg = profile.to_string_lossy().into_owned();
    let run = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--seccomp",
        "--seccomp-profile",
        &profile_arg,
        TEST_IMAGE,
        "sp1",
        "sh",
        "-c",
        "bulwark-probe seccomp-mode mkdir /tmp/nope keyctl socket-vsock socket-unix ptrace-child; \
         mkdir /tmp/nope2 || echo mkdir-failed",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    let out = run?;
    let stdout = &out.stdout;
    assert!(out.status.success(), "{out:?}\n{}", c.diagnostics());
    // The container's profile (allow-all but mkdir: keyctl works), plus the agent's vsock rule.
    assert_eq!(
        probe_lines(stdout),
        ["seccomp-mode 2", "mkdir EPERM", "keyctl OK", "socket-vsock EPERM", "socket-unix OK", "ptrace-child OK"],
        "{out:?}"
    );
    assert!(stdout.contains("mkdir-failed"), "busybox mkdir worked under a profile denying it: {out:?}");
    c.assert_clean()
}
