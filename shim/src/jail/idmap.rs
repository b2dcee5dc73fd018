//! The id-mapped share of a sandbox, so that virtiofsd runs without host privileges.
//!
//! virtiofsd serves the containers' files as their owners: it creates files as any uid,
//! changes owners, keeps setuid bits, which takes CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER and
//! friends. Here it gets them only inside a user namespace of its own: each sandbox holds a
//! block of [`BLOCK`] host ids (`[jail] idmap_base`, `idmap_count`; a lock file per block, as
//! uid.rs does for the sandbox uid) and a user namespace whose ids `0..BLOCK` are that block.
//! virtiofsd runs as that namespace's root (host uid and gid: the block's first id), and its
//! capabilities reach only inodes whose owner maps into the namespace.
//!
//! Everything it serves is mounted *id-mapped* through the same namespace
//! (`mount_setattr(MOUNT_ATTR_IDMAP)`): a file owned by uid N on disk is owned by N inside the
//! namespace (so by N in the guest), and a file virtiofsd creates as N lands on disk as N. The
//! disk never sees the block's ids. What the host owns outside those mounts (the share's
//! skeleton) shows as the overflow id there: only its "other" permission bits apply.
//!
//! overlayfs cannot be id-mapped itself, so a container's rootfs overlay is mounted over
//! id-mapped layers ([`IdMap::mount_overlay`]): detached mounts, named `/proc/self/fd/N` in the
//! overlay's options. overlayfs does its own work in the upper layer (work directory,
//! whiteouts, copy-up) with the mounter's credentials, which must map through the upper
//! layer's id-map too: the overlay is mounted by a thread whose fs uid/gid are the block's root
//! (`SECBIT_NO_SETUID_FIXUP` keeps its capabilities meanwhile).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::config::Jail;
use crate::jail::uid::{self, Lease, UidRange};

/// Host ids per sandbox: the namespace's 0..65535.
pub const BLOCK: u32 = crate::config::IDMAP_BLOCK;

/// One sandbox's id-mapping: its block of host ids (held until dropped) and the user
/// namespace that maps `0..BLOCK` onto it.
#[derive(Debug)]
pub struct IdMap {
    base: u32,
    userns: OwnedFd,
    /// Held until [`IdMap::release`] (or the process's end: the lock goes with it, the file stays).
    lease: std::sync::Mutex<Option<Lease>>,
}

impl PartialEq for IdMap {
    fn eq(&self, other: &Self) -> bool {
        self.base == other.base
    }
}

/// The candidate blocks for the sandbox `seed` (its state directory): first ids, first choice
/// first (pure).
pub fn candidates(j: &Jail, seed: &str) -> impl Iterator<Item = u32> {
    let base = j.idmap_base;
    UidRange { base: 0, count: j.idmap_count }.candidates(seed).map(move |k| base + k * BLOCK)
}

impl IdMap {
    /// Takes a free block for the sandbox whose state directory is `dir` (recorded there for
    /// a crash cleanup) and makes its user namespace.
    pub fn create(runtime_dir: &Path, j: &Jail, dir: &Path) -> Result<IdMap, String> {
        let lock_dir = runtime_dir.join(uid::IDMAP_LOCK_DIR);
        let lease =
            uid::allocate_from(&lock_dir, candidates(j, &dir.to_string_lossy()), |b| uid::ids_in_use(b, BLOCK), dir)
                .ok_or_else(|| {
                format!(
                    "no free block of id-mapped ids ({} sandboxes hold all of jail.idmap_count; raise it)",
                    j.idmap_count
                )
            })??;
        uid::record_as(dir, uid::IDMAP_RECORD, &lease)
            .map_err(|e| format!("recording the id-map block in {}: {e}", dir.display()))?;
        let base = lease.uid();
        let userns = new_userns(base).map_err(|e| format!("creating the user namespace of ids {base}..: {e}"))?;
        Ok(IdMap { base, userns, lease: std::sync::Mutex::new(Some(lease)) })
    }

    /// An id-mapping over `base..base + BLOCK` without a lease (tests).
    #[cfg(test)]
    pub fn unleased(base: u32) -> io::Result<IdMap> {
        Ok(IdMap { base, userns: new_userns(base)?, lease: std::sync::Mutex::new(None) })
    }

