//! `bulwark inspect <sandbox>`: one sandbox in detail: its record (pod, size, acceleration),
//! its processes (pid, running, uid/gid, memory, cgroup), the jail uid, the host cgroup, the
//! VMM's sockets, every log, the share, the pod network it attached, the telemetry files.
//! Everything comes from the state directory (through the shim's `state_dir`) and /proc;
//! nothing is changed.

use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::ExitCode;

use bulwark_shim::sandbox::state_dir;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::node::Node;
use crate::sandboxes::{self, Sandbox};
use crate::text::{clean, duration, now_unix, or_dash, table};
use crate::{procfs, ps, NodeArgs};

/// Longest small state file read (records, cgroup values).
const MAX_SMALL_FILE: u64 = 4096;

#[derive(Debug, Serialize)]
struct ProcessDetail {
    name: String,
    pid: i32,
    exe: String,
    running: bool,
    uid: Option<u32>,
    gid: Option<u32>,
    rss_kib: Option<u64>,
    cgroup: Option<String>,
}

#[derive(Debug, Serialize)]
struct FileDetail {
    what: String,
    path: String,
    /// Size in bytes (None: absent).
    bytes: Option<u64>,
    /// For sockets: whether a socket is there.
    socket: bool,
}

#[derive(Debug, Serialize)]
struct CgroupDetail {
    path: String,
    exists: bool,
    memory_current: Option<u64>,
    memory_max: Option<String>,
    pids_current: Option<u64>,
}

#[derive(Debug, Serialize)]
struct NetworkDetail {
    netns: Option<String>,
    /// (interface index, tap name) pairs the shim attached.
    taps: Vec<(u32, String)>,
}

#[derive(Debug, Serialize)]
struct Detail {
    #[serde(flatten)]
    summary: ps::Row,
    record_error: Option<String>,
    processes: Vec<ProcessDetail>,
    jail_uid_lock: Option<String>,
    cgroup: Option<CgroupDetail>,
    sockets: Vec<FileDetail>,
    logs: Vec<FileDetail>,
    share: String,
    export: String,
    /// The containers whose rootfs and volumes are in the share.
    share_entries: Vec<String>,
    network: Option<NetworkDetail>,
    telemetry: Vec<FileDetail>,
}

fn small_file(path: &Path) -> Option<String> {
    let mut s = String::new();
    std::fs::File::open(path).ok()?.take(MAX_SMALL_FILE).read_to_string(&mut s).ok()?;
    Some(s.trim().to_string())
}

fn file(what: &str, path: &Path) -> FileDetail {
    let md = std::fs::symlink_metadata(path).ok();
    FileDetail {
        what: what.to_string(),
        path: path.display().to_string(),
        bytes: md.as_ref().map(|m| m.len()),
        socket: md.is_some_and(|m| m.file_type().is_socket()),
    }
}

fn cgroup(dir: &Path) -> Option<CgroupDetail> {
    let recorded = small_file(&state_dir::cgroup_record(dir))?;
    let path = Path::new(&recorded);
    let num = |f: &str| small_file(&path.join(f)).and_then(|v| v.parse().ok());
    Some(CgroupDetail {
        exists: path.is_absolute() && path.is_dir(),
        memory_current: num("memory.current"),
        memory_max: small_file(&path.join("memory.max")),
        pids_current: num("pids.current"),
        path: recorded,
    })
}

fn network(dir: &Path) -> Option<NetworkDetail> {
    let text = small_file(&state_dir::network_state(dir))?;
    let mut net = NetworkDetail { netns: None, taps: Vec::new() };
    for line in text.lines().take(64) {
        let w: Vec<&str> = line.split(' ').collect();
        match w.as_slice() {
            ["netns", p] => net.netns = Some(p.to_string()),
            ["link", i, t] => {
                if let Ok(i) = i.parse() {
                    net.taps.push((i, t.to_string()));
                }
            }
            _ => {}
        }
    }
    Some(net)
}

fn detail(s: &Sandbox) -> Detail {
    let dir = &s.dir;
    let processes = s
        .processes
        .iter()
        .map(|p| {
            let live = p.running;
            let ids = live.then(|| procfs::ids(p.pid)).flatten();
            ProcessDetail {
                name: p.name.clone(),
                pid: p.pid,
                exe: p.exe.display().to_string(),
                running: live,
                uid: ids.map(|i| i.0),
                gid: ids.map(|i| i.1),
                rss_kib: live.then(|| procfs::rss_kib(p.pid)).flatten(),
                cgroup: live.then(|| procfs::cgroup(p.pid)).flatten(),
            }
        })
        .collect();
    let vmm = state_dir::vmm_files(dir);
    let share = state_dir::share(dir);
    let mut share_entries: Vec<String> = std::fs::read_dir(&share)
        .into_iter()
        .flatten()
        .flatten()
        .take(1000)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    share_entries.sort();
    Detail {
        summary: ps::row(s, now_unix()),
        record_error: s.info.as_ref().err().cloned(),
        processes,
        jail_uid_lock: vmm.iter().find(|(what, _)| *what == "jail uid record").and_then(|(_, p)| small_file(p)),
        cgroup: cgroup(dir),
        sockets: vmm.iter().filter(|(what, _)| what.ends_with("socket")).map(|(w, p)| file(w, p)).collect(),
        logs: state_dir::logs(dir)
            .iter()
            .map(|p| file(&p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), p))
            .collect(),
        share: share.display().to_string(),
        export: state_dir::export(dir).display().to_string(),
        share_entries,
        network: network(dir),
        telemetry: [
            ("telemetry frames", state_dir::telemetry_frames(dir)),
            ("telemetry frames (previous)", state_dir::telemetry_frames_old(dir)),
        ]
        .iter()
        .map(|(w, p)| file(w, p))
        .collect(),
    }
}

