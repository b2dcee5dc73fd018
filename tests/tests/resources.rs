//! Container resources through a real containerd and `ctr`: metrics from the guest cgroup,
//! `ctr task update` reaching the guest cgroup, pause/resume freezing the container, guest
//! pids, and an OOM kill reported as exit status 137 with a /tasks/oom event.

use std::process::Child;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use bulwark_e2e::containerd::{Containerd, CTR_LIMIT, NAMESPACE};
use bulwark_e2e::process::{poll, wait_bounded};

/// `ctr run --rm` with extra run flags, in the background; stdout lines arrive on the
/// returned channel.
fn spawn_run(c: &Containerd, flags: &[&str], id: &str, args: &[&str]) -> Result<(Child, Receiver<String>), String> {
    c.spawn_run_lines(id, flags, args)
}

/// The next line matching `pred` within `limit`.
fn next_line(rx: &Receiver<String>, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
    let end = Instant::now() + limit;
    loop {
        let left = end.checked_duration_since(Instant::now())?;
        match rx.recv_timeout(left) {
            Ok(l) if pred(&l) => return Some(l),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// Kills the task and waits for `ctr run --rm` to finish (it deletes the container).
fn kill_and_wait(c: &Containerd, id: &str, run: &mut Child) -> Result<(), String> {
    let kill = c.ctr(&["task", "kill", "--signal", "SIGKILL", id])?;
    assert!(kill.status.success(), "ctr task kill: {kill:?}");
    wait_bounded(run, CTR_LIMIT)?;
    Ok(())
}

/// Task.Update straight to the container's shim, the way containerd forwards CRI's
/// UpdateContainerResources (`ctr` has no `task update`): OCI LinuxResources JSON in an Any.
fn shim_update(c: &Containerd, id: &str, resources_json: &str) -> Result<(), String> {
    use containerd_shim_protos::api::UpdateTaskRequest;
    use containerd_shim_protos::protobuf::well_known_types::any::Any;
    use containerd_shim_protos::protobuf::MessageField;
    use containerd_shim_protos::shim_sync::{Client, TaskClient};

    let addr_file = c.dir.join("state/io.containerd.runtime.v2.task").join(NAMESPACE).join(id).join("address");
    let addr = std::fs::read_to_string(&addr_file).map_err(|e| format!("{}: {e}", addr_file.display()))?;
    let client = Client::connect(addr.trim()).map_err(|e| format!("connecting to the shim at {addr}: {e}"))?;
    let req = UpdateTaskRequest {
        id: id.to_string(),
        resources: MessageField::some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: resources_json.as_bytes().to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    };
    TaskClient::new(client)
        .update(containerd_shim_protos::ttrpc::context::with_timeout(Duration::from_secs(60).as_nanos() as i64), &req)
        .map(|_| ())
        .map_err(|e| format!("Update: {e}"))
}

/// The value of `name` in `ctr task metrics` table output ("name   value").
fn metric(table: &str, name: &str) -> Option<u64> {
    table.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(name)).then(|| it.next()?.parse().ok())?
    })
}

#[test]
fn metrics_show_memory_and_cpu_of_a_busy_container_and_pids_lists_guest_processes() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let id = "busy";
    let (mut run, rx) = spawn_run(&c, &[], id, &["sh", "-c", "echo ready; i=0; while :; do i=$((i+1)); done"])?;
    c.wait_running(id)?;
    next_line(&rx, CTR_LIMIT, |l| l == "ready").ok_or_else(|| format!("no output\n{}", c.diagnostics()))?;
    // Let it burn some CPU, then ask until the usage is visible.
    let table = poll(Duration::from_secs(60), || {
        let out = c.ctr(&["task", "metrics", id]).ok()?;
        (metric(&out.stdout, "cpu.usage_usec").unwrap_or(0) > 100_000).then_some(out.stdout)
    })
    .ok_or_else(|| {
        format!("ctr task metrics never showed CPU usage: {:?}\n{}", c.ctr(&["task", "metrics", id]), c.diagnostics())
    })?;
    let mem = metric(&table, "memory.usage").unwrap_or(0);
    assert!(mem > 0, "memory.usage is zero:\n{table}");
    assert!(metric(&table, "cpu.user_usec").unwrap_or(0) > 0, "cpu.user_usec is zero:\n{table}");
    assert!(metric(&table, "pids.current").unwrap_or(0) >= 1, "pids.current:\n{table}");

    let ps = c.ctr(&["task", "ps", id])?;
    assert!(ps.status.success(), "ctr task ps: {ps:?}");
    let pids: Vec<u32> = ps.stdout.lines().skip(1).filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    let qemu_pid = c.task_status(id).map(|(_, p)| p).unwrap_or(0) as u32;
    assert!(!pids.is_empty(), "no processes listed: {ps:?}");
    assert!(!pids.contains(&qemu_pid), "the host QEMU pid is listed instead of guest pids: {ps:?}");

    kill_and_wait(&c, id, &mut run)?;
    c.assert_clean()
}

