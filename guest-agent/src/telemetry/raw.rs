//! One ring-buffer record of the BPF programs (`bpf/collector.h`, `struct raw_event` and its
//! fields) turned into a protobuf [`Event`] (pure). The record is untrusted input: every
//! length is checked against the bytes present, unknown field ids are skipped, strings are
//! converted lossily and cut to the protocol's limits (`protocol::limits`), so the result
//! always passes `protocol::telemetry::check_event`.
use protocol::limits::{MAX_ARGV_BYTES, MAX_ARGV_ENTRIES, MAX_TELEMETRY_NAME, MAX_TELEMETRY_PATH};
use protocol::telemetry::{Event, EventType, FdType, L4Proto, SocketFamily, SocketTuple};

/// `struct raw_event`'s size; the fields follow it.
pub const HEADER_LEN: usize = 208;
/// `RAW_VERSION` of collector.h.
pub const RAW_VERSION: u16 = 1;

// Field ids (collector.h F_*).
const F_PATH: u8 = 1;
const F_PATH2: u8 = 2;
const F_CWD: u8 = 3;
const F_EXE: u8 = 4;
const F_ARGV: u8 = 5;
const F_NAME: u8 = 6;
const F_FD_NAME: u8 = 7;
const F_SOCKADDR: u8 = 8;
const F_BASE: u8 = 9;
const F_BASE2: u8 = 10;

/// raw_event.rflags: the fd_* and sock_* fields describe the event's fd.
const RF_FD_FILE: u16 = 2;

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const AF_NETLINK: u16 = 16;
const SOCK_RAW: u16 = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RawError {
    #[error("record of {0} bytes, shorter than the {HEADER_LEN}-byte header")]
    Short(usize),
    #[error("record version {0}, expected {RAW_VERSION}")]
    Version(u16),
    #[error("unknown event type {0}")]
    Type(u16),
    #[error("record declares {declared} data bytes, has {have}")]
    DataLen { declared: usize, have: usize },
}

/// What decoding needs besides the record.
pub struct Context<'a> {
    /// CLOCK_REALTIME - CLOCK_BOOTTIME, ns: turns the record's boot time into wall time.
    pub realtime_offset_ns: i128,
    /// The container id of a registered cgroup id.
    pub container_of: &'a dyn Fn(u64) -> Option<String>,
}

struct Header<'a>(&'a [u8]);

impl Header<'_> {
    fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.0[at], self.0[at + 1]])
    }
    fn u32(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[at..at + 4]);
        u32::from_le_bytes(b)
    }
    fn u64(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[at..at + 8]);
        u64::from_le_bytes(b)
    }
    fn i64(&self, at: usize) -> i64 {
        self.u64(at) as i64
    }
}

/// The data section's fields (the last of each id wins).
#[derive(Default)]
struct Fields<'a> {
    path: Option<&'a [u8]>,
    path2: Option<&'a [u8]>,
    cwd: Option<&'a [u8]>,
    exe: Option<&'a [u8]>,
    argv: Option<&'a [u8]>,
    name: Option<&'a [u8]>,
    fd_name: Option<&'a [u8]>,
    sockaddr: Option<&'a [u8]>,
    base: Option<&'a [u8]>,
    base2: Option<&'a [u8]>,
}

/// Walks `{id, flags, len le16, bytes}` entries; stops at the first one that does not fit.
fn fields(mut data: &[u8]) -> Fields<'_> {
    let mut f = Fields::default();
    while data.len() >= 4 {
        let id = data[0];
        let len = u16::from_le_bytes([data[2], data[3]]) as usize;
        let Some(bytes) = data.get(4..4 + len) else { break };
        let slot = match id {
            F_PATH => &mut f.path,
            F_PATH2 => &mut f.path2,
            F_CWD => &mut f.cwd,
            F_EXE => &mut f.exe,
            F_ARGV => &mut f.argv,
            F_NAME => &mut f.name,
            F_FD_NAME => &mut f.fd_name,
            F_SOCKADDR => &mut f.sockaddr,
            F_BASE => &mut f.base,
            F_BASE2 => &mut f.base2,
            _ => {
                data = &data[4 + len..];
                continue;
            }
        };
        *slot = Some(bytes);
        data = &data[4 + len..];
    }
    f
}

