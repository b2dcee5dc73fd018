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
//! overlayfs cannot be id-mapped itself: resources/idmapped_overlay.rs mounts a container's
//! overlay over id-mapped layers.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

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

    /// Leaves the block's lock file at [`IdMap::release`], as a record of an incomplete
    /// teardown. What keeps the block from another sandbox while a process of it still runs
    /// is the allocation's own check of every candidate (`uid::allocate_from`), not the file.
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

    #[test]
    fn blocks_are_in_the_configured_range() {
        let j = Jail { idmap_base: 1 << 31, idmap_count: 4, ..Jail::default() };
        let mut c: Vec<_> = candidates(&j, "/run/bulwark/ns/s").collect();
        c.sort_unstable();
        assert_eq!(c, [1 << 31, (1 << 31) + BLOCK, (1 << 31) + 2 * BLOCK, (1 << 31) + 3 * BLOCK]);
    }
}
