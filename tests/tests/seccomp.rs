//! Seccomp in the guest through a real containerd (`ctr run`): a container without a profile
//! gets the agent's default one (the escapes fail with EPERM, ordinary commands work, in the
//! init process and in execs); capabilities unlock what they normally unlock; a profile
//! brought with `ctr run --seccomp --seccomp-profile` is enforced, with AF_VSOCK denied on top.
//! A tenant whose policy allows unconfined containers runs without a filter, yet an AF_VSOCK
//! connection from its container still never reaches the agent or a host port.
//! `/bin/bulwark-probe` (images/probe/probe.c) prints one `<check> <OK|ERRNO>` line per
//! attempted syscall; every check asserts the exact outcome. Every test ends with the
//! leftovers check.

use std::process::Child;

use bulwark_e2e::containerd::{Containerd, CTR_LIMIT};
use bulwark_e2e::process::wait_bounded;
use bulwark_e2e::{RUNTIME, TEST_IMAGE};

/// The probe's lines in `out` (other output is ignored).
fn probe_lines(out: &str) -> Vec<String> {
    const CHECKS: [&str; 15] = [
        "seccomp-mode",
        "socket-vsock",
        "vsock-connect",
        "vsock-hello",
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
const ESCAPES: &str = "sleep 300 & p=$!; bulwark-probe seccomp-mode socket-vsock vsock-connect 2 1025 \
     vsock-connect 3 1024 socket-unix unshare-user \
     unshare-files mount keyctl ptrace $p ptrace-child mkdir /tmp/probe-dir-$$ userns-mount; echo probe-exit $?; kill $p";

const CONFINED: [&str; 14] = [
    "seccomp-mode 2",
    "socket-vsock EPERM",
    "vsock-connect 2:1025 EPERM",
    "vsock-connect 3:1024 EPERM",
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

/// The vsock ports a container could aim at: the agent API, the log (READY) port and the
/// telemetry port, on the host (CID 2), the guest's own CID (3) and the local CID (1).
const VSOCK_TARGETS: [(u32, u32); 7] = [(3, 1024), (1, 1024), (3, 1025), (3, 1026), (2, 1024), (2, 1025), (2, 1026)];

/// A host listener on vsock port `port` of the sandbox: what vhost-device-vsock connects to
/// when the guest connects to CID 2 port `port` (`<state dir>/vm/vsock.sock_<port>`, given to
/// the sandbox uid like the shim's own). It accepts and holds connections, never writes.
fn host_vsock_listener(c: &Containerd, sandbox: &str, port: u32) -> Result<std::os::unix::net::UnixListener, String> {
    use std::os::unix::fs::MetadataExt;
    let vm = c.shim.runtime_dir.join(bulwark_e2e::containerd::NAMESPACE).join(sandbox).join("vm");
    let owner = std::fs::metadata(&vm).map_err(|e| format!("{}: {e}", vm.display()))?;
    let path = vm.join(format!("vsock.sock_{port}"));
    let l = std::os::unix::net::UnixListener::bind(&path).map_err(|e| format!("binding {}: {e}", path.display()))?;
    std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).map_err(|e| e.to_string())?;
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(l)
}

#[test]
fn a_tenant_allowed_unconfined_is_not_filtered_and_still_cannot_reach_the_agent() -> Result<(), String> {
    // Telemetry on: its relay listens on TELEMETRY_PORT for the VM's life, and hybrid vsock
    // cannot tell a container from the agent's collector; the relay serves only a stream
    // whose Hello carries the boot's token (docs/seccomp.md, "Host ports").
    let c = Containerd::start(|s| s.extra = "[tenants.open-vsock]\nallow_unconfined_seccomp = true\n".into())?;
    let id = "uv1";
    let run = c.spawn_run_with(id, &["--annotation", "bulwark.io/tenant=open-vsock"], &["sleep", "600"])?;
    c.wait_running(id)?;
    // The positive control: a port the host does serve (the probe must see it OPEN, proving
    // that the container's vsock connections do leave the guest and that OPEN is detected).
    let control = host_vsock_listener(&c, id, 5000)?;
    let probes = ["seccomp-mode", "keyctl", "socket-vsock", "unshare-user", "ptrace-child"];
    let mut args = vec!["task", "exec", "--exec-id", "v1", id, "bulwark-probe"];
    args.extend(probes);
    let targets: Vec<(String, String)> =
        VSOCK_TARGETS.iter().chain(&[(2, 5000)]).map(|(cid, port)| (cid.to_string(), port.to_string())).collect();
    for (cid, port) in &targets {
        args.extend(["vsock-connect", cid.as_str(), port.as_str()]);
    }
    // Posing as the collector: a Hello without the token, then an event of its own.
    args.extend(["vsock-hello", "2", "1026"]);
    let out = c.ctr(&args)?;
    let accepted = control.accept().is_ok();
    drop(control);
    let ctx = format!("{out:?}\n{}", c.diagnostics());
    assert!(out.status.success(), "{ctx}");
    let lines = probe_lines(&out.stdout);
    eprintln!("probe: {lines:#?}");
    // Unfiltered: keyrings, vsock sockets, user namespaces and ptrace of a child are there.
    assert_eq!(
        lines[..5],
        ["seccomp-mode 0", "keyctl OK", "socket-vsock OK", "unshare-user OK", "ptrace-child OK"],
        "{ctx}"
    );
    assert!(lines.contains(&"vsock-connect 2:5000 OPEN".to_string()), "the control port was not reached\n{ctx}");
    assert!(accepted, "the host listener of the control port saw no connection\n{ctx}");
    // Nothing else answers: the agent closes connections that are not the host's at once, and
    // the host listens on no port after the boot handshake.
    for (cid, port) in VSOCK_TARGETS {
        let prefix = format!("vsock-connect {cid}:{port} ");
        let line = lines.iter().find(|l| l.starts_with(&prefix)).ok_or_else(|| format!("no {prefix} line\n{ctx}"))?;
        let result = &line[prefix.len()..];
        assert!(
            !matches!(result, "OPEN" | "DATA" | "OK"),
            "a container reached vsock {cid}:{port} ({result}): it must be refused or closed\n{ctx}"
        );
    }
    assert!(
        lines.contains(&"vsock-hello 2:1026 CLOSED".to_string()),
        "the telemetry relay kept a stream without the boot's token\n{ctx}"
    );
    // The collector's own stream is untouched: a file the container opens afterwards arrives,
    // the impostor's event never does.
    let frames = c.shim.runtime_dir.join(bulwark_e2e::containerd::NAMESPACE).join(id).join("telemetry.frames");
    let out = c.ctr(&["task", "exec", "--exec-id", "v2", id, "cat", "/etc/passwd"])?;
    assert!(out.status.success(), "{out:?}");
    let contains = |needle: &[u8]| std::fs::read(&frames).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle));
    let arrived =
        bulwark_e2e::process::poll(std::time::Duration::from_secs(60), || contains(b"/etc/passwd").then_some(()));
    assert!(arrived.is_some(), "the collector's events stopped after the impostor's attempts\n{}", c.diagnostics());
    assert!(!contains(b"/bwk-impostor"), "the impostor's event was relayed\n{}", c.diagnostics());
    stop(&c, id, run)?;
    c.assert_clean()
}
