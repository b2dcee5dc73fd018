//! A recording [`Host`] for unit tests: spawns nothing (each spawn is a simulated [`Child`]
//! whose exit the test controls), keeps mounts in an in-memory table, and creates
//! directories for real (tests point it at a temporary directory).
#![allow(dead_code)] // a test kit: not every test uses every knob

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};

use nix::mount::MsFlags;
use tokio::sync::watch;

use super::child::Child;
use super::{Command, Host};
use crate::error::{Error, Result};

/// The fake host.
#[derive(Default)]
pub struct FakeHost {
    calls: Mutex<Vec<String>>,
    /// Mount points, in mount order (a point mounted twice appears twice).
    mounts: Mutex<Vec<PathBuf>>,
    /// Spawned children by name: the sender that makes one exit.
    children: Mutex<HashMap<&'static str, Arc<watch::Sender<Option<ExitStatus>>>>>,
    /// Programs whose spawn fails.
    failing_spawns: Mutex<Vec<&'static str>>,
    /// Programs that exit right after their spawn (status 1).
    exiting_spawns: Mutex<Vec<&'static str>>,
    next_pid: Mutex<u32>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeHost {
    pub fn new() -> Arc<FakeHost> {
        Arc::new(FakeHost { next_pid: Mutex::new(4_000_000), ..Default::default() })
    }

    /// Every call so far: "spawn <name>", "mount <target> <flags>", "unmount <target>",
    /// "mkdir <path>".
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    /// What is mounted now.
    pub fn mounts(&self) -> Vec<PathBuf> {
        lock(&self.mounts).clone()
    }

    /// Makes the spawn of `name` fail from now on.
    pub fn fail_spawn(&self, name: &'static str) {
        lock(&self.failing_spawns).push(name);
    }

    /// Makes `name` exit (status 1) right after it is spawned, from now on.
    pub fn exit_at_spawn(&self, name: &'static str) {
        lock(&self.exiting_spawns).push(name);
    }

    /// Makes the last spawned `name` exit with `status` (a wait status).
    pub fn exit(&self, name: &str, status: i32) {
        if let Some(tx) = lock(&self.children).get(name) {
            use std::os::unix::process::ExitStatusExt;
            tx.send_replace(Some(ExitStatus::from_raw(status)));
        }
    }

    fn record(&self, call: String) {
        lock(&self.calls).push(call);
    }
}

impl Host for FakeHost {
    fn spawn(&self, cmd: &Command<'_>) -> Result<Child> {
        let jailed = match cmd.jail.and_then(|j| j.creds.as_ref()) {
            Some(c) => format!(" [uid {}]", c.uid),
            None if cmd.jail.is_some() => " [root, confined]".to_string(),
            None => String::new(),
        };
        self.record(format!("spawn {} {}{jailed}", cmd.name, cmd.args.join(" ")));
        if lock(&self.failing_spawns).contains(&cmd.name) {
            return Err(Error::Spawn {
                what: cmd.name,
                path: cmd.exe.to_path_buf(),
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            });
        }
        let pid = {
            let mut n = lock(&self.next_pid);
            *n += 1;
            *n
        };
        let (child, tx) = Child::simulated(cmd.name, pid, cmd.exe);
        if lock(&self.exiting_spawns).contains(&cmd.name) {
            use std::os::unix::process::ExitStatusExt;
            tx.send_replace(Some(ExitStatus::from_raw(1 << 8)));
        }
        lock(&self.children).insert(cmd.name, tx);
        Ok(child)
    }

    fn mount(&self, source: Option<&Path>, target: &Path, flags: MsFlags) -> std::io::Result<()> {
        self.record(format!(
            "mount {} {} {flags:?}",
            source.map(|s| s.display().to_string()).unwrap_or_default(),
            target.display()
        ));
        if !target.exists() {
            return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        }
        if flags.contains(MsFlags::MS_BIND) && !flags.contains(MsFlags::MS_REMOUNT) {
            lock(&self.mounts).push(target.to_path_buf());
        }
        Ok(())
    }

    fn mount_tmpfs(&self, target: &Path, options: &str) -> std::io::Result<()> {
        self.record(format!("mount tmpfs {} {options}", target.display()));
        if !target.exists() {
            return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        }
        lock(&self.mounts).push(target.to_path_buf());
        Ok(())
    }

    fn unmount(&self, target: &Path) -> std::io::Result<()> {
        self.record(format!("unmount {}", target.display()));
        let mut m = lock(&self.mounts);
        match m.iter().rposition(|p| p == target) {
            Some(i) => {
                m.remove(i);
                Ok(())
            }
            None => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    fn mounts_under(&self, dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = lock(&self.mounts).iter().filter(|m| m.starts_with(dir)).cloned().collect();
        v.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        v.dedup();
        v
    }

    fn create_dir(&self, path: &Path) -> std::io::Result<()> {
        self.record(format!("mkdir {}", path.display()));
        std::fs::create_dir(path)
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32, mode: u32) -> std::io::Result<()> {
        self.record(format!("chown {} {uid}:{gid} {mode:o}", path.display()));
        if !path.exists() {
            return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        }
        Ok(())
    }

    fn connect_owned_socket(&self, path: &Path, owner: u32) -> std::io::Result<std::os::fd::OwnedFd> {
        self.record(format!("connect {} uid {owner}", path.display()));
        if !path.exists() {
            return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        }
        let (a, _b) = std::os::unix::net::UnixStream::pair()?;
        Ok(a.into())
    }
}

/// A fresh, empty directory under the system temp dir for one test (removed by the test or
/// left for the OS).
pub fn temp_dir(what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "bulwark-test-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a test temp dir");
    dir
}

/// A test's temporary directory in which the test makes real mounts: dropped (also when the
/// test fails), it unmounts whatever is still mounted below it, deepest first, and removes it,
/// so a failed test leaves no mount behind.
pub struct MountedTempDir(pub PathBuf);

impl MountedTempDir {
    pub fn new(what: &str) -> Self {
        MountedTempDir(temp_dir(what))
    }
}

impl std::ops::Deref for MountedTempDir {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<Path> for MountedTempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for MountedTempDir {
    fn drop(&mut self) {
        for m in crate::host::linux::mounts_under(&self.0) {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