/// `s` cut to at most `max` bytes on a character boundary.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Bytes as a string: up to the first NUL, lossy UTF-8, at most `max` bytes.
fn text(bytes: &[u8], max: usize) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    truncate(String::from_utf8_lossy(&bytes[..end]).into_owned(), max)
}

/// A relative `path` joined to its `base` directory (when the collector sent one).
fn joined(path: Option<&[u8]>, base: Option<&[u8]>) -> String {
    let Some(p) = path else { return String::new() };
    let p = text(p, MAX_TELEMETRY_PATH);
    match base {
        Some(b) if !p.starts_with('/') && !p.is_empty() => {
            let b = text(b, MAX_TELEMETRY_PATH);
            let rel = p.strip_prefix("./").unwrap_or(&p);
            let full = if b.ends_with('/') { format!("{b}{rel}") } else { format!("{b}/{rel}") };
            truncate(full, MAX_TELEMETRY_PATH)
        }
        _ => p,
    }
}

/// argv from the process's NUL-separated argument area, within the protocol's limits.
fn argv(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    let mut out = Vec::new();
    let mut total = 0;
    for arg in bytes.split(|&b| b == 0) {
        if out.len() == MAX_ARGV_ENTRIES || total >= MAX_ARGV_BYTES {
            break;
        }
        let a = truncate(String::from_utf8_lossy(arg).into_owned(), MAX_ARGV_BYTES - total);
        total += a.len();
        out.push(a);
    }
    out
}

/// What an fd is, from its inode mode, dentry name, device and socket family.
pub fn fd_type(imode: u32, name: &str, rdev: u32, family: u16) -> FdType {
    const S_IFMT: u32 = 0o170000;
    let major = rdev >> 20;
    match imode & S_IFMT {
        0o140000 => match family {
            AF_INET => FdType::IPV4_SOCKET,
            AF_INET6 => FdType::IPV6_SOCKET,
            AF_UNIX => FdType::UNIX_SOCKET,
            AF_NETLINK => FdType::NETLINK,
            _ => FdType::OTHER,
        },
        0o010000 => FdType::PIPE,
        0o040000 => FdType::DIRECTORY,
        // tty, console, ptmx, pts: majors 4, 5, 136-143.
        0o020000 if matches!(major, 4 | 5 | 136..=143) => FdType::TTY,
        0o020000 | 0o060000 => FdType::FILE,
        0o100000 if name.starts_with("memfd:") => FdType::MEMFD,
        0o100000 | 0o120000 => FdType::FILE,
        // Anonymous inodes have no type bits; their dentry names say what they are.
        _ => match name {
            "[eventfd]" => FdType::EVENTFD,
            "[signalfd]" => FdType::SIGNALFD,
            "[timerfd]" => FdType::TIMERFD,
            "inotify" => FdType::INOTIFY,
            n if n.starts_with("bpf") => FdType::BPF_FD,
            n if n.starts_with("memfd:") => FdType::MEMFD,
            _ => FdType::OTHER,
        },
    }
}

fn l4(proto: u16, sock_type: u16) -> L4Proto {
    match proto {
        6 => L4Proto::TCP,
        17 => L4Proto::UDP,
        1 | 58 => L4Proto::ICMP,
        _ if sock_type == SOCK_RAW => L4Proto::RAW,
        _ => L4Proto::L4_PROTO_UNSPECIFIED,
    }
}

fn family(f: u16) -> SocketFamily {
    match f {
        AF_INET => SocketFamily::INET,
        AF_INET6 => SocketFamily::INET6,
        AF_UNIX => SocketFamily::UNIX,
        _ => SocketFamily::SOCKET_FAMILY_UNSPECIFIED,
    }
}

