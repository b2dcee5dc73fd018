//! A fake [`Vmm`] for unit tests (no QEMU, no root): it "boots" at once by playing the
//! guest's side of the hybrid-vsock handshake on unix sockets in the state directory (READY
//! on the log port, `OK` to every `CONNECT`), and can instead fail to start, die during
//! boot, hang (never READY), or die later on request ([`FakeVmmHandle::die`]).
#![allow(dead_code)] // a test kit: not every test uses every knob

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::{AgentSocket, Capabilities, ExitWatch, VmConfig, Vmm, VmmProcess};
use crate::error::{Error, Result};
use crate::resources::network::VmNic;

/// A pid no real process can have (above the kernel's PID_MAX_LIMIT).
pub const FAKE_PID: u32 = 4_200_000;

/// What the fake VM does when started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Boots: READY, then accepts CONNECTs.
    Boots,
    /// `start` fails (as a missing or unstartable hypervisor would).
    FailsToStart,
    /// Starts, then exits (SIGKILL) before READY.
    DiesDuringBoot,
    /// Starts and never sends READY.
    Hangs,
}

/// The test's handle on a [`FakeVmm`] it gave away.
#[derive(Clone)]
pub struct FakeVmmHandle {
    exit: Arc<watch::Sender<Option<ExitStatus>>>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl FakeVmmHandle {
    /// The VM dies (SIGKILL).
    pub fn die(&self) {
        self.exit.send_replace(Some(ExitStatus::from_raw(libc::SIGKILL)));
    }

    /// Every trait call so far ("prepare", "start", "kill", "stop").
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The fake VM.
pub struct FakeVmm {
    dir: PathBuf,
    behaviour: Behaviour,
    handle: FakeVmmHandle,
    started: bool,
    guest: Option<tokio::task::JoinHandle<()>>,
}

impl FakeVmm {
    /// A fake VM for the sandbox whose state directory is `dir`.
    pub fn new(dir: &Path, behaviour: Behaviour) -> (FakeVmm, FakeVmmHandle) {
        let handle = FakeVmmHandle { exit: Arc::new(watch::channel(None).0), calls: Arc::new(Mutex::new(Vec::new())) };
        (FakeVmm { dir: dir.to_path_buf(), behaviour, handle: handle.clone(), started: false, guest: None }, handle)
    }

    fn socket(&self) -> AgentSocket {
        AgentSocket::HybridVsock { uds_path: self.dir.join("fake-vsock.sock"), owner: None }
    }

    fn call(&self, what: &str) {
        self.handle.calls.lock().unwrap_or_else(|p| p.into_inner()).push(what.to_string());
    }
}

/// The guest's side: READY to the host's log port, then `OK <port>` to each CONNECT. Holds
/// the connections open until aborted.
async fn play_guest(socket: AgentSocket, listener: UnixListener) {
    let mut keep = Vec::new();
    match UnixStream::connect(socket.host_port_path(bulwark_protocol::LOG_PORT)).await {
        Ok(mut log) => {
            let _ = log.write_all(bulwark_protocol::ready_line().as_bytes()).await;
            keep.push(log);
        }
        Err(e) => {
            tracing::error!("fake guest: connecting to the log port: {e}");
            return;
        }
    }
    while let Ok((mut s, _)) = listener.accept().await {
        let mut line = Vec::new();
        while let Ok(b) = s.read_u8().await {
            line.push(b);
            if b == b'\n' || line.len() > 64 {
                break;
            }
        }
        let text = String::from_utf8_lossy(&line);
        if let Some(port) = text.trim_end().strip_prefix("CONNECT ") {
            let _ = s.write_all(format!("OK {port}\n").as_bytes()).await;
            keep.push(s);
        }
    }
}

#[async_trait]
impl Vmm for FakeVmm {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { fs_share: false, hybrid_vsock: true, hotplug: false }
    }

    /// Recorded: the sandbox must ask only once `prepare` made the helpers (and their uids).
    fn agent_socket(&self) -> AgentSocket {
        self.call("agent_socket");
        self.socket()
    }

    async fn prepare(&mut self, _vm: &VmConfig) -> Result<()> {
        self.call("prepare");
        Ok(())
    }

    async fn start(&mut self, _nics: Vec<VmNic>) -> Result<()> {
        self.call("start");
        match self.behaviour {
            Behaviour::FailsToStart => {
                return Err(Error::Spawn {
                    what: "fake VMM",
                    path: PathBuf::from("/nonexistent/fake-vmm"),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                })
            }
            Behaviour::DiesDuringBoot => self.handle.die(),
            Behaviour::Hangs => {}
            Behaviour::Boots => {
                let socket = self.socket();
                let listener = UnixListener::bind(socket.connect_path())
                    .map_err(|e| Error::io(format!("fake VMM: binding {}", socket.connect_path().display()), e))?;
                self.guest = Some(tokio::spawn(play_guest(socket, listener)));
            }
        }
        self.started = true;
        Ok(())
    }

    fn exit_watch(&self) -> Option<ExitWatch> {
        self.started.then(|| self.handle.exit.subscribe())
    }

    fn pid(&self) -> Option<u32> {
        self.started.then_some(FAKE_PID)
    }

    fn processes(&self) -> Vec<VmmProcess> {
        if !self.started {
            return Vec::new();
        }
        vec![VmmProcess { name: "fake-vmm", pid: FAKE_PID, exe: PathBuf::from("/nonexistent/fake-vmm") }]
    }

    fn logs(&self) -> Vec<(&'static str, PathBuf)> {
        Vec::new()
    }

    async fn kill(&mut self) {
        self.call("kill");
        if self.started {
            self.handle.die();
        }
    }

    async fn stop(&mut self) {
        self.call("stop");
        if let Some(g) = self.guest.take() {
            g.abort();
        }
        if self.started && self.handle.exit.borrow().is_none() {
            self.handle.die();
        }
    }
}
