//! What the lower layers do to the host, behind one trait ([`Host`]) so the logic above it
//! (sandbox state directory and share, teardown, volumes) can be unit-tested without root:
//! start a supervised child process (child.rs; its output into a capped log: capped_log.rs;
//! signalled through a pidfd: pidfd.rs),
//! bind-mount / change propagation / unmount,
//! list the mounts under a directory, create a directory. linux.rs makes the real calls;
//! fake.rs (tests only) records them and keeps a mount table in memory. fs.rs holds the
//! symlink-proof file and mount operations below the shim's own directories.
//!
//! Errors are the raw `std::io::Error` of the call: callers say what they were doing.

pub mod capped_log;
pub mod child;
#[cfg(test)]
pub mod fake;
pub mod fs;
pub mod linux;
pub mod pidfd;

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::error::Result;
use crate::jail::process::Confinement;
use child::Child;

/// A helper program to start ([`Host::spawn`]).
#[derive(Debug, Clone, Copy)]
pub struct Command<'a> {
    /// What it is, for logs and the pid file ("qemu", "virtiofsd", ...).
    pub name: &'static str,
    pub exe: &'a Path,
    pub args: &'a [String],
    /// stdout and stderr are appended here.
    pub log: &'a Path,
    /// Fds the child inherits under the same numbers (e.g. tap devices).
    pub keep_fds: &'a [RawFd],
    /// How the child is confined (uid, capabilities, mounts, seccomp; `jail/process.rs`),
    /// None: it runs as the shim does.
    pub jail: Option<&'a Confinement>,
}

/// The host operations of the lower layers.
pub trait Host: Send + Sync {
    /// Starts a supervised child (see [`Child::spawn_with_fds`]).
    fn spawn(&self, cmd: &Command<'_>) -> Result<Child>;
    /// mount(2) without a filesystem type or data: bind mounts (`MS_BIND`, `MS_REC`), read-only
    /// remounts and propagation changes (`MS_PRIVATE`, `MS_SHARED`).
    fn mount(&self, source: Option<&Path>, target: &Path, flags: MsFlags) -> std::io::Result<()>;
    /// Mounts a new tmpfs with `options` on `target`, nosuid, nodev, noexec.
    fn mount_tmpfs(&self, target: &Path, options: &str) -> std::io::Result<()>;
    /// Lazily unmounts the top mount on `target` (`MNT_DETACH`), never following a symlink
    /// as its last component (`UMOUNT_NOFOLLOW`).
    fn unmount(&self, target: &Path) -> std::io::Result<()>;
    /// Mount points at or below `dir`, deepest first.
    fn mounts_under(&self, dir: &Path) -> Vec<PathBuf>;
    /// Creates one directory (its parent must exist).
    fn create_dir(&self, path: &Path) -> std::io::Result<()>;
    /// Gives `path` (never followed if a symlink) to `uid`:`gid` and sets its mode.
    fn chown(&self, path: &Path, uid: u32, gid: u32, mode: u32) -> std::io::Result<()>;
    /// Connects to the unix socket at `path`, which must be a socket owned by `owner` and not
    /// a symlink (it may sit in a directory a jailed helper can write): the connected fd is
    /// handed to another process.
    fn connect_owned_socket(&self, path: &Path, owner: u32) -> std::io::Result<std::os::fd::OwnedFd>;
}
