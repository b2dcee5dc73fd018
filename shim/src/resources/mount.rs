//! Mount bookkeeping on the host: which mounts are under a directory (from
//! /proc/self/mountinfo), and unmounting them all before removing the directory.

use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};

use crate::error::{Error, Result};

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

/// Mount points at or below `dir`, deepest first.
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

/// Unmounts everything under `dir` (lazily), then removes it — but never removes through
/// a mount that is still there (that would delete a container's files).
pub fn cleanup_mounts_and_dir(dir: &Path) -> Result<()> {
    for m in mounts_under(dir) {
        // Repeated: stacked mounts on one point need one unmount each.
        for _ in 0..8 {
            if umount2(&m, MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
    }
    let left = mounts_under(dir);
    if !left.is_empty() {
        return Err(Error::Mount(format!(
            "still mounted under {}: {left:?}; not removing the directory (unmount them by hand)",
            dir.display()
        )));
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", dir.display()), e)),
    }
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
