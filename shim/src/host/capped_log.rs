//! Logs a process writes without bound, kept bounded on the host: the process writes into a
//! pipe; a copier task of the shim appends the pipe to the log file, and when the file reaches
//! its cap it becomes `<log>.1` (replacing the previous one) and a new file starts. A writer
//! that never stops (a guest flooding its console, a helper printing a warning per guest
//! request, a compromised helper) keeps at most two caps on disk, and the copier holds one
//! small buffer in memory. The copier takes at most [`BYTES_PER_SECOND`] from a pipe: past
//! that, and whenever it falls behind, the pipe fills and the writer waits, so a flood costs
//! the writer (in its own cgroup), not the shim's CPU. A write error (a full disk) is reported once and
//! the rest is read and dropped, so the writer never blocks on a pipe nobody reads.
//!
//! [`LogCopier::drain`] copies what the pipe holds now: a process's last words are in the log
//! before anyone reads it for the exit (host/child.rs drains before it publishes the exit).

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};

/// Most bytes in each helper's log (`qemu.log`, `virtiofsd.log`, `vsock.log`) and in its
/// `.1`.
pub const HELPER_LOG_CAP: u64 = 1024 * 1024;
/// Most bytes one [`LogCopier::drain`] copies (a writer that keeps writing does not hold it).
const DRAIN_MAX: usize = 4 * 1024 * 1024;
/// Most bytes copied from one pipe per second (far above what a helper or a serial console
/// logs; a flood waits).
pub const BYTES_PER_SECOND: u64 = 8 * 1024 * 1024;

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

/// The copier of one log pipe; dropping it leaves the copier running to the pipe's end.
#[derive(Debug)]
pub struct LogCopier {
    drain: mpsc::Sender<oneshot::Sender<()>>,
}

impl LogCopier {
    /// Returns once what the pipe holds now is in the log (at once if the copier has ended:
    /// then everything is).
    pub async fn drain(&self) {
        let (tx, rx) = oneshot::channel();
        if self.drain.send(tx).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The copier's state: the log, or None once writing it failed (the rest is dropped).
struct Sink {
    log: Option<CappedLog>,
    shown: String,
}

impl Sink {
    fn put(&mut self, data: &[u8]) {
        if let Some(log) = &mut self.log {
            if let Err(e) = log.write(data) {
                tracing::warn!("log {}: {e}; the rest of it is dropped", self.shown);
                self.log = None;
            }
        }
    }
}

/// A pipe into the capped log `path`: returns the write end (for the process; blocking, and
/// close-on-exec, as pipes from here are) and the copier, already running in the current
/// tokio runtime, which ends when every write end is closed.
pub fn pipe_into(path: &Path, cap: u64) -> std::io::Result<(OwnedFd, LogCopier)> {
    let log = CappedLog::open(path, cap)?;
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(read)?;
    let (drain_tx, mut drain_rx) = mpsc::channel::<oneshot::Sender<()>>(4);
    let mut sink = Sink { log: Some(log), shown: path.display().to_string() };
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut draining = true;
        let (mut window, mut in_window) = (tokio::time::Instant::now(), 0u64);
        loop {
            if window.elapsed() >= Duration::from_secs(1) {
                (window, in_window) = (tokio::time::Instant::now(), 0);
            }
            // Over budget, nothing is read until the second is over (the writer waits); a
            // drain is still answered meanwhile.
            let over = in_window >= BYTES_PER_SECOND;
            tokio::select! {
                () = tokio::time::sleep_until(window + Duration::from_secs(1)), if over => {}
                r = rx.read(&mut buf), if !over => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        sink.put(&buf[..n]);
                        in_window += n as u64;
                    }
                },
                ack = drain_rx.recv(), if draining => match ack {
                    Some(ack) => {
                        let mut copied = 0;
                        let mut ended = false;
                        while copied < DRAIN_MAX {
                            match rx.try_read(&mut buf) {
                                Ok(0) => {
                                    ended = true;
                                    break;
                                }
                                Ok(n) => {
                                    sink.put(&buf[..n]);
                                    copied += n;
                                    in_window += n as u64;
                                }
                                Err(_) => break, // WouldBlock: nothing more now
                            }
                        }
                        let _ = ack.send(());
                        if ended {
                            break;
                        }
                    }
                    None => draining = false,
                },
            }
        }
    });
    Ok((write, LogCopier { drain: drain_tx }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(what: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bulwark-capped-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_writer_without_end_keeps_two_caps_on_disk() {
        let dir = dir("rotate");
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

    /// A real process flooding its stdout: the files stay at the cap, and a drain after its
    /// exit has its last line in the log.
    #[tokio::test]
    async fn a_flooding_process_is_capped_and_its_last_words_are_drained() {
        let dir = dir("pipe");
        let path = dir.join("helper.log");
        let (w, copier) = pipe_into(&path, 64 * 1024).unwrap();
        let st = tokio::process::Command::new("/bin/sh")
            .args(["-c", "i=0; while [ $i -lt 20000 ]; do echo flood line $i; i=$((i+1)); done; echo last words"])
            .stdout(std::process::Stdio::from(w))
            .status()
            .await
            .unwrap();
        assert!(st.success());
        copier.drain().await;
        let now = std::fs::read_to_string(&path).unwrap();
        assert!(now.ends_with("last words\n"), "the last line is drained: {:?}", &now[now.len().saturating_sub(80)..]);
        let prev = std::fs::metadata(CappedLog::previous(&path)).unwrap().len();
        assert!(now.len() as u64 <= 64 * 1024 && prev == 64 * 1024, "{} and {prev} bytes", now.len());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A writer offering twice the budget and a little more is held back: the copier takes
    /// it over at least two seconds (a lower bound: a slow machine cannot fail it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_waits_for_the_budget() {
        let dir = dir("budget");
        let (w, copier) = pipe_into(&dir.join("flood.log"), HELPER_LOG_CAP).unwrap();
        let total = 2 * BYTES_PER_SECOND as usize + 256 * 1024;
        let started = std::time::Instant::now();
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::File::from(w);
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < total {
                f.write_all(&chunk).unwrap();
                sent += chunk.len();
            }
        });
        tokio::task::spawn_blocking(move || writer.join().unwrap()).await.unwrap();
        copier.drain().await;
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(2), "{total} bytes copied in {took:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
