//! The agent's vsock: the listener the ttrpc server serves (connections from the host only:
//! a peer whose CID is not 2 is closed and logged, never served), and the connect-out
//! handshake: once the ttrpc server listens, connect to the host (CID 2) on LOG_PORT, write
//! `READY <version>\n`, then forward log lines over the same connection.
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio_vsock::{VsockAddr, VsockListener, VsockStream, VMADDR_CID_ANY};

use crate::init::logging::{self, LogReceiver};

/// How long to keep trying to reach the host.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);

/// At most one log line per this interval about refused peers (the count of the others
/// goes with the next one).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Whether a connection from `peer_cid` may reach the agent API: only the host's.
pub fn accepts_peer(peer_cid: u32) -> bool {
    peer_cid == protocol::HOST_CID
}

/// Rate limit for the refused-peer log line.
#[derive(Default)]
pub struct RefusalLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    /// Counts one refusal; returns how many refusals the line to log now covers (including
    /// this one), or None if this one is only counted.
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_INTERVAL) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        let n = self.suppressed + 1;
        self.suppressed = 0;
        Some(n)
    }
}

/// Listens on `port` (any local CID) for the ttrpc server; yields only the host's
/// connections (see [`accepts_peer`]); others are closed at once.
pub fn host_only_listener(port: u32) -> std::io::Result<ttrpc::r#async::transport::Listener> {
    let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port))?;
    let incoming = futures::stream::unfold((listener, RefusalLog::default()), |(listener, mut log)| async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) if accepts_peer(peer.cid()) => return Some((Ok(stream), (listener, log))),
                Ok((stream, peer)) => {
                    drop(stream);
                    if let Some(n) = log.note(Instant::now()) {
                        tracing::warn!(
                            cid = peer.cid(),
                            port = peer.port(),
                            refused = n,
                            "refused agent API connection(s) not from the host (CID {})",
                            protocol::HOST_CID
                        );
                    }
                }
                Err(e) => return Some((Err(e), (listener, log))),
            }
        }
    });
    Ok(ttrpc::r#async::transport::Listener::new(incoming))
}

/// Backoff delays: 50 ms doubling up to 2 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1u64 << attempt.min(6))).min(Duration::from_secs(2))
}

async fn connect() -> Option<VsockStream> {
    let start = Instant::now();
    let addr = VsockAddr::new(protocol::HOST_CID, protocol::LOG_PORT);
    let mut attempt = 0;
    loop {
        match VsockStream::connect(addr).await {
            Ok(s) => return Some(s),
            Err(e) => {
                if start.elapsed() >= CONNECT_DEADLINE {
                    tracing::error!(
                        "cannot reach the host on vsock {}:{} after {:?}: {e}; giving up (logs stay on the console)",
                        protocol::HOST_CID,
                        protocol::LOG_PORT,
                        CONNECT_DEADLINE
                    );
                    return None;
                }
                if attempt == 0 {
                    tracing::info!("host not listening on vsock port {} yet ({e}); retrying", protocol::LOG_PORT);
                }
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
        }
    }
}

/// Connects, announces readiness, then forwards log lines until the connection breaks.
pub async fn announce_and_forward_logs(lines: LogReceiver) {
    if let Some(stream) = announce().await {
        forward_logs(stream, lines).await;
    }
}

/// Connects to the host and writes the READY line; returns the connection, which then carries
/// log lines. None (logged; log lines stay on the console) if the host cannot be reached.
pub async fn announce() -> Option<VsockStream> {
    let Some(mut stream) = connect().await else {
        logging::stop_forwarding();
        return None;
    };
    if let Err(e) = stream.write_all(protocol::ready_line().as_bytes()).await {
        tracing::error!("writing the READY line to the host failed: {e}");
        logging::stop_forwarding();
        return None;
    }
    tracing::info!("announced READY {} to the host", protocol::PROTOCOL_VERSION);
    Some(stream)
}

/// Forwards log lines over the announced connection until it breaks.
pub async fn forward_logs(mut stream: VsockStream, mut lines: LogReceiver) {
    while let Some(line) = lines.recv().await {
        if let Err(e) = stream.write_all(line.as_bytes()).await {
            logging::stop_forwarding();
            tracing::warn!("log connection to the host broke ({e}); logging to the console only");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_host_is_served() {
        assert!(accepts_peer(2));
        for cid in [0, 1, 3, 4, 42, u32::MAX, VMADDR_CID_ANY] {
            assert!(!accepts_peer(cid), "cid {cid}");
        }
    }

    #[test]
    fn refusals_are_logged_at_most_once_per_interval() {
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        assert_eq!(log.note(t0), Some(1));
        assert_eq!(log.note(t0 + Duration::from_secs(1)), None);
        assert_eq!(log.note(t0 + Duration::from_secs(9)), None);
        assert_eq!(log.note(t0 + REFUSAL_LOG_INTERVAL), Some(3));
        assert_eq!(log.note(t0 + REFUSAL_LOG_INTERVAL * 3), Some(1));
    }

    #[test]
    fn backoff_is_bounded() {
        assert_eq!(backoff(0), Duration::from_millis(50));
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(100), Duration::from_secs(2));
    }
}
