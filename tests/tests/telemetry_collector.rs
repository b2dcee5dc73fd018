//! The guest syscall collector end to end: a container in a microVM, run through a real
//! containerd, does what Falco rules watch for (reads /etc/shadow, makes a file executable and
//! runs it, connects out with nc, deletes a log file, executes a memfd). The agent's eBPF
//! collector, loaded in the real guest kernel, sends those syscalls over vsock to the shim's
//! relay, which writes them, enriched, into the sandbox's `telemetry.frames`. The test reads
//! that file while the container still runs and checks each event's type, path, process names
//! and container id; then that the syscall set is filtered in the guest and that events over
//! the guest's rate are dropped and reported.

use std::path::Path;
use std::time::{Duration, Instant};

use bulwark_e2e::containerd::{Containerd, NAMESPACE};
use bulwark_protocol::limits::MAX_TELEMETRY_FRAME;
use bulwark_protocol::telemetry::{decode_enriched, Enriched, EventType, FdType, FrameDecoder, L4Proto};

/// How long the events may take to arrive (TCG boots and runs slowly).
const ARRIVAL_LIMIT: Duration = Duration::from_secs(180);

/// Every enriched event in a frames file (a partial last frame is left for the next read).
fn read_frames(path: &Path) -> Vec<Enriched> {
    let Ok(bytes) = std::fs::read(path) else { return Vec::new() };
    let mut d = FrameDecoder::new(MAX_TELEMETRY_FRAME);
    let mut input = bytes.as_slice();
    let mut out = Vec::new();
    while let Ok(Some(frame)) = d.decode(&mut input) {
        if let Ok(m) = decode_enriched(&frame) {
            out.push(m);
        }
    }
    out
}

fn ty(m: &Enriched) -> EventType {
    m.event.type_.enum_value().unwrap_or(EventType::EVENT_TYPE_UNSPECIFIED)
}

fn describe(events: &[Enriched]) -> String {
    let mut s = String::new();
    for m in events.iter().take(400) {
        let e = &m.event;
        s.push_str(&format!(
            "  {:?} res={} pid={} ppid={} comm={:?} path={:?} path2={:?} exe={:?} argv={:?} cid={:?}/{:?}\n",
            ty(m),
            e.res,
            e.pid,
            e.ppid,
            e.comm,
            e.path,
            e.path2,
            e.exe_path,
            e.argv,
            e.container_id,
            m.container_id
        ));
    }
    s
}

