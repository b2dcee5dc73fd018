//! Delete and Shutdown. Delete of an exec forgets it; Delete of a container's init process
//! forgets the container, tears down its sandbox VM when it was the pod's last container, and
//! unmounts its rootfs — then /tasks/delete goes out, last. Shutdown ends the shim once no
//! container is left, after the last events reached containerd.

use std::time::Duration;

use containerd_shim::api;

use crate::error::Result;
use crate::resources::rootfs;
use crate::task::service::Service;

/// How long Shutdown waits for the last events to be published.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn delete(svc: &Service, req: api::DeleteRequest) -> Result<api::DeleteResponse> {
    let (c, p, d) = if req.exec_id.is_empty() {
        let _g = svc.lifecycle.lock().await;
        let c = svc.container(&req.id)?;
        let d = c.delete(&c.init).await?;
        if let Some(sb) = svc.sandbox(&c.sandbox_id) {
            sb.telemetry().remove_container(&c.id);
        }
        if svc.remove_container(&c) {
            if let Some(sb) = svc.remove_sandbox(&c.sandbox_id) {
                sb.teardown().await;
            }
        }
        let m = c.mounts.clone();
        let _ = tokio::task::spawn_blocking(move || rootfs::unmount_rootfs(&m)).await;
        let p = c.init.clone();
        (c, p, d)
    } else {
        let (c, p) = svc.process(&req.id, &req.exec_id)?;
        let d = c.delete(&p).await?;
        (c, p, d)
    };
    c.report_deleted(&p, &d);
    Ok(api::DeleteResponse { pid: d.pid, exit_status: d.status, exited_at: d.at, ..Default::default() })
}

pub async fn shutdown(svc: &Service) {
    // Behind a Create or Delete still running (its request may have timed out while its work
    // goes on): the shim must not exit under it. Held until the exit is signalled.
    let _g = svc.lifecycle.lock().await;
    if svc.has_containers() {
        tracing::info!("Shutdown: containers remain, staying up");
        return;
    }
    for s in svc.take_sandboxes() {
        s.teardown().await;
    }
    if let Some(f) = &svc.forwarded {
        f.flush(&svc.events, FLUSH_TIMEOUT).await;
    }
    tracing::info!("Shutdown: no containers left, exiting");
    svc.exit.signal();
}
