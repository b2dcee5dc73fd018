//! Container stdio: copies ReadStdout/ReadStderr chunks from the agent into containerd's
//! stdout/stderr FIFOs (empty path: output is drained and discarded), and containerd's
//! stdin FIFO into WriteStdin.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Notify;

use crate::agent_client::{Agent, Stream};
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

/// Copies one output stream of container `id` until end of stream or VM death.
pub fn spawn_output(agent: Arc<Agent>, id: String, stream: Stream, mut sink: Option<pipe::Sender>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let data = match agent.read(&id, stream).await {
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

/// Copies containerd's stdin FIFO into the container until EOF (containerd closed its write
/// end) or `close` is notified (CloseIO; what is left in the FIFO is still drained), then
/// closes the container's stdin. The FIFO is opened blocking (read-only, so the writer's
/// close reads as EOF) on a blocking thread; [`unblock_fifo`] frees that thread if the
/// writer never comes.
pub fn spawn_stdin(agent: Arc<Agent>, id: String, path: &str, close: Arc<Notify>) -> Result<tokio::task::JoinHandle<()>> {
    let path = path.to_string();
    Ok(tokio::spawn(async move {
        let p = path.clone();
        let file = match tokio::task::spawn_blocking(move || std::fs::File::open(&p)).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                tracing::warn!("stdin of {id}: opening FIFO {path}: {e}");
                return;
            }
            Err(_) => return,
        };
        let mut rx = match pipe::Receiver::from_file(file) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("stdin of {id}: {path} is not a FIFO: {e}");
                return;
            }
        };
        let mut buf = vec![0u8; 32 * 1024];
        let mut closing = false;
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
                match agent.write_stdin(&id, buf[off..n].to_vec()).await {
                    Ok(0) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Ok(w) => off += w,
                    Err(e) => {
                        tracing::warn!("stdin of {id}: {e}");
                        return;
                    }
                }
            }
        }
        if let Err(e) = agent.close_stdin(&id).await {
            tracing::debug!("closing stdin of {id}: {e}");
        }
    }))
}

/// Frees a reader blocked in open(2) on the FIFO at `path` by opening (and closing) its
/// write side without blocking. Harmless when nobody waits.
pub fn unblock_fifo(path: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    if path.is_empty() {
        return;
    }
    let _ = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(path);
}