/// The agent's and the relay's telemetry lines from containerd's log (the shim logs there).
fn telemetry_log(c: &Containerd) -> String {
    let log = std::fs::read_to_string(c.dir.join("containerd.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("telemetry") || l.contains("libbpf")).collect();
    format!("--- telemetry lines of containerd.log ---\n{}", lines[lines.len().saturating_sub(60)..].join("\n"))
}

/// Starts `script` in container `id` (run by `sh -c`, it should end with `exec sleep 600`),
/// runs `during` once it runs, reads its sandbox's telemetry.frames until `done` holds or [`ARRIVAL_LIMIT`] passes, then
/// kills and removes the container. Returns the events and whether `done` held.
fn collect(
    c: &Containerd,
    id: &str,
    script: &str,
    during: impl FnOnce() -> Result<(), String>,
    done: impl Fn(&[Enriched]) -> bool,
) -> Result<(Vec<Enriched>, bool), String> {
    let mut run = c.spawn_run(id, &["sh", "-c", script])?;
    c.wait_running(id)?;
    during()?;
    let frames = c.shim.runtime_dir.join(NAMESPACE).join(id).join("telemetry.frames");
    let start = Instant::now();
    let mut events = Vec::new();
    let mut ok = false;
    while start.elapsed() < ARRIVAL_LIMIT {
        events = read_frames(&frames);
        if done(&events) {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", id]);
    let _ = bulwark_e2e::process::wait_bounded(&mut run, Duration::from_secs(60));
    let _ = c.ctr(&["containers", "rm", id]);
    Ok((events, ok))
}

/// One expected event: a name for messages and the predicate that recognises it.
type Expect = (&'static str, Box<dyn Fn(&Enriched) -> bool>);

#[test]
fn a_containers_syscalls_reach_the_host_with_its_container_id() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let id = "telemetry-e2e";
    // 10.11.12.1: the VM has no NIC under `ctr run`, so the connect fails at once (ENETUNREACH)
    // and nothing leaves the VM; the event still carries the address asked for.
    // The busybox image has no /etc/shadow: the script writes one first.
    // busybox's shell runs some applets (chmod, rm) in a forked child without an execve and
    // others (cat, nc) through an execve of /proc/self/exe (comm "exe" at the execve).
    let script = "echo 'root:*:19000::::::' >/etc/shadow; cat /etc/shadow >/dev/null; \
                  printf '#!/bin/sh\\necho dropped\\n' >/tmp/x; chmod +x /tmp/x && /tmp/x; \
                  sh -c 'nc 10.11.12.1 8080 </dev/null'; \
                  mkdir -p /var/log && touch /var/log/x && rm /var/log/x; \
                  bulwark-probe memfd-exec; \
                  echo done; exec sleep 600";

    // An exec process joins the container's cgroup: it is watched too.
    let exec = || {
        let out = c.ctr(&["task", "exec", "--exec-id", "e1", id, "cat", "/etc/group"])?;
        if !out.status.success() {
            return Err(format!("ctr task exec failed: {out:?}"));
        }
        Ok(())
    };
    let expected: Vec<Expect> = vec![
        (
            "the entrypoint's execve (the collector attached before the container started)",
            Box::new(move |m| ty(m) == EventType::EXECVE && m.event.res == 0 && m.event.argv == ["sh", "-c", script]),
        ),
        (
            "cat's openat of /etc/shadow",
            Box::new(|m| {
                matches!(ty(m), EventType::OPENAT | EventType::OPENAT2)
                    && m.event.comm == "cat"
                    && m.event.path == "/etc/shadow"
                    && m.event.res >= 0
                    && m.event.flags & 3 == 0
            }),
        ),
        (
            "chmod +x of /tmp/x",
            Box::new(|m| {
                matches!(ty(m), EventType::CHMOD | EventType::FCHMODAT | EventType::FCHMOD)
                    && m.event.comm == "chmod"
                    && m.event.path == "/tmp/x"
                    && m.event.mode & 0o111 != 0
                    && m.event.res == 0
            }),
        ),
        (
            "the execve of /tmp/x",
            Box::new(|m| {
                ty(m) == EventType::EXECVE
                    && m.event.res == 0
                    && m.event.path == "/tmp/x"
                    && m.event.argv == ["/bin/sh", "/tmp/x"]
            }),
        ),
        (
            "nc's execve with its argv",
            Box::new(|m| {
                ty(m) == EventType::EXECVE && m.event.res == 0 && m.event.argv == ["nc", "10.11.12.1", "8080"]
            }),
        ),
        (
            "nc's connect to 10.11.12.1:8080",
            Box::new(|m| {
                let s = m.event.socket.as_ref();
                ty(m) == EventType::CONNECT
                    && m.event.comm == "nc"
                    && m.event.fd_type.enum_value() == Ok(FdType::IPV4_SOCKET)
                    && s.is_some_and(|s| {
                        s.remote_addr == [10, 11, 12, 1]
                            && s.remote_port == 8080
                            && s.proto.enum_value() == Ok(L4Proto::TCP)
                    })
            }),
        ),
        (
            "rm's unlink of /var/log/x",
            Box::new(|m| {
                matches!(ty(m), EventType::UNLINK | EventType::UNLINKAT)
                    && m.event.comm == "rm"
                    && m.event.path == "/var/log/x"
                    && m.event.res == 0
            }),
        ),
        (
            "a fork of the shell",
            Box::new(|m| {
                matches!(ty(m), EventType::FORK | EventType::VFORK | EventType::CLONE | EventType::CLONE3)
                    && m.event.res > 0
            }),
        ),
        ("an exit", Box::new(|m| ty(m) == EventType::EXIT)),
        (
            "memfd_create(\"payload\")",
            Box::new(|m| ty(m) == EventType::MEMFD_CREATE && m.event.name == "payload" && m.event.res >= 0),
        ),
        (
            "the fileless execveat of the memfd",
            Box::new(|m| {
                ty(m) == EventType::EXECVEAT
                    && m.event.res == 0
                    && m.event.exe_from_memfd
                    && m.event.exe_path.starts_with("/memfd:payload")
                    && m.event.argv == ["true"]
            }),
        ),
        (
            "the exec process's openat of /etc/group",
            Box::new(|m| {
                matches!(ty(m), EventType::OPENAT | EventType::OPENAT2)
                    && m.event.path == "/etc/group"
                    && m.event.comm == "cat"
            }),
        ),
    ];

    let missing_of = |events: &[Enriched]| -> Vec<&str> {
        expected.iter().filter(|(_, f)| !events.iter().any(f)).map(|e| e.0).collect()
    };
    let (events, _) = collect(&c, id, script, exec, |events| missing_of(events).is_empty())?;
    let missing = missing_of(&events);
    let listing = describe(&events);
    eprintln!("{} events from the guest:\n{listing}", events.len());
    if !missing.is_empty() {
        return Err(format!(
            "after {ARRIVAL_LIMIT:?}, {} events; missing: {missing:?}\n{listing}\n{}\n{}",
            events.len(),
            telemetry_log(&c),
            c.diagnostics()
        ));
    }
    // Every event is the container's: the relay's identity and the guest's mapping agree, and
    // nothing of the agent, of libcontainer's helpers (comm youki:...) or of the VM's own
    // processes was collected.
    for m in &events {
        if m.container_id != id || m.event.container_id != id || m.sandbox_id != id {
            return Err(format!("an event not attributed to {id}: {m:?}\n{listing}"));
        }
        if m.event.comm.starts_with("youki") || m.event.comm == "init" || m.event.comm == "bulwark-agent" {
            return Err(format!("an event of the agent or its helpers: {m:?}\n{listing}"));
        }
    }
    // busybox re-executing itself for nc is named after the applet, not "exe".
    assert!(
        events.iter().any(|m| ty(m) == EventType::EXECVE && m.event.comm == "nc"),
        "nc's execve is named nc\n{listing}"
    );
    // The process tree holds together: /tmp/x's parent is the shell that ran the script...
    let exec_x = events.iter().find(|m| ty(m) == EventType::EXECVE && m.event.path == "/tmp/x");
    let script_sh = events.iter().find(|m| ty(m) == EventType::EXECVE && m.event.argv == ["sh", "-c", script]);
    let (Some(x), Some(sh)) = (exec_x, script_sh) else {
        return Err(format!("no execve of the script's shell or of /tmp/x\n{listing}"));
    };
    assert_eq!(x.event.ppid, sh.event.pid, "parent of /tmp/x\n{listing}");
    // ... and the shell's fork result is that child's pid (one pid namespace for both).
    assert!(
        events.iter().any(|m| matches!(ty(m), EventType::CLONE | EventType::FORK | EventType::VFORK)
            && m.event.pid == sh.event.pid
            && m.event.res == x.event.pid as i64),
        "no fork of {} returning {}\n{listing}",
        sh.event.pid,
        x.event.pid
    );
    c.assert_clean()
}

#[test]
fn only_the_configured_syscalls_are_collected() -> Result<(), String> {
    let c = Containerd::start(|s| {
        s.extra.push_str("[telemetry]\nsyscalls = [\"execve\", \"unlink\"]\nnode_socket = \"\"\n");
    })?;
    let id = "telemetry-filter";
    let script = "cat /etc/passwd >/dev/null; touch /tmp/y; rm /tmp/y; exec sleep 600";
    let unlink_y = |m: &Enriched| ty(m) == EventType::UNLINK && m.event.path == "/tmp/y" && m.event.comm == "rm";
    // Events arrive in order: once rm's unlink is there, everything before it is too.
    let (events, done) = collect(&c, id, script, || Ok(()), |events| events.iter().any(unlink_y))?;
    let listing = describe(&events);
    if !done {
        return Err(format!("no unlink of /tmp/y after {ARRIVAL_LIMIT:?}\n{listing}\n{}", telemetry_log(&c)));
    }
    for m in &events {
        assert!(matches!(ty(m), EventType::EXECVE | EventType::UNLINK), "a type that is off was collected:\n{listing}");
    }
    assert!(
        events.iter().any(|m| ty(m) == EventType::EXECVE && m.event.argv == ["sh", "-c", script]),
        "the entrypoint's execve:\n{listing}"
    );
    c.assert_clean()
}

#[test]
fn events_over_the_guests_rate_are_dropped_and_reported() -> Result<(), String> {
    const RATE: u64 = 5;
    let c = Containerd::start(|s| {
        s.extra.push_str(&format!("[telemetry]\nguest_max_events_per_sec = {RATE}\nnode_socket = \"\"\n"));
    })?;
    let id = "telemetry-rate";
    // About 400 events (fork, execve, openat, exit per cat) as fast as the VM goes.
    let script = "i=0; while [ $i -lt 100 ]; do cat /etc/passwd >/dev/null; i=$((i+1)); done; exec sleep 600";
    let start = Instant::now();
    // The shim's own rate (20000/s) drops nothing here: what `drops` counts is the guest's
    // Drops frames.
    let (events, done) = collect(&c, id, script, || Ok(()), |events| events.iter().any(|m| m.drops > 0))?;
    let elapsed = start.elapsed().as_secs() + 1;
    let listing = describe(&events);
    if !done {
        return Err(format!("no event reported drops after {ARRIVAL_LIMIT:?}\n{listing}\n{}", telemetry_log(&c)));
    }
    // A bucket of RATE tokens refilled at RATE a second.
    let most = RATE * (elapsed + 1);
    assert!(events.len() as u64 <= most, "{} events in {elapsed} s at {RATE}/s:\n{listing}", events.len());
    c.assert_clean()
}
