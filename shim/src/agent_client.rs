//! Typed client of the guest agent (ttrpc over hybrid vsock). Every call is bounded: short
//! calls by a timeout, long polls (WaitProcess, ReadStdout/ReadStderr) by the VM's death.
//! Replies are untrusted guest data; callers bound what they keep.

use std::future::Future;
use std::process::ExitStatus;
use std::time::Duration;

use bulwark_protocol::agent::*;
use bulwark_protocol::agent_ttrpc::AgentClient;
use bulwark_protocol::{MAX_READ_CHUNK, PROTOCOL_VERSION};
use tokio::net::UnixStream;
use tokio::sync::watch;

use crate::child::wait_exit;
use crate::error::{Error, Result};

mod resources;

/// Upper bound for calls that should answer promptly.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What CreateContainer sends.
pub struct NewContainer<'a> {
    pub id: &'a str,
    pub sandbox_id: &'a str,
    pub spec_json: Vec<u8>,
    pub rootfs_path: &'a str,
    pub stdin: bool,
    pub terminal: bool,
    pub shared_mounts: &'a [crate::volumes::SharedMount],
}

/// The guest agent of one sandbox.
pub struct Agent {
    client: AgentClient,
    vm_exit: watch::Receiver<Option<ExitStatus>>,
}

/// Which output stream to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
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

fn ctx_short() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(CALL_TIMEOUT.as_nanos() as i64)
}

fn ctx_long() -> ttrpc::context::Context {
    ttrpc::context::Context::default()
}

fn rpc_err(what: &str, e: ttrpc::Error) -> Error {
    match e {
        ttrpc::Error::RpcStatus(s) => {
            let msg: String = s.message().chars().take(1024).collect();
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

impl Agent {
    /// Wraps a connected stream. `vm_exit` ends every pending call when the VM dies.
    pub fn new(stream: UnixStream, vm_exit: watch::Receiver<Option<ExitStatus>>) -> Self {
        let socket = ttrpc::asynchronous::transport::Socket::new(stream);
        let client = AgentClient::new(ttrpc::r#async::Client::new(socket));
        Agent { client, vm_exit }
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

    /// Check: the first call; refuses a different protocol version.
    pub async fn check(&self) -> Result<CheckResponse> {
        let req = CheckRequest { shim_protocol_version: PROTOCOL_VERSION, ..Default::default() };
        let r = self.bounded("Check", Some(CALL_TIMEOUT), self.client.check(ctx_short(), &req)).await?;
        check_version(r.agent_protocol_version)?;
        Ok(r)
    }

    pub async fn create_container(&self, c: NewContainer<'_>) -> Result<u32> {
        let req = CreateContainerRequest {
            container_id: c.id.to_string(),
            oci_spec_json: c.spec_json,
            rootfs_path: c.rootfs_path.to_string(),
            stdin: c.stdin,
            terminal: c.terminal,
            sandbox_id: c.sandbox_id.to_string(),
            shared_mounts: c
                .shared_mounts
                .iter()
                .map(|m| SharedMount { mount_index: m.index, share_path: m.share_path.clone(), ..Default::default() })
                .collect(),
            ..Default::default()
        };
        let r = self
            .bounded("CreateContainer", Some(CALL_TIMEOUT), self.client.create_container(ctx_short(), &req))
            .await?;
        Ok(r.pid)
    }

    /// SetupSandbox: the pod's hostname and network, once, before the first container.
    pub async fn setup_sandbox(&self, req: &SetupSandboxRequest) -> Result<()> {
        self.bounded("SetupSandbox", Some(CALL_TIMEOUT), self.client.setup_sandbox(ctx_short(), req)).await?;
        Ok(())
    }

    pub async fn start_container(&self, id: &str) -> Result<()> {
        let req = ContainerRequest { container_id: id.to_string(), ..Default::default() };
        self.bounded("StartContainer", Some(CALL_TIMEOUT), self.client.start_container(ctx_short(), &req)).await?;
        Ok(())
    }

    /// Blocks until the process (`exec_id` empty: the init process) exits, or the VM dies.
    /// Returns the guest's (untrusted) status.
    pub async fn wait_process(&self, id: &str, exec_id: &str) -> Result<i32> {
        let req = ProcessRequest { container_id: id.to_string(), exec_id: exec_id.to_string(), ..Default::default() };
        let r = self.bounded("WaitProcess", None, self.client.wait_process(ctx_long(), &req)).await?;
        Ok(r.exit_status)
    }

    pub async fn signal_process(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
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

    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let req = ContainerRequest { container_id: id.to_string(), ..Default::default() };
        self.bounded("RemoveContainer", Some(CALL_TIMEOUT), self.client.remove_container(ctx_short(), &req)).await?;
        Ok(())
    }

    /// Next chunk of output (long poll); empty at end of stream. At most MAX_READ_CHUNK bytes
    /// are kept even if the guest sends more.
    pub async fn read(&self, id: &str, exec_id: &str, stream: Stream) -> Result<Vec<u8>> {
        let req = ReadStreamRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            max_len: MAX_READ_CHUNK,
            ..Default::default()
        };
        let mut r = match stream {
            Stream::Stdout => self.bounded("ReadStdout", None, self.client.read_stdout(ctx_long(), &req)).await?,
            Stream::Stderr => self.bounded("ReadStderr", None, self.client.read_stderr(ctx_long(), &req)).await?,
        };
        r.data.truncate(MAX_READ_CHUNK as usize);
        Ok(r.data)
    }

    /// Writes stdin data; returns how much the agent took.
    pub async fn write_stdin(&self, id: &str, exec_id: &str, data: Vec<u8>) -> Result<usize> {
        let len = data.len();
        let req = WriteStreamRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            data,
            ..Default::default()
        };
        let r = self.bounded("WriteStdin", Some(CALL_TIMEOUT), self.client.write_stdin(ctx_short(), &req)).await?;
        Ok((r.len as usize).min(len))
    }

    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let req = ProcessRequest { container_id: id.to_string(), exec_id: exec_id.to_string(), ..Default::default() };
        self.bounded("CloseStdin", Some(CALL_TIMEOUT), self.client.close_stdin(ctx_short(), &req)).await?;
        Ok(())
    }

    /// Creates and starts exec `exec_id` in container `id`; returns its guest pid.
    pub async fn exec_process(
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
    pub async fn remove_process(&self, id: &str, exec_id: &str) -> Result<()> {
        let req = ProcessRequest { container_id: id.to_string(), exec_id: exec_id.to_string(), ..Default::default() };
        self.bounded("RemoveProcess", Some(CALL_TIMEOUT), self.client.remove_process(ctx_short(), &req)).await?;
        Ok(())
    }

    /// Sets the terminal size of a process's pty.
    pub async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
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
