//! Symlink-proof file and mount operations below a directory the shim owns (the sandbox state
//! directory). A directory that the guest can write, or could ever have written, is
//! attacker-controlled: a path through it is never resolved the ordinary way. Every operation
//! here starts from a directory fd ([`Beneath`]) and resolves the rest with `openat2(2)`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`): a symlink or `..`
//! anywhere in the path is an error, never a detour to a host file (Kata CVE-2020-2026/2024).
//! Files are created with `O_CREAT | O_EXCL | O_NOFOLLOW` and an explicit mode; bind mounts are
//! cloned with the new mount API (`open_tree`), get their flags (read-only recursively,
//! nosuid, nodev) *before* they are attached (`mount_setattr`), and are attached onto an fd
//! (`move_mount`), so there is no writable window and no path lookup at attach time (runc
//! CVE-2021-30465); an unmount first checks that the path is the mount that was recorded,
//! then unmounts with `UMOUNT_NOFOLLOW`.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// A directory the shim owns, opened once; every path below it is resolved relative to this
/// fd and may not leave it.
#[derive(Debug)]
pub struct Beneath {
    root: File,
    path: PathBuf,
}

/// Flags for a bind mount made with [`Beneath::bind`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindFlags {
    /// Read-only, recursively (every submount of the source too).
    pub readonly: bool,
    /// Clone the source's submounts too (like `MS_REC`).
    pub recursive: bool,
    /// Id-map the bind through this user namespace (jail/idmap.rs); the caller keeps it open.
    pub userns: Option<RawFd>,
}

/// `struct open_how` of openat2(2) (the libc crate's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `struct mount_attr` of mount_setattr(2), MOUNT_ATTR_SIZE_VER0.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `p` as a C string (an error for a NUL in it).
pub fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// Refuses absolute paths, `..` and empty paths before the kernel sees them (the kernel
/// refuses them too; this gives a clearer error).
fn check_relative(rel: &Path) -> io::Result<()> {
    let mut normal = 0;
    for c in rel.components() {
        match c {
            Component::Normal(_) => normal += 1,
            Component::CurDir => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: not a plain relative path", rel.display()),
                ))
            }
        }
    }
    if normal == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty relative path"));
    }
    Ok(())
}

