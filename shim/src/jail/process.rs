//! How one VMM process is confined, applied in the forked child before it runs the program
//! (the shape of Firecracker's jailer; the chroot is mount_view.rs): [`Confinement`] says what
//! (pure data, built by the VMM backend), [`Confinement::prepare`] allocates everything
//! before the fork, and [`Prepared::enter`] runs in the child between fork and exec, making
//! only async-signal-safe system calls, and execs the program by fd.
//!
//! Order in the child: `oom_score_adj` (the shim runs at containerd's -999; raising it needs
//! no privilege), the private mount namespace (needs CAP_SYS_ADMIN), the resource limits
//! (soft = hard: without CAP_SYS_RESOURCE nothing raises them again), the user namespace to
//! join (virtiofsd's id-map: root there, nobody outside), the capability bounding
//! and ambient sets, the groups, gid and uid (which empty the permitted and effective sets
//! of a non-root uid), an empty `capset` as well, `PR_SET_NO_NEW_PRIVS`, the parent-death
//! signal again (a credential change clears it), the seccomp filter, and the exec through the
//! fd opened before the fork (the program's path need not be reachable for the new uid).

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use super::mount_view::{check, cstring, MountView, PreparedView};
use super::seccomp::{self, Filter};

/// The credentials a process gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (e.g. the group of /dev/kvm); empty for none.
    pub groups: Vec<u32>,
}

/// A resource limit the jail sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// RLIMIT_NOFILE: open file descriptors.
    NoFile,
    /// RLIMIT_NPROC: processes and threads of the process's real uid (the sandbox uid: all of
    /// its helpers together).
    NProc,
    /// RLIMIT_CORE: core dump size (0: a crash never writes guest memory to disk).
    Core,
}

impl Resource {
    fn raw(self) -> libc::__rlimit_resource_t {
        match self {
            Resource::NoFile => libc::RLIMIT_NOFILE,
            Resource::NProc => libc::RLIMIT_NPROC,
            Resource::Core => libc::RLIMIT_CORE,
        }
    }
}

/// Everything done to one process before it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confinement {
    /// Run as this uid/gid (None: keep root).
    pub creds: Option<Creds>,
    /// `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privs: bool,
    /// Empty effective, permitted, inheritable, ambient and bounding capability sets.
    pub drop_caps: bool,
    /// Written to /proc/self/oom_score_adj.
    pub oom_score_adj: Option<i32>,
    pub mounts: Option<MountView>,
    /// Resource limits, soft and hard alike.
    pub rlimits: Vec<(Resource, u64)>,
    /// Our seccomp filter, in force from the exec on.
    pub seccomp: Option<Filter>,
    /// Join this user namespace (after the mount view and the limits, which need host root)
    /// and become its root: uid/gid 0 there, no supplementary groups. The caller keeps the fd
    /// open until the spawn returns.
    pub userns: Option<std::os::fd::RawFd>,
}

/// A [`Confinement`] with everything allocated, for [`Prepared::enter`] in the child.
pub struct Prepared {
    c: Confinement,
    oom: Option<CString>,
    view: Option<PreparedView>,
    cap_last: u32,
    exe: OwnedFd,
    /// argv (program name then arguments) and its NULL-terminated pointer array.
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
}

// SAFETY: the raw pointers in `argv_ptrs` point into the heap buffers of the CStrings in
// `_argv`, which the struct owns and never changes; moving the struct between threads moves
// no buffer, and nothing mutates them (the struct is only read, by `enter`).
unsafe impl Send for Prepared {}
// SAFETY: as above; `enter` takes `&self` and only reads.
unsafe impl Sync for Prepared {}