/// A sockaddr passed to connect: (family, address, port, unix path).
fn parse_sockaddr(sa: &[u8]) -> Option<(u16, Vec<u8>, u32, String)> {
    let fam = u16::from_le_bytes([*sa.first()?, *sa.get(1)?]);
    match fam {
        AF_INET => {
            let port = u16::from_be_bytes([*sa.get(2)?, *sa.get(3)?]) as u32;
            Some((fam, sa.get(4..8)?.to_vec(), port, String::new()))
        }
        AF_INET6 => {
            let port = u16::from_be_bytes([*sa.get(2)?, *sa.get(3)?]) as u32;
            Some((fam, sa.get(8..24)?.to_vec(), port, String::new()))
        }
        AF_UNIX => {
            let path = sa.get(2..).unwrap_or(&[]);
            let p = match path.first() {
                // Abstract namespace: a leading NUL, the name may contain NULs.
                Some(0) => {
                    let name: Vec<u8> = path[1..].iter().map(|&b| if b == 0 { b'@' } else { b }).collect();
                    format!("@{}", String::from_utf8_lossy(&name))
                }
                _ => text(path, MAX_TELEMETRY_PATH),
            };
            Some((fam, Vec::new(), 0, truncate(p, MAX_TELEMETRY_PATH)))
        }
        _ => None,
    }
}

/// The protobuf event of one ring-buffer record.
pub fn decode(rec: &[u8], ctx: &Context<'_>) -> Result<Event, RawError> {
    if rec.len() < HEADER_LEN {
        return Err(RawError::Short(rec.len()));
    }
    let h = Header(&rec[..HEADER_LEN]);
    let version = h.u16(0);
    if version != RAW_VERSION {
        return Err(RawError::Version(version));
    }
    let raw_type = h.u16(2);
    let ty = match <EventType as protobuf::Enum>::from_i32(raw_type as i32) {
        Some(t) if t != EventType::EVENT_TYPE_UNSPECIFIED => t,
        _ => return Err(RawError::Type(raw_type)),
    };
    let declared = h.u32(4) as usize;
    let data = &rec[HEADER_LEN..];
    if declared > data.len() {
        return Err(RawError::DataLen { declared, have: data.len() });
    }
    let f = fields(&data[..declared]);

    let mut e = Event::new();
    e.type_ = ty.into();
    let ts = h.u64(8) as i128 + ctx.realtime_offset_ns;
    e.ts_ns = ts.clamp(0, u64::MAX as i128) as u64;
    e.res = h.i64(16);
    e.container_id = truncate((ctx.container_of)(h.u64(24)).unwrap_or_default(), MAX_TELEMETRY_NAME);
    e.pid = h.u32(32);
    e.tid = h.u32(36);
    e.ppid = h.u32(40);
    e.uid = h.u32(44);
    e.gid = h.u32(48);
    e.loginuid = h.u32(52);
    e.tty = h.u32(56);
    e.mode = h.u32(60);
    e.flags = h.u64(64);
    e.fd = h.i64(72);
    e.newfd = h.i64(80);
    e.ptrace_request = h.u64(88);
    e.target_pid = h.u32(96);
    e.target_id = h.u32(100);
    let (fd_imode, fd_rdev) = (h.u32(104), h.u32(108));
    e.cap_permitted = h.u64(112);
    e.cap_effective = h.u64(120);
    e.cap_inheritable = h.u64(128);
    let exe_nlink = h.u32(136);
    let (sock_family, sock_proto, sock_type) = (h.u16(140), h.u16(142), h.u16(144));
    let (lport, rport, rflags) = (h.u16(146), h.u16(148), h.u16(150));
    let (laddr, raddr) = (&rec[152..168], &rec[168..184]);
    e.comm = text(&rec[184..200], MAX_TELEMETRY_NAME);
    let (id2, id3) = (h.u32(200), h.u32(204));

    e.path = joined(f.path, f.base);
    e.path2 = joined(f.path2, f.base2);
    e.cwd = f.cwd.map(|c| text(c, MAX_TELEMETRY_PATH)).unwrap_or_default();
    e.exe_path = f.exe.map(|x| text(x, MAX_TELEMETRY_PATH)).unwrap_or_default();
    e.argv = f.argv.map(argv).unwrap_or_default();
    e.name = f.name.map(|n| text(n, MAX_TELEMETRY_NAME)).unwrap_or_default();
    if matches!(ty, EventType::EXECVE | EventType::EXECVEAT) {
        e.exe_from_memfd = e.exe_path.starts_with("/memfd:") && exe_nlink == 0;
        e.comm = exec_comm(e.comm, &e.path, &e.argv);
    }

    let fd_name = f.fd_name.map(|n| text(n, MAX_TELEMETRY_NAME)).unwrap_or_default();
    if rflags & RF_FD_FILE != 0 {
        e.fd_type = fd_type(fd_imode, &fd_name, fd_rdev, sock_family).into();
    }
    let addr_len = match sock_family {
        AF_INET => 4,
        AF_INET6 => 16,
        _ => 0,
    };
    let mut sock = None;
    if matches!(sock_family, AF_INET | AF_INET6 | AF_UNIX) {
        let mut s = SocketTuple::new();
        s.family = family(sock_family).into();
        s.proto = l4(sock_proto, sock_type).into();
        if addr_len > 0 {
            s.local_addr = laddr[..addr_len].to_vec();
            s.local_port = lport as u32;
            s.remote_addr = raddr[..addr_len].to_vec();
            s.remote_port = rport as u32;
        }
        sock = Some(s);
    }
    if let Some((fam, addr, port, unix_path)) = f.sockaddr.and_then(parse_sockaddr) {
        // connect: the address asked for is the remote end, whatever the socket says yet.
        let s = sock.get_or_insert_with(SocketTuple::new);
        if fam != sock_family {
            s.local_addr.clear();
            s.local_port = 0;
        }
        s.family = family(fam).into();
        s.remote_addr = addr;
        s.remote_port = port;
        s.unix_path = unix_path;
    }
    e.socket = sock.into();

    match ty {
        EventType::SETUID | EventType::SETGID => e.name = (e.target_id as i32).to_string(),
        EventType::SETREUID => e.name = format!("ruid={} euid={}", id2 as i32, e.target_id as i32),
        EventType::SETRESUID => e.name = format!("ruid={} euid={} suid={}", id2 as i32, e.target_id as i32, id3 as i32),
        EventType::BPF => e.name = bpf_command(e.flags).to_string(),
        EventType::FINIT_MODULE => e.name = module_name(&e.path),
        _ => {}
    }
    Ok(e)
}

