//! `symlink-race`: the guest races the host in the virtio-fs share for the VM's whole life, from
//! the agent itself (PID 1, outside any container), as a hostile guest would while the shim
//! creates and removes containers: over and over, for every container tree `<E>` in the share
//! (`/run/bulwark/share`, once mounted) it tries
//!
//! - in the skeleton: symlinks to the target, `/` and `/etc` named `<E>.bwk`, renaming `<E>`
//!   away and back, a symlink `<E>/bwk-etc`, a directory `<E>/mounts/bwk` (the host serves
//!   all of these read-only: every attempt must fail);
//! - in `<E>/rootfs` and every directory `<E>/mounts/<n>` (the tenant's files and volumes):
//!   symlinks to the target, `/` and `/etc` (each made aside and renamed over the last), a
//!   directory renamed back and forth and swapped with a symlink to `/`.
//!
//! The target is `bulwark.symlink_race_target=<host path>` on the kernel command line (a host
//! canary the test watches), else `/etc/shadow`. Every new tree is logged once
//! (`symlink-race saw <E>`), and every 2 s the counts of each kind
//! (`symlink-race skeleton ok=<n> fail=<n> <first errno>`, same for `rootfs` and `volume`), so
//! the host test reads from the agent's log what the guest managed to do.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The kernel command line parameter naming the host path the links point at.
pub const TARGET_PARAM: &str = "bulwark.symlink_race_target";
/// How often the counts are logged.
const REPORT_EVERY: Duration = Duration::from_secs(2);
/// Trees logged by name at most (a pod has a handful of containers).
const MAX_SEEN: usize = 64;

/// The target on a kernel command line (pure): an absolute path, or `/etc/shadow`.
pub fn target(cmdline: &str) -> PathBuf {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(TARGET_PARAM)?.strip_prefix('='))
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/shadow"))
}

/// Counts of one kind of attempt.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    fail: u64,
    first_errno: Option<i32>,
}

impl Tally {
    fn count(&mut self, r: std::io::Result<()>) {
        match r {
            Ok(()) => self.ok += 1,
            Err(e) => {
                self.fail += 1;
                if self.first_errno.is_none() {
                    self.first_errno = e.raw_os_error();
                }
            }
        }
    }

    fn line(&self, kind: &str) -> String {
        let errno = self
            .first_errno
            .map(|e| nix::errno::Errno::from_raw(e).to_string().split(':').next().unwrap_or("?").to_string())
            .unwrap_or_else(|| "-".into());
        format!("symlink-race {kind} ok={} fail={} {errno}", self.ok, self.fail)
    }
}

/// Plants, swaps and renames in `base` (a directory the guest may write or not).
fn race_in(base: &Path, target: &Path, t: &mut Tally) {
    use std::os::unix::fs::symlink;
    // Each link is made under a fresh name and renamed over the last one: the race never
    // ends, and the host test reads the links while it runs, so a link is never absent.
    for (name, to) in [("bwk-target", target), ("bwk-root", Path::new("/")), ("bwk-etc", Path::new("/etc"))] {
        let fresh = base.join(format!("{name}.new"));
        let _ = std::fs::remove_file(&fresh);
        t.count(symlink(to, &fresh).and_then(|()| std::fs::rename(&fresh, base.join(name))));
    }
    let (a, b) = (base.join("bwk-dir"), base.join("bwk-dir2"));
    let _ = std::fs::create_dir(&a);
    t.count(std::fs::rename(&a, &b));
    t.count(std::fs::rename(&b, &a));
    // The directory swapped with a symlink to "/" and back.
    t.count(std::fs::rename(&a, &b));
    t.count(symlink("/", &a));
    let _ = std::fs::remove_file(&a);
    t.count(std::fs::rename(&b, &a));
}

