//! One process the agent runs: a container's init process or an exec. Its pid, exit channel
//! and stdio: pipes (stdout and stderr separate, stdio.rs) or a pty master (pty.rs: the master
//! is the stdout stream, stderr is empty, stdin writes to the master, ResizePty resizes it).
//! `table.rs` finds the agent's processes by (container id, exec id).
//!
//! Setting up stdio is two steps around the libcontainer call: [`StdioSetup::new`] makes the
//! child's ends (pipes, or a console socket for libcontainer to send the pty master to), and
//! [`StdioSetup::receive`] then [`ReceivedStdio::into_process`] (after the process exists)
//! turn the agent's ends into a [`Process`].
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::init::reaper::ExitReceiver;
use pty::{ConsoleSocket, PtyError, PtyMaster};
use stdio::{OutputStream, Stdin, StdinSink, StdioError, OUTPUT_BUFFER_CAP};

pub mod pty;
pub mod stdio;
pub mod table;

#[derive(Debug, thiserror::Error)]
pub enum ProcessIoError {
    #[error(transparent)]
    Stdio(#[from] StdioError),
    #[error(transparent)]
    Pty(#[from] PtyError),
}

/// A running (or exited, not yet removed) process and its stdio.
pub struct Process {
    pub pid: i32,
    pub exit: ExitReceiver,
    pub stdout: Arc<OutputStream>,
    pub stderr: Arc<OutputStream>,
    pub stdin: Stdin,
    /// The pty master, for ResizePty (None without a terminal).
    pub pty: Option<OwnedFd>,
    pumps: Vec<JoinHandle<()>>,
}

impl Process {
    pub fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Ends the streams (readers see EOF), closes stdin, stops the pumps.
    pub async fn close(&self) {
        self.stdout.close();
        self.stderr.close();
        self.stdin.close().await;
        for p in &self.pumps {
            p.abort();
        }
    }
}

/// The child's side of a process's stdio: pipe ends, or a console socket libcontainer sends
/// the pty master to.
pub enum ChildStdio {
    Pipes { stdin: OwnedFd, stdout: OwnedFd, stderr: OwnedFd },
    Console(PathBuf),
}

/// The agent's side of a process's stdio while the process is being created.
pub enum StdioSetup {
    Pipes { stdin: Option<OwnedFd>, stdout: OwnedFd, stderr: OwnedFd },
    Console(ConsoleSocket),
}

impl StdioSetup {
    /// Pipes (stdin only if asked), or a console socket when `terminal`.
    pub fn new(terminal: bool, with_stdin: bool) -> Result<(StdioSetup, ChildStdio), ProcessIoError> {
        if terminal {
            let sock = ConsoleSocket::bind()?;
            let path = sock.path().to_path_buf();
            return Ok((StdioSetup::Console(sock), ChildStdio::Console(path)));
        }
        let p = stdio::make_pipes(with_stdin)?;
        Ok((
            StdioSetup::Pipes { stdin: p.stdin, stdout: p.stdout, stderr: p.stderr },
            ChildStdio::Pipes { stdin: p.child_stdin, stdout: p.child_stdout, stderr: p.child_stderr },
        ))
    }

    /// For a terminal, receives the pty master libcontainer sent. Blocking: call off the async
    /// runtime, after the libcontainer call returned.
    pub fn receive(self) -> Result<ReceivedStdio, ProcessIoError> {
        match self {
            StdioSetup::Pipes { stdin, stdout, stderr } => Ok(ReceivedStdio::Pipes { stdin, stdout, stderr }),
            StdioSetup::Console(sock) => Ok(ReceivedStdio::Pty(sock.receive_master()?)),
        }
    }
}

/// The agent's ends, ready to be pumped.
pub enum ReceivedStdio {
    Pipes { stdin: Option<OwnedFd>, stdout: OwnedFd, stderr: OwnedFd },
    Pty(OwnedFd),
}

impl ReceivedStdio {
    /// Starts the output pumps (inside the async runtime) and returns the process. `label`
    /// names the process in logs; `with_stdin` keeps a stdin writer for a terminal.
    pub fn into_process(self, label: &str, pid: i32, exit: ExitReceiver, with_stdin: bool) -> Process {
        let stdout = OutputStream::new(OUTPUT_BUFFER_CAP);
        let stderr = OutputStream::new(OUTPUT_BUFFER_CAP);
        let mut pumps = Vec::new();
        let (stdin, pty): (Option<StdinSink>, Option<OwnedFd>) = match self {
            ReceivedStdio::Pipes { stdin, stdout: out, stderr: err } => {
                for (fd, stream, name) in [(out, &stdout, "stdout"), (err, &stderr, "stderr")] {
                    match stdio::receiver(fd) {
                        Ok(r) => {
                            pumps.push(tokio::spawn(stream.clone().pump(r, exit.clone(), format!("{label}/{name}"))))
                        }
                        Err(e) => {
                            tracing::error!(process = %label, "{name}: {e}");
                            stream.close();
                        }
                    }
                }
                let stdin = match stdin.map(stdio::sender).transpose() {
                    Ok(s) => s.map(|s| Box::new(s) as StdinSink),
                    Err(e) => {
                        tracing::error!(process = %label, "stdin: {e}");
                        None
                    }
                };
                (stdin, None)
            }
            ReceivedStdio::Pty(master) => {
                // A terminal has one output stream.
                stderr.close();
                match PtyMaster::new(&master) {
                    Ok(r) => pumps.push(tokio::spawn(stdout.clone().pump(r, exit.clone(), format!("{label}/tty")))),
                    Err(e) => {
                        tracing::error!(process = %label, "tty output: {e}");
                        stdout.close();
                    }
                }
                let stdin = if with_stdin {
                    match PtyMaster::new(&master) {
                        Ok(w) => Some(Box::new(w) as StdinSink),
                        Err(e) => {
                            tracing::error!(process = %label, "tty input: {e}");
                            None
                        }
                    }
                } else {
                    None
                };
                (stdin, Some(master))
            }
        };
        Process { pid, exit, stdout, stderr, stdin: Stdin::new(stdin), pty, pumps }
    }
}

#[cfg(test)]
impl Process {
    /// A process without stdio (no pumps, no stdin, empty streams), for tests of the layers
    /// above; `exit` is the receiving end of a channel the test controls.
    pub fn without_stdio(pid: i32, exit: ExitReceiver) -> Process {
        let stdout = OutputStream::new(16);
        let stderr = OutputStream::new(16);
        Process { pid, exit, stdout, stderr, stdin: Stdin::new(None), pty: None, pumps: Vec::new() }
    }
}