/// The kernel names a process after the file it executes; a multi-call binary re-executing
/// itself through `/proc/self/exe` (busybox runs its applets so) is named `exe` until it renames
/// itself. For that case only, the name is argv[0]'s base name, cut to the kernel's 15 bytes,
/// as the process itself will call itself.
fn exec_comm(comm: String, path: &str, argv: &[String]) -> String {
    if comm != "exe" || path != "/proc/self/exe" {
        return comm;
    }
    match argv.first().map(|a| a.rsplit('/').next().unwrap_or(a)) {
        Some(name) if !name.is_empty() => truncate(name.to_string(), 15),
        _ => comm,
    }
}

/// The `bpf(2)` command's name.
pub fn bpf_command(cmd: u64) -> &'static str {
    const NAMES: &[&str] = &[
        "BPF_MAP_CREATE",
        "BPF_MAP_LOOKUP_ELEM",
        "BPF_MAP_UPDATE_ELEM",
        "BPF_MAP_DELETE_ELEM",
        "BPF_MAP_GET_NEXT_KEY",
        "BPF_PROG_LOAD",
        "BPF_OBJ_PIN",
        "BPF_OBJ_GET",
        "BPF_PROG_ATTACH",
        "BPF_PROG_DETACH",
        "BPF_PROG_TEST_RUN",
        "BPF_PROG_GET_NEXT_ID",
        "BPF_MAP_GET_NEXT_ID",
        "BPF_PROG_GET_FD_BY_ID",
        "BPF_MAP_GET_FD_BY_ID",
        "BPF_OBJ_GET_INFO_BY_FD",
        "BPF_PROG_QUERY",
        "BPF_RAW_TRACEPOINT_OPEN",
        "BPF_BTF_LOAD",
        "BPF_BTF_GET_FD_BY_ID",
        "BPF_TASK_FD_QUERY",
        "BPF_MAP_LOOKUP_AND_DELETE_ELEM",
        "BPF_MAP_FREEZE",
        "BPF_BTF_GET_NEXT_ID",
        "BPF_MAP_LOOKUP_BATCH",
        "BPF_MAP_LOOKUP_AND_DELETE_BATCH",
        "BPF_MAP_UPDATE_BATCH",
        "BPF_MAP_DELETE_BATCH",
        "BPF_LINK_CREATE",
        "BPF_LINK_UPDATE",
        "BPF_LINK_GET_FD_BY_ID",
        "BPF_LINK_GET_NEXT_ID",
        "BPF_ENABLE_STATS",
        "BPF_ITER_CREATE",
        "BPF_LINK_DETACH",
        "BPF_PROG_BIND_MAP",
    ];
    usize::try_from(cmd).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or("BPF_UNKNOWN")
}

