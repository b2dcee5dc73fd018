//! Our seccomp filter for the helpers that have none of their own (vhost-device-vsock): a
//! plain allowlist of x86_64 syscall numbers, built here as classic BPF (pure, unit tested
//! with a small interpreter) and installed in the child right before it execs the program.
//! Anything else kills the whole process (`SECCOMP_RET_KILL_PROCESS`), as does any other
//! architecture or ABI (x32 numbers have bit 30 set and so match no entry).
//!
//! The filter is in force from the exec on, so the list covers the exec itself (`execveat`,
//! our exec by fd), the dynamic loader (`openat`, `mmap`, `mprotect`, ...) and the program.
//! It was measured with `strace -f` on vhost-device-vsock 0.3 serving a booting guest (start,
//! vhost-user setup, guest connections both ways, teardown) and rounded up with the calls the
//! Rust runtime and glibc make on paths the trace did not hit (thread exit, signals).

use std::fmt;

/// `AUDIT_ARCH_X86_64` (linux/audit.h).
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// seccomp return values (linux/seccomp.h).
pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
pub const RET_ALLOW: u32 = 0x7fff_0000;

// classic BPF opcodes (linux/bpf_common.h)
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K

/// A classic BPF seccomp program.
#[derive(Clone, PartialEq, Eq)]
pub struct Filter(pub Vec<libc::sock_filter>);

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Filter({} instructions)", self.0.len())
    }
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The program allowing exactly `syscalls` (x86_64 numbers) and killing the process on
/// anything else (pure).
pub fn allowlist(syscalls: &[i64]) -> Filter {
    let mut nrs: Vec<u32> = syscalls.iter().filter_map(|&n| u32::try_from(n).ok()).collect();
    nrs.sort_unstable();
    nrs.dedup();
    let mut p = vec![
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, OFF_NR),
    ];
    // One compare per syscall: on a match, jump to the ALLOW at the end (jt counts the
    // instructions in between); each compare is followed only by compares and the KILL.
    let n = nrs.len();
    for (i, nr) in nrs.iter().enumerate() {
        let to_allow = n - i; // remaining compares after this one + the KILL
                              // jumps are 8 bits: long lists are split with an intermediate ALLOW (never needed
                              // for our lists, which are far shorter; checked below).
        let jt = u8::try_from(to_allow).unwrap_or(u8::MAX);
        p.push(jump(BPF_JEQ_K, *nr, jt, 0));
    }
    p.push(stmt(BPF_RET_K, RET_KILL_PROCESS));
    p.push(stmt(BPF_RET_K, RET_ALLOW));
    Filter(p)
}

/// What vhost-device-vsock (with the dynamic loader and the exec by fd before it) may call.
pub const VHOST_DEVICE_VSOCK: &[(&str, i64)] = &[
    // exec and the dynamic loader
    ("execveat", libc::SYS_execveat),
    ("execve", libc::SYS_execve),
    ("brk", libc::SYS_brk),
    ("arch_prctl", libc::SYS_arch_prctl),
    ("access", libc::SYS_access),
    ("openat", libc::SYS_openat),
    ("open", libc::SYS_open),
    ("newfstatat", libc::SYS_newfstatat),
    ("fstat", libc::SYS_fstat),
    ("statx", libc::SYS_statx),
    ("read", libc::SYS_read),
    ("pread64", libc::SYS_pread64),
    ("mmap", libc::SYS_mmap),
    ("mprotect", libc::SYS_mprotect),
    ("munmap", libc::SYS_munmap),
    ("close", libc::SYS_close),
    ("set_tid_address", libc::SYS_set_tid_address),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("rseq", libc::SYS_rseq),
    ("prlimit64", libc::SYS_prlimit64),
    ("getrandom", libc::SYS_getrandom),
    // the Rust runtime: signals, threads, memory
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("poll", libc::SYS_poll),
    ("ppoll", libc::SYS_ppoll),
    ("sched_getaffinity", libc::SYS_sched_getaffinity),
    ("sched_yield", libc::SYS_sched_yield),
    ("clone3", libc::SYS_clone3),
    ("clone", libc::SYS_clone),
    ("futex", libc::SYS_futex),
    ("madvise", libc::SYS_madvise),
    ("mremap", libc::SYS_mremap),
    ("gettid", libc::SYS_gettid),
    ("getpid", libc::SYS_getpid),
    ("tgkill", libc::SYS_tgkill),
    ("prctl", libc::SYS_prctl),
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    ("clock_gettime", libc::SYS_clock_gettime),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("nanosleep", libc::SYS_nanosleep),
    // the vhost-user socket, the hybrid-vsock sockets, guest memory
    ("socket", libc::SYS_socket),
    ("bind", libc::SYS_bind),
    ("listen", libc::SYS_listen),
    ("accept4", libc::SYS_accept4),
    ("accept", libc::SYS_accept),
    ("connect", libc::SYS_connect),
    ("unlink", libc::SYS_unlink),
    ("unlinkat", libc::SYS_unlinkat),
    ("getsockopt", libc::SYS_getsockopt),
    ("setsockopt", libc::SYS_setsockopt),
    ("getsockname", libc::SYS_getsockname),
    ("getpeername", libc::SYS_getpeername),
    ("shutdown", libc::SYS_shutdown),
    ("recvmsg", libc::SYS_recvmsg),
    ("sendmsg", libc::SYS_sendmsg),
    ("recvfrom", libc::SYS_recvfrom),
    ("sendto", libc::SYS_sendto),
    ("write", libc::SYS_write),
    ("writev", libc::SYS_writev),
    ("readv", libc::SYS_readv),
    ("lseek", libc::SYS_lseek),
    ("fcntl", libc::SYS_fcntl),
    ("ioctl", libc::SYS_ioctl),
    ("dup", libc::SYS_dup),
    ("dup3", libc::SYS_dup3),
    ("eventfd2", libc::SYS_eventfd2),
    ("epoll_create1", libc::SYS_epoll_create1),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("epoll_wait", libc::SYS_epoll_wait),
    ("epoll_pwait", libc::SYS_epoll_pwait),
];

