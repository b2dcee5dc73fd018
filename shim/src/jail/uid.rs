//! The per-sandbox unprivileged uids/gids (`[jail] uid_base`, `uid_count`): two numbers per
//! sandbox (QEMU's and vhost-device-vsock's), each used as both a uid and a gid, taken from the
//! configured range.
//!
//! The first candidate is derived from the sandbox's state directory (stable across a
//! restart of the same sandbox, spread across sandboxes); the others follow it round the
//! range. A uid is held by an exclusive `flock` on `<runtime_dir>/jail-uids/<uid>` for the
//! sandbox's lifetime: a lock that a live shim holds is never taken again, and a crashed shim's
//! lock goes with the process. A uid some process still runs as (a leftover) is skipped too.
//! The lock file names its sandbox directory; the sandbox records the lock file's path in its
//! state directory ([`RECORD`], [`VSOCK_RECORD`]) so that the cleanup after a crash removes it.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

/// Directory of the lock files, under the runtime directory.
pub const LOCK_DIR: &str = "jail-uids";
/// File in a sandbox state directory naming its (QEMU's) lock file.
pub const RECORD: &str = "jail-uid";
/// The same for vhost-device-vsock's uid.
pub const VSOCK_RECORD: &str = "jail-uid-vsock";
/// The same for the blocks of id-mapped ids (idmap.rs): lock files named by a block's first id.
pub const IDMAP_LOCK_DIR: &str = "jail-idmaps";
/// File in a sandbox state directory naming its id-map block's lock file.
pub const IDMAP_RECORD: &str = "jail-idmap";

/// A range of host uids (and the same gids) reserved for sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub base: u32,
    pub count: u32,
}

impl UidRange {
    /// The candidates for the sandbox `seed` (its state directory), first choice first:
    /// every uid of the range exactly once (pure).
    pub fn candidates(self, seed: &str) -> impl Iterator<Item = u32> {
        let d = Sha256::digest(seed.as_bytes());
        let h = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
        let count = self.count.max(1);
        let start = (h % u64::from(count)) as u32;
        (0..self.count).map(move |i| self.base + (start + i) % count)
    }
}

/// One sandbox's uid/gid, held until dropped (the lock file is removed then).
#[derive(Debug)]
pub struct Lease {
    uid: u32,
    path: PathBuf,
    /// false: leave the file when dropped (a record; the uid is given out again only once no
    /// process runs as it, which `allocate_from` checks for every candidate).
    unlink: bool,
    _lock: Flock<File>,
}

impl Lease {
    pub fn uid(&self) -> u32 {
        self.uid
    }
    /// Leaves the lock file when dropped (a process of the uid may still run): the file stays
    /// as a record, and the uid goes to another sandbox only once no process runs as it.
    pub fn keep_file(&mut self) {
        self.unlink = false;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Unlinked while still locked: whoever opened it meanwhile sees a stale inode and
        // retries (see `try_take`).
        if self.unlink {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether a process runs with `uid` as its real, effective, saved or fs uid.
pub fn uid_in_use(uid: u32) -> bool {
    ids_in_use(uid, 1)
}

/// Whether a process runs with a uid of `first..first + count` as its real, effective, saved
/// or fs uid.
pub fn ids_in_use(first: u32, count: u32) -> bool {
    let end = u64::from(first) + u64::from(count);
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries.flatten().filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))).any(
        |e| {
            std::fs::read_to_string(e.path().join("status")).is_ok_and(|s| {
                s.lines().find_map(|l| l.strip_prefix("Uid:")).is_some_and(|ids| {
                    ids.split_whitespace()
                        .filter_map(|x| x.parse::<u32>().ok())
                        .any(|x| (u64::from(first)..end).contains(&u64::from(x)))
                })
            })
        },
    )
}

/// Takes `<lock_dir>/<uid>` if nobody holds it. `Ok(None)`: held by someone else.
fn try_take(lock_dir: &Path, uid: u32, owner: &Path) -> std::io::Result<Option<Lease>> {
    let path = lock_dir.join(uid.to_string());
    for _ in 0..3 {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(e.into()),
        };
        // The holder before us may have unlinked it between our open and our lock.
        let same = std::fs::symlink_metadata(&path).is_ok_and(|m| lock.metadata().is_ok_and(|l| l.ino() == m.ino()));
        if !same {
            continue;
        }
        if let Err(e) = lock.set_len(0).and_then(|_| lock.write_all(format!("{}\n", owner.display()).as_bytes())) {
            // A lock file that cannot name its owner (a full disk) is not left behind.
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        return Ok(Some(Lease { uid, path, unlink: true, _lock: lock }));
    }
    Ok(None)
}

/// A free uid of `range` for the sandbox whose state directory is `owner`, locked in
/// `<runtime_dir>/jail-uids/`.
pub fn allocate(runtime_dir: &Path, range: UidRange, owner: &Path) -> Result<Lease, String> {
    allocate_from(&runtime_dir.join(LOCK_DIR), range.candidates(&owner.to_string_lossy()), uid_in_use, owner)
        .ok_or_else(|| {
            format!(
                "no free jail uid in {}..{} (up to {} sandboxes, two uids each, hold them all; raise jail.uid_count)",
                range.base,
                u64::from(range.base) + u64::from(range.count),
                range.count / 2
            )
        })?
}

