//! The real [`AgentApi`]: a ttrpc client of the guest agent over a connected vsock stream.
//! Every call is bounded: short calls by a timeout, long polls (WaitProcess, ReadStdout/
//! ReadStderr, WaitOomEvent) by the VM's death. Replies are untrusted guest data: what is kept
//! is bounded here: chunk sizes, stats files, pids, ids.

use std::future::Future;
use std::process::ExitStatus;
use std::time::Duration;

use std::collections::HashMap;

use async_trait::async_trait;
use bulwark_protocol::agent::*;
use bulwark_protocol::agent_ttrpc::AgentClient;
use bulwark_protocol::{MAX_CGROUP_FILE, MAX_READ_CHUNK, MAX_SPEC_JSON, PROTOCOL_VERSION};
use tokio::net::UnixStream;
use tokio::sync::watch;

use super::ratelimit::sanitize;
use super::{check_version, AgentApi, NewContainer, Stream};
use crate::error::{Error, Result};
use crate::host::child::wait_exit;

/// Upper bound for calls that should answer promptly.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The guest agent of one sandbox.
pub struct TtrpcAgent {
    client: AgentClient,
    vm_exit: watch::Receiver<Option<ExitStatus>>,
}

pub(super) fn ctx_short() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(CALL_TIMEOUT.as_nanos() as i64)
}

pub(super) fn ctx_long() -> ttrpc::context::Context {
    ttrpc::context::Context::default()
}

pub(crate) fn rpc_err(what: &str, e: ttrpc::Error) -> Error {
    match e {
        ttrpc::Error::RpcStatus(s) => {
            // Guest text, passed on to containerd and its users: bounded and cleaned.
            let msg = sanitize(s.message(), MAX_STATUS_MESSAGE);
            match s.code() {
                ttrpc::Code::NOT_FOUND => Error::NotFound(format!("{what}: {msg}")),
                ttrpc::Code::INVALID_ARGUMENT => Error::InvalidArgument(format!("{what}: {msg}")),
                ttrpc::Code::FAILED_PRECONDITION => Error::FailedPrecondition(format!("{what}: {msg}")),
                c => Error::Agent(format!("{what}: {c:?}: {msg}")),
            }
        }
        other => Error::AgentUnreachable(format!("{what}: {other}")),
    }
}

/// Characters of a guest's error message kept (then marked as truncated).
pub(crate) const MAX_STATUS_MESSAGE: usize = 1024;
/// The cgroup files Stats reads (task/stats.rs), kept first from a reply.
const STATS_FILES_READ: &[&str] = &[
    "cpu.stat",
    "io.stat",
    "memory.current",
    "memory.events",
    "memory.max",
    "memory.peak",
    "memory.stat",
    "memory.swap.current",
    "memory.swap.max",
    "pids.current",
    "pids.max",
];
/// Files kept from a StatsContainer reply.
pub(crate) const MAX_STATS_FILES: usize = 32;
/// Pids kept from a ListProcesses reply.
pub const MAX_PIDS: usize = 65_536;
/// Longest container id accepted in an OOM event (containerd ids are at most 76 bytes).
pub(crate) const MAX_ID_LEN: usize = 128;

/// A StatsContainer reply's files as kept (pure): names of at most 64 bytes, at most
/// MAX_STATS_FILES files, each cut to MAX_CGROUP_FILE bytes.
pub(crate) fn bound_stats_files(files: HashMap<String, Vec<u8>>) -> HashMap<String, Vec<u8>> {
    // Which files are kept must not be left to the map's order: the ones Stats reads first,
    // then the others by name (a guest padding its reply with junk names cannot push out
    // memory.events or cpu.stat).
    let mut files: Vec<(String, Vec<u8>)> = files.into_iter().filter(|(k, _)| k.len() <= 64).collect();
    files.sort_by(|(a, _), (b, _)| {
        (!STATS_FILES_READ.contains(&a.as_str()), a).cmp(&(!STATS_FILES_READ.contains(&b.as_str()), b))
    });
    files
        .into_iter()
        .take(MAX_STATS_FILES)
        .map(|(k, mut v)| {
            v.truncate(MAX_CGROUP_FILE);
            (k, v)
        })
        .collect()
}

/// A ListProcesses reply's pids as kept (pure): at most MAX_PIDS.
pub(crate) fn bound_pids(mut pids: Vec<u32>) -> Vec<u32> {
    pids.truncate(MAX_PIDS);
    pids
}

/// A WaitOomEvent reply's container id (pure): overlong ids are refused.
pub(crate) fn bound_oom_id(id: String) -> Result<String> {
    if id.len() > MAX_ID_LEN {
        return Err(Error::Agent(format!("WaitOomEvent: container id of {} bytes", id.len())));
    }
    Ok(id)
}

/// A ReadStdout/ReadStderr reply's data as kept (pure): at most MAX_READ_CHUNK bytes.
pub(crate) fn bound_read_chunk(mut data: Vec<u8>) -> Vec<u8> {
    data.truncate(MAX_READ_CHUNK as usize);
    data
}