/// `openat2(dirfd, rel, flags, mode, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`.
fn openat2_beneath(dirfd: RawFd, rel: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(rel)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64,
        mode: if flags & libc::O_CREAT != 0 { mode as u64 } else { 0 },
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `c` is a valid NUL-terminated string and `how` a fully initialised open_how that
    // both outlive the call; the size passed is that of the struct; the kernel only reads them.
    let fd = unsafe {
        libc::syscall(libc::SYS_openat2, dirfd, c.as_ptr(), &how as *const OpenHow, std::mem::size_of_val(&how))
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn split_parent(rel: &Path) -> io::Result<(&Path, &Path)> {
    let name = rel.file_name().map(Path::new).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let parent = rel.parent().unwrap_or(Path::new(""));
    Ok((parent, name))
}

/// The mount id of an open file (from /proc/self/fdinfo: no path lookup of the file itself).
pub fn mount_id(fd: &impl AsRawFd) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no mnt_id in fdinfo"))
}

/// Opens a bind source (a host path from the node, resolved normally) as an `O_PATH` fd:
/// its type is then checked and it is mounted on the same inode.
pub fn open_source(source: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(source)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", source.display())))?;
    Ok(OwnedFd::from(f))
}

/// `open_tree(src, "", OPEN_TREE_CLONE | AT_EMPTY_PATH [| AT_RECURSIVE])`: a detached clone of
/// the mount at the open fd `src` (with its submounts if `recursive`), attached nowhere yet.
pub fn clone_mount(src: &impl AsRawFd, recursive: bool) -> io::Result<OwnedFd> {
    let mut flags = (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint;
    flags |= libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    let empty = c"";
    // SAFETY: `src` is an open fd and `empty` a valid C string for the call; with
    // AT_EMPTY_PATH open_tree clones the mount at the fd itself.
    let tree = unsafe { libc::syscall(libc::SYS_open_tree, src.as_raw_fd(), empty.as_ptr(), flags) };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open_tree returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(tree as RawFd) })
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH [| AT_RECURSIVE], {attr_set: set, userns_fd})`
/// (`userns` with `MOUNT_ATTR_IDMAP` in `set`: id-map the mount through that namespace).
pub fn set_mount_attr(fd: &impl AsRawFd, set: u64, userns: Option<RawFd>, recursive: bool) -> io::Result<()> {
    let userns_fd = userns.map_or(0, |f| f as u64);
    let attr = MountAttr { attr_set: set, attr_clr: 0, propagation: 0, userns_fd };
    let empty = c"";
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: `fd` is an open fd; `empty` and `attr` are valid for the call and the size passed
    // is that of `attr`; the kernel only reads them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            empty.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of_val(&attr),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `move_mount(from, "", to, "", F_EMPTY_PATH | T_EMPTY_PATH)`: attaches (or moves) the mount
/// at `from` onto the directory `to`, both given as fds.
fn move_mount(from: &impl AsRawFd, to: &impl AsRawFd) -> io::Result<()> {
    let empty = c"";
    // SAFETY: both fds are open; the empty strings with the *_EMPTY_PATH flags make the kernel
    // use the fds themselves; nothing is written to user memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            empty.as_ptr(),
            to.as_raw_fd(),
            empty.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Beneath {
    /// Opens `dir` (a directory the caller created and trusts: the path is resolved normally).
    pub fn open(dir: &Path) -> io::Result<Beneath> {
        let root = File::options()
            .read(true)
            .custom_flags_dir()
            .open(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", dir.display())))?;
        Ok(Beneath { root, path: dir.to_path_buf() })
    }

    fn parent_fd(&self, parent: &Path) -> io::Result<Option<OwnedFd>> {
        if parent.as_os_str().is_empty() {
            return Ok(None);
        }
        check_relative(parent)?;
        openat2_beneath(self.root.as_raw_fd(), parent, libc::O_PATH | libc::O_DIRECTORY, 0).map(Some)
    }

    fn err(&self, what: &str, rel: &Path, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("{what} {}/{}: {e}", self.path.display(), rel.display()))
    }

    /// Opens `rel` (no symlinks, no `..`) with `O_PATH`: for checks and `/proc/self/fd` use.
    pub fn open_path(&self, rel: &Path) -> io::Result<OwnedFd> {
        check_relative(rel).map_err(|e| self.err("opening", rel, e))?;
        openat2_beneath(self.root.as_raw_fd(), rel, libc::O_PATH, 0).map_err(|e| self.err("opening", rel, e))
    }

    /// Creates directory `rel` with `mode` (its parent must exist). An existing directory is
    /// accepted only if it really is a directory reached without symlinks.
    pub fn mkdir(&self, rel: &Path, mode: u32) -> io::Result<()> {
        check_relative(rel).map_err(|e| self.err("creating directory", rel, e))?;
        let (parent, name) = split_parent(rel)?;
        let pfd = self.parent_fd(parent).map_err(|e| self.err("creating directory", rel, e))?;
        let dirfd = pfd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(self.root.as_raw_fd());
        let c = cstr(name)?;
        // SAFETY: `dirfd` is an open directory fd owned by self or `pfd` (alive here); `c` is a
        // valid C string for the duration of the call.
        let r = unsafe { libc::mkdirat(dirfd, c.as_ptr(), mode as libc::mode_t) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(self.err("creating directory", rel, e));
            }
            openat2_beneath(self.root.as_raw_fd(), rel, libc::O_PATH | libc::O_DIRECTORY, 0)
                .map_err(|e| self.err("checking existing directory", rel, e))?;
            return Ok(());
        }
        // mkdirat applies the umask: set the mode we were asked for, on the new directory.
        let fd = openat2_beneath(self.root.as_raw_fd(), rel, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|e| self.err("opening new directory", rel, e))?;
        nix::sys::stat::fchmod(fd.as_raw_fd(), nix::sys::stat::Mode::from_bits_truncate(mode))
            .map_err(|e| self.err("setting the mode of", rel, io::Error::from(e)))?;
        Ok(())
    }

    /// Creates the empty regular file `rel` with `mode`; fails if anything exists there
    /// (`O_EXCL`): never truncates, never follows a planted symlink.
    pub fn create_file(&self, rel: &Path, mode: u32) -> io::Result<File> {
        check_relative(rel).map_err(|e| self.err("creating file", rel, e))?;
        let fd = openat2_beneath(self.root.as_raw_fd(), rel, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, mode)
            .map_err(|e| self.err("creating file", rel, e))?;
        let f = File::from(fd);
        nix::sys::stat::fchmod(f.as_raw_fd(), nix::sys::stat::Mode::from_bits_truncate(mode))
            .map_err(|e| self.err("setting the mode of", rel, io::Error::from(e)))?;
        Ok(f)
    }

    /// Bind-mounts `source` (a host path from the node, resolved normally: kubelet's volume
    /// paths use symlinks) onto `rel` below this directory. The clone gets nosuid, nodev and,
    /// if asked, read-only (recursively) before it is attached, and it is attached onto the
    /// target's fd: no writable window, no path lookup through the share. Returns the new
    /// mount's id, to be checked before it is unmounted ([`Beneath::unmount`]).
    pub fn bind(&self, source: &Path, rel: &Path, flags: BindFlags) -> io::Result<u64> {
        let src = open_source(source)?;
        self.bind_fd(&src, source, rel, flags)
    }

    /// [`Beneath::bind`] of an already opened source (`O_PATH` fd, e.g. from
    /// [`open_source`], so its type was checked on the same inode that gets mounted).
    pub fn bind_fd(&self, src: &OwnedFd, source: &Path, rel: &Path, flags: BindFlags) -> io::Result<u64> {
        let what = format!("bind-mounting {} onto", source.display());
        let target = self.open_path(rel).map_err(|e| self.err(&what, rel, e))?;
        let tree = clone_mount(src, flags.recursive).map_err(|e| self.err(&what, rel, e))?;
        let mut set = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
        if flags.readonly {
            set |= libc::MOUNT_ATTR_RDONLY;
        }
        if flags.userns.is_some() {
            set |= libc::MOUNT_ATTR_IDMAP;
        }
        set_mount_attr(&tree, set, flags.userns, true).map_err(|e| {
            let e = if flags.userns.is_some() && e.raw_os_error() == Some(libc::EINVAL) {
                io::Error::other(format!(
                    "{e}: its filesystem (or one mounted below it) does not support idmapped mounts, which the \
                     unprivileged virtiofsd needs (jail.unprivileged_virtiofsd = false runs virtiofsd as root instead)"
                ))
            } else {
                e
            };
            self.err(&format!("setting flags of the bind of {}", source.display()), rel, e)
        })?;
        move_mount(&tree, &target).map_err(|e| self.err(&what, rel, e))?;
        let mounted = self.open_path(rel)?;
        mount_id(&mounted)
    }

    /// Opens directory `rel` (no symlinks, no `..`) as a new [`Beneath`].
    pub fn open_dir(&self, rel: &Path) -> io::Result<Beneath> {
        check_relative(rel).map_err(|e| self.err("opening directory", rel, e))?;
        let fd = openat2_beneath(self.root.as_raw_fd(), rel, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|e| self.err("opening directory", rel, e))?;
        Ok(Beneath { root: File::from(fd), path: self.path.join(rel) })
    }

    /// Mounts a new tmpfs with `options` (e.g. "size=64k,nr_inodes=512,mode=0755") on
    /// directory `rel`, nosuid, nodev, noexec; the target is reached through its fd
    /// (`/proc/self/fd/N`), never by path. Returns the new mount's id.
    pub fn mount_tmpfs(&self, rel: &Path, options: &str) -> io::Result<u64> {
        let target = self.open_path(rel)?;
        let proc_path = format!("/proc/self/fd/{}", target.as_raw_fd());
        nix::mount::mount(
            Some("tmpfs"),
            proc_path.as_str(),
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC,
            Some(options),
        )
        .map_err(|e| self.err("mounting a tmpfs on", rel, io::Error::from(e)))?;
        mount_id(&self.open_path(rel)?)
    }

    /// Makes the mount whose root is `rel` read-only (that mount only; its submounts keep
    /// their own flags).
    pub fn set_readonly(&self, rel: &Path) -> io::Result<()> {
        let fd = self.open_path(rel)?;
        set_mount_attr(&fd, libc::MOUNT_ATTR_RDONLY, None, false).map_err(|e| self.err("making read-only", rel, e))
    }

    /// Moves the mount whose root is `from_rel` below `from` (with its submounts) onto the
    /// directory `rel` below this one, at once: where this directory's mount propagates
    /// (a shared mount and its peers), the whole tree appears there complete. Returns the id
    /// of the moved mount.
    pub fn move_here(&self, from: &Beneath, from_rel: &Path, rel: &Path) -> io::Result<u64> {
        let src = from.open_path(from_rel)?;
        let target = self.open_path(rel)?;
        move_mount(&src, &target).map_err(|e| self.err(&format!("moving {} onto", from_rel.display()), rel, e))?;
        mount_id(&self.open_path(rel)?)
    }

    /// Removes the empty directory `rel` (no symlinks on the way).
    pub fn rmdir(&self, rel: &Path) -> io::Result<()> {
        check_relative(rel)?;
        let (parent, name) = split_parent(rel)?;
        let pfd = self.parent_fd(parent)?;
        let dirfd = pfd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(self.root.as_raw_fd());
        nix::unistd::unlinkat(Some(dirfd), name, nix::unistd::UnlinkatFlags::RemoveDir)
            .map_err(|e| self.err("removing directory", rel, io::Error::from(e)))
    }

    /// Unmounts `rel` (lazily, with its submounts) if it is still the mount `expected_id`
    /// that [`Beneath::bind`] recorded; the final component is not followed
    /// (`UMOUNT_NOFOLLOW`) and the path below this directory contains no symlink (checked
    /// through openat2 first). Returns false if `rel` is no longer that mount.
    pub fn unmount(&self, rel: &Path, expected_id: u64) -> io::Result<bool> {
        let fd = match self.open_path(rel) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if mount_id(&fd)? != expected_id {
            return Ok(false);
        }
        drop(fd);
        let full = cstr(&self.path.join(rel))?;
        // SAFETY: `full` is a valid C string alive for the call.
        let r = unsafe { libc::umount2(full.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
        if r != 0 {
            return Err(self.err("unmounting", rel, io::Error::last_os_error()));
        }
        Ok(true)
    }
}

/// `File::options()` with the flags for opening a directory fd.
trait DirOpen {
    fn custom_flags_dir(&mut self) -> &mut Self;
}

impl DirOpen for std::fs::OpenOptions {
    fn custom_flags_dir(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bulwark-fs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tmp dir");
        d
    }

    #[test]
    fn symlinks_and_dotdot_never_lead_out() {
        let d = tmp("escape");
        let outside = tmp("escape-outside");
        let b = Beneath::open(&d).expect("open");
        symlink(&outside, d.join("evil")).expect("symlink");
        symlink(outside.join("victim"), d.join("file-link")).expect("symlink");
        // Through a symlinked directory.
        assert!(b.mkdir(Path::new("evil/x"), 0o700).is_err());
        assert!(b.create_file(Path::new("evil/f"), 0o600).is_err());
        // Onto a symlink as the final component: no create, no truncate of the target.
        std::fs::write(outside.join("victim"), b"keep").expect("victim");
        assert!(b.create_file(Path::new("file-link"), 0o600).is_err());
        assert!(b.mkdir(Path::new("file-link"), 0o700).is_err(), "an existing symlink is not a directory");
        assert_eq!(std::fs::read(outside.join("victim")).expect("victim"), b"keep");
        // `..` and absolute paths.
        assert!(b.mkdir(Path::new("../x"), 0o700).is_err());
        assert!(b.create_file(Path::new("/etc/x"), 0o600).is_err());
        assert!(b.open_path(Path::new("a/../../x")).is_err());
        assert!(std::fs::read_dir(&outside).expect("outside").count() == 1, "nothing created outside");
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_dir_all(&outside);
    }

    #[test]
    fn modes_are_explicit_and_files_exclusive() {
        let d = tmp("modes");
        let b = Beneath::open(&d).expect("open");
        b.mkdir(Path::new("a"), 0o700).expect("mkdir");
        b.mkdir(Path::new("a/b"), 0o700).expect("mkdir");
        assert_eq!(std::fs::metadata(d.join("a/b")).expect("md").permissions().mode() & 0o777, 0o700);
        b.mkdir(Path::new("a/b"), 0o700).expect("an existing directory is fine");
        b.create_file(Path::new("a/b/f"), 0o640).expect("create");
        assert_eq!(std::fs::metadata(d.join("a/b/f")).expect("md").permissions().mode() & 0o777, 0o640);
        assert!(b.create_file(Path::new("a/b/f"), 0o640).is_err(), "O_EXCL: never reopened or truncated");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Real mounts: the test suite runs as root (scripts/test requires it).
    #[test]
    fn binds_are_readonly_before_attach_and_unmounts_check_the_mount() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root (scripts/test runs as root)");
        let d = tmp("bind");
        let src = tmp("bind-src");
        std::fs::write(src.join("f"), b"data").expect("src file");
        let b = Beneath::open(&d).expect("open");
        b.mkdir(Path::new("ro"), 0o700).expect("mkdir");
        let id =
            b.bind(&src, Path::new("ro"), BindFlags { readonly: true, recursive: true, userns: None }).expect("bind");
        assert_eq!(std::fs::read(d.join("ro/f")).expect("read through the bind"), b"data");
        let e = std::fs::write(d.join("ro/g"), b"x").expect_err("read-only");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        assert!(!b.unmount(Path::new("ro"), id + 1_000_000).expect("check"), "another mount id is not unmounted");
        assert!(d.join("ro/f").exists(), "still mounted");
        assert!(b.unmount(Path::new("ro"), id).expect("unmount"));
        assert!(!d.join("ro/f").exists(), "unmounted");
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_dir_all(&src);
    }
}