impl Confinement {
    /// Allocates what [`Prepared::enter`] needs to run `exe args...` confined: opens the
    /// program (O_PATH) and the directories to expose, formats every path.
    pub fn prepare(&self, exe: &Path, args: &[String]) -> std::io::Result<Prepared> {
        let open_path = |p: &Path, dir: bool| -> std::io::Result<OwnedFd> {
            let flags = nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_CLOEXEC
                | if dir {
                    nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_NOFOLLOW
                } else {
                    nix::fcntl::OFlag::empty()
                };
            let fd = nix::fcntl::open(p, flags, nix::sys::stat::Mode::empty())
                .map_err(|e| std::io::Error::other(format!("opening {}: {e}", p.display())))?;
            // SAFETY: `fd` was just returned by open(2) and is owned by nobody else.
            Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
        };
        let exe_fd = open_path(exe, false)?;
        let view = self.mounts.as_ref().map(MountView::prepare).transpose()?;
        let cap_last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(63);
        let mut argv = vec![cstring(exe)?];
        for a in args {
            argv.push(CString::new(a.as_bytes()).map_err(|_| std::io::Error::other("NUL in an argument"))?);
        }
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        Ok(Prepared {
            c: self.clone(),
            oom: self.oom_score_adj.map(|v| CString::new(v.to_string())).transpose().map_err(std::io::Error::other)?,
            view,
            cap_last,
            exe: exe_fd,
            _argv: argv,
            argv_ptrs,
        })
    }
}

const PROC_OOM: &CStr = c"/proc/self/oom_score_adj";
const EMPTY: &CStr = c"";

