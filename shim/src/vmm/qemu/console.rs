//! The guest's serial console, bounded on the host: QEMU writes it into a pipe; the shim
//! copies the pipe into `console.log`, and when the file reaches [`CONSOLE_CAP`] it becomes
//! `console.log.1` (replacing the previous one) and a new `console.log` starts. A guest that
//! writes without end keeps at most two caps of console on disk, and the copier holds one
//! small buffer in memory. If the copier falls behind, the pipe fills and the guest's serial
//! output waits: the guest slows itself, not the host.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tokio::io::AsyncReadExt;

/// Most bytes in `console.log` (and in `console.log.1`).
pub const CONSOLE_CAP: u64 = 1024 * 1024;

/// A log file that rotates at a cap (one previous file kept).
pub struct CappedLog {
    path: PathBuf,
    cap: u64,
    file: File,
    written: u64,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path)
}

impl CappedLog {
    pub fn open(path: &Path, cap: u64) -> std::io::Result<CappedLog> {
        let file = open_append(path)?;
        let written = file.metadata()?.len();
        Ok(CappedLog { path: path.to_path_buf(), cap, file, written })
    }

    /// The rotated file's path (`<path>.1`).
    pub fn previous(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".1");
        PathBuf::from(p)
    }

    /// Appends `data`, rotating first whenever the file would pass the cap.
    pub fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            if self.written >= self.cap {
                std::fs::rename(&self.path, Self::previous(&self.path))?;
                self.file = open_append(&self.path)?;
                self.written = 0;
            }
            let room = (self.cap - self.written).min(data.len() as u64) as usize;
            self.file.write_all(&data[..room])?;
            self.written += room as u64;
            data = &data[room..];
        }
        Ok(())
    }
}

/// A pipe for QEMU's console: returns the write end (for QEMU) and starts the copier that
/// reads the other end into `path` (capped) until QEMU closes its end.
pub fn spawn(path: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // QEMU's `file` chardev opens /dev/fdset/N for appending and refuses an fd whose flags
    // differ: the pipe's write end gets O_APPEND (a no-op on a pipe).
    nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&write),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_APPEND),
    )?;
    let mut log = CappedLog::open(path, CONSOLE_CAP)?;
    let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(read)?;
    let shown = path.display().to_string();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Err(e) = log.write(&buf[..n]) {
                tracing::warn!("console log {shown}: {e}; the rest of the console is dropped");
                // Keep draining so the guest never blocks on a full pipe.
                while let Ok(n) = rx.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                break;
            }
        }
    });
    Ok(write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_writing_without_end_keeps_two_caps_on_disk() {
        let dir = std::env::temp_dir().join(format!("bulwark-console-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.log");
        let mut log = CappedLog::open(&path, 100).unwrap();
        for i in 0..1000u32 {
            log.write(format!("line {i} of a guest that never stops\n").as_bytes()).unwrap();
        }
        let now = std::fs::metadata(&path).unwrap().len();
        let prev = std::fs::metadata(CappedLog::previous(&path)).unwrap().len();
        assert!(now <= 100 && prev == 100, "console.log {now} bytes, console.log.1 {prev} bytes");
        let tail = std::fs::read_to_string(&path).unwrap();
        assert!(tail.contains("999"), "the newest output is kept: {tail:?}");
        // A planted symlink at the log's path is not followed.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
        assert!(CappedLog::open(&path, 100).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
