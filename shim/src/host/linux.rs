//! The real [`Host`]: fork/exec through [`Child`], mount(2)/umount2(2), /proc/self/mountinfo.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::child::Child;
use super::{Command, Host};
use crate::error::Result;

/// The host the shim runs on.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxHost;

impl Host for LinuxHost {
    fn spawn(&self, cmd: &Command<'_>) -> Result<Child> {
        Child::spawn_with_fds(cmd.name, cmd.exe, cmd.args, cmd.log, cmd.keep_fds, cmd.jail)
    }

    fn mount(&self, source: Option<&Path>, target: &Path, flags: MsFlags) -> std::io::Result<()> {
        mount(source, target, None::<&str>, flags, None::<&str>).map_err(std::io::Error::from)
    }

    fn mount_tmpfs(&self, target: &Path, options: &str) -> std::io::Result<()> {
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some(options)).map_err(std::io::Error::from)
    }

    fn unmount(&self, target: &Path) -> std::io::Result<()> {
        umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW).map_err(std::io::Error::from)
    }

    fn mounts_under(&self, dir: &Path) -> Vec<PathBuf> {
        mounts_under(dir)
    }

    fn create_dir(&self, path: &Path) -> std::io::Result<()> {
        std::fs::create_dir(path)
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32, mode: u32) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
        if !std::fs::symlink_metadata(path)?.file_type().is_symlink() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }

    fn connect_owned_socket(&self, path: &Path, owner: u32) -> std::io::Result<std::os::fd::OwnedFd> {
        connect_owned_socket(path, owner)
    }
}

/// [`Host::connect_owned_socket`]: opens `path` with O_PATH|O_NOFOLLOW, checks that it is a
/// socket owned by `owner`, and connects through `/proc/self/fd/<n>` (the very inode checked).
pub fn connect_owned_socket(path: &Path, owner: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::fs::MetadataExt;
    let (node, md) = open_socket_node(path)?;
    if md.uid() != owner {
        return Err(std::io::Error::other(format!(
            "{} is not a socket owned by uid {owner} (type {:?}, uid {})",
            path.display(),
            md.file_type(),
            md.uid()
        )));
    }
    let via = format!("/proc/self/fd/{}", node.as_raw_fd());
    let s = std::os::unix::net::UnixStream::connect(via)?;
    Ok(OwnedFd::from(s))
}

/// Opens the unix socket `path` itself with O_PATH|O_NOFOLLOW (a symlink there is refused)
/// and returns the fd with its metadata; anything but a socket is an error.
pub fn open_socket_node(path: &Path) -> std::io::Result<(std::os::fd::OwnedFd, std::fs::Metadata)> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::fs::FileTypeExt;
    let raw = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: `raw` was just returned by open(2) and is owned by nobody else.
    let node = unsafe { OwnedFd::from_raw_fd(raw) };
    let md = std::fs::File::from(node.try_clone()?).metadata()?;
    if !md.file_type().is_socket() {
        return Err(std::io::Error::other(format!("{} is not a socket (type {:?})", path.display(), md.file_type())));
    }
    Ok((node, md))
}

/// Decodes a mountinfo path field (`\040` style octal escapes) (pure).
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = (oct[0] - b'0') as u32 * 64 + (oct[1] - b'0') as u32 * 8 + (oct[2] - b'0') as u32;
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir` (from /proc/self/mountinfo), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/bad\\09"), "/bad\\09");
        assert_eq!(unescape_mountinfo("/end\\"), "/end\\");
    }
}
