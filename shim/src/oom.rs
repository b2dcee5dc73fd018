//! OOM events of one sandbox: one background task long-polls the agent's WaitOomEvent and
//! hands each container id to a callback (which publishes `/tasks/oom` for containers this
//! shim knows). The ids come from the guest: the callback must ignore unknown ones. The task
//! ends when the VM dies or the sandbox is being torn down.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::agent_client::Agent;
use crate::sandbox::Sandbox;

/// Pause after a failed poll that was not the VM's death (an old agent, a transient error).
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// Failed polls in a row after which the watcher gives up (logged).
const MAX_FAILURES: u32 = 30;

/// Spawns the OOM watcher of `sandbox`. `on_oom(container_id)` runs for every event.
pub fn spawn<F, Fut>(sandbox: &Arc<Sandbox>, agent: Arc<Agent>, on_oom: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let sandbox = Arc::downgrade(sandbox);
    tokio::spawn(async move {
        let mut failures = 0;
        loop {
            let res = agent.wait_oom_event().await;
            let (gone, id) = match sandbox.upgrade() {
                None => (true, None),
                Some(sb) => (sb.is_stopping() || vm_exited(&sb), Some(sb.id.clone())),
            };
            match res {
                Ok(container_id) => {
                    failures = 0;
                    tracing::info!("sandbox {}: the guest reports an OOM kill in container {container_id:?}", id.unwrap_or_default());
                    on_oom(container_id).await;
                }
                Err(_) if gone => {
                    tracing::debug!("OOM watcher of sandbox {}: the VM is gone, stopping", id.unwrap_or_default());
                    return;
                }
                Err(e) => {
                    failures += 1;
                    if failures >= MAX_FAILURES {
                        tracing::error!("OOM watcher of sandbox {}: {e}; giving up after {failures} failures", id.unwrap_or_default());
                        return;
                    }
                    tracing::warn!("OOM watcher of sandbox {}: {e}; retrying", id.unwrap_or_default());
                    tokio::time::sleep(RETRY_DELAY).await;
                }
            }
        }
    })
}

fn vm_exited(sb: &Sandbox) -> bool {
    sb.vm_exit().map(|rx| rx.borrow().is_some()).unwrap_or(true)
}