#[test]
fn update_changes_the_memory_limit_seen_in_the_guest_cgroup() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let id = "upd";
    // ctr (unlike CRI) gives the container neither a cgroup namespace nor a cgroup mount:
    // mount the guest's cgroup2 read-only and read the container's own cgroup in it.
    let script = "cg=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup); \
                  while :; do echo \"max=$(cat $cg/memory.max)\"; sleep 0.3; done";
    let flags = ["--memory-limit", "268435456", "--mount", "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro"];
    let (mut run, rx) = spawn_run(&c, &flags, id, &["sh", "-c", script])?;
    c.wait_running(id)?;
    let first = next_line(&rx, CTR_LIMIT, |l| l.starts_with("max="))
        .ok_or_else(|| format!("no memory.max output\n{}", c.diagnostics()))?;
    assert_eq!(first, "max=268435456", "initial limit from ctr run --memory-limit");

    shim_update(&c, id, r#"{"memory":{"limit":67108864},"devices":[{"allow":false,"access":"rwm"}]}"#)
        .map_err(|e| format!("{e}\n{}", c.diagnostics()))?;
    let seen = next_line(&rx, Duration::from_secs(20), |l| l == "max=67108864");
    assert!(seen.is_some(), "the guest never showed memory.max=67108864\n{}", c.diagnostics());
    let table = c.ctr(&["task", "metrics", id])?.stdout;
    assert_eq!(metric(&table, "memory.usage_limit"), Some(67108864), "metrics after update:\n{table}");

    let bad = shim_update(&c, id, r#"{"memory":{"limit":"lots"}}"#);
    assert!(bad.is_err_and(|e| e.contains("LinuxResources")), "malformed resources were accepted");
    let bad = shim_update(&c, id, r#"{"memory":{"limit":1048576,"swap":1}}"#);
    assert!(bad.is_err(), "swap below the limit was accepted");

    kill_and_wait(&c, id, &mut run)?;
    c.assert_clean()
}

#[test]
fn pause_stops_output_and_resume_continues_it() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let id = "pz";
    let (mut run, rx) =
        spawn_run(&c, &[], id, &["sh", "-c", "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.2; done"])?;
    c.wait_running(id)?;
    next_line(&rx, CTR_LIMIT, |l| l.starts_with("tick ")).ok_or_else(|| format!("no output\n{}", c.diagnostics()))?;

    let p = c.ctr(&["task", "pause", id])?;
    assert!(p.status.success(), "ctr task pause: {p:?}\n{}", c.diagnostics());
    assert_eq!(c.task_status(id).map(|s| s.0).as_deref(), Some("PAUSED"), "ctr task ls after pause");
    // What was already on its way may still arrive; then nothing.
    while rx.recv_timeout(Duration::from_secs(2)).is_ok() {}
    match rx.recv_timeout(Duration::from_secs(3)) {
        Err(RecvTimeoutError::Timeout) => {}
        other => panic!("output while paused: {other:?}"),
    }
    let paused_again = c.ctr(&["task", "pause", id])?;
    assert!(!paused_again.status.success(), "pausing a paused task succeeded: {paused_again:?}");

    let r = c.ctr(&["task", "resume", id])?;
    assert!(r.status.success(), "ctr task resume: {r:?}\n{}", c.diagnostics());
    assert_eq!(c.task_status(id).map(|s| s.0).as_deref(), Some("RUNNING"), "ctr task ls after resume");
    next_line(&rx, Duration::from_secs(20), |l| l.starts_with("tick "))
        .ok_or_else(|| format!("no output after resume\n{}", c.diagnostics()))?;
    c.wait_event(id, "/tasks/resumed", Duration::from_secs(10))?;
    let events = c.task_events(id);
    assert!(events.iter().any(|e| e == "/tasks/paused"), "no /tasks/paused event: {events:?}");

    // A paused container can still be killed (SIGKILL reaches frozen tasks) and removed.
    let p = c.ctr(&["task", "pause", id])?;
    assert!(p.status.success(), "second ctr task pause: {p:?}");
    kill_and_wait(&c, id, &mut run)?;
    c.wait_event(id, "/tasks/delete", Duration::from_secs(20))?;
    c.assert_clean()
}

#[test]
fn a_container_over_its_memory_limit_is_oom_killed_with_an_oom_event() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let id = "oom";
    // tail keeps the last (never ending) line of /dev/zero in memory until the limit.
    let (mut run, _rx) = spawn_run(&c, &["--memory-limit", "16777216"], id, &["tail", "/dev/zero"])?;
    let status = wait_bounded(&mut run, CTR_LIMIT)?;
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    assert_eq!(code, 137, "exit status of the OOM-killed container\n{}", c.diagnostics());
    c.wait_event(id, "/tasks/oom", Duration::from_secs(20)).map_err(|e| format!("{e}\n{}", c.diagnostics()))?;
    let events = c.wait_event(id, "/tasks/delete", Duration::from_secs(20))?;
    let oom_events = events.iter().filter(|e| *e == "/tasks/oom").count();
    assert_eq!(oom_events, 1, "one OOM kill, one event: {events:?}");
    let pos = |t: &str| events.iter().position(|e| e == t);
    assert!(pos("/tasks/oom") < pos("/tasks/exit"), "/tasks/oom must come before /tasks/exit: {events:?}");
    c.assert_clean()
}
