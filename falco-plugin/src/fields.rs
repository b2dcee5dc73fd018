//! Field extraction, pure: from one enriched event and the process table to a value. The
//! plugin's extract capability and the rules tests both go through [`extract`].

use std::net::IpAddr;

use bulwark_protocol::telemetry::{errno_name, Enriched, Event, EventType, FdType, L4Proto, SocketFamily};

use crate::proctable::ProcTable;

/// A field's type, as Falco sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    U64,
    Bool,
    Ip,
    Net,
}

/// Every field the plugin provides: name, type, whether it takes an index (`[n]`).
pub const FIELDS: &[(&str, Kind, bool)] = &[
    ("evt.type", Kind::Str, false),
    ("evt.res", Kind::Str, false),
    ("evt.rawres", Kind::U64, false),
    ("evt.failed", Kind::Bool, false),
    ("evt.arg.flags", Kind::Str, false),
    ("evt.arg.mode", Kind::Str, false),
    ("evt.arg.request", Kind::Str, false),
    ("evt.arg.name", Kind::Str, false),
    ("evt.arg.path", Kind::Str, false),
    ("evt.arg.newpath", Kind::Str, false),
    ("evt.is_open_read", Kind::Bool, false),
    ("evt.is_open_write", Kind::Bool, false),
    ("proc.name", Kind::Str, false),
    ("proc.exe", Kind::Str, false),
    ("proc.exepath", Kind::Str, false),
    ("proc.args", Kind::Str, false),
    ("proc.cmdline", Kind::Str, false),
    ("proc.cwd", Kind::Str, false),
    ("proc.pid", Kind::U64, false),
    ("proc.ppid", Kind::U64, false),
    ("proc.pname", Kind::Str, false),
    ("proc.pexepath", Kind::Str, false),
    ("proc.pcmdline", Kind::Str, false),
    ("proc.aname", Kind::Str, true),
    ("proc.tty", Kind::U64, false),
    ("proc.is_exe_from_memfd", Kind::Bool, false),
    ("proc.is_exe_upper_layer", Kind::Bool, false),
    ("thread.tid", Kind::U64, false),
    ("thread.cap_effective", Kind::Str, false),
    ("thread.cap_permitted", Kind::Str, false),
    ("user.uid", Kind::U64, false),
    ("user.name", Kind::Str, false),
    ("user.loginuid", Kind::U64, false),
    ("group.gid", Kind::U64, false),
    ("fd.num", Kind::U64, false),
    ("fd.type", Kind::Str, false),
    ("fd.typechar", Kind::Str, false),
    ("fd.name", Kind::Str, false),
    ("fd.directory", Kind::Str, false),
    ("fd.filename", Kind::Str, false),
    ("fd.l4proto", Kind::Str, false),
    ("fd.sip", Kind::Ip, false),
    ("fd.sport", Kind::U64, false),
    ("fd.cip", Kind::Ip, false),
    ("fd.cport", Kind::U64, false),
    ("fd.lip", Kind::Ip, false),
    ("fd.lport", Kind::U64, false),
    ("fd.rip", Kind::Ip, false),
    ("fd.rport", Kind::U64, false),
    ("fd.snet", Kind::Net, false),
    ("fd.rnet", Kind::Net, false),
    ("container.id", Kind::Str, false),
    ("container.name", Kind::Str, false),
    ("container.image", Kind::Str, false),
    ("container.image.repository", Kind::Str, false),
    ("container.image.tag", Kind::Str, false),
    ("k8s.ns.name", Kind::Str, false),
    ("k8s.pod.name", Kind::Str, false),
    ("k8s.pod.uid", Kind::Str, false),
    ("bulwark.sandbox_id", Kind::Str, false),
    ("bulwark.vm", Kind::Str, false),
    ("bulwark.node", Kind::Str, false),
    ("bulwark.drops", Kind::U64, false),
];

/// An extracted value; `None` when the event does not carry the field (Falco's `<NA>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    None,
    Str(String),
    U64(u64),
    Bool(bool),
    Ip(IpAddr),
    Net(IpAddr),
}

fn s(v: &str) -> Value {
    if v.is_empty() {
        Value::None
    } else {
        Value::Str(v.to_string())
    }
}