/// How much of `sent` bytes a WriteStdin reply says the agent took (pure): never more than sent.
pub(crate) fn bound_written(reply_len: u32, sent: usize) -> usize {
    (reply_len as usize).min(sent)
}

fn req(id: &str) -> ContainerRequest {
    ContainerRequest { container_id: id.to_string(), ..Default::default() }
}

impl TtrpcAgent {
    /// Wraps a connected stream. `vm_exit` ends every pending call when the VM dies.
    pub fn new(stream: UnixStream, vm_exit: watch::Receiver<Option<ExitStatus>>) -> Self {
        let socket = ttrpc::asynchronous::transport::Socket::new(stream);
        let client = AgentClient::new(ttrpc::r#async::Client::new(socket));
        TtrpcAgent { client, vm_exit }
    }

    async fn bounded<T>(
        &self,
        what: &str,
        timeout: Option<Duration>,
        fut: impl Future<Output = ttrpc::Result<T>>,
    ) -> Result<T> {
        let died = wait_exit(self.vm_exit.clone());
        let call = async {
            match timeout {
                Some(t) => tokio::time::timeout(t, fut)
                    .await
                    .map_err(|_| {
                        Error::AgentUnreachable(format!("{what}: the guest agent did not answer within {t:?}"))
                    })?
                    .map_err(|e| rpc_err(what, e)),
                None => fut.await.map_err(|e| rpc_err(what, e)),
            }
        };
        tokio::select! {
            r = call => r,
            st = died => Err(Error::Agent(format!("{what}: the VM exited ({st})"))),
        }
    }
}

#[async_trait]
impl AgentApi for TtrpcAgent {
    /// Check: the first call; refuses a different protocol version.
    async fn check(&self) -> Result<CheckResponse> {
        let req = CheckRequest { shim_protocol_version: PROTOCOL_VERSION, ..Default::default() };
        let r = self.bounded("Check", Some(CALL_TIMEOUT), self.client.check(ctx_short(), &req)).await?;
        check_version(r.agent_protocol_version)?;
        Ok(r)
    }

    async fn create_container(&self, c: NewContainer) -> Result<u32> {
        let req = CreateContainerRequest {
            container_id: c.id,
            oci_spec_json: c.spec_json,
            rootfs_path: c.rootfs_path,
            stdin: c.stdin,
            terminal: c.terminal,
            sandbox_id: c.sandbox_id,
            shared_mounts: c.shared_mounts,
            allow_unconfined_seccomp: c.allow_unconfined_seccomp,
            ..Default::default()
        };
        let r = self
            .bounded("CreateContainer", Some(CALL_TIMEOUT), self.client.create_container(ctx_short(), &req))
            .await?;
        Ok(r.pid)
    }

    /// SetupSandbox: the pod's hostname and network, once, before the first container.
    async fn setup_sandbox(&self, req: &SetupSandboxRequest) -> Result<()> {
        self.bounded("SetupSandbox", Some(CALL_TIMEOUT), self.client.setup_sandbox(ctx_short(), req)).await?;
        Ok(())
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        let req = ContainerRequest { container_id: id.to_string(), ..Default::default() };
        self.bounded("StartContainer", Some(CALL_TIMEOUT), self.client.start_container(ctx_short(), &req)).await?;
        Ok(())
    }

    /// Blocks until the process (`exec_id` empty: the init process) exits, or the VM dies.
    /// Returns the guest's (untrusted) status.
    async fn wait_process(&self, id: &str, exec_id: &str) -> Result<i32> {
        let req = ProcessRequest { container_id: id.to_string(), exec_id: exec_id.to_string(), ..Default::default() };
        let r = self.bounded("WaitProcess", None, self.client.wait_process(ctx_long(), &req)).await?;
        Ok(r.exit_status)
    }

    async fn signal_process(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let req = SignalProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            all,
            ..Default::default()
        };
        self.bounded("SignalProcess", Some(CALL_TIMEOUT), self.client.signal_process(ctx_short(), &req)).await?;
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        let req = ContainerRequest { container_id: id.to_string(), ..Default::default() };
        self.bounded("RemoveContainer", Some(CALL_TIMEOUT), self.client.remove_container(ctx_short(), &req)).await?;
        Ok(())
    }

