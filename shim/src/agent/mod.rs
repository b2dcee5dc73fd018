//! Everything the shim asks the guest, behind one trait ([`AgentApi`]): the real ttrpc client
//! (client.rs) and a scripted fake for unit tests (fake.rs). The boot handshake that yields
//! the connection is handshake.rs; guest→host streams (the agent's log lines today,
//! telemetry next) are streams.rs.
//!
//! Every reply is untrusted guest data: implementations bound what they return (sizes,
//! counts, times) before any caller sees it.

pub mod handshake;
pub mod ratelimit;
pub mod streams;

use std::collections::HashMap;

use async_trait::async_trait;
use bulwark_protocol::agent::{CheckResponse, SetupSandboxRequest, SharedMount};
use bulwark_protocol::PROTOCOL_VERSION;

use crate::error::{Error, Result};

pub mod client;
#[cfg(test)]
pub mod fake;

/// What CreateContainer sends.
#[derive(Debug, Clone, Default)]
pub struct NewContainer {
    pub id: String,
    pub sandbox_id: String,
    /// The bundle's config.json, as containerd wrote it (the agent rewrites it for the guest).
    pub spec_json: Vec<u8>,
    /// The rootfs, relative to the share.
    pub rootfs_path: String,
    pub stdin: bool,
    pub terminal: bool,
    /// Host bind mounts shared through the share: spec mount index → path in the share.
    pub shared_mounts: Vec<SharedMount>,
    /// The node's tenant policy lets a container without a seccomp profile run unconfined
    /// (otherwise the agent applies its default profile).
    pub allow_unconfined_seccomp: bool,
}

/// Which output stream of a process to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// The guest agent of one sandbox, as the shim uses it. A process is named by its container
/// id and exec id (empty: the container's init process).
#[async_trait]
pub trait AgentApi: Send + Sync {
    /// The first call after connecting; refuses an agent of another protocol version.
    async fn check(&self) -> Result<CheckResponse>;
    /// The pod's hostname and network, once, before the first container.
    async fn setup_sandbox(&self, req: &SetupSandboxRequest) -> Result<()>;
    /// Creates a container (its init process exists, stopped before exec); returns its guest pid.
    async fn create_container(&self, c: NewContainer) -> Result<u32>;
    async fn start_container(&self, id: &str) -> Result<()>;
    async fn remove_container(&self, id: &str) -> Result<()>;
    /// Creates and starts an exec; returns its guest pid.
    async fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process_json: Vec<u8>,
        stdin: bool,
        terminal: bool,
    ) -> Result<u32>;
    /// Long poll: the process's (untrusted) exit status; ends with an error if the VM dies.
    async fn wait_process(&self, id: &str, exec_id: &str) -> Result<i32>;
    async fn signal_process(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()>;
    /// Forgets an exited exec.
    async fn remove_process(&self, id: &str, exec_id: &str) -> Result<()>;
    /// Long poll: the next chunk of output (at most protocol::MAX_READ_CHUNK); empty at the end.
    async fn read(&self, id: &str, exec_id: &str, stream: Stream) -> Result<Vec<u8>>;
    /// Writes stdin data; returns how much the agent took (never more than `data.len()`).
    async fn write_stdin(&self, id: &str, exec_id: &str, data: Vec<u8>) -> Result<usize>;
    async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()>;
    async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()>;
    /// The container's raw cgroup v2 files (bounded: file count, name length, file size).
    async fn stats_container(&self, id: &str) -> Result<HashMap<String, Vec<u8>>>;
    /// Applies OCI `linux.resources` JSON to the container's cgroup.
    async fn update_container(&self, id: &str, resources_json: Vec<u8>) -> Result<()>;
    async fn pause_container(&self, id: &str) -> Result<()>;
    async fn resume_container(&self, id: &str) -> Result<()>;
    /// Guest pids of the container's processes (bounded count).
    async fn list_processes(&self, id: &str) -> Result<Vec<u32>>;
    /// Long poll: the id of the next container the guest OOM-killed in.
    async fn wait_oom_event(&self) -> Result<String>;
}

/// Refuses an agent speaking another protocol version (pure).
pub fn check_version(agent_version: u32) -> Result<()> {
    if agent_version != PROTOCOL_VERSION {
        return Err(Error::Agent(format!(
            "protocol version mismatch: the guest agent speaks {agent_version}, this shim speaks \
             {PROTOCOL_VERSION}; rebuild the guest image (images/build-guest-image) from the same \
             Bulwark release as the shim"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_check() {
        assert!(check_version(PROTOCOL_VERSION).is_ok());
        let e = check_version(PROTOCOL_VERSION + 1).unwrap_err().to_string();
        assert!(e.contains("mismatch"), "{e}");
        assert!(check_version(0).is_err());
    }
}
