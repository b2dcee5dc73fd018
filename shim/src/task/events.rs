//! The one forwarder of the shim's event channel: publishes every event to containerd
//! (`RemotePublisher`), one at a time, in the order the container layer sent them — as
//! containerd's runc shim forwards its event channel. A failed publish is logged and the next
//! event goes on. [`Forwarded::flush`] lets Shutdown wait until everything sent is published.

use std::time::Duration;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;
use tokio::sync::watch;

use crate::container::events::EventRx;
use crate::container::EventTx;

/// How many events the forwarder has handled (published or failed), to wait on.
#[derive(Clone)]
pub struct Forwarded(watch::Receiver<u64>);

impl Forwarded {
    /// Waits (at most `limit`) until every event sent on `tx` so far was handled.
    pub async fn flush(&self, tx: &EventTx, limit: Duration) {
        let target = tx.sent();
        let mut rx = self.0.clone();
        let done = tokio::time::timeout(limit, async { rx.wait_for(|n| *n >= target).await.is_ok() }).await;
        match done {
            Ok(true) => {}
            Ok(false) => tracing::warn!("event forwarder gone before the last events were published"),
            Err(_) => tracing::warn!("events not all published within {limit:?}"),
        }
    }
}

/// Spawns the forwarder; it ends when every sender is gone.
pub fn spawn_forwarder(mut rx: EventRx, publisher: RemotePublisher, namespace: String) -> Forwarded {
    let (done_tx, done_rx) = watch::channel(0u64);
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            tracing::debug!("publishing {}", ev.topic);
            if let Err(e) = publisher.publish(Context::default(), ev.topic, &namespace, ev.message).await {
                tracing::warn!("publishing {}: {e}", ev.topic);
            }
            done_tx.send_modify(|n| *n += 1);
        }
    });
    Forwarded(done_rx)
}
