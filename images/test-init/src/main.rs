//! Test /init for images/boot-check (not the product's agent).
//!
//! As PID 1 in the guest: mount devtmpfs/proc/sysfs, load /lib/modules/<name>.ko in the order of
//! /lib/modules/load-order with finit_module(2), optionally mount virtio-fs (`bw.virtiofs=<tag>` on
//! the kernel command line) and read /mnt/hello.txt, connect AF_VSOCK to CID 2 port 1025
//! (`bw.port=<n>` overrides), send one line, wait for the host's reply, power off.
//! `bw.mode=cgroup` first runs the host cgroup enforcement checks of cgroup.rs (results appended
//! to the line).
//!
//! On the host: `bulwark-test-init --listen <unix-socket-path> [timeout-secs]` accepts one
//! connection (the guest's, via vhost-device-vsock's `<uds-path>_<port>`), prints
//! `<unix-time-ns> <line>`, replies "ack".
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod cgroup;

fn kmsg(s: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = f.write_all(format!("<1>bulwark-test-init: {s}\n").as_bytes());
    }
}

fn mount(src: &str, dst: &str, fstype: &str) -> Result<(), std::io::Error> {
    let _ = std::fs::create_dir_all(dst);
    let (s, d, t) = (CString::new(src).unwrap(), CString::new(dst).unwrap(), CString::new(fstype).unwrap());
    // SAFETY: valid NUL-terminated strings, no data argument.
    let r = unsafe { libc::mount(s.as_ptr(), d.as_ptr(), t.as_ptr(), 0, std::ptr::null()) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/uptime").unwrap_or_default().split_whitespace().next().unwrap_or("?").to_string()
}

fn listen(path: &str, timeout: u64) -> i32 {
    use std::os::unix::net::UnixListener;
    let _ = std::fs::remove_file(path);
    let l = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) => { eprintln!("listen {path}: {e}"); return 1; }
    };
    l.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(timeout);
    loop {
        match l.accept() {
            Ok((mut c, _)) => {
                let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
                c.set_nonblocking(false).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while let Ok(1) = c.read(&mut b) {
                    if b[0] == b'\n' { break; }
                    line.push(b[0]);
                    if line.len() > 4096 { break; }
                }
                let _ = c.write_all(b"ack\n");
                println!("{at} {}", String::from_utf8_lossy(&line));
                return 0;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() > deadline { eprintln!("listen {path}: no connection within {timeout}s"); return 2; }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => { eprintln!("accept {path}: {e}"); return 1; }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() >= 3 && args[1] == "--listen" {
        let t = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(60);
        std::process::exit(listen(&args[2], t));
    }
    if std::process::id() != 1 {
        eprintln!("usage: bulwark-test-init --listen <socket> [timeout-secs]   (or run as PID 1 in the guest)");
        std::process::exit(2);
    }
    let _ = mount("devtmpfs", "/dev", "devtmpfs");
    let _ = mount("proc", "/proc", "proc");
    let _ = mount("sysfs", "/sys", "sysfs");
    let t_init = uptime();
    let mut report = String::new();
    let order = std::fs::read_to_string("/lib/modules/load-order").unwrap_or_default();
    for m in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match std::fs::File::open(format!("/lib/modules/{m}.ko")) {
            Ok(f) => {
                let p = CString::new("").unwrap();
                // SAFETY: valid fd and empty params string.
                let r = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), p.as_ptr(), 0) };
                if r != 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EEXIST) { report.push_str(&format!(" modfail:{m}:{e}")); }
                }
            }
            Err(e) => report.push_str(&format!(" modopen:{m}:{e}")),
        }
    }
    let t_mods = uptime();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let mut port = 1025u32;
    for arg in cmdline.split_whitespace() {
        if let Some(tag) = arg.strip_prefix("bw.virtiofs=") {
            match mount(tag, "/mnt", "virtiofs") {
                Err(e) => report.push_str(&format!(" virtiofs-mount-failed:{e}")),
                Ok(()) => {
                    let c = std::fs::read_to_string("/mnt/hello.txt").unwrap_or_else(|e| format!("read-error:{e}"));
                    report.push_str(&format!(" virtiofs={}", c.trim()));
                }
            }
        }
        if let Some(p) = arg.strip_prefix("bw.port=") { port = p.parse().unwrap_or(port); }
    }
    let args: Vec<&str> = cmdline.split_whitespace().collect();
    if args.contains(&"bw.mode=cgroup") {
        report.push(' ');
        report.push_str(&cgroup::run(args.contains(&"bw.cgroup_limits=off")));
    }
    let kr = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // SAFETY: plain socket(2)/connect(2) with a zeroed, filled-in sockaddr_vm.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    let mut sent = false;
    if fd < 0 {
        kmsg(&format!("socket(AF_VSOCK): {}", std::io::Error::last_os_error()));
    } else {
        // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as u16;
        addr.svm_cid = libc::VMADDR_CID_HOST;
        addr.svm_port = port;
        for _ in 0..100 {
            // SAFETY: fd is our socket; addr is a valid sockaddr_vm and the length is its size.
            let r = unsafe {
                libc::connect(fd, &addr as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_vm>() as u32)
            };
            if r == 0 { sent = true; break; }
            kmsg(&format!("vsock connect to 2:{port}: {}", std::io::Error::last_os_error()));
            std::thread::sleep(Duration::from_millis(100));
        }
        if sent {
            // SAFETY: fd is a connected socket we own.
            let mut s = unsafe { std::fs::File::from_raw_fd(fd) };
            let t_conn = uptime();
            let _ = s.write_all(
                format!("hello kernel={} init_at={t_init} modules_at={t_mods} connected_at={t_conn}{report}\n", kr.trim())
                    .as_bytes(),
            );
            let mut b = [0u8; 16];
            let _ = s.read(&mut b);
        }
    }
    kmsg(&format!("done sent={sent}{report}"));
    // SAFETY: we are PID 1 in a throwaway VM.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    loop { std::thread::sleep(Duration::from_secs(1)); }
}