/// Falco's name of an event type.
pub fn type_name(t: EventType) -> &'static str {
    use EventType::*;
    match t {
        EVENT_TYPE_UNSPECIFIED => "unknown",
        EXECVE => "execve",
        EXECVEAT => "execveat",
        OPENAT => "openat",
        OPENAT2 => "openat2",
        CONNECT => "connect",
        ACCEPT => "accept",
        ACCEPT4 => "accept4",
        CHMOD => "chmod",
        FCHMOD => "fchmod",
        FCHMODAT => "fchmodat",
        UNLINK => "unlink",
        UNLINKAT => "unlinkat",
        RENAME => "rename",
        RENAMEAT => "renameat",
        RENAMEAT2 => "renameat2",
        SETUID => "setuid",
        SETGID => "setgid",
        SETREUID => "setreuid",
        SETRESUID => "setresuid",
        PTRACE => "ptrace",
        MOUNT => "mount",
        UMOUNT => "umount2",
        INIT_MODULE => "init_module",
        FINIT_MODULE => "finit_module",
        BPF => "bpf",
        MEMFD_CREATE => "memfd_create",
        DUP => "dup",
        DUP2 => "dup2",
        DUP3 => "dup3",
        FORK => "fork",
        VFORK => "vfork",
        CLONE => "clone",
        CLONE3 => "clone3",
        EXIT => "procexit",
    }
}

/// `evt.res`: `SUCCESS`, or the errno's name (or the raw value when unknown).
pub fn res_string(res: i64) -> String {
    if res >= 0 {
        return "SUCCESS".into();
    }
    errno_name(res.saturating_neg()).map(str::to_string).unwrap_or_else(|| res.to_string())
}

const OPEN_FLAGS: &[(u64, &str)] = &[
    (0o100, "O_CREAT"),
    (0o200, "O_EXCL"),
    (0o400, "O_NOCTTY"),
    (0o1000, "O_TRUNC"),
    (0o2000, "O_APPEND"),
    (0o4000, "O_NONBLOCK"),
    (0o10000, "O_DSYNC"),
    (0o40000, "O_DIRECT"),
    (0o200000, "O_DIRECTORY"),
    (0o400000, "O_NOFOLLOW"),
    (0o1000000, "O_NOATIME"),
    (0o2000000, "O_CLOEXEC"),
    (0o10000000, "O_PATH"),
    (0o20000000, "O_TMPFILE"),
];

fn is_open(t: EventType) -> bool {
    matches!(t, EventType::OPENAT | EventType::OPENAT2)
}

/// Open flags as Falco renders them (`O_WRONLY|O_CREAT|O_TRUNC`).
pub fn open_flags(flags: u64) -> String {
    let mut parts = vec![match flags & 3 {
        0 => "O_RDONLY",
        1 => "O_WRONLY",
        _ => "O_RDWR",
    }];
    for (bit, name) in OPEN_FLAGS {
        if flags & bit == *bit {
            parts.push(name);
        }
    }
    parts.join("|")
}

const MODE_BITS: &[(u32, &str)] = &[
    (0o4000, "S_ISUID"),
    (0o2000, "S_ISGID"),
    (0o1000, "S_ISVTX"),
    (0o400, "S_IRUSR"),
    (0o200, "S_IWUSR"),
    (0o100, "S_IXUSR"),
    (0o40, "S_IRGRP"),
    (0o20, "S_IWGRP"),
    (0o10, "S_IXGRP"),
    (0o4, "S_IROTH"),
    (0o2, "S_IWOTH"),
    (0o1, "S_IXOTH"),
];

/// A mode as Falco renders it (`S_IRUSR|S_IWUSR|S_IXUSR`).
pub fn mode_string(mode: u32) -> String {
    MODE_BITS.iter().filter(|(b, _)| mode & b == *b).map(|(_, n)| *n).collect::<Vec<_>>().join("|")
}

/// ptrace requests by name (Linux numbering).
pub fn ptrace_request(r: u64) -> String {
    match r {
        0 => "PTRACE_TRACEME".into(),
        1 => "PTRACE_PEEKTEXT".into(),
        2 => "PTRACE_PEEKDATA".into(),
        3 => "PTRACE_PEEKUSR".into(),
        4 => "PTRACE_POKETEXT".into(),
        5 => "PTRACE_POKEDATA".into(),
        6 => "PTRACE_POKEUSR".into(),
        7 => "PTRACE_CONT".into(),
        8 => "PTRACE_KILL".into(),
        9 => "PTRACE_SINGLESTEP".into(),
        12 => "PTRACE_GETREGS".into(),
        13 => "PTRACE_SETREGS".into(),
        16 => "PTRACE_ATTACH".into(),
        17 => "PTRACE_DETACH".into(),
        24 => "PTRACE_SYSCALL".into(),
        0x4206 => "PTRACE_SEIZE".into(),
        other => other.to_string(),
    }
}