    /// Keeps the block reserved after [`IdMap::release`]: a process of it may still run (its
    /// lock file stays, so the block is skipped rather than given to another sandbox).
    pub fn keep_reserved(&self) {
        if let Some(l) = self.lease.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            l.keep_file();
        }
    }

    /// Gives the block back once the sandbox's processes are gone (its lock file is removed,
    /// unless [`IdMap::keep_reserved`] was called).
    pub fn release(&self) {
        drop(self.lease.lock().unwrap_or_else(|p| p.into_inner()).take());
    }

    /// The host uid and gid of the namespace's root (virtiofsd's).
    pub fn host_root(&self) -> u32 {
        self.base
    }

    /// The user namespace (for `setns` and `MOUNT_ATTR_IDMAP`); open while `self` lives.
    pub fn userns_fd(&self) -> RawFd {
        self.userns.as_raw_fd()
    }

    /// A detached, id-mapped clone of the directory `path` (not its submounts).
    fn layer(&self, path: &Path) -> io::Result<OwnedFd> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::other("NUL in a path"))?;
        let flags = (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint;
        // SAFETY: `c` is a valid C string for the call; open_tree returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: open_tree returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // `struct mount_attr` (MOUNT_ATTR_SIZE_VER0): attr_set, attr_clr, propagation, userns_fd.
        let attr: [u64; 4] = [libc::MOUNT_ATTR_IDMAP, 0, 0, self.userns_fd() as u64];
        // SAFETY: `fd` is an open detached mount; the empty path with AT_EMPTY_PATH names it;
        // `attr` is valid for the call and its size is passed; the kernel only reads them.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                fd.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint,
                attr.as_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }

    /// Mounts a containerd overlay (its `options`) on `target` over id-mapped layers.
    pub fn mount_overlay(&self, options: &[String], target: &Path) -> Result<(), String> {
        let o = OverlayOptions::parse(options)?;
        let open = |p: &Path| {
            self.layer(p).map_err(|e| {
                format!(
                    "id-mapping the layer {}: {e} (its filesystem may not support idmapped mounts; \
                     jail.unprivileged_virtiofsd = false runs virtiofsd as root instead)",
                    p.display()
                )
            })
        };
        let lowers = o.lower.iter().map(|p| open(p)).collect::<Result<Vec<_>, _>>()?;
        let upper = o.upper.as_ref().map(|(parent, _, _)| open(parent)).transpose()?;
        let mut data = format!(
            "lowerdir={}",
            lowers.iter().map(|f| format!("/proc/self/fd/{}", f.as_raw_fd())).collect::<Vec<_>>().join(":")
        );
        if let (Some(fd), Some((_, up, work))) = (&upper, &o.upper) {
            let at = |name: &str| format!("/proc/self/fd/{}/{name}", fd.as_raw_fd());
            data.push_str(&format!(",upperdir={},workdir={}", at(up), at(work)));
        }
        for x in &o.other {
            data.push(',');
            data.push_str(x);
        }
        let data = CString::new(data).map_err(|_| "NUL in the overlay options".to_string())?;
        let target_c = CString::new(target.as_os_str().as_bytes()).map_err(|_| "NUL in the target".to_string())?;
        let base = self.base;
        let r = std::thread::scope(|s| {
            s.spawn(|| mount_as(base, &target_c, &data)).join().unwrap_or_else(|_| Err(io::Error::other("panicked")))
        });
        r.map_err(|e| format!("mounting the overlay on {} over id-mapped layers: {e}", target.display()))
    }
}