/// A module file's name without its directory and `.ko[.xz|.zst|.gz]` suffix.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let base = file.split(".ko").next().unwrap_or(file);
    truncate(base.to_string(), MAX_TELEMETRY_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::telemetry::check_event;

    /// A raw record, written the way collector.h lays it out.
    struct Rec {
        h: Vec<u8>,
        data: Vec<u8>,
    }

    impl Rec {
        fn new(ty: u16) -> Self {
            let mut h = vec![0u8; HEADER_LEN];
            h[0..2].copy_from_slice(&RAW_VERSION.to_le_bytes());
            h[2..4].copy_from_slice(&ty.to_le_bytes());
            let mut r = Rec { h, data: Vec::new() };
            r.u64(72, u64::MAX).u64(80, u64::MAX);
            r
        }
        fn u16(&mut self, at: usize, v: u16) -> &mut Self {
            self.h[at..at + 2].copy_from_slice(&v.to_le_bytes());
            self
        }
        fn u32(&mut self, at: usize, v: u32) -> &mut Self {
            self.h[at..at + 4].copy_from_slice(&v.to_le_bytes());
            self
        }
        fn u64(&mut self, at: usize, v: u64) -> &mut Self {
            self.h[at..at + 8].copy_from_slice(&v.to_le_bytes());
            self
        }
        fn comm(&mut self, c: &[u8]) -> &mut Self {
            self.h[184..184 + c.len()].copy_from_slice(c);
            self
        }
        fn field(&mut self, id: u8, bytes: &[u8]) -> &mut Self {
            self.data.extend_from_slice(&[id, 0]);
            self.data.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
            self.data.extend_from_slice(bytes);
            self
        }
        fn bytes(&self) -> Vec<u8> {
            let mut h = self.h.clone();
            h[4..8].copy_from_slice(&(self.data.len() as u32).to_le_bytes());
            h.extend_from_slice(&self.data);
            h
        }
    }

    fn lookup(id: u64) -> Option<String> {
        (id == 77).then(|| "web".to_string())
    }

    fn ctx() -> Context<'static> {
        Context { realtime_offset_ns: 1_000, container_of: &lookup }
    }

    fn dec(r: &Rec) -> Event {
        let e = decode(&r.bytes(), &ctx()).unwrap();
        check_event(&e).unwrap();
        e
    }

    #[test]
    fn an_exec_record() {
        let mut r = Rec::new(1);
        r.u64(8, 5).u64(24, 77).u32(32, 100).u32(36, 101).u32(40, 1).u32(44, 0).u32(52, u32::MAX).u32(56, 0x8800);
        r.u64(120, 1 << 21).comm(b"cat\0\0garbage");
        r.field(F_PATH, b"/bin/cat").field(F_EXE, b"/bin/busybox").field(F_ARGV, b"cat\0/etc/shadow\0");
        r.field(F_CWD, b"/");
        let e = dec(&r);
        assert_eq!(e.type_.enum_value(), Ok(EventType::EXECVE));
        assert_eq!(e.ts_ns, 1_005);
        assert_eq!((e.pid, e.tid, e.ppid, e.uid, e.loginuid, e.tty), (100, 101, 1, 0, u32::MAX, 0x8800));
        assert_eq!(e.container_id, "web");
        assert_eq!(e.comm, "cat");
        assert_eq!(e.path, "/bin/cat");
        assert_eq!(e.exe_path, "/bin/busybox");
        assert_eq!(e.argv, ["cat", "/etc/shadow"]);
        assert_eq!(e.cwd, "/");
        assert_eq!(e.cap_effective, 1 << 21);
        assert!(!e.exe_from_memfd);
        assert_eq!((e.fd, e.newfd), (-1, -1));
        assert!(e.socket.is_none());
    }

    #[test]
    fn open_unlink_chmod_paths() {
        let mut r = Rec::new(3);
        r.u64(16, 3).u64(64, 0o2).u64(72, 3).u16(150, RF_FD_FILE).u32(104, 0o100644);
        r.field(F_PATH, b"/etc/shadow").field(F_FD_NAME, b"shadow");
        let e = dec(&r);
        assert_eq!((e.path.as_str(), e.flags, e.fd, e.res), ("/etc/shadow", 2, 3, 3));
        assert_eq!(e.fd_type.enum_value(), Ok(FdType::FILE));
        assert_eq!(e.container_id, "", "unregistered cgroup: no container id");

        let mut r = Rec::new(9);
        r.u64(16, (-2i64) as u64).field(F_PATH, b"x/../y").field(F_BASE, b"/var/log");
        assert_eq!(dec(&r).path, "/var/log/x/../y");
        let mut r = Rec::new(7);
        r.u32(60, 0o755).field(F_PATH, b"./x").field(F_BASE, b"/");
        let e = dec(&r);
        assert_eq!((e.path.as_str(), e.mode), ("/x", 0o755));
        // Absolute paths ignore a base; a base alone gives no path.
        let mut r = Rec::new(28);
        r.field(F_PATH, b"/a").field(F_BASE, b"/nope").field(F_PATH2, b"b").field(F_BASE2, b"/tmp/");
        let e = dec(&r);
        assert_eq!((e.path.as_str(), e.path2.as_str()), ("/a", "/tmp/b"));
        let mut r = Rec::new(9);
        r.field(F_BASE, b"/only");
        assert_eq!(dec(&r).path, "");
    }

    #[test]
    fn sockets() {
        // connect to 10.1.2.1:8080 from an IPv4 TCP socket bound to 10.1.2.3:40000.
        let mut r = Rec::new(5);
        r.u64(16, (-115i64) as u64).u64(72, 3).u16(150, RF_FD_FILE).u32(104, 0o140777);
        r.u16(140, AF_INET).u16(142, 6).u16(144, 1).u16(146, 40000);
        r.h[152..156].copy_from_slice(&[10, 1, 2, 3]);
        let mut sa = vec![2, 0, 0x1f, 0x90, 10, 1, 2, 1];
        sa.extend([0; 8]);
        r.field(F_SOCKADDR, &sa).field(F_FD_NAME, b"TCP");
        let e = dec(&r);
        let s = e.socket.as_ref().unwrap();
        assert_eq!(s.family.enum_value(), Ok(SocketFamily::INET));
        assert_eq!(s.proto.enum_value(), Ok(L4Proto::TCP));
        assert_eq!((s.local_addr.as_slice(), s.local_port), (&[10, 1, 2, 3][..], 40000));
        assert_eq!((s.remote_addr.as_slice(), s.remote_port), (&[10, 1, 2, 1][..], 8080));
        assert_eq!(e.fd_type.enum_value(), Ok(FdType::IPV4_SOCKET));

        // accept4 on IPv6: both ends from the socket.
        let mut r = Rec::new(31);
        r.u16(150, RF_FD_FILE).u32(104, 0o140777).u16(140, AF_INET6).u16(142, 6).u16(146, 80).u16(148, 5555);
        r.h[152..168].copy_from_slice(&[0xfe; 16]);
        r.h[168..184].copy_from_slice(&[1; 16]);
        let e = dec(&r);
        let s = e.socket.as_ref().unwrap();
        assert_eq!((s.local_addr.len(), s.local_port, s.remote_addr[0], s.remote_port), (16, 80, 1, 5555));
        assert_eq!(e.fd_type.enum_value(), Ok(FdType::IPV6_SOCKET));

        // connect of a UNIX socket, abstract name.
        let mut r = Rec::new(5);
        r.u16(150, RF_FD_FILE).u32(104, 0o140777).u16(140, AF_UNIX);
        r.field(F_SOCKADDR, b"\x01\x00\x00name\x00x");
        let s = dec(&r).socket.unwrap();
        assert_eq!((s.family.enum_value(), s.unix_path.as_str()), (Ok(SocketFamily::UNIX), "@name@x"));
        let mut r = Rec::new(5);
        r.field(F_SOCKADDR, b"\x01\x00/run/x.sock\x00\x00\x00");
        assert_eq!(dec(&r).socket.unwrap().unix_path, "/run/x.sock");
        // A truncated or unknown sockaddr is ignored.
        for sa in [&b"\x02\x00\x1f"[..], b"\x0a\x00\x00\x50\x00\x00\x00\x00\x01", b"\x99\x00abc", b"\x02"] {
            let mut r = Rec::new(5);
            r.field(F_SOCKADDR, sa);
            let e = dec(&r);
            assert!(e.socket.is_none(), "{sa:?}");
        }
    }

    #[test]
    fn dup_of_a_socket_onto_stdout() {
        let mut r = Rec::new(24);
        r.u64(16, 1).u64(72, 3).u64(80, 1).u16(150, RF_FD_FILE).u32(104, 0o140777).u16(140, AF_INET);
        r.u16(142, 6).u16(148, 4444);
        let e = dec(&r);
        assert_eq!((e.fd, e.newfd, e.res), (3, 1, 1));
        assert_eq!(e.fd_type.enum_value(), Ok(FdType::IPV4_SOCKET));
        assert_eq!(e.socket.remote_port, 4444);
    }

    #[test]
    fn ids_names_and_memfd() {
        let mut r = Rec::new(15);
        r.u32(100, 0).u32(200, u32::MAX).u32(204, 0);
        assert_eq!(dec(&r).name, "ruid=-1 euid=0 suid=0");
        let mut r = Rec::new(12);
        r.u32(100, 1000);
        let e = dec(&r);
        assert_eq!((e.name.as_str(), e.target_id), ("1000", 1000));
        let mut r = Rec::new(21);
        r.u64(64, 5);
        assert_eq!(dec(&r).name, "BPF_PROG_LOAD");
        r.u64(64, 9999);
        assert_eq!(dec(&r).name, "BPF_UNKNOWN");
        let mut r = Rec::new(20);
        r.field(F_PATH, b"/tmp/rootkit.ko.xz");
        assert_eq!(dec(&r).name, "rootkit");
        let mut r = Rec::new(22);
        r.field(F_NAME, b"payload");
        assert_eq!(dec(&r).name, "payload");
        let mut r = Rec::new(1);
        r.field(F_EXE, b"/memfd:payload");
        assert!(dec(&r).exe_from_memfd);
        r.u32(136, 1);
        assert!(!dec(&r).exe_from_memfd, "a linked file named like a memfd is not one");
        let mut r = Rec::new(16);
        r.u64(88, 16).u32(96, 42);
        let e = dec(&r);
        assert_eq!((e.ptrace_request, e.target_pid), (16, 42));
    }

    #[test]
    fn a_re_exec_through_proc_self_exe_is_named_after_argv0() {
        let mut r = Rec::new(1);
        r.comm(b"exe").field(F_PATH, b"/proc/self/exe").field(F_ARGV, b"nc\x0010.0.0.1\x00");
        assert_eq!(dec(&r).comm, "nc");
        let mut r = Rec::new(1);
        r.comm(b"exe").field(F_PATH, b"/proc/self/exe").field(F_ARGV, b"/usr/bin/a-very-long-applet-name\x00");
        assert_eq!(dec(&r).comm, "a-very-long-app");
        // Anything else keeps the kernel's name.
        for (comm, path, argv) in [
            (&b"exe"[..], &b"/usr/bin/exe"[..], &b"nc\x00"[..]),
            (b"cat", b"/proc/self/exe", b"nc\x00"),
            (b"exe", b"/proc/self/exe", b""),
            (b"exe", b"/proc/self/exe", b"/\x00"),
        ] {
            let mut r = Rec::new(1);
            r.comm(comm).field(F_PATH, path).field(F_ARGV, argv);
            assert_eq!(dec(&r).comm.as_bytes(), comm, "{path:?} {argv:?}");
        }
        let mut r = Rec::new(3);
        r.comm(b"exe").field(F_PATH, b"/proc/self/exe");
        assert_eq!(dec(&r).comm, "exe", "not an exec");
    }

    #[test]
    fn fd_types() {
        assert_eq!(fd_type(0o010600, "pipe:[1]", 0, 0), FdType::PIPE);
        assert_eq!(fd_type(0o040755, "etc", 0, 0), FdType::DIRECTORY);
        assert_eq!(fd_type(0o020620, "0", 136 << 20, 0), FdType::TTY);
        assert_eq!(fd_type(0o020666, "null", 1 << 20 | 3, 0), FdType::FILE);
        assert_eq!(fd_type(0o100777, "memfd:x", 0, 0), FdType::MEMFD);
        assert_eq!(fd_type(0o600, "[eventfd]", 0, 0), FdType::EVENTFD);
        assert_eq!(fd_type(0o600, "[timerfd]", 0, 0), FdType::TIMERFD);
        assert_eq!(fd_type(0o600, "bpf-map", 0, 0), FdType::BPF_FD);
        assert_eq!(fd_type(0o600, "[weird]", 0, 0), FdType::OTHER);
        assert_eq!(fd_type(0o140777, "", 0, AF_NETLINK), FdType::NETLINK);
        assert_eq!(fd_type(0o140777, "", 0, 99), FdType::OTHER);
    }

    #[test]
    fn limits_are_kept_lossily() {
        let mut r = Rec::new(1);
        let mut args = Vec::new();
        for _ in 0..300 {
            args.extend_from_slice(b"aaaaaaaaaa\0");
        }
        r.field(F_ARGV, &args);
        r.field(F_PATH, &vec![b'p'; 9000]);
        r.field(F_CWD, &[0xff, 0xfe, b'/', 0xc3]);
        r.field(F_NAME, &"é".repeat(200).into_bytes());
        r.comm(&[0xff; 16]);
        let e = dec(&r);
        assert_eq!(e.argv.len(), MAX_ARGV_ENTRIES);
        assert_eq!(e.path.len(), MAX_TELEMETRY_PATH);
        assert_eq!(e.cwd, "\u{fffd}\u{fffd}/\u{fffd}");
        assert!(e.name.len() <= MAX_TELEMETRY_NAME && e.name.chars().all(|c| c == 'é'));
        let big = vec![b'b'; MAX_ARGV_BYTES];
        let mut r = Rec::new(1);
        let mut a = big.clone();
        a.push(0);
        a.extend_from_slice(&big);
        r.field(F_ARGV, &a);
        let e = dec(&r);
        assert_eq!(e.argv.iter().map(|a| a.len()).sum::<usize>(), MAX_ARGV_BYTES);
        assert_eq!(truncate("aé".into(), 2), "a");
    }

    #[test]
    fn garbage_records_are_refused_or_survived() {
        assert_eq!(decode(&[], &ctx()), Err(RawError::Short(0)));
        assert_eq!(decode(&[1; HEADER_LEN - 1], &ctx()), Err(RawError::Short(HEADER_LEN - 1)));
        let mut r = Rec::new(1);
        r.u16(0, 9);
        assert_eq!(decode(&r.bytes(), &ctx()), Err(RawError::Version(9)));
        for t in [0u16, 35, 999, u16::MAX] {
            assert_eq!(decode(&Rec::new(t).bytes(), &ctx()), Err(RawError::Type(t)));
        }
        let mut bytes = Rec::new(3).bytes();
        bytes[4..8].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(decode(&bytes, &ctx()), Err(RawError::DataLen { declared: 1000, have: 0 }));
        // A field whose length runs past the data ends the walk; unknown ids are skipped.
        let mut r = Rec::new(3);
        r.field(200, b"zz").field(F_PATH, b"/ok");
        r.data.extend_from_slice(&[F_PATH2, 0, 0xff, 0xff, b'x']);
        let e = dec(&r);
        assert_eq!((e.path.as_str(), e.path2.as_str()), ("/ok", ""));
        // Deterministic pseudo-random garbage never panics and always passes the limits.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for round in 0..3000 {
            let len = HEADER_LEN + (round % 300);
            let mut rec = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                rec.push(x as u8);
            }
            rec[0..2].copy_from_slice(&RAW_VERSION.to_le_bytes());
            rec[2..4].copy_from_slice(&((x % 36) as u16).to_le_bytes());
            let data_len = (x >> 8) as usize % (len - HEADER_LEN + 1);
            rec[4..8].copy_from_slice(&(data_len as u32).to_le_bytes());
            if let Ok(e) = decode(&rec, &ctx()) {
                check_event(&e).unwrap();
            }
        }
        // The timestamp saturates instead of wrapping.
        let mut r = Rec::new(3);
        r.u64(8, u64::MAX);
        assert_eq!(decode(&r.bytes(), &ctx()).unwrap().ts_ns, u64::MAX);
        let neg = Context { realtime_offset_ns: -10, container_of: &lookup };
        assert_eq!(decode(&Rec::new(3).bytes(), &neg).unwrap().ts_ns, 0);
    }
}
