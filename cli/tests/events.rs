//! `bulwark events` against telemetry files written here, frame by frame, as the shim's relay
//! writes them (u32 big-endian length + one Enriched message): the previous file then the
//! current one, garbage and a hostile length reported and skipped, terminal escapes shown
//! escaped, and `--follow` across growth, a rotation and the sandbox's end.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bulwark_protocol::telemetry::{encode_frame, Enriched, Event, EventType, SocketFamily};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn event(t: EventType, pid: u32, path: &str) -> Vec<u8> {
    let mut e = Event::new();
    e.type_ = t.into();
    e.pid = pid;
    e.comm = "sh".into();
    e.path = path.into();
    if t == EventType::CONNECT {
        let s = e.socket.mut_or_insert_default();
        s.family = SocketFamily::INET.into();
        s.remote_addr = vec![192, 0, 2, 7];
        s.remote_port = 8080;
        e.res = -111;
    }
    let mut m = Enriched::new();
    m.event = Some(e).into();
    m.pod_name = "web-0".into();
    m.pod_namespace = "team-a".into();
    m.container_name = "app".into();
    m.sandbox_id = "pod1".into();
    m.host_ts_ns = 1_700_000_000_000_000_000 + u64::from(pid);
    encode_frame(&m).expect("a small message encodes")
}

fn append(path: &Path, bytes: &[u8]) {
    std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(bytes).unwrap();
}

fn bulwark(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulwark"));
    cmd.arg("events").arg("pod1").arg("--config").arg(dir.join("config.toml")).arg("--runtime-dir").arg(dir.join("rd"));
    cmd
}

fn setup(name: &str) -> (Dir, PathBuf) {
    let dir = Dir(std::env::temp_dir().join(format!("bulwark-cli-events-{}-{name}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let sandbox = dir.0.join("rd/k8s.io/pod1");
    std::fs::create_dir_all(&sandbox).unwrap();
    std::fs::write(dir.0.join("config.toml"), "").unwrap();
    (dir, sandbox)
}

#[test]
fn events_are_printed_in_order_and_bad_frames_reported() {
    let (dir, sandbox) = setup("once");
    let old = sandbox.join("telemetry.frames.1");
    let cur = sandbox.join("telemetry.frames");
    append(&old, &event(EventType::EXECVE, 1, "/bin/sh"));
    append(&old, &event(EventType::OPENAT, 2, "/etc/shadow\u{1b}]0;owned\u{7}"));
    append(&cur, &[0, 0, 0, 2, 0xff, 0xff]);
    append(&cur, &event(EventType::CONNECT, 3, ""));
    let next = event(EventType::UNLINKAT, 4, "/tmp/x");
    append(&cur, &next[..7]);

    let out = bulwark(&dir.0).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].contains("pod=team-a/web-0 container=app proc=sh[1]") && lines[0].contains("execve path=/bin/sh"));
    assert!(
        lines[1].contains("openat path=/etc/shadow\\u{1b}]0;owned\\u{7}"),
        "escapes are shown escaped: {}",
        lines[1]
    );
    assert!(!stdout.contains('\u{1b}'), "no raw escape reaches the terminal");
    assert!(lines[2].contains("connect addr=192.0.2.7:8080 res=-111(ECONNREFUSED)"), "{}", lines[2]);
    assert!(lines[0].starts_with("2023-11-14T22:13:20.000Z"), "host time first: {}", lines[0]);
    assert!(stderr.contains("skipped a frame at offset 0"), "{stderr}");
    assert!(stderr.contains("ended inside a frame"), "the half-written frame is named: {stderr}");

    // A declared length far over the cap: the rest of that file is skipped, nothing crashes.
    append(&cur, &next[7..]);
    append(&cur, &u32::MAX.to_be_bytes());
    append(&cur, &vec![0x41; 100_000]);
    let out = bulwark(&dir.0).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4, "the finished frame is read");
    assert!(stderr.contains("unreadable from offset"), "{stderr}");

    let none = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["events", "nope", "--runtime-dir"])
        .arg(dir.0.join("rd"))
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .output()
        .unwrap();
    assert!(!none.status.success() && String::from_utf8_lossy(&none.stderr).contains("no sandbox \"nope\""));
}

#[test]
fn follow_reads_growth_and_rotation_until_the_sandbox_ends() {
    let (dir, sandbox) = setup("follow");
    let cur = sandbox.join("telemetry.frames");
    append(&cur, &event(EventType::EXECVE, 1, "/bin/sh"));
    let mut child = bulwark(&dir.0).arg("--follow").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("no line for {what} within 10 s"))
    };
    assert!(next("the first event").contains("proc=sh[1]"));
    // A frame written in two parts.
    let two = event(EventType::OPENAT, 2, "/a");
    append(&cur, &two[..3]);
    std::thread::sleep(Duration::from_millis(700));
    append(&cur, &two[3..]);
    assert!(next("a frame written in parts").contains("proc=sh[2]"));
    // Rotation: one more event into the file, renamed, then a new file.
    append(&cur, &event(EventType::OPENAT, 3, "/b"));
    std::fs::rename(&cur, sandbox.join("telemetry.frames.1")).unwrap();
    append(&cur, &event(EventType::OPENAT, 4, "/c"));
    assert!(next("the last event of the rotated file").contains("proc=sh[3]"));
    assert!(next("the first event of the new file").contains("proc=sh[4]"));
    std::fs::remove_dir_all(&sandbox).unwrap();
    let ended = (0..100).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        child.try_wait().ok().flatten()
    });
    if ended.is_none() {
        let _ = child.kill();
    }
    let status = ended.expect("--follow ends when the sandbox is gone");
    assert!(status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("is gone"), "{err}");
}
