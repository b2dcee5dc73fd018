//! Host-side witnesses for escape tests: a canary file whose every open, read, write, attribute
//! change or sibling creation is seen (inotify on the file and its directory), and a snapshot
//! of the host mount table to compare before and after. A test that tries to reach the host
//! from inside a VM plants a canary, points the guest at it, and checks it is untouched.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A canary file `/tmp/bwk-canary-<pid>-<n>/secret` with unique bytes, watched by inotify.
pub struct Canary {
    pub dir: PathBuf,
    pub file: PathBuf,
    content: Vec<u8>,
    mtime: SystemTime,
    inotify: OwnedFd,
    /// Watch descriptor -> what it watches (for the event descriptions).
    watches: Vec<(i32, String)>,
}

fn watch(fd: &OwnedFd, path: &Path) -> Result<i32, String> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: `fd` is an open inotify fd and `c` a NUL-terminated path living across the call.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_ALL_EVENTS) };
    if wd < 0 {
        return Err(format!("inotify_add_watch {}: {}", path.display(), std::io::Error::last_os_error()));
    }
    Ok(wd)
}

/// Names of the inotify event bits set in `mask`.
fn event_names(mask: u32) -> Vec<&'static str> {
    [
        (libc::IN_ACCESS, "ACCESS"),
        (libc::IN_MODIFY, "MODIFY"),
        (libc::IN_ATTRIB, "ATTRIB"),
        (libc::IN_CLOSE_WRITE, "CLOSE_WRITE"),
        (libc::IN_CLOSE_NOWRITE, "CLOSE_NOWRITE"),
        (libc::IN_OPEN, "OPEN"),
        (libc::IN_MOVED_FROM, "MOVED_FROM"),
        (libc::IN_MOVED_TO, "MOVED_TO"),
        (libc::IN_CREATE, "CREATE"),
        (libc::IN_DELETE, "DELETE"),
        (libc::IN_DELETE_SELF, "DELETE_SELF"),
        (libc::IN_MOVE_SELF, "MOVE_SELF"),
        (libc::IN_Q_OVERFLOW, "Q_OVERFLOW"),
    ]
    .iter()
    .filter(|(bit, _)| mask & bit != 0)
    .map(|(_, n)| *n)
    .collect()
}

impl Canary {
    /// Creates the canary directory and file and starts watching both. Nothing of the test
    /// touches them afterwards until [`Canary::check_untouched`].
    pub fn plant() -> Result<Canary, String> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!("/tmp/bwk-canary-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let file = dir.join("secret");
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let content = format!("BULWARK-CANARY {} {n} {nanos}\n", std::process::id()).into_bytes();
        std::fs::write(&file, &content).map_err(|e| format!("writing {}: {e}", file.display()))?;
        let mtime = std::fs::metadata(&file).and_then(|m| m.modified()).map_err(|e| e.to_string())?;
        // SAFETY: inotify_init1 has no memory-safety preconditions; the fd is checked below.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(format!("inotify_init1: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let inotify = unsafe { OwnedFd::from_raw_fd(raw) };
        let watches = vec![
            (watch(&inotify, &dir)?, dir.display().to_string()),
            (watch(&inotify, &file)?, file.display().to_string()),
        ];
        Ok(Canary { dir, file, content, mtime, inotify, watches })
    }