const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// A capability set as Falco renders it (names separated by spaces).
pub fn caps_string(set: u64) -> String {
    CAPS.iter().enumerate().filter(|(i, _)| set & (1u64 << i) != 0).map(|(_, n)| *n).collect::<Vec<_>>().join(" ")
}

fn fd_type(t: FdType) -> Option<(&'static str, &'static str)> {
    use FdType::*;
    Some(match t {
        FD_TYPE_UNSPECIFIED => return None,
        FILE => ("file", "f"),
        DIRECTORY => ("directory", "d"),
        IPV4_SOCKET => ("ipv4", "4"),
        IPV6_SOCKET => ("ipv6", "6"),
        UNIX_SOCKET => ("unix", "u"),
        PIPE => ("pipe", "p"),
        EVENTFD => ("event", "e"),
        SIGNALFD => ("signalfd", "s"),
        TIMERFD => ("timerfd", "t"),
        INOTIFY => ("inotify", "i"),
        MEMFD => ("memfd", "m"),
        NETLINK => ("netlink", "n"),
        BPF_FD => ("bpf", "b"),
        TTY => ("file", "f"),
        OTHER => ("other", "o"),
    })
}

fn ip(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// (local, remote, is the local end the server)
type Ends = ((Option<IpAddr>, u32), (Option<IpAddr>, u32), bool);

fn ends(e: &Event) -> Option<Ends> {
    let sock = e.socket.as_ref()?;
    if !matches!(sock.family.enum_value(), Ok(SocketFamily::INET | SocketFamily::INET6)) {
        return None;
    }
    let local = (ip(&sock.local_addr), sock.local_port);
    let remote = (ip(&sock.remote_addr), sock.remote_port);
    let server_is_local = matches!(e.type_.enum_value(), Ok(EventType::ACCEPT | EventType::ACCEPT4));
    Some((local, remote, server_is_local))
}

fn fmt_end(a: Option<IpAddr>, port: u32) -> String {
    match a {
        Some(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        Some(v4) => format!("{v4}:{port}"),
        None => format!("?:{port}"),
    }
}

/// `fd.name`: the path for files, `client->server` for INET sockets, the path of UNIX sockets.
pub fn fd_name(e: &Event) -> Value {
    if let Some((l, r, server_local)) = ends(e) {
        let (c, srv) = if server_local { (r, l) } else { (l, r) };
        return Value::Str(format!("{}->{}", fmt_end(c.0, c.1), fmt_end(srv.0, srv.1)));
    }
    if let Some(sock) = e.socket.as_ref() {
        if !sock.unix_path.is_empty() {
            return s(&sock.unix_path);
        }
    }
    s(&e.path)
}

fn dir_and_file(path: &str) -> Option<(String, String)> {
    if !path.starts_with('/') {
        return None;
    }
    let trimmed = if path.len() > 1 { path.trim_end_matches('/') } else { path };
    let idx = trimmed.rfind('/')?;
    let dir = if idx == 0 { "/" } else { &trimmed[..idx] };
    Some((dir.to_string(), trimmed[idx + 1..].to_string()))
}

/// Splits an image reference into repository and tag (digest references: tag empty).
pub fn split_image(image: &str) -> (String, String) {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last_slash = no_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
    match no_digest[last_slash..].rfind(':') {
        Some(i) => (no_digest[..last_slash + i].to_string(), no_digest[last_slash + i + 1..].to_string()),
        None => (no_digest.to_string(), String::new()),
    }
}

/// One field of one event. `arg` is the `[n]` index of indexed fields.
pub fn extract(name: &str, arg: Option<u64>, m: &Enriched, procs: &ProcTable) -> Value {
    let Some(e) = m.event.as_ref() else { return Value::None };
    let sb = m.sandbox_id.as_str();
    let ty = e.type_.enum_value().unwrap_or(EventType::EVENT_TYPE_UNSPECIFIED);
    let me = procs.get(sb, e.pid);
    let parent = procs.ancestor(sb, e.pid, 1).or_else(|| procs.get(sb, e.ppid));
    let pick =
        |ev: &str, table: Option<&String>| if ev.is_empty() { table.map_or(Value::None, |t| s(t)) } else { s(ev) };
    let args: Vec<String> =
        if e.argv.len() > 1 { e.argv[1..].to_vec() } else { me.map(|p| p.args.clone()).unwrap_or_default() };
    let comm = if e.comm.is_empty() { me.map(|p| p.comm.clone()).unwrap_or_default() } else { e.comm.clone() };
    let file = if e.socket.is_none() { dir_and_file(&e.path) } else { None };
    let sock_ends = ends(e);
    let end = |server: bool, local_side: Option<bool>| -> (Option<IpAddr>, u32) {
        let Some((l, r, server_local)) = sock_ends else { return (None, 0) };
        match local_side {
            Some(true) => l,
            Some(false) => r,
            None if server == server_local => l,
            None => r,
        }
    };
    let port = |p: (Option<IpAddr>, u32)| if sock_ends.is_some() { Value::U64(p.1 as u64) } else { Value::None };
    let addr = |p: (Option<IpAddr>, u32)| p.0.map_or(Value::None, Value::Ip);
    let net = |p: (Option<IpAddr>, u32)| p.0.map_or(Value::None, Value::Net);
    let (repo, tag) = split_image(&m.image);
    match name {
        "evt.type" => Value::Str(type_name(ty).into()),
        "evt.res" => Value::Str(res_string(e.res)),
        "evt.rawres" => {
            if e.res >= 0 {
                Value::U64(e.res as u64)
            } else {
                Value::None
            }
        }
        "evt.failed" => Value::Bool(e.res < 0),
        "evt.arg.flags" => {
            if is_open(ty) {
                Value::Str(open_flags(e.flags))
            } else {
                Value::Str(e.flags.to_string())
            }
        }
        "evt.arg.mode" => match ty {
            EventType::CHMOD | EventType::FCHMOD | EventType::FCHMODAT | EventType::OPENAT | EventType::OPENAT2 => {
                Value::Str(mode_string(e.mode))
            }
            _ => Value::None,
        },
        "evt.arg.request" => {
            if ty == EventType::PTRACE {
                Value::Str(ptrace_request(e.ptrace_request))
            } else {
                Value::None
            }
        }
        "evt.arg.name" => s(&e.name),
        "evt.arg.path" => s(&e.path),
        "evt.arg.newpath" => s(&e.path2),
        "evt.is_open_read" => {
            if is_open(ty) {
                Value::Bool(e.flags & 3 != 1)
            } else {
                Value::None
            }
        }
        "evt.is_open_write" => {
            if is_open(ty) {
                Value::Bool(e.flags & 3 != 0)
            } else {
                Value::None
            }
        }
        "proc.name" => s(&comm),
        "proc.exe" => pick(e.argv.first().map_or("", |a| a.as_str()), me.map(|p| &p.exe)),
        "proc.exepath" => pick(&e.exe_path, me.map(|p| &p.exe_path)),
        "proc.args" => Value::Str(args.join(" ")),
        "proc.cmdline" => {
            if comm.is_empty() {
                Value::None
            } else if args.is_empty() {
                Value::Str(comm)
            } else {
                Value::Str(format!("{comm} {}", args.join(" ")))
            }
        }
        "proc.cwd" => pick(&e.cwd, me.map(|p| &p.cwd)),
        "proc.pid" => Value::U64(e.pid as u64),
        "proc.ppid" => Value::U64(e.ppid as u64),
        "proc.pname" => parent.map_or(Value::None, |p| s(&p.comm)),
        "proc.pexepath" => parent.map_or(Value::None, |p| s(&p.exe_path)),
        "proc.pcmdline" => parent.map_or(Value::None, |p| s(&p.cmdline())),
        "proc.aname" => match arg {
            Some(0) => s(&comm),
            Some(n) => procs.ancestor(sb, e.pid, n).map_or(Value::None, |p| s(&p.comm)),
            None => parent.map_or(Value::None, |p| s(&p.comm)),
        },
        "proc.tty" => Value::U64(e.tty as u64),
        "proc.is_exe_from_memfd" => Value::Bool(e.exe_from_memfd),
        "proc.is_exe_upper_layer" => Value::Bool(e.exe_on_upper_layer),
        "thread.tid" => Value::U64(e.tid as u64),
        "thread.cap_effective" => Value::Str(caps_string(e.cap_effective)),
        "thread.cap_permitted" => Value::Str(caps_string(e.cap_permitted)),
        "user.uid" => Value::U64(e.uid as u64),
        "user.name" => {
            if !e.user_name.is_empty() {
                s(&e.user_name)
            } else if e.uid == 0 {
                Value::Str("root".into())
            } else {
                Value::None
            }
        }
        "user.loginuid" => Value::U64(e.loginuid as u64),
        "group.gid" => Value::U64(e.gid as u64),
        "fd.num" => {
            let fd = match ty {
                EventType::OPENAT | EventType::OPENAT2 | EventType::ACCEPT | EventType::ACCEPT4 => e.res,
                _ => e.fd,
            };
            if fd >= 0 {
                Value::U64(fd as u64)
            } else {
                Value::None
            }
        }
        "fd.type" => {
            fd_type(e.fd_type.enum_value().unwrap_or_default()).map_or(Value::None, |t| Value::Str(t.0.into()))
        }
        "fd.typechar" => {
            fd_type(e.fd_type.enum_value().unwrap_or_default()).map_or(Value::None, |t| Value::Str(t.1.into()))
        }
        "fd.name" => fd_name(e),
        "fd.directory" => file.map_or(Value::None, |(d, _)| Value::Str(d)),
        "fd.filename" => file.map_or(Value::None, |(_, f)| Value::Str(f)),
        "fd.l4proto" => match e.socket.as_ref().map(|s| s.proto.enum_value()) {
            Some(Ok(L4Proto::TCP)) => Value::Str("tcp".into()),
            Some(Ok(L4Proto::UDP)) => Value::Str("udp".into()),
            Some(Ok(L4Proto::ICMP)) => Value::Str("icmp".into()),
            Some(Ok(L4Proto::RAW)) => Value::Str("raw".into()),
            _ => Value::None,
        },
        "fd.sip" => addr(end(true, None)),
        "fd.sport" => port(end(true, None)),
        "fd.cip" => addr(end(false, None)),
        "fd.cport" => port(end(false, None)),
        "fd.lip" => addr(end(false, Some(true))),
        "fd.lport" => port(end(false, Some(true))),
        "fd.rip" => addr(end(false, Some(false))),
        "fd.rport" => port(end(false, Some(false))),
        "fd.snet" => net(end(true, None)),
        "fd.rnet" => net(end(false, Some(false))),
        "container.id" => {
            if m.container_id.is_empty() {
                // The VM's own processes (agent, init): Falco's name for "not in a container".
                Value::Str("host".into())
            } else {
                s(&m.container_id)
            }
        }
        "container.name" => s(&m.container_name),
        "container.image" => s(&m.image),
        "container.image.repository" => s(&repo),
        "container.image.tag" => s(&tag),
        "k8s.ns.name" => s(&m.pod_namespace),
        "k8s.pod.name" => s(&m.pod_name),
        "k8s.pod.uid" => s(&m.pod_uid),
        "bulwark.sandbox_id" => s(&m.sandbox_id),
        "bulwark.vm" => {
            if m.sandbox_id.is_empty() {
                Value::None
            } else {
                Value::Str(format!("{}/{}", m.node_name, m.sandbox_id))
            }
        }
        "bulwark.node" => s(&m.node_name),
        "bulwark.drops" => Value::U64(m.drops),
        _ => Value::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renderings() {
        assert_eq!(open_flags(0o1 | 0o100 | 0o1000), "O_WRONLY|O_CREAT|O_TRUNC");
        assert_eq!(open_flags(0), "O_RDONLY");
        assert_eq!(mode_string(0o4755), "S_ISUID|S_IRUSR|S_IWUSR|S_IXUSR|S_IRGRP|S_IXGRP|S_IROTH|S_IXOTH");
        assert_eq!(res_string(-2), "ENOENT");
        assert_eq!(res_string(-4095), "-4095");
        assert_eq!(res_string(7), "SUCCESS");
        assert_eq!(caps_string(1 << 16 | 1), "CAP_CHOWN CAP_SYS_MODULE");
        assert_eq!(split_image("docker.io/library/nginx:1.27"), ("docker.io/library/nginx".into(), "1.27".into()));
        assert_eq!(split_image("localhost:5000/app@sha256:ab"), ("localhost:5000/app".into(), "".into()));
        assert_eq!(split_image("busybox"), ("busybox".into(), "".into()));
        assert_eq!(dir_and_file("/etc/shadow"), Some(("/etc".into(), "shadow".into())));
        assert_eq!(dir_and_file("/x"), Some(("/".into(), "x".into())));
        assert_eq!(dir_and_file("rel"), None);
    }
}