impl Prepared {
    /// Runs in the forked child: confines it and execs the program. Returns only on error.
    /// Async-signal-safe: system calls on memory allocated before the fork, no allocation
    /// (errors are `std::io::Error::last_os_error()`, which does not allocate).
    pub fn enter(&self, parent: libc::pid_t) -> std::io::Result<()> {
        // SAFETY (for every call below): plain system calls whose pointer arguments are
        // NUL-terminated strings or arrays owned by `self` (allocated before the fork) or
        // static; none keeps a pointer after returning.
        unsafe {
            if let Some(v) = &self.oom {
                let fd = libc::open(PROC_OOM.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                check(fd)?;
                let n = libc::write(fd, v.as_ptr().cast(), v.as_bytes().len());
                libc::close(fd);
                if n < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(v) = &self.view {
                v.apply()?;
            }
            for &(resource, value) in &self.c.rlimits {
                let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
                check(libc::setrlimit(resource.raw(), &limit))?;
            }
            if let Some(ns) = self.c.userns {
                // All capabilities in the namespace, none outside; then its root's ids.
                check(libc::setns(ns, libc::CLONE_NEWUSER))?;
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setresgid(0, 0, 0))?;
                check(libc::setresuid(0, 0, 0))?;
            }
            if self.c.drop_caps {
                for cap in 0..=self.cap_last {
                    if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
                        && *libc::__errno_location() != libc::EINVAL
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                check(libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0))?;
            }
            if let Some(cr) = &self.c.creds {
                check(libc::setgroups(cr.groups.len(), cr.groups.as_ptr()))?;
                check(libc::setresgid(cr.gid, cr.gid, cr.gid))?;
                check(libc::setresuid(cr.uid, cr.uid, cr.uid))?;
            }
            if self.c.drop_caps {
                // _LINUX_CAPABILITY_VERSION_3: two 32-bit halves, all zero.
                let mut hdr = CapHeader { version: 0x2008_0522, pid: 0 };
                let data = [CapData::default(); 2];
                check(libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) as libc::c_int)?;
            }
            if self.c.no_new_privs {
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            }
            // A credential change cleared the parent-death signal: set it again, and give up
            // if the shim already died in between.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        if let Some(f) = &self.c.seccomp {
            seccomp::install(f)?;
        }
        // SAFETY: execveat reads the NULL-terminated argv array and its strings (owned by
        // `self`) and the process environment; on success it does not return.
        unsafe {
            extern "C" {
                static environ: *const *const libc::c_char;
            }
            libc::syscall(
                libc::SYS_execveat,
                self.exe.as_raw_fd(),
                EMPTY.as_ptr(),
                self.argv_ptrs.as_ptr(),
                environ,
                libc::AT_EMPTY_PATH,
            );
        }
        Err(std::io::Error::last_os_error())
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::jail::testing::temp_dir;

    /// Runs `/bin/sh -c script` confined as `c` and returns its exit code (root only).
    fn run_confined(c: &Confinement, script: &str) -> Option<std::io::Result<i32>> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let p = match c.prepare(Path::new("/bin/sh"), &["-c".into(), script.into()]) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let parent = std::process::id() as libc::pid_t;
        let mut cmd = std::process::Command::new("/bin/sh");
        // SAFETY: `enter` makes only async-signal-safe system calls on memory allocated
        // before the fork (see there).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || p.enter(parent));
        }
        Some(cmd.status().map(std::os::unix::process::ExitStatusExt::into_raw))
    }

    #[test]
    fn a_confined_child_runs_as_told() {
        let d = temp_dir("jail-enter");
        std::fs::create_dir_all(d.join("ns/s/vm")).unwrap();
        std::fs::create_dir_all(d.join("other")).unwrap();
        let c = Confinement {
            creds: Some(Creds { uid: 3_900_002_000, gid: 3_900_002_000, groups: vec![] }),
            no_new_privs: true,
            drop_caps: true,
            oom_score_adj: Some(0),
            mounts: Some(MountView { hide: d.clone(), expose: vec![d.join("ns/s/vm")], root: None }),
            rlimits: vec![(Resource::NoFile, 256), (Resource::NProc, 64), (Resource::Core, 0)],
            seccomp: None,
            userns: None,
        };
        let script = format!(
            "grep -q '^Uid:.*3900002000' /proc/self/status && grep -q '^NoNewPrivs:.1' /proc/self/status \
             && grep -q '^Max open files  *256  *256 ' /proc/self/limits \
             && grep -q '^Max processes  *64  *64 ' /proc/self/limits \
             && grep -q '^Max core file size  *0  *0 ' /proc/self/limits \
             && grep -q '^CapBnd:.0000000000000000' /proc/self/status && test \"$(cat /proc/self/oom_score_adj)\" = 0 \
             && test -d {d}/ns/s/vm && ! test -e {d}/other",
            d = d.display()
        );
        match run_confined(&c, &script) {
            None => {}
            Some(r) => assert_eq!(r.unwrap(), 0, "a check failed in the child"),
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_confined_child_joins_a_user_namespace_as_its_root() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let base = 3_900_200_000;
        let map = crate::jail::idmap::IdMap::unleased(base).expect("user namespace");
        let d = temp_dir("jail-userns");
        std::fs::create_dir_all(d.join("ns/s/export")).unwrap();
        let c = Confinement {
            no_new_privs: true,
            oom_score_adj: Some(0),
            mounts: Some(MountView { hide: d.clone(), expose: vec![d.join("ns/s/export")], root: None }),
            rlimits: vec![(Resource::NoFile, 1000), (Resource::Core, 0)],
            userns: Some(map.userns_fd()),
            ..Default::default()
        };
        // Inside, it is root with every capability of its namespace; its ids map to the block.
        let script = format!(
            "grep -q '^Uid:.0.0.0.0$' /proc/self/status && grep -q '^Gid:.0.0.0.0$' /proc/self/status \
             && grep -q '^CapEff:.000001ffffffffff' /proc/self/status \
             && test \"$(cat /proc/self/uid_map | tr -s ' ')\" = ' 0 {base} 65536' \
             && grep -q '^Max open files  *1000  *1000 ' /proc/self/limits && test -d {d}/ns/s/export",
            d = d.display()
        );
        let r = run_confined(&c, &script).expect("root").expect("spawn");
        assert_eq!(r, 0, "a check failed in the child");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn prepare_rejects_paths_outside_or_odd() {
        let me = std::env::current_exe().unwrap();
        let tmp = std::env::temp_dir();
        let c = |expose: std::path::PathBuf| Confinement {
            mounts: Some(MountView { hide: tmp.clone(), expose: vec![expose], root: None }),
            ..Default::default()
        };
        assert!(c("/etc".into()).prepare(&me, &[]).is_err());
        assert!(c(tmp.join("..").join("etc")).prepare(&me, &[]).is_err());
        let d = temp_dir("jail-prepare");
        let p = c(d.clone()).prepare(&me, &["a".into()]).unwrap();
        assert_eq!(p.argv_ptrs.len(), 3);
        assert!(p.argv_ptrs[2].is_null());
        assert_eq!(p.view.as_ref().map(PreparedView::sources), Some(1));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
