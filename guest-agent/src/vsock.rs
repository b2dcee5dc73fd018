//! The connect-out handshake: once the ttrpc server listens, connect to the host (CID 2) on
//! LOG_PORT, write `READY <version>\n`, then forward log lines over the same connection.
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio_vsock::{VsockAddr, VsockStream};

use crate::init::logging::{self, LogReceiver};

/// How long to keep trying to reach the host.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);

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
pub async fn announce_and_forward_logs(mut lines: LogReceiver) {
    let Some(mut stream) = connect().await else {
        logging::stop_forwarding();
        return;
    };
    if let Err(e) = stream.write_all(protocol::ready_line().as_bytes()).await {
        tracing::error!("writing the READY line to the host failed: {e}");
        logging::stop_forwarding();
        return;
    }
    tracing::info!("announced READY {} to the host", protocol::PROTOCOL_VERSION);
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
    fn backoff_is_bounded() {
        assert_eq!(backoff(0), Duration::from_millis(50));
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(100), Duration::from_secs(2));
    }
}