fn size(bytes: Option<u64>) -> String {
    match bytes {
        None => "absent".into(),
        Some(b) if b < 10 * 1024 => format!("{b} B"),
        Some(b) if b < 10 * 1024 * 1024 => format!("{} KiB", b / 1024),
        Some(b) => format!("{} MiB", b / (1024 * 1024)),
    }
}

fn render(d: &Detail) -> String {
    let r = &d.summary;
    let mut out = String::new();
    let ns = r.containerd_namespace.as_deref().map(|n| format!(" (containerd namespace {})", clean(n, 64)));
    out.push_str(&format!("sandbox    {}{}\n", clean(&r.sandbox_id, 128), ns.unwrap_or_default()));
    out.push_str(&format!("state dir  {}\n", clean(&r.state_dir, 256)));
    if let Some(e) = &d.record_error {
        out.push_str(&format!("record     none: {}\n", clean(e, 256)));
    } else {
        out.push_str(&format!(
            "pod        {}/{} (uid {}), tenant {}\n",
            or_dash(&r.pod_namespace, 64),
            or_dash(&r.pod_name, 253),
            or_dash(&r.pod_uid, 64),
            r.tenant.as_deref().map(|t| clean(t, 64)).unwrap_or_else(|| "- (the [tenant] defaults)".into())
        ));
        out.push_str(&format!(
            "vm         {} vCPU, {} MiB, {}, {}\n",
            r.vcpus.unwrap_or(0),
            r.memory_mib.unwrap_or(0),
            r.accel.as_deref().map(|a| clean(a, 8)).unwrap_or_default(),
            match r.uptime_secs {
                Some(u) => format!("up {}", duration(u)),
                None => r.state.to_string(),
            }
        ));
    }
    out.push_str("processes\n");
    let rows: Vec<Vec<String>> = d
        .processes
        .iter()
        .map(|p| {
            let o = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            vec![
                clean(&p.name, 24),
                p.pid.to_string(),
                if p.running { "yes" } else { "no" }.into(),
                o(p.uid.map(|u| u.to_string())),
                o(p.gid.map(|g| g.to_string())),
                o(p.rss_kib.map(|k| format!("{}Mi", k / 1024))),
                clean(&p.exe, 200),
            ]
        })
        .collect();
    for line in table(&["NAME", "PID", "RUNNING", "UID", "GID", "RSS", "EXE"], &rows).lines() {
        out.push_str(&format!("  {line}\n"));
    }
    for p in d.processes.iter().filter(|p| p.cgroup.is_some()) {
        out.push_str(&format!(
            "  {} runs in cgroup {}\n",
            clean(&p.name, 24),
            clean(p.cgroup.as_deref().unwrap_or_default(), 256)
        ));
    }
    out.push_str(&format!(
        "jail uid   lock {}\n",
        d.jail_uid_lock.as_deref().map(|l| clean(l, 256)).unwrap_or_else(|| "-".into())
    ));
    match &d.cgroup {
        Some(c) => out.push_str(&format!(
            "cgroup     {}{}{}{}\n",
            clean(&c.path, 256),
            if c.exists { "" } else { " (gone)" },
            c.memory_current.map(|m| format!(", memory.current {} MiB", m >> 20)).unwrap_or_default(),
            c.pids_current.map(|p| format!(", pids.current {p}")).unwrap_or_default()
        )),
        None => out.push_str("cgroup     none recorded (no linux.cgroupsPath, or no usable cgroup v2)\n"),
    }
    out.push_str("sockets\n");
    for s in &d.sockets {
        out.push_str(&format!(
            "  {:<26} {} {}\n",
            s.what,
            if s.socket { "present" } else { "absent " },
            clean(&s.path, 256)
        ));
    }
    out.push_str("logs\n");
    for l in d.logs.iter().chain(d.telemetry.iter()) {
        out.push_str(&format!("  {:<26} {:>8} {}\n", clean(&l.what, 40), size(l.bytes), clean(&l.path, 256)));
    }
    out.push_str(&format!(
        "share      {} (containers: {})\n           served read-only from {}\n",
        clean(&d.share, 256),
        if d.share_entries.is_empty() {
            "none".to_string()
        } else {
            d.share_entries.iter().map(|e| clean(e, 80)).collect::<Vec<_>>().join(", ")
        },
        clean(&d.export, 256)
    ));
    match &d.network {
        Some(n) => out.push_str(&format!(
            "network    netns {}, taps {}\n",
            n.netns.as_deref().map(|p| clean(p, 256)).unwrap_or_else(|| "-".into()),
            n.taps.iter().map(|(i, t)| format!("{} (link {i})", clean(t, 16))).collect::<Vec<_>>().join(", ")
        )),
        None => out.push_str("network    none attached (no pod network namespace)\n"),
    }
    out
}

pub fn run(args: &NodeArgs, name: &str, json: bool) -> Result<ExitCode> {
    let node = Node::load(args)?;
    let s = sandboxes::find(node.runtime_dir(), name)?;
    let d = detail(&s);
    let text = if json {
        serde_json::to_string_pretty(&d).map_err(|e| Error::Output(e.to_string()))? + "\n"
    } else {
        render(&d)
    };
    std::io::stdout().write_all(text.as_bytes()).map_err(|e| Error::Output(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}
