//! The mount view of one jailed process, set up in the forked child before it runs the
//! program (process.rs): a private mount namespace (a slave of the host's, so host unmounts
//! still reach it) where the runtime directory holding every sandbox's state is covered by an
//! empty tmpfs. Then either
//! - only the directories of `expose` are bound back at their paths (the rest of the host stays
//!   visible), or, with a [`NewRoot`],
//! - the tmpfs becomes the process's whole root (Firecracker's chroot, done with `pivot_root`):
//!   it holds only what the program needs, each at its host path — the system's libraries and
//!   data read-only, a few device nodes, a `proc` showing only the processes of its own uid,
//!   and the `expose` directories — and is read-only itself.
//!
//! [`MountView::prepare`] opens nothing and formats every path before the fork;
//! [`PreparedView::apply`] makes only async-signal-safe system calls in the child. Sources are
//! opened in the child's namespace before the cover (a mount of another namespace cannot be
//! bound) and bound through `/proc/self/fd/<n>`.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// What a process sees of the host's mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountView {
    /// Covered by an empty tmpfs (the runtime directory).
    pub hide: PathBuf,
    /// Directories below `hide` bound back, read-write, at their paths (recursively: what is
    /// mounted below them later still propagates).
    pub expose: Vec<PathBuf>,
    /// Make the tmpfs the process's whole root.
    pub root: Option<NewRoot>,
}

/// What a root of its own holds besides the `expose` directories, each at its host path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRoot {
    /// Host directories and files bound read-only, nosuid, nodev, recursively.
    pub read_only: Vec<PathBuf>,
    /// Device nodes bound as they are.
    pub devices: Vec<PathBuf>,
    /// Symlinks made at the first path, pointing to the second (a merged /usr's `/lib`).
    pub symlinks: Vec<(PathBuf, PathBuf)>,
    /// A `proc` of its own: only the processes of its uid, only their entries.
    pub proc: bool,
}

/// Most sources one view binds (the fds opened in the child live in a fixed array).
const MAX_SOURCES: usize = 24;

/// One step in the child, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    /// A directory (an existing one is fine).
    Mkdir(CString),
    /// An empty file to mount a file on.
    File(CString),
    /// Source `src` bound (recursively) onto `target`; then read-only, nosuid, nodev if `ro`.
    Bind { src: usize, target: CString, ro: bool },
    /// A symlink at `link` to `to`.
    Symlink { to: CString, link: CString },
    /// A proc for its own processes at the path.
    Proc(CString),
}

/// A [`MountView`] with every path formatted, for [`PreparedView::apply`].
#[derive(Debug)]
pub struct PreparedView {
    hide: CString,
    /// Opened in the child, in order; `Op::Bind::src` indexes them.
    sources: Vec<CString>,
    ops: Vec<Op>,
    pivot: bool,
}

/// `p` as a C string (an error names a path with a NUL).
pub(super) fn cstring(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| std::io::Error::other(format!("NUL in {}", p.display())))
}