    /// Next chunk of output (long poll); empty at end of stream. At most MAX_READ_CHUNK bytes
    /// are kept even if the guest sends more.
    async fn read(&self, id: &str, exec_id: &str, stream: Stream) -> Result<Vec<u8>> {
        let req = ReadStreamRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            max_len: MAX_READ_CHUNK,
            ..Default::default()
        };
        let r = match stream {
            Stream::Stdout => self.bounded("ReadStdout", None, self.client.read_stdout(ctx_long(), &req)).await?,
            Stream::Stderr => self.bounded("ReadStderr", None, self.client.read_stderr(ctx_long(), &req)).await?,
        };
        Ok(bound_read_chunk(r.data))
    }

    /// Writes stdin data; returns how much the agent took.
    async fn write_stdin(&self, id: &str, exec_id: &str, data: Vec<u8>) -> Result<usize> {
        let len = data.len();
        let req = WriteStreamRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            data,
            ..Default::default()
        };
        let r = self.bounded("WriteStdin", Some(CALL_TIMEOUT), self.client.write_stdin(ctx_short(), &req)).await?;
        Ok(bound_written(r.len, len))
    }

    async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let req = ProcessRequest { container_id: id.to_string(), exec_id: exec_id.to_string(), ..Default::default() };
        self.bounded("CloseStdin", Some(CALL_TIMEOUT), self.client.close_stdin(ctx_short(), &req)).await?;
        Ok(())
    }

    /// Creates and starts exec `exec_id` in container `id`; returns its guest pid.
    async fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process_json: Vec<u8>,
        stdin: bool,
        terminal: bool,
    ) -> Result<u32> {
        let req = ExecProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            process_json,
            stdin,
            terminal,
            ..Default::default()
        };
        let r = self.bounded("ExecProcess", Some(CALL_TIMEOUT), self.client.exec_process(ctx_short(), &req)).await?;
        Ok(r.pid)
    }

    /// Forgets an exited exec in the guest.
    async fn remove_process(&self, id: &str, exec_id: &str) -> Result<()> {
        let req = ProcessRequest { container_id: id.to_string(), exec_id: exec_id.to_string(), ..Default::default() };
        self.bounded("RemoveProcess", Some(CALL_TIMEOUT), self.client.remove_process(ctx_short(), &req)).await?;
        Ok(())
    }

    /// Sets the terminal size of a process's pty.
    async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let req = ResizePtyRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            width,
            height,
            ..Default::default()
        };
        self.bounded("ResizePty", Some(CALL_TIMEOUT), self.client.resize_pty(ctx_short(), &req)).await?;
        Ok(())
    }

    /// The raw cgroup v2 files of the container (at most MAX_STATS_FILES, each cut to
    /// MAX_CGROUP_FILE bytes).
    async fn stats_container(&self, id: &str) -> Result<HashMap<String, Vec<u8>>> {
        let r = self
            .bounded("StatsContainer", Some(CALL_TIMEOUT), self.client.stats_container(ctx_short(), &req(id)))
            .await?;
        Ok(bound_stats_files(r.cgroup_files))
    }

    /// Applies OCI `linux.resources` JSON to the container's cgroup.
    async fn update_container(&self, id: &str, resources_json: Vec<u8>) -> Result<()> {
        if resources_json.len() > MAX_SPEC_JSON {
            return Err(Error::InvalidArgument(format!(
                "resources of {id}: {} bytes, more than the {MAX_SPEC_JSON} accepted",
                resources_json.len()
            )));
        }
        let r = UpdateContainerRequest { container_id: id.to_string(), resources_json, ..Default::default() };
        self.bounded("UpdateContainer", Some(CALL_TIMEOUT), self.client.update_container(ctx_short(), &r)).await?;
        Ok(())
    }

    async fn pause_container(&self, id: &str) -> Result<()> {
        self.bounded("PauseContainer", Some(CALL_TIMEOUT), self.client.pause_container(ctx_short(), &req(id))).await?;
        Ok(())
    }

    async fn resume_container(&self, id: &str) -> Result<()> {
        self.bounded("ResumeContainer", Some(CALL_TIMEOUT), self.client.resume_container(ctx_short(), &req(id)))
            .await?;
        Ok(())
    }

    /// Guest pids of the container's processes (at most MAX_PIDS).
    async fn list_processes(&self, id: &str) -> Result<Vec<u32>> {
        let r = self
            .bounded("ListProcesses", Some(CALL_TIMEOUT), self.client.list_processes(ctx_short(), &req(id)))
            .await?;
        Ok(bound_pids(r.pids))
    }

    /// Long poll: the id of the next container the guest OOM-killed in (ends with an error
    /// when the VM dies). Overlong ids are refused.
    async fn wait_oom_event(&self) -> Result<String> {
        let r = self.bounded("WaitOomEvent", None, self.client.wait_oom_event(ctx_long(), &Empty::default())).await?;
        bound_oom_id(r.container_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_padded_stats_reply_cannot_push_out_the_files_stats_reads() {
        let mut files: HashMap<String, Vec<u8>> = (0..200).map(|i| (format!("aaa.junk{i}"), vec![b'x'; 10])).collect();
        files.insert("memory.events".into(), b"oom_kill 1\n".to_vec());
        files.insert("cpu.stat".into(), b"usage_usec 5\n".to_vec());
        let kept = bound_stats_files(files);
        assert_eq!(kept.len(), MAX_STATS_FILES);
        assert!(kept.contains_key("memory.events") && kept.contains_key("cpu.stat"), "{:?}", kept.keys());
    }
}