    /// Every inotify event since the last call, described ("OPEN on /tmp/.../secret").
    pub fn events(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: reads into a buffer we own, of the length given.
            let n = unsafe { libc::read(self.inotify.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            let mut off = 0usize;
            let hdr = std::mem::size_of::<libc::inotify_event>();
            while off + hdr <= n as usize {
                // SAFETY: the kernel wrote whole events; read_unaligned copes with the alignment.
                let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
                let name_bytes = &buf[off + hdr..(off + hdr + ev.len as usize).min(n as usize)];
                let name = String::from_utf8_lossy(name_bytes).trim_end_matches('\0').to_string();
                let what = self.watches.iter().find(|(wd, _)| *wd == ev.wd).map(|(_, p)| p.as_str()).unwrap_or("?");
                let target = if name.is_empty() { what.to_string() } else { format!("{what}/{name}") };
                if ev.mask & libc::IN_IGNORED == 0 {
                    out.push(format!("{} on {target}", event_names(ev.mask).join("|")));
                }
                off += hdr + ev.len as usize;
            }
        }
        out
    }

    /// Fails unless nothing opened, read, wrote, changed or renamed the canary and nothing
    /// was created next to it since it was planted, and its bytes and mtime are the same.
    pub fn check_untouched(&self) -> Result<(), String> {
        let events = self.events();
        if !events.is_empty() {
            return Err(format!("the host canary was touched: {events:?}"));
        }
        let now = std::fs::read(&self.file).map_err(|e| format!("reading {}: {e}", self.file.display()))?;
        let mtime = std::fs::metadata(&self.file).and_then(|m| m.modified()).map_err(|e| e.to_string())?;
        if now != self.content || mtime != self.mtime {
            return Err(format!(
                "the host canary {} changed: {:?} (mtime {mtime:?}), planted {:?} (mtime {:?})",
                self.file.display(),
                String::from_utf8_lossy(&now),
                String::from_utf8_lossy(&self.content),
                self.mtime
            ));
        }
        let entries = crate::leftovers::entries(&self.dir);
        if entries != ["secret"] {
            return Err(format!("the canary directory {} now holds {entries:?}", self.dir.display()));
        }
        Ok(())
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The host's mounts, one line each ("<mount id> <mount point> <fstype> <source> <options>"),
/// except those at or below `excluded` prefixes (other tests' private directories, network
/// namespace files: they come and go with tests running in parallel).
pub fn host_mounts(excluded: &[&Path]) -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let point = *f.get(4)?;
            if excluded.iter().any(|e| Path::new(point).starts_with(e)) {
                return None;
            }
            let sep = f.iter().position(|w| *w == "-")?;
            Some(format!(
                "{} {point} {} {} {}",
                f[0],
                f.get(sep + 1)?,
                f.get(sep + 2)?,
                f.get(5).copied().unwrap_or("")
            ))
        })
        .collect()
}

/// The prefixes every escape test leaves out of [`host_mounts`]: `/tmp` (every test's
/// containerd lives there) and the network namespace files.
pub const VOLATILE_MOUNTS: [&str; 3] = ["/tmp", "/run/netns", "/var/run/netns"];

/// [`host_mounts`] without [`VOLATILE_MOUNTS`].
pub fn stable_host_mounts() -> BTreeSet<String> {
    let ex: Vec<&Path> = VOLATILE_MOUNTS.iter().map(Path::new).collect();
    host_mounts(&ex)
}

/// Fails naming the mounts that appeared and disappeared between `before` and `after`.
pub fn compare_mounts(before: &BTreeSet<String>, after: &BTreeSet<String>) -> Result<(), String> {
    let gone: Vec<&String> = before.difference(after).collect();
    let new: Vec<&String> = after.difference(before).collect();
    if gone.is_empty() && new.is_empty() {
        Ok(())
    } else {
        Err(format!("the host mount table changed outside the test directories: gone {gone:#?}, new {new:#?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_of_the_canary_is_seen() {
        let c = Canary::plant().unwrap();
        assert!(c.check_untouched().is_ok());
        let _ = std::fs::read(&c.file).unwrap();
        let events = c.events();
        assert!(events.iter().any(|e| e.contains("OPEN")), "{events:?}");
        std::fs::write(c.dir.join("new"), "x").unwrap();
        let err = c.check_untouched().unwrap_err();
        assert!(err.contains("CREATE"), "{err}");
    }

    #[test]
    fn mount_lines_skip_the_excluded_prefixes() {
        let all = host_mounts(&[]);
        assert!(all.iter().any(|l| l.split(' ').nth(1) == Some("/")), "{all:?}");
        let none = host_mounts(&[Path::new("/")]);
        assert!(none.is_empty(), "{none:?}");
        assert!(compare_mounts(&all, &all).is_ok());
        let mut more = all.clone();
        more.insert("999999 /etc/evil tmpfs none rw".into());
        assert!(compare_mounts(&all, &more).unwrap_err().contains("/etc/evil"));
    }
}
