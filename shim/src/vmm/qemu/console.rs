//! The guest's serial console, bounded on the host: QEMU writes it into a pipe that the shim
//! copies into `console.log`, capped at [`CONSOLE_CAP`] with one previous file kept
//! (`console.log.1`; host/capped_log.rs). A guest that writes without end keeps at most two
//! caps of console on disk; if the copier falls behind, the guest's serial output waits: the
//! guest slows itself, not the host.

use std::path::Path;

use crate::host::capped_log;

/// Most bytes in `console.log` (and in `console.log.1`).
pub const CONSOLE_CAP: u64 = 1024 * 1024;

/// A pipe for QEMU's console: returns the write end (for QEMU) and starts the copier that
/// reads the other end into `path` (capped) until QEMU closes its end.
pub fn spawn(path: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    let (write, _copier) = capped_log::pipe_into(path, CONSOLE_CAP)?;
    // QEMU's `file` chardev opens /dev/fdset/N for appending and refuses an fd whose flags
    // differ: the pipe's write end gets O_APPEND (a no-op on a pipe).
    nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&write),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_APPEND),
    )?;
    Ok(write)
}