/// One pass over the share's trees.
fn pass(share: &Path, target: &Path, seen: &mut Vec<String>, tallies: &mut [Tally; 3]) {
    use std::os::unix::fs::symlink;
    let Ok(entries) = std::fs::read_dir(share) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.contains(".bwk") {
            continue; // ours, if the skeleton ever let us make any
        }
        if !seen.contains(&name) && seen.len() < MAX_SEEN {
            tracing::warn!("symlink-race saw {name}");
            seen.push(name.clone());
        }
        let tree = share.join(&name);
        let [skeleton, rootfs, volume] = tallies;
        let planted = share.join(format!("{name}.bwk"));
        for to in [target, Path::new("/"), Path::new("/etc")] {
            skeleton.count(symlink(to, &planted));
            let _ = std::fs::remove_file(&planted);
        }
        let moved = share.join(format!("{name}.bwk-moved"));
        let r = std::fs::rename(&tree, &moved);
        if r.is_ok() {
            let _ = std::fs::rename(&moved, &tree);
        }
        skeleton.count(r);
        let r = symlink("/etc", tree.join("bwk-etc"));
        if r.is_ok() {
            let _ = std::fs::remove_file(tree.join("bwk-etc"));
        }
        skeleton.count(r);
        let r = std::fs::create_dir(tree.join("mounts/bwk"));
        if r.is_ok() {
            let _ = std::fs::remove_dir(tree.join("mounts/bwk"));
        }
        skeleton.count(r);
        race_in(&tree.join("rootfs"), target, rootfs);
        if let Ok(mounts) = std::fs::read_dir(tree.join("mounts")) {
            for m in mounts.flatten() {
                if m.file_type().is_ok_and(|t| t.is_dir()) {
                    race_in(&m.path(), target, volume);
                }
            }
        }
    }
}

/// The race, forever (test builds only): waits for the share, then goes round.
pub fn run(share: &Path, target: &Path) {
    tracing::warn!("symlink-race: racing in {} with links to {}", share.display(), target.display());
    while !crate::init::boot::is_mountpoint(share) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut seen = Vec::new();
    let mut tallies: [Tally; 3] = Default::default();
    let mut last = Instant::now();
    loop {
        pass(share, target, &mut seen, &mut tallies);
        if last.elapsed() >= REPORT_EVERY {
            for (t, kind) in tallies.iter().zip(["skeleton", "rootfs", "volume"]) {
                tracing::warn!("{}", t.line(kind));
            }
            last = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_comes_from_the_command_line() {
        assert_eq!(target("quiet bulwark.symlink_race_target=/tmp/c/secret x"), PathBuf::from("/tmp/c/secret"));
        assert_eq!(target("quiet bulwark.symlink_race_target=relative"), PathBuf::from("/etc/shadow"));
        assert_eq!(target("quiet"), PathBuf::from("/etc/shadow"));
    }

    /// On a writable tree every attempt succeeds and leaves the tree as it found it but for
    /// the planted links; the counts say so.
    #[test]
    fn a_pass_over_a_writable_tree() {
        let d = std::env::temp_dir().join(format!("bulwark-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("c1/rootfs")).unwrap();
        std::fs::create_dir_all(d.join("c1/mounts/0")).unwrap();
        let mut seen = Vec::new();
        let mut t: [Tally; 3] = Default::default();
        pass(&d, Path::new("/nonexistent/canary"), &mut seen, &mut t);
        assert_eq!(seen, ["c1"]);
        assert_eq!((t[1].ok, t[1].fail), (8, 0), "rootfs");
        assert_eq!((t[2].ok, t[2].fail), (8, 0), "volume");
        assert_eq!(t[0].ok, 6, "a writable skeleton takes everything (the host's is read-only)");
        assert_eq!(std::fs::read_link(d.join("c1/rootfs/bwk-target")).unwrap(), Path::new("/nonexistent/canary"));
        assert!(d.join("c1/rootfs/bwk-dir").is_dir());
        let mut planted: Vec<String> = std::fs::read_dir(d.join("c1/rootfs"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        planted.sort();
        assert_eq!(planted, ["bwk-dir", "bwk-etc", "bwk-root", "bwk-target"], "no link left under its fresh name");
        let names: Vec<String> =
            std::fs::read_dir(&d).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["c1"], "nothing left in the skeleton");
        assert_eq!(t[1].line("rootfs"), "symlink-race rootfs ok=8 fail=0 -");
        let _ = std::fs::remove_dir_all(&d);
    }
}
