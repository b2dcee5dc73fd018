//! Process stdio (a container's init process, `exec_id` empty, or an exec): copies
//! ReadStdout/ReadStderr chunks from the agent into containerd's stdout/stderr FIFOs (empty
//! path: output is drained and discarded), and containerd's stdin FIFO into WriteStdin.
//! With a terminal the guest's stdout stream is the tty and its stderr stream is empty
//! (containerd gives no stderr FIFO then).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Notify;

use crate::agent::{AgentApi, Stream};
use crate::error::{Error, Result};

/// How long to wait for containerd to have the read side of an output FIFO open.
const FIFO_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens an output FIFO for writing (`None` for an empty path). Opening non-blocking fails
/// with ENXIO while nobody reads, so retry until containerd's reader is there.
pub async fn open_output(path: &str) -> Result<Option<pipe::Sender>> {
    if path.is_empty() {
        return Ok(None);
    }
    let deadline = Instant::now() + FIFO_OPEN_TIMEOUT;
    loop {
        match pipe::OpenOptions::new().open_sender(Path::new(path)) {
            Ok(s) => return Ok(Some(s)),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(Error::io(format!("opening stdio FIFO {path} for writing"), e)),
        }
    }
}

/// Copies one output stream of process `exec_id` of container `id` until end of stream or
/// VM death.
pub fn spawn_output(
    agent: Arc<dyn AgentApi>,
    id: String,
    exec_id: String,
    stream: Stream,
    mut sink: Option<pipe::Sender>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let id = label(&id, &exec_id);
        loop {
            let data = match agent.read(&id.container, &exec_id, stream).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!("{stream:?} of {id} ends: {e}");
                    break;
                }
            };
            if data.is_empty() {
                break;
            }
            if let Some(s) = sink.as_mut() {
                if let Err(e) = s.write_all(&data).await {
                    // containerd stopped reading: keep draining so the guest never blocks.
                    tracing::warn!("{stream:?} of {id}: writing to containerd's FIFO: {e}; discarding output");
                    sink = None;
                }
            }
        }
    })
}

/// containerd's stdin FIFO, held by an `O_PATH` descriptor taken while the path exists:
/// containerd's client unlinks its FIFOs before it calls Delete, and a reader still blocked
/// in open(2) can only be freed through the inode (`/proc/self/fd/<n>`).
pub struct StdinFifo {
    path: String,
    handle: std::fs::File,
}

impl StdinFifo {
    pub fn open(path: &str) -> Result<StdinFifo> {
        use std::os::unix::fs::OpenOptionsExt;
        let handle = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(path)
            .map_err(|e| Error::io(format!("opening stdin FIFO {path}"), e))?;
        Ok(StdinFifo { path: path.to_string(), handle })
    }

    fn proc_path(&self) -> String {
        use std::os::unix::io::AsRawFd;
        format!("/proc/self/fd/{}", self.handle.as_raw_fd())
    }

    /// Frees a reader blocked in open(2) on this FIFO by opening (and closing) its write
    /// side without blocking. Harmless when nobody waits.
    pub fn unblock(&self) {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(self.proc_path());
    }
}

/// Copies containerd's stdin FIFO into the container until EOF (containerd closed its write
/// end) or `close` is notified (CloseIO; what is left in the FIFO is still drained), then
/// closes the container's stdin. The FIFO is opened blocking (read-only, so the writer's
/// close reads as EOF) on a blocking thread; [`StdinFifo::unblock`] frees that thread if the
/// writer never comes.
pub fn spawn_stdin(
    agent: Arc<dyn AgentApi>,
    id: String,
    exec_id: String,
    fifo: Arc<StdinFifo>,
    close: Arc<Notify>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let id = label(&id, &exec_id);
        let f = fifo.clone();
        let file = match tokio::task::spawn_blocking(move || std::fs::File::open(f.proc_path())).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                tracing::warn!("stdin of {id}: opening FIFO {}: {e}", fifo.path);
                return;
            }
            Err(_) => return,
        };
        let mut rx = match pipe::Receiver::from_file(file) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("stdin of {id}: {} is not a FIFO: {e}", fifo.path);
                return;
            }
        };
        let mut buf = vec![0u8; 32 * 1024];
        let mut closing = false;
        let mut zero_answers: u32 = 0;
        loop {
            let r = if closing {
                match tokio::time::timeout(Duration::from_millis(100), rx.read(&mut buf)).await {
                    Ok(r) => r,
                    Err(_) => break,
                }
            } else {
                tokio::select! {
                    r = rx.read(&mut buf) => r,
                    _ = close.notified() => { closing = true; continue; }
                }
            };
            let n = match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut off = 0;
            while off < n {
                match agent.write_stdin(&id.container, &exec_id, buf[off..n].to_vec()).await {
                    // The guest took nothing (the process is not reading and its pipe is full):
                    // back off, 10 ms more each time up to one call a second: no spinning
                    // on a guest that keeps answering zero.
                    Ok(0) => {
                        zero_answers = zero_answers.saturating_add(1);
                        tokio::time::sleep(Duration::from_millis(10 * u64::from(zero_answers.min(100)))).await;
                    }
                    Ok(w) => {
                        zero_answers = 0;
                        off += w;
                    }
                    Err(e) => {
                        tracing::warn!("stdin of {id}: {e}");
                        return;
                    }
                }
            }
        }
        if let Err(e) = agent.close_stdin(&id.container, &exec_id).await {
            tracing::debug!("closing stdin of {id}: {e}");
        }
    })
}

/// A process named in logs: `<container>` or `<container>/<exec>`.
struct Label {
    container: String,
    shown: String,
}

fn label(id: &str, exec_id: &str) -> Label {
    let shown = if exec_id.is_empty() { id.to_string() } else { format!("{id}/{exec_id}") };
    Label { container: id.to_string(), shown }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}
