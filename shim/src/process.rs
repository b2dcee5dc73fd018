//! The state of one container's process as containerd sees it (status, exit status,
//! exit time), and the mapping of exits to shell-style statuses.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;

/// Lifecycle of the container's init process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    /// Frozen in the guest (Pause); Resume makes it Running again.
    Paused,
    Stopped,
}

/// How the process ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    /// Shell-style status: exit code, or 128 + signal.
    pub status: u32,
    pub at: Timestamp,
}

/// Status + exit, guarded by the container's mutex.
#[derive(Debug, Clone)]
pub struct ProcState {
    pub status: Status,
    /// PID in the guest (informational; the task pid containerd sees is QEMU's host pid).
    pub guest_pid: u32,
    pub exit: Option<Exit>,
}

/// Now, as a protobuf timestamp.
pub fn now() -> Timestamp {
    Timestamp::now()
}

/// Shell-style status of a host process exit: the code, or 128 + signal number.
pub fn shell_status(st: ExitStatus) -> u32 {
    if let Some(code) = st.code() {
        return (code & 0xff) as u32;
    }
    if let Some(sig) = st.signal() {
        return 128 + sig as u32;
    }
    255
}

/// Status reported for containers of a VM that died under them: 137 when the VM was killed
/// with SIGKILL (as if the container had been), otherwise 255.
pub fn vm_death_status(st: ExitStatus) -> u32 {
    if st.signal() == Some(libc::SIGKILL) {
        137
    } else {
        255
    }
}

/// Guest exit status (untrusted i32 from the agent) to containerd's u32: values outside
/// 0..=255 become 255.
pub fn guest_status(code: i32) -> u32 {
    if (0..=255).contains(&code) {
        code as u32
    } else {
        255
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(shell_status(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(shell_status(ExitStatus::from_raw(libc::SIGKILL)), 137);
        assert_eq!(shell_status(ExitStatus::from_raw(libc::SIGTERM)), 143);
        assert_eq!(vm_death_status(ExitStatus::from_raw(libc::SIGKILL)), 137);
        assert_eq!(vm_death_status(ExitStatus::from_raw(libc::SIGSEGV)), 255);
        assert_eq!(vm_death_status(ExitStatus::from_raw(0)), 255);
        assert_eq!(vm_death_status(ExitStatus::from_raw(1 << 8)), 255);
        assert_eq!(guest_status(0), 0);
        assert_eq!(guest_status(137), 137);
        assert_eq!(guest_status(-1), 255);
        assert_eq!(guest_status(100_000), 255);
    }
}