/// vhost-device-vsock's filter.
pub fn vhost_device_vsock() -> Filter {
    allowlist(&VHOST_DEVICE_VSOCK.iter().map(|&(_, nr)| nr).collect::<Vec<_>>())
}

/// Installs `filter` on the calling thread (and what it execs), with `SECCOMP_FILTER_FLAG_TSYNC`
/// unneeded: the forked child has one thread. Async-signal-safe: one syscall, no allocation.
/// Requires no_new_privs (or CAP_SYS_ADMIN).
pub fn install(filter: &Filter) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: filter.0.len() as u16,
        // the kernel only reads the program
        filter: filter.0.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER, 0, &prog) reads `prog` and the `len`
    // instructions it points to, which live in `filter` for the whole call.
    let r =
        unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog as *const libc::sock_fprog) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a classic BPF seccomp program on (arch, nr): the subset of BPF our programs use.
    fn run(p: &Filter, arch: u32, nr: u32) -> u32 {
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = p.0[pc];
            match i.code {
                BPF_LD_W_ABS => {
                    acc = match i.k {
                        OFF_NR => nr,
                        OFF_ARCH => arch,
                        k => panic!("load of offset {k}"),
                    };
                    pc += 1;
                }
                BPF_JEQ_K => pc += 1 + if acc == i.k { i.jt as usize } else { i.jf as usize },
                BPF_RET_K => return i.k,
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn allows_exactly_the_list() {
        let f = allowlist(&[libc::SYS_read, libc::SYS_write, libc::SYS_exit_group, libc::SYS_read]);
        for nr in [libc::SYS_read, libc::SYS_write, libc::SYS_exit_group] {
            assert_eq!(run(&f, AUDIT_ARCH_X86_64, nr as u32), RET_ALLOW, "nr {nr}");
        }
        for nr in [libc::SYS_open, libc::SYS_ptrace, libc::SYS_execve, 0x4000_0000 | libc::SYS_read as u32 as i64] {
            assert_eq!(run(&f, AUDIT_ARCH_X86_64, nr as u32), RET_KILL_PROCESS, "nr {nr}");
        }
        // another architecture (i386) is killed even for an allowed number
        assert_eq!(run(&f, 0x4000_0003, libc::SYS_read as u32), RET_KILL_PROCESS);
        // an empty list allows nothing
        assert_eq!(run(&allowlist(&[]), AUDIT_ARCH_X86_64, libc::SYS_read as u32), RET_KILL_PROCESS);
    }

    #[test]
    fn vsock_filter_allows_its_calls_and_no_dangerous_ones() {
        let f = vhost_device_vsock();
        assert!(f.0.len() < 250, "jump offsets are 8 bits");
        for &(name, nr) in VHOST_DEVICE_VSOCK {
            assert_eq!(run(&f, AUDIT_ARCH_X86_64, nr as u32), RET_ALLOW, "{name}");
        }
        for (name, nr) in [
            ("ptrace", libc::SYS_ptrace),
            ("mount", libc::SYS_mount),
            ("setuid", libc::SYS_setuid),
            ("unshare", libc::SYS_unshare),
            ("bpf", libc::SYS_bpf),
            ("process_vm_writev", libc::SYS_process_vm_writev),
            ("open_by_handle_at", libc::SYS_open_by_handle_at),
            ("kexec_load", libc::SYS_kexec_load),
            ("keyctl", libc::SYS_keyctl),
            ("userfaultfd", libc::SYS_userfaultfd),
        ] {
            assert_eq!(run(&f, AUDIT_ARCH_X86_64, nr as u32), RET_KILL_PROCESS, "{name}");
        }
    }
}