/// An absolute path without `.`, `..` or empty components.
pub fn normal(p: &Path) -> bool {
    p.is_absolute() && p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// The directories to create below `hide` for `target`, then `target` (pure).
pub fn dirs_between(hide: &Path, target: &Path) -> Option<Vec<PathBuf>> {
    let rel = target.strip_prefix(hide).ok()?;
    let mut cur = hide.to_path_buf();
    let mut v = Vec::new();
    for c in rel.components() {
        cur.push(c);
        v.push(cur.clone());
    }
    (!v.is_empty()).then_some(v)
}

/// `path` re-rooted below `root` (pure; `path` is absolute and normal).
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

impl MountView {
    /// Checks and formats the view (`expose` below `hide`, every path absolute and normal).
    /// Sources of a new root below another read-only source are left out (already there).
    pub fn prepare(&self) -> std::io::Result<PreparedView> {
        let bad = |p: &Path, why: &str| std::io::Error::other(format!("{}: {why}", p.display()));
        if !normal(&self.hide) {
            return Err(bad(&self.hide, "not a plain absolute path"));
        }
        let mut v = PreparedView { hide: cstring(&self.hide)?, sources: Vec::new(), ops: Vec::new(), pivot: false };
        // Where a host path appears: at its path, or re-rooted in the new root.
        let place = |p: &Path| if self.root.is_some() { under(&self.hide, p) } else { p.to_path_buf() };
        let add_bind = |v: &mut PreparedView, src: &Path, dir: bool, ro: bool| -> std::io::Result<()> {
            let target = place(src);
            let parent_dirs = match (dir, target.parent()) {
                (true, _) => dirs_between(&self.hide, &target),
                (false, Some(parent)) => Some(dirs_between(&self.hide, parent).unwrap_or_default()),
                (false, None) => None,
            }
            .ok_or_else(|| bad(src, "not below the hidden directory"))?;
            for d in parent_dirs {
                v.ops.push(Op::Mkdir(cstring(&d)?));
            }
            if !dir {
                v.ops.push(Op::File(cstring(&target)?));
            }
            v.sources.push(cstring(src)?);
            v.ops.push(Op::Bind { src: v.sources.len() - 1, target: cstring(&target)?, ro });
            Ok(())
        };
        for t in &self.expose {
            if !normal(t) || dirs_between(&self.hide, t).is_none() {
                return Err(bad(t, &format!("not below {}", self.hide.display())));
            }
            add_bind(&mut v, t, true, false)?;
        }
        if let Some(root) = &self.root {
            v.pivot = true;
            let mut ro_dirs: Vec<&Path> = Vec::new();
            for p in &root.read_only {
                if !normal(p) {
                    return Err(bad(p, "not a plain absolute path"));
                }
                if ro_dirs.iter().any(|d| p.starts_with(d)) {
                    continue;
                }
                let md = std::fs::metadata(p).map_err(|e| bad(p, &e.to_string()))?;
                add_bind(&mut v, p, md.is_dir(), true)?;
                if md.is_dir() {
                    ro_dirs.push(p);
                }
            }
            for p in &root.devices {
                if !normal(p) {
                    return Err(bad(p, "not a plain absolute path"));
                }
                add_bind(&mut v, p, false, false)?;
            }
            for (link, to) in &root.symlinks {
                let at = place(link);
                let parent = at.parent().and_then(|p| dirs_between(&self.hide, p)).unwrap_or_default();
                for d in parent {
                    v.ops.push(Op::Mkdir(cstring(&d)?));
                }
                v.ops.push(Op::Symlink { to: cstring(to)?, link: cstring(&at)? });
            }
            if root.proc {
                let at = under(&self.hide, Path::new("/proc"));
                v.ops.push(Op::Mkdir(cstring(&at)?));
                v.ops.push(Op::Proc(cstring(&at)?));
            }
        }
        if v.sources.len() > MAX_SOURCES {
            return Err(std::io::Error::other(format!("{} mount sources; at most {MAX_SOURCES}", v.sources.len())));
        }
        Ok(v)
    }
}

/// A system call's result as an error (async-signal-safe: `last_os_error` does not allocate).
pub(super) fn check(r: libc::c_int) -> std::io::Result<()> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

const TMPFS: &CStr = c"tmpfs";
const TMPFS_OPTS: &CStr = c"size=64k,nr_inodes=256,mode=0755";
const PROC: &CStr = c"proc";
const PROC_OPTS: &CStr = c"hidepid=invisible,subset=pid";
const ROOT: &CStr = c"/";
const DOT: &CStr = c".";

impl PreparedView {
    /// Runs in the forked child (host root, before any credential change): makes the view.
    /// Async-signal-safe: system calls on memory allocated before the fork, no allocation.
    pub fn apply(&self) -> std::io::Result<()> {
        // SAFETY (for every call below): plain system calls whose pointer arguments are
        // NUL-terminated strings owned by `self` (allocated before the fork), static strings, or
        // buffers on this stack; none keeps a pointer after returning.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            let (null, none) = (std::ptr::null::<libc::c_char>(), std::ptr::null::<libc::c_void>());
            check(libc::mount(null, ROOT.as_ptr(), null, libc::MS_REC | libc::MS_SLAVE, none))?;
            // What stays visible, opened in this namespace before the cover.
            let mut fds = [-1; MAX_SOURCES];
            for (s, fd) in self.sources.iter().zip(fds.iter_mut()) {
                *fd = libc::open(s.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC);
                check(*fd)?;
            }
            let fl = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            check(libc::mount(TMPFS.as_ptr(), self.hide.as_ptr(), TMPFS.as_ptr(), fl, TMPFS_OPTS.as_ptr().cast()))?;
            for op in &self.ops {
                match op {
                    Op::Mkdir(d) => {
                        if libc::mkdir(d.as_ptr(), 0o755) != 0 && *libc::__errno_location() != libc::EEXIST {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Op::File(f) => {
                        let fd = libc::open(f.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o444);
                        check(fd)?;
                        libc::close(fd);
                    }
                    Op::Bind { src, target, ro } => {
                        let mut buf = [0u8; 32];
                        let from = fd_path(fds[*src], &mut buf);
                        let flags = libc::MS_BIND | libc::MS_REC;
                        check(libc::mount(from.as_ptr(), target.as_ptr(), null, flags, none))?;
                        if *ro {
                            let set = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
                            // struct mount_attr (VER0): attr_set, attr_clr, propagation, userns_fd
                            let attr: [u64; 4] = [set, 0, 0, 0];
                            let r = libc::syscall(
                                libc::SYS_mount_setattr,
                                libc::AT_FDCWD,
                                target.as_ptr(),
                                libc::AT_RECURSIVE as libc::c_uint,
                                attr.as_ptr(),
                                std::mem::size_of_val(&attr),
                            );
                            check(r as libc::c_int)?;
                        }
                    }
                    Op::Symlink { to, link } => check(libc::symlink(to.as_ptr(), link.as_ptr()))?,
                    Op::Proc(at) => {
                        check(libc::mount(PROC.as_ptr(), at.as_ptr(), PROC.as_ptr(), fl, PROC_OPTS.as_ptr().cast()))?
                    }
                }
            }
            for &fd in fds.iter().take(self.sources.len()) {
                libc::close(fd);
            }
            // The tmpfs itself read-only: nothing can be created in the view.
            let ro = libc::MS_REMOUNT | libc::MS_RDONLY | fl;
            check(libc::mount(null, self.hide.as_ptr(), null, ro, TMPFS_OPTS.as_ptr().cast()))?;
            if self.pivot {
                // The tmpfs becomes `/`; the old root is stacked under it, then detached.
                check(libc::chdir(self.hide.as_ptr()))?;
                check(libc::syscall(libc::SYS_pivot_root, DOT.as_ptr(), DOT.as_ptr()) as libc::c_int)?;
                check(libc::umount2(DOT.as_ptr(), libc::MNT_DETACH))?;
                check(libc::chdir(ROOT.as_ptr()))?;
            }
        }
        Ok(())
    }

    /// How many sources the child opens (tests).
    #[cfg(test)]
    pub fn sources(&self) -> usize {
        self.sources.len()
    }
}

/// "/proc/self/fd/<fd>" NUL-terminated in `buf`, without allocating (async-signal-safe).
pub fn fd_path(fd: libc::c_int, buf: &mut [u8; 32]) -> &CStr {
    const P: &[u8] = b"/proc/self/fd/";
    buf[..P.len()].copy_from_slice(P);
    let mut digits = [0u8; 10];
    let (mut n, mut k) = (fd.max(0) as u32, 0);
    loop {
        digits[k] = b'0' + (n % 10) as u8;
        k += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..k {
        buf[P.len() + i] = digits[k - 1 - i];
    }
    buf[P.len() + k] = 0;
    CStr::from_bytes_until_nul(&buf[..]).unwrap_or(c"/proc/self/fd/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirs_below_the_hidden_root() {
        let v = dirs_between(Path::new("/run/b"), Path::new("/run/b/ns/s1/vm")).unwrap();
        assert_eq!(v, [PathBuf::from("/run/b/ns"), "/run/b/ns/s1".into(), "/run/b/ns/s1/vm".into()]);
        assert_eq!(dirs_between(Path::new("/run/b"), Path::new("/etc")), None);
        assert_eq!(dirs_between(Path::new("/run/b"), Path::new("/run/b")), None);
    }

    #[test]
    fn a_new_root_holds_each_source_at_its_path() {
        let hide = std::env::temp_dir();
        let vm = hide.join("ns/s/vm");
        let view = MountView {
            hide: hide.clone(),
            expose: vec![vm.clone()],
            root: Some(NewRoot {
                // /usr/share below /usr: already there, left out
                read_only: vec!["/usr".into(), "/usr/share".into(), "/etc/hostname".into()],
                devices: vec!["/dev/null".into()],
                symlinks: vec![("/lib64".into(), "usr/lib64".into())],
                proc: true,
            }),
        };
        let p = view.prepare().unwrap();
        assert!(p.pivot);
        let c = |x: &Path| CString::new(x.as_os_str().as_bytes()).unwrap();
        let sources: Vec<_> = p.sources.iter().map(|s| s.to_str().unwrap().to_string()).collect();
        assert_eq!(sources, [vm.to_str().unwrap(), "/usr", "/etc/hostname", "/dev/null"]);
        let r = |x: &str| hide.join(x);
        assert!(p.ops.contains(&Op::Bind { src: 0, target: c(&under(&hide, &vm)), ro: false }));
        assert!(p.ops.contains(&Op::Bind { src: 1, target: c(&r("usr")), ro: true }));
        assert!(p.ops.contains(&Op::File(c(&r("etc/hostname")))));
        assert!(p.ops.contains(&Op::Bind { src: 3, target: c(&r("dev/null")), ro: false }));
        assert!(p.ops.contains(&Op::Symlink { to: c(Path::new("usr/lib64")), link: c(&r("lib64")) }));
        assert_eq!(p.ops.last(), Some(&Op::Proc(c(&r("proc")))));
        // without a new root, exposed directories stay at their paths
        let flat = MountView { root: None, ..view }.prepare().unwrap();
        assert!(!flat.pivot && flat.ops.contains(&Op::Bind { src: 0, target: c(&vm), ro: false }));
    }

    #[test]
    fn prepare_rejects_paths_outside_or_odd() {
        let tmp = std::env::temp_dir();
        let v = |expose: PathBuf| MountView { hide: tmp.clone(), expose: vec![expose], root: None };
        assert!(v("/etc".into()).prepare().is_err());
        assert!(v(tmp.join("..").join("etc")).prepare().is_err());
        let odd = MountView {
            hide: tmp.clone(),
            expose: vec![],
            root: Some(NewRoot { read_only: vec!["/usr/../etc".into()], ..Default::default() }),
        };
        assert!(odd.prepare().is_err());
        let mut buf = [0u8; 32];
        assert_eq!(fd_path(7, &mut buf).to_str().unwrap(), "/proc/self/fd/7");
        assert_eq!(fd_path(1234567, &mut buf).to_str().unwrap(), "/proc/self/fd/1234567");
    }
}