/// The first of `candidates` that no lock in `lock_dir` holds and `in_use` does not name,
/// locked for `owner`. `None`: all are taken.
pub fn allocate_from(
    lock_dir: &Path,
    candidates: impl Iterator<Item = u32>,
    in_use: impl Fn(u32) -> bool,
    owner: &Path,
) -> Option<Result<Lease, String>> {
    if let Err(e) = std::fs::create_dir_all(lock_dir) {
        return Some(Err(format!("creating {}: {e}", lock_dir.display())));
    }
    for id in candidates {
        match try_take(lock_dir, id, owner) {
            Ok(Some(mut lease)) if in_use(id) => {
                tracing::warn!("jail id {id} is free but a process still runs as it; skipping it");
                lease.unlink = false;
            }
            Ok(Some(lease)) => return Some(Ok(lease)),
            Ok(None) => {}
            Err(e) => return Some(Err(format!("locking {}/{id}: {e}", lock_dir.display()))),
        }
    }
    None
}

/// Writes `name` in the state directory `dir`: the path of `lease`'s lock file.
pub fn record_as(dir: &Path, name: &str, lease: &Lease) -> std::io::Result<()> {
    std::fs::write(dir.join(name), format!("{}\n", lease.path.display()))
}

/// After a crashed shim: removes the lock files named in `dir`'s [`RECORD`], [`VSOCK_RECORD`]
/// and [`IDMAP_RECORD`] unless someone holds them. Only a path of the form
/// `<abs>/jail-uids/<digits>` (or `jail-idmaps`) is touched.
pub fn release_recorded(dir: &Path) {
    release_one(dir, RECORD, LOCK_DIR);
    release_one(dir, VSOCK_RECORD, LOCK_DIR);
    release_one(dir, IDMAP_RECORD, IDMAP_LOCK_DIR);
}

fn release_one(dir: &Path, record: &str, lock_dir: &str) {
    let Ok(text) = std::fs::read_to_string(dir.join(record)) else { return };
    let path = PathBuf::from(text.trim());
    let well_formed = path.is_absolute()
        && path.parent().and_then(Path::file_name).is_some_and(|n| n == lock_dir)
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !well_formed {
        tracing::warn!("ignoring a malformed {record} in {}", dir.display());
        return;
    }
    let Ok(file) = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path) else { return };
    if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        let owner = std::fs::read_to_string(&path).unwrap_or_default();
        if owner.trim() == dir.to_string_lossy() {
            let _ = std::fs::remove_file(&path);
        }
        drop(lock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::jail::testing::temp_dir;

    #[test]
    fn candidates_cover_the_range_once_from_a_stable_start() {
        let r = UidRange { base: 100_000, count: 7 };
        let a: Vec<_> = r.candidates("/run/bulwark/ns/a").collect();
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (100_000..100_007).collect::<Vec<_>>());
        assert_eq!(a, r.candidates("/run/bulwark/ns/a").collect::<Vec<_>>());
        // different sandboxes start at different places (for these two names)
        let starts: std::collections::HashSet<_> =
            (0..20).map(|i| r.candidates(&format!("/run/bulwark/ns/s{i}")).next()).collect();
        assert!(starts.len() > 3, "{starts:?}");
        assert_eq!(UidRange { base: 5, count: 0 }.candidates("x").count(), 0);
    }

    #[test]
    fn a_held_uid_is_not_given_twice_and_comes_back_when_released() {
        let rd = temp_dir("jail-uid");
        // uids no process runs as (far above anything on a test host)
        let range = UidRange { base: 3_900_000_000, count: 2 };
        let a = allocate(&rd, range, Path::new("/s/a")).unwrap();
        let b = allocate(&rd, range, Path::new("/s/b")).unwrap();
        assert_ne!(a.uid(), b.uid());
        let e = allocate(&rd, range, Path::new("/s/c")).unwrap_err();
        assert!(e.contains("no free jail uid"), "{e}");
        let freed = a.uid();
        let path = a.path.clone();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "/s/a\n");
        drop(a);
        assert!(!path.exists(), "the lock file goes with the lease");
        let c = allocate(&rd, range, Path::new("/s/c")).unwrap();
        assert_eq!(c.uid(), freed);
        drop((b, c));
        std::fs::remove_dir_all(&rd).unwrap();
    }

    #[test]
    fn a_uid_in_use_by_a_process_is_skipped() {
        let rd = temp_dir("jail-uid-inuse");
        // our own uid is in use (by this test)
        let me = nix::unistd::getuid().as_raw();
        assert!(uid_in_use(me));
        let e = allocate(&rd, UidRange { base: me, count: 1 }, Path::new("/s/a")).unwrap_err();
        assert!(e.contains("no free jail uid"), "{e}");
        std::fs::remove_dir_all(&rd).unwrap();
    }

    #[test]
    fn the_record_lets_a_crash_cleanup_remove_an_unheld_lock_file() {
        let rd = temp_dir("jail-uid-record");
        let dir = rd.join("ns").join("s");
        std::fs::create_dir_all(&dir).unwrap();
        let range = UidRange { base: 3_900_000_100, count: 2 };
        let leases = [RECORD, VSOCK_RECORD].map(|record| {
            let lease = allocate(&rd, range, &dir).unwrap();
            record_as(&dir, record, &lease).unwrap();
            lease
        });
        let paths = leases.each_ref().map(|l| l.path.clone());
        assert_ne!(paths[0], paths[1], "two uids for one sandbox");
        // held: left alone
        release_recorded(&dir);
        assert!(paths.iter().all(|p| p.exists()));
        // a crashed shim: the locks are gone but the files stay
        for mut lease in leases {
            lease.unlink = false;
            drop(lease);
        }
        assert!(paths.iter().all(|p| p.exists()));
        release_recorded(&dir);
        assert!(paths.iter().all(|p| !p.exists()), "{paths:?}");
        // a record pointing elsewhere is ignored
        std::fs::write(dir.join(RECORD), "/etc/passwd\n").unwrap();
        release_recorded(&dir);
        assert!(Path::new("/etc/passwd").exists());
        std::fs::remove_dir_all(&rd).unwrap();
    }
}