/// In a thread of its own (credentials are per thread): fs uid/gid `base` with the
/// capabilities kept, then the overlay mount. The thread ends with its credentials.
fn mount_as(base: u32, target: &CString, data: &CString) -> io::Result<()> {
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    // SAFETY: plain system calls on this thread's credentials; the pointers are valid C strings
    // owned by the caller for the duration of the call.
    unsafe {
        if libc::prctl(libc::PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::syscall(libc::SYS_setfsgid, base);
        libc::syscall(libc::SYS_setfsuid, base);
        // Each returns the previous value: asking again tells whether the change took.
        if libc::syscall(libc::SYS_setfsuid, base) != i64::from(base)
            || libc::syscall(libc::SYS_setfsgid, base) != i64::from(base)
        {
            return Err(io::Error::other("could not take the id-map's fs ids"));
        }
        let overlay = c"overlay";
        if libc::mount(overlay.as_ptr(), target.as_ptr(), overlay.as_ptr(), 0, data.as_ptr().cast()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// containerd's overlay options, split (pure).
#[derive(Debug, PartialEq, Eq)]
struct OverlayOptions {
    lower: Vec<PathBuf>,
    /// The common parent of upperdir and workdir, and their names in it.
    upper: Option<(PathBuf, String, String)>,
    other: Vec<String>,
}

impl OverlayOptions {
    fn parse(options: &[String]) -> Result<OverlayOptions, String> {
        let plain = |p: &str| {
            let path = PathBuf::from(p);
            let ok = path.is_absolute()
                && !p.contains(['\\', ',', ':'])
                && path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
            ok.then_some(path).ok_or_else(|| format!("overlay layer path {p:?} is not a plain absolute path"))
        };
        let (mut lower, mut up, mut work, mut other) = (Vec::new(), None, None, Vec::new());
        for o in options {
            if let Some(v) = o.strip_prefix("lowerdir=") {
                lower = v.split(':').map(plain).collect::<Result<_, _>>()?;
            } else if let Some(v) = o.strip_prefix("upperdir=") {
                up = Some(plain(v)?);
            } else if let Some(v) = o.strip_prefix("workdir=") {
                work = Some(plain(v)?);
            } else if o.contains(',') || o.starts_with("lowerdir+") || o.starts_with("datadir+") {
                return Err(format!("unsupported overlay option {o:?}"));
            } else {
                other.push(o.clone());
            }
        }
        if lower.is_empty() {
            return Err("overlay mount without lowerdir".into());
        }
        let upper = match (up, work) {
            (None, None) => None,
            (Some(u), Some(w)) => {
                let name = |p: &Path| p.file_name().and_then(|n| n.to_str()).map(str::to_string);
                match (u.parent(), w.parent(), name(&u), name(&w)) {
                    (Some(pu), Some(pw), Some(nu), Some(nw)) if pu == pw => Some((pu.to_path_buf(), nu, nw)),
                    _ => {
                        return Err(format!(
                            "upperdir {} and workdir {} must be in one directory",
                            u.display(),
                            w.display()
                        ))
                    }
                }
            }
            _ => return Err("overlay mount with only one of upperdir and workdir".into()),
        };
        Ok(OverlayOptions { lower, upper, other })
    }
}

/// A user namespace whose ids `0..BLOCK` are host ids `base..`: a child process unshares it
/// and waits; the shim (root) writes its maps, keeps a handle on it, and kills the child.
/// One at a time in the process: a fork of another call would inherit this one's pipe ends.
pub fn new_userns(base: u32) -> io::Result<OwnedFd> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (ready_r, ready_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    // SAFETY: the child makes only async-signal-safe system calls (unshare, write, close,
    // read, _exit) on values that exist before the fork, then exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: as above; the child never returns into Rust code.
        unsafe {
            libc::close(go_w.as_raw_fd());
            libc::close(ready_r.as_raw_fd());
            let ok = [u8::from(libc::unshare(libc::CLONE_NEWUSER) == 0)];
            libc::write(ready_w.as_raw_fd(), ok.as_ptr().cast(), 1);
            let mut b = [0u8; 1];
            // killed by the parent; returns anyway if the parent dies (its end closes)
            libc::read(go_r.as_raw_fd(), b.as_mut_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    drop((ready_w, go_r));
    let result = (|| {
        let mut b = [0u8; 1];
        let n = nix::unistd::read(ready_r.as_raw_fd(), &mut b)?;
        if n != 1 || b[0] != 1 {
            return Err(io::Error::other("the child could not unshare a user namespace"));
        }
        let map = format!("0 {base} {BLOCK}\n");
        std::fs::write(format!("/proc/{pid}/uid_map"), &map)?;
        std::fs::write(format!("/proc/{pid}/gid_map"), &map)?;
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/user"))?;
        Ok(OwnedFd::from(ns))
    })();
    // Not waiting for the pipe's end-of-file: whatever else forked meanwhile may hold it.
    let child = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(child, None);
    drop(go_w);
    result
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;

    #[test]
    fn overlay_options_are_split_and_checked() {
        let o = |v: &[&str]| OverlayOptions::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let p = o(&["index=off", "workdir=/s/2/work", "upperdir=/s/2/fs", "lowerdir=/s/1/fs:/s/0/fs"]).unwrap();
        assert_eq!(p.lower, [PathBuf::from("/s/1/fs"), "/s/0/fs".into()]);
        assert_eq!(p.upper, Some(("/s/2".into(), "fs".into(), "work".into())));
        assert_eq!(p.other, ["index=off"]);
        assert_eq!(o(&["lowerdir=/a"]).unwrap().upper, None);
        for bad in [
            &["upperdir=/u/fs", "workdir=/u/work"][..],
            &["lowerdir=/a", "upperdir=/u/fs"],
            &["lowerdir=/a", "upperdir=/u/fs", "workdir=/w/work"],
            &["lowerdir=/a/../etc"],
            &["lowerdir=a"],
            &["lowerdir=/a\\:b"],
            &["lowerdir=/a", "x=1,lowerdir=/etc"],
            &["lowerdir+=/a"],
        ] {
            assert!(o(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn blocks_are_in_the_configured_range() {
        let j = Jail { idmap_base: 1 << 31, idmap_count: 4, ..Jail::default() };
        let mut c: Vec<_> = candidates(&j, "/run/bulwark/ns/s").collect();
        c.sort_unstable();
        assert_eq!(c, [1 << 31, (1 << 31) + BLOCK, (1 << 31) + 2 * BLOCK, (1 << 31) + 3 * BLOCK]);
    }

    /// With real mounts (root): an overlay over id-mapped layers shows the disk's owners
    /// shifted into the block, takes writes and owner changes from the block's ids, and stores
    /// them unshifted; an owner outside the block cannot be written.
    #[test]
    fn an_overlay_over_id_mapped_layers_keeps_the_disk_unshifted() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root (scripts/test runs as root)");
        let base = 3_900_100_000;
        let map = IdMap::unleased(base).expect("user namespace");
        let tmp = crate::jail::testing::temp_dir("idmap-overlay");
        for d in ["lower", "snap/fs", "snap/work", "merged"] {
            std::fs::create_dir_all(tmp.join(d)).unwrap();
        }
        std::fs::write(tmp.join("lower/a"), b"a").unwrap();
        std::os::unix::fs::chown(tmp.join("lower/a"), Some(1000), Some(1000)).unwrap();
        let opts = [
            "index=off".to_string(),
            format!("lowerdir={}", tmp.join("lower").display()),
            format!("upperdir={}", tmp.join("snap/fs").display()),
            format!("workdir={}", tmp.join("snap/work").display()),
        ];
        let merged = tmp.join("merged");
        map.mount_overlay(&opts, &merged).expect("overlay");
        // unmounted and removed however the test ends
        struct Cleanup(PathBuf, PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
                let _ = std::fs::remove_dir_all(&self.1);
            }
        }
        let _cleanup = Cleanup(merged.clone(), tmp.clone());
        let md = |p: PathBuf| std::fs::symlink_metadata(p).unwrap();
        assert_eq!(md(merged.join("a")).uid(), base + 1000);
        assert_eq!(md(merged.clone()).uid(), base, "the root directory: disk uid 0");
        // a write as the block's uid 7 (a process with no capabilities at all)
        std::os::unix::fs::chown(&merged, Some(base + 7), Some(base + 7)).unwrap();
        let ok = std::process::Command::new("/bin/sh")
            .args(["-c", &format!("echo x > {}/new", merged.display())])
            .uid(base + 7)
            .gid(base + 7)
            .status()
            .unwrap();
        assert!(ok.success());
        assert_eq!(md(tmp.join("snap/fs/new")).uid(), 7, "stored unshifted");
        assert_eq!(md(tmp.join("snap/fs")).uid(), 7);
        std::os::unix::fs::chown(merged.join("a"), Some(base + 5), None).unwrap();
        assert_eq!(md(tmp.join("snap/fs/a")).uid(), 5, "copied up, unshifted");
        let e = std::os::unix::fs::chown(merged.join("a"), Some(5), None).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EOVERFLOW), "an owner outside the block");
    }
}
